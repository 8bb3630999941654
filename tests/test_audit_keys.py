"""The first ten minutes of tamper evidence, and who may read the files that hold it.

- ``custos init`` makes the audit signing key beside a SQLite store (as it makes the token hash
  key); a gateway on that store signs checkpoints without further setup, and ``custos audit
  verify`` passes;
- ``custos audit verify`` fails a log that no key ever signed (``--allow-unsigned`` accepts it);
- ``custos audit keys generate`` writes a PEM (0600) and refuses to overwrite without --force;
- every file holding records or keys (store, WAL, key files, spool, exports, what the CLI
  writes) is created 0600, and directories the gateway creates for them 0700, under a 022
  umask.
"""

from __future__ import annotations

import os
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from custos.audit.log.checkpoint import load_signer
from tests.audit_helpers import eventually, query
from tests.conftest import CUSTOS, MOCK_KEY, ROOT, TOKEN_KEY, GatewayProcess, MockProvider
from tests.limits_helpers import provider_config

AUDIT = """
audit:
  checkpoint_interval_s: 0.2
  checkpoint_export: ./checkpoints/exported.txt
  spool: {path: ./spool/audit}
  export:
    - jsonl: {path: ./exports/audit.jsonl}
"""


def config(mock_url: str) -> str:
    return provider_config(mock_url) + textwrap.dedent(AUDIT)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, which alone would give 0644 files: children inherit it."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUSTOS_TEST_MOCK_KEY": MOCK_KEY, "CUSTOS_TEST_TOKEN_KEY": TOKEN_KEY}
    return subprocess.run(
        [*CUSTOS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def chat(gw: GatewayProcess) -> str:
    body = {"model": "mock/m", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{gw.base_url}/chat/completions", headers=gw.headers, json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-custos-request-id"]


def checkpoint_sizes(db: Path) -> list[int]:
    return [r["size"] for r in query(f"sqlite:///{db}", "SELECT size FROM audit_checkpoints")]


def assert_private(root: Path, names: list[str]) -> None:
    """Each of ``names`` (relative to ``root``) and every file of the spool is 0600; the
    directories the gateway made for the spool and the exports are 0700."""
    spool = root / "spool" / "audit"
    names = names + [str(p.relative_to(root)) for p in spool.iterdir() if p.is_file()]
    found = {name: oct(mode(root / name)) for name in names if (root / name).exists()}
    assert set(names) - found.keys() <= {"custos.db-wal", "custos.db-shm"}  # gone at close
    assert found == dict.fromkeys(found, oct(0o600))
    dirs = {d: oct(mode(root / d)) for d in ("spool/audit", "exports")}
    assert dirs == dict.fromkeys(dirs, oct(0o700))


def test_init_makes_the_signing_key_and_every_file_is_private(
    mock_provider: MockProvider, tmp_path: Path, umask_022: None
):
    (tmp_path / "custos.yaml").write_text(config(mock_provider.url))
    init = cli(tmp_path, "init", "--config", "custos.yaml", "--email", "ops@example.com")
    assert init.returncode == 0, init.stderr
    key_file = tmp_path / "custos.db.signing-key.pem"
    vkey = load_signer("custos/audit/key1", str(key_file)).verifier.vkey
    assert f"its public key: {vkey}" in init.stderr

    gw = GatewayProcess(config(mock_provider.url), tmp_path)
    try:
        request_id = chat(gw)
        assert eventually(lambda: checkpoint_sizes(tmp_path / "custos.db"), bool)
        verify = cli(tmp_path, "audit", "verify", "--store", "sqlite:///custos.db",
                     "--public-key", vkey)  # fmt: skip
        assert verify.returncode == 0, verify.stderr
        assert "0/0 checkpoints" not in verify.stdout
        out = tmp_path / "out"
        out.mkdir()
        exported = cli(tmp_path, "audit", "export", "--url", gw.url, "--token", gw.token,
                       "-o", "out/export.jsonl")  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        [event] = [r["event_id"] for r in query(
            "sqlite:///" + str(tmp_path / "custos.db"),
            "SELECT event_id FROM audit_events WHERE event_type = 'llm.call'")]  # fmt: skip
        proved = cli(tmp_path, "audit", "prove", "--store", "sqlite:///custos.db",
                     "--event", event, "-o", "out/proof.json")  # fmt: skip
        assert proved.returncode == 0, proved.stderr
        assert request_id in (out / "export.jsonl").read_text()
    finally:
        gw.stop()

    assert_private(tmp_path, ["custos.db.signing-key.pem", "checkpoints/exported.txt",
                              "out/export.jsonl", "out/proof.json"])  # fmt: skip
    assert mode(tmp_path / "checkpoints") == 0o700


def test_token_and_content_key_files_beside_the_store_are_private(tmp_path: Path, umask_022):
    """Without identity.token_hash_key, init makes ``<db>.key`` beside the store."""
    done = cli(tmp_path, "init", "--store", "sqlite:///keys/custos.db")
    assert done.returncode == 0, done.stderr
    files = {p.name: oct(mode(p)) for p in (tmp_path / "keys").iterdir()}
    assert files == dict.fromkeys(files, oct(0o600))
    assert mode(tmp_path / "keys") == 0o700
    assert {"custos.db", "custos.db.key", "custos.db.signing-key.pem"} <= files.keys()


def test_verify_fails_a_log_no_key_ever_signed(
    mock_provider: MockProvider, tmp_path: Path, umask_022: None
):
    gw = GatewayProcess(config(mock_provider.url), tmp_path)  # no custos init: no key beside
    try:
        chat(gw)
        assert "not signed" in gw.log()
    finally:
        gw.stop()
    assert_private(tmp_path, ["custos.db", "custos.db-wal", "custos.db-shm",
                              "exports/audit.jsonl"])  # fmt: skip
    verify = cli(tmp_path, "audit", "verify", "--store", "sqlite:///custos.db")
    assert verify.returncode == 1
    assert "the log is not signed" in verify.stderr
    assert "custos audit keys generate" in verify.stderr
    allowed = cli(tmp_path, "audit", "verify", "--store", "sqlite:///custos.db",
                  "--allow-unsigned")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr


def test_keys_generate_writes_a_private_pem_and_keeps_an_existing_one(
    tmp_path: Path, umask_022: None
):
    target = tmp_path / "keys" / "audit.pem"
    made = cli(ROOT, "audit", "keys", "generate", str(target), "--name", "acme/audit/k1")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == load_signer("acme/audit/k1", str(target)).verifier.vkey
    assert made.stdout.startswith("acme/audit/k1+")
    assert mode(target) == 0o600 and mode(target.parent) == 0o700
    first = target.read_bytes()

    again = cli(ROOT, "audit", "keys", "generate", str(target))
    assert again.returncode == 1 and "exists" in again.stderr
    assert target.read_bytes() == first

    forced = cli(ROOT, "audit", "keys", "generate", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert target.read_bytes() != first and mode(target) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["audit.pem"]


def test_verify_refuses_unreadable_inputs_without_a_traceback(tmp_path: Path):
    store = f"sqlite:///{tmp_path / 'custos.db'}"
    missing = cli(ROOT, "audit", "verify", "--store", store,
                  "--checkpoints", str(tmp_path / "absent.txt"))  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.startswith("custos: ") and "absent.txt" in missing.stderr
    bad_key = cli(ROOT, "audit", "verify", "--store", store, "--public-key", "not-a-vkey")
    assert bad_key.returncode == 2
    assert bad_key.stderr.startswith("custos: ") and "verifier key" in bad_key.stderr
    for result in (missing, bad_key):
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "custos.db").exists()  # refused before the store was opened
