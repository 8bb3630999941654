"""Through a running gateway: ``GET /admin/v1/audit/verify``, legal holds over the admin API and
``custos audit hold``, and each signed checkpoint sent as an OTLP log record."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from custos.audit.log.checkpoint import generate_pem, parse_checkpoint
from custos.state.backends import open_store
from tests.audit_helpers import eventually, one_call, query, stored_records, unguarded
from tests.conftest import CUSTOS, ROOT, GatewayProcess, standard_config
from tests.test_audit_export import OTLPReceiver, _attributes, receiver  # noqa: F401  (fixture)


def _token(gateway: GatewayProcess, role: str) -> str:
    user = httpx.post(f"{gateway.url}/admin/v1/users", headers=gateway.headers,
                      json={"email": f"{role}@custos.test", "roles": [role]}).json()  # fmt: skip
    return httpx.post(f"{gateway.url}/admin/v1/tokens", headers=gateway.headers,
                      json={"name": role, "user": user["id"]}).json()["token"]  # fmt: skip


def _cli(gateway: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CUSTOS, "audit", *args, "--url", gateway.url, "--token", gateway.token],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_verify_route_holds_and_checkpoint_events(
    mock_provider: Any,
    receiver: OTLPReceiver,  # noqa: F811
    tmp_path: Path,
) -> None:
    audit = (
        f'audit: {{export: [{{otlp: {{endpoint: "{receiver.url}"}}}}],'
        " checkpoint_interval_s: 0.3, checkpoint_export: ./checkpoints.txt}\n"
    )
    gateway = GatewayProcess(standard_config(mock_provider.url) + audit, tmp_path,
                             env={"CUSTOS_AUDIT_SIGNING_KEY": generate_pem().decode()})  # fmt: skip
    db_url = f"sqlite:///{tmp_path / 'custos.db'}"
    admin = gateway.headers
    verify_url = f"{gateway.url}/admin/v1/audit/verify"
    try:
        served = httpx.post(f"{gateway.base_url}/chat/completions", headers=admin, timeout=15,
                            json={"model": "chat-default",
                                  "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert served.status_code == 200
        record = one_call(db_url, served.headers["x-custos-request-id"])

        # Checkpoints: stored, and each one also sent as an OTLP log record.
        def checkpoint_logs() -> list[Any]:
            return [e for e in receiver.logs if e.event_name == "custos.audit.checkpoint"]

        stored = eventually(
            lambda: query(db_url, "SELECT size, root, note FROM audit_checkpoints ORDER BY id"),
            lambda rows: any(r["size"] >= 3 for r in rows),
        )
        logs = eventually(checkpoint_logs, lambda found: len(found) >= len(stored))
        by_note = {e.body.string_value: _attributes(e) for e in logs}
        for row in stored:
            attributes = by_note[row["note"]]
            root = bytes(row["root"])
            assert attributes["audit.checkpoint.size"] == row["size"]
            assert attributes["audit.checkpoint.root_hash"] == root.hex()
            encoded = base64.b64encode(root).decode()
            assert attributes["audit.checkpoint.root_hash_base64"] == encoded
            assert attributes["audit.checkpoint.origin"] == "custos/audit"
            assert parse_checkpoint(row["note"]).size == row["size"]

        # The verify report as JSON, for admins and auditors only.
        reply = eventually(lambda: httpx.get(verify_url, headers=admin, timeout=60).json(),
                           lambda r: r.get("ok") and r["records"]["unsigned"] == 0)  # fmt: skip
        assert reply["ok"] and reply["failures"] == [] and reply["keys_from_database"]
        assert reply["summary"].startswith(f"{reply['checkpoints']['total']}/")
        assert reply["records"]["total"] == reply["records"]["log_size"] >= 3
        assert reply["range"] == {"from": None, "to": None}
        january = {"from": "2000-01-01", "to": "2000-01-31"}
        ranged = httpx.get(verify_url, headers=admin, params=january).json()
        assert ranged["ok"] and ranged["records"]["total"] == 0
        assert ranged["range"]["from"].startswith("2000-01-01T00:00:00")
        bad = httpx.get(verify_url, headers=admin, params={"from": "last week"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "from"
        tokens = {role: _token(gateway, role) for role in ("auditor", "member")}
        for role, status in (("auditor", 200), ("member", 403)):
            got = httpx.get(verify_url, headers={"authorization": f"Bearer {tokens[role]}"},
                            timeout=60)  # fmt: skip
            assert got.status_code == status, got.text
        document = httpx.get(f"{gateway.url}/admin/v1/openapi.json").json()
        operation = document["paths"]["/admin/v1/audit/verify"]["get"]
        assert operation["operationId"] == "verifyAuditLog"
        assert {p["name"] for p in operation["parameters"]} >= {"from", "to"}

        # Legal holds: admins set and release them; auditors list them; members do neither.
        holds_url = f"{gateway.url}/admin/v1/audit/holds"
        created = httpx.post(holds_url, headers=admin, json={"team": "support",
                                                             "reason": "inquiry 7"})  # fmt: skip
        assert created.status_code == 201, created.text
        hold = created.json()
        assert hold["team"] == "support" and hold["active"] and hold["set_by"].startswith("user:")
        for role in ("auditor", "member"):
            refused = httpx.post(holds_url, json={"reason": "x"},
                                 headers={"authorization": f"Bearer {tokens[role]}"})  # fmt: skip
            assert refused.status_code == 403, refused.text
        listed = httpx.get(holds_url, headers={"authorization": f"Bearer {tokens['auditor']}"})
        assert [h["id"] for h in listed.json()["data"]] == [hold["id"]]
        set_global = _cli(gateway, "hold", "set", "--reason", "litigation")
        assert set_global.returncode == 0, set_global.stderr
        assert "every record" in set_global.stdout and "[active]" in set_global.stdout
        global_id = set_global.stdout.split()[0]
        released = _cli(gateway, "hold", "release", global_id, "--reason", "settled")
        assert released.returncode == 0 and "released" in released.stdout
        again = _cli(gateway, "hold", "release", global_id, "--reason", "twice")
        assert again.returncode == 1 and "409" in again.stderr
        active = _cli(gateway, "hold", "list", "--active")
        assert active.stdout.split()[0] == hold["id"] and global_id not in active.stdout
        assert len(json.loads(_cli(gateway, "hold", "list", "--json").stdout)["data"]) == 2
        # Each change became an admin.change record in the log.
        changes = eventually(
            lambda: [r for r in stored_records(db_url, "admin.change")
                     if r["target.type"] == "audit_hold"],
            lambda found: len(found) == 3,
        )  # fmt: skip
        assert sorted(c["action"] for c in changes) == ["audit_hold.release", "audit_hold.set",
                                                        "audit_hold.set"]  # fmt: skip

        # A record modified in the database: the route names it.
        async def tamper() -> None:
            db = await open_store(db_url, migrate=False)
            try:
                async with unguarded(db) as tx:
                    await tx.execute("UPDATE audit_events SET record = $1 WHERE event_id = $2",
                                     b"{}", record["event_id"])  # fmt: skip
            finally:
                await db.close()

        asyncio.run(tamper())
        broken = httpx.get(verify_url, headers=admin, timeout=60).json()
        assert not broken["ok"]
        assert f"({record['event_id']}): the record's bytes do not match" in broken["failures"][0]
    finally:
        gateway.stop()
