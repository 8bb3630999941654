"""Three replicas on one PostgreSQL and one Redis, as a Kubernetes Deployment runs them.

Across the three: rate limits exact, budgets within their stated bound (docs/architecture.md,
"the overshoot bound": ``L`` exactly when every reservation covers its call), revocation seen by
all within a second, one audit sequencer and a new one when it is killed, a config revision
rolled out to all (through a ConfigMap-style ``..data`` swap), a replica stopped or killed
mid-stream, Redis down (rate limits ``fail_open``, budgets ``fail_closed``) and back, a load
run whose totals match the records exactly, and at the end every request's one record and
``custos audit verify`` passing.

Redis is the machine's, reached through a ``TCPProxy`` the tests stop and start ("Redis went
away"), with a key prefix of this module's; PostgreSQL is a schema of this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from custos.audit.log.checkpoint import load_signer
from custos.audit.log.sequencer import LOCK_CLASS
from tests.audit_helpers import eventually, query, stored_records
from tests.cluster_helpers import (
    ClusterStore,
    body,
    configmap_mount,
    configmap_update,
    new_cluster_store,
)
from tests.conftest import CUSTOS, MOCK_KEY, ROOT, TOKEN_KEY, GatewayProcess, MockProvider
from tests.limits_helpers import wait_for
from tests.store_fixtures import REDIS_URL, drop_pg_schema
from tests.tcp_proxy import TCPProxy

REPLICAS = 3
KEY_NAME = "custos/audit/cluster"
#: µ$ per token: 1 in, 10 out (as in tests/limits_helpers.py).
PRICES = "{input_per_mtok: 1, output_per_mtok: 10}"
STREAM_MODEL = "m+chunks=40+chunk_delay_ms=50"
CAPPED_MICROS = 2000


def cluster_config(mock_url: str, cluster: ClusterStore, redis: str, key: Path, rpm: int) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        state:
          store: "{cluster.url}"
          counters: "{redis}"
          counters_prefix: "{cluster.prefix}"
        identity:
          token_hash_key: ${{env:CUSTOS_TEST_TOKEN_KEY}}
        audit:
          signing_key: {key}
          signing_key_name: {KEY_NAME}
          checkpoint_interval_s: 0.5
        access:
          - {{id: everyone, subjects: ["*"], models: ["*"]}}
        providers:
          mock:
            type: openai
            base_url: {mock_url}/v1
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            timeout_s: 10
            models:
              m: {PRICES}
              other: {PRICES}
              plain: {PRICES}
              guarded: {PRICES}
              load-limited: {PRICES}
              load-budgeted: {PRICES}
              "{STREAM_MODEL}": {PRICES}
              "m+words=80": {PRICES}
        limits: {{default_output_tokens: 10}}
        rate_limits:
          - {{id: other-rpm, when: {{models: [mock/other]}}, limit_to: {rpm},
              unit: requests_per_minute}}
          - {{id: load-rpm, when: {{models: [mock/load-limited]}}, limit_to: 100,
              unit: requests_per_minute}}
        budgets:
          - {{id: capped, when: {{models: [mock/m]}}, limit_usd: {CAPPED_MICROS / 1e6},
              period: day}}
          - {{id: guarded, when: {{models: [mock/guarded]}}, limit_usd: 100, period: day}}
          - {{id: load-budget, when: {{models: [mock/load-budgeted]}}, limit_usd: 0.004,
              period: day}}
          - {{id: loose, when: {{models: ["mock/m+words=80"]}}, limit_usd: 0.003, period: day}}
        """
    )


@dataclass
class Cluster:
    mock_url: str
    store: ClusterStore
    redis: TCPProxy
    key: Path
    vkey: str
    dirs: list[Path]
    replicas: list[GatewayProcess] = field(default_factory=list)
    rpm: int = 40
    #: The request id of every chat response the tests received (audit completeness).
    sent: list[str] = field(default_factory=list)

    def config(self) -> str:
        redis = f"redis://127.0.0.1:{self.redis.port}/0"
        return cluster_config(self.mock_url, self.store, redis, self.key, self.rpm)

    def start(self, index: int) -> GatewayProcess:
        """Replica ``index`` on its own directory (its spool survives a restart)."""
        gw = GatewayProcess(self.config(), self.dirs[index])
        gw.token = self.store.admin_token
        return gw

    def fire(self, count: int, request: dict[str, Any], token: str | None = None,
             replicas: list[GatewayProcess] | None = None) -> list[httpx.Response]:  # fmt: skip
        """``count`` concurrent requests, round-robin over the replicas; remembers their ids."""
        targets = replicas or self.replicas
        headers = {"authorization": f"Bearer {token or self.store.admin_token}"}

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                urls = [f"{targets[i % len(targets)].base_url}/chat/completions"
                        for i in range(count)]  # fmt: skip
                calls = [client.post(url, headers=headers, json=request) for url in urls]
                return list(await asyncio.gather(*calls))

        responses = asyncio.run(run())
        self.sent += [r.headers["x-custos-request-id"] for r in responses]
        return responses

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.store.admin_token}"}
        return httpx.request(method, f"{self.replicas[0].url}/admin/v1{path}", headers=headers,
                             timeout=10, **kw)  # fmt: skip


def _redis_target() -> tuple[str, int]:
    parsed = urlparse(REDIS_URL)
    return parsed.hostname or "127.0.0.1", parsed.port or 6379


@pytest.fixture(scope="module")
def cluster(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    store = new_cluster_store("three")
    redis = TCPProxy(*_redis_target())
    root = tmp_path_factory.mktemp("cluster")
    key = root / "signing-key.pem"
    made = subprocess.run([*CUSTOS, "audit", "keys", "generate", str(key), "--name", KEY_NAME],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    vkey = load_signer(KEY_NAME, str(key)).verifier.vkey
    dirs = [root / f"replica-{n}" for n in range(REPLICAS)]
    found = Cluster(mock_provider.url, store, redis, key, vkey, dirs)
    for directory in dirs:  # each replica's config is mounted as a ConfigMap would be
        configmap_mount(directory, "custos.yaml", found.config())
    found.replicas = [found.start(n) for n in range(REPLICAS)]
    yield found
    for gw in found.replicas:
        gw.stop()
    redis.close()
    asyncio.run(drop_pg_schema(store.schema))


def _status_on(gw: GatewayProcess, token: str) -> int:
    response = httpx.post(f"{gw.base_url}/chat/completions", json=body("mock/plain"),
                          headers={"authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    return response.status_code


def test_a_rate_limit_is_exact_across_three_replicas(cluster: Cluster) -> None:
    statuses = [r.status_code for r in cluster.fire(60, body("mock/other"))]
    assert statuses.count(200) == 40 and statuses.count(429) == 20
    admitted_by = Counter(s for i, s in enumerate(statuses) if i % REPLICAS == 0)
    assert admitted_by[200] > 0  # the first replica admitted some: one counter for all


def test_a_budget_holds_its_bound_across_three_replicas(cluster: Cluster) -> None:
    """Every call here is capped by max_tokens and its input estimated from above, so each
    reservation covers its call and the stated bound is the limit itself."""
    responses = cluster.fire(90, body("mock/m", content="budget " * 3))
    statuses = Counter(r.status_code for r in responses)
    assert statuses[200] > 0 and statuses[429] > 0 and set(statuses) == {200, 429}
    admitted = [r.json()["usage"] for r in responses if r.status_code == 200]
    cost = sum(u["prompt_tokens"] + 10 * u["completion_tokens"] for u in admitted)

    def settled() -> dict[str, Any]:
        [found] = cluster.admin("GET", "/budgets", params={"budget": "capped"}).json()["data"]
        return found

    spent = eventually(settled, lambda b: b["reserved_micros"] == 0)
    assert spent["spent_micros"] == cost <= CAPPED_MICROS


def test_a_budget_overshoots_at_most_by_what_reservations_fell_short(cluster: Cluster) -> None:
    """Calls without max_tokens reserve limits.default_output_tokens (10) and produce 80: each
    is charged more than it reserved. The stated bound: spent ≤ L + Σ max(0, c_i - r_i) over
    the calls in flight when the budget filled (here bounded by all admitted calls)."""
    uncapped = {"model": "mock/m+words=80", "messages": [{"role": "user", "content": "over"}]}
    responses = cluster.fire(45, uncapped)
    assert {r.status_code for r in responses} <= {200, 429}
    ids = {r.headers["x-custos-request-id"] for r in responses if r.status_code == 200}

    def admitted() -> list[dict[str, Any]]:
        return [r for r in stored_records(cluster.store.url, "llm.call") if r["request_id"] in ids]

    records = eventually(admitted, lambda found: len(found) == len(ids))
    shortfall = sum(max(0, r["cost_micros"] - r["limits.reserved_micros"]) for r in records)
    charged = sum(r["cost_micros"] for r in records)

    def settled() -> dict[str, Any]:
        [found] = cluster.admin("GET", "/budgets", params={"budget": "loose"}).json()["data"]
        return found

    spent = eventually(settled, lambda b: b["reserved_micros"] == 0)["spent_micros"]
    assert spent == charged
    assert 3000 < spent <= 3000 + shortfall  # over the limit, and within the bound


def test_revocation_is_seen_by_every_replica_within_a_second(cluster: Cluster) -> None:
    _revoke_and_time(cluster, "revoked-in-cluster")


def _revoke_and_time(cluster: Cluster, name: str) -> None:
    """A new token, seen working on every replica, revoked through one: refused by all within
    a second."""
    made = cluster.admin("POST", "/tokens", json={"name": name}).json()
    for gw in cluster.replicas:
        assert wait_for(lambda gw=gw: _status_on(gw, made["token"]) == 200, timeout=2)
    revoked_at = time.monotonic()
    assert cluster.admin("POST", f"/tokens/{made['record']['id']}/revoke").status_code == 200
    for gw in cluster.replicas:
        assert wait_for(lambda gw=gw: _status_on(gw, made["token"]) == 401, timeout=5)
    elapsed = time.monotonic() - revoked_at
    assert elapsed < 1.0, f"the last replica refused the token only after {elapsed:.3f}s"


def _leader(cluster: Cluster) -> tuple[int, int]:
    """The leading sequencer's process id (its name is ``host:pid:…``) and epoch."""
    [head] = query(cluster.store.url, "SELECT leader, epoch FROM audit_tree_head WHERE id = 1")
    return int(head["leader"].split(":")[1]), int(head["epoch"])


def _lock_holders(cluster: Cluster) -> int:
    rows = query(
        cluster.store.url,
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND objsubid = 2 AND classid = $1::bigint::oid"
        " AND objid = (hashtext($2)::bigint & 4294967295)::oid",
        LOCK_CLASS,
        cluster.store.schema,
    )
    return int(rows[0]["n"])


def _unsequenced(cluster: Cluster) -> int:
    return int(query(cluster.store.url, "SELECT count(*) AS n FROM audit_pending")[0]["n"])


def test_one_sequencer_is_elected_and_another_when_it_is_killed(cluster: Cluster) -> None:
    assert _lock_holders(cluster) == 1
    pids = [gw.process.pid for gw in cluster.replicas]
    leader, epoch = _leader(cluster)
    assert leader in pids
    index = pids.index(leader)
    time.sleep(0.3)  # the leader's replica is idle: its spool holds nothing unsent
    cluster.replicas[index].process.send_signal(signal.SIGKILL)
    cluster.replicas[index].stop()
    survivors = [gw for i, gw in enumerate(cluster.replicas) if i != index]
    taken, new_epoch = eventually(lambda: _leader(cluster), lambda h: h[0] != leader, timeout=15)
    assert taken in [gw.process.pid for gw in survivors] and new_epoch > epoch
    assert _lock_holders(cluster) == 1
    # The new leader sequences what the survivors record.
    served = cluster.fire(12, body("mock/guarded"), replicas=survivors)
    assert {r.status_code for r in served} == {200}
    assert eventually(lambda: _unsequenced(cluster), lambda n: n == 0) == 0
    # The killed replica comes back (its pod restarted) on its directory, and follows.
    cluster.replicas[index] = cluster.start(index)
    assert _leader(cluster) == (taken, new_epoch) and _lock_holders(cluster) == 1


def test_a_config_revision_is_rolled_out_to_every_replica(cluster: Cluster) -> None:
    before = {gw.revision() for gw in cluster.replicas}
    assert len(before) == 1
    cluster.rpm = 45
    for directory in cluster.dirs:
        configmap_update(directory, "custos.yaml", cluster.config())

    def rolled_out() -> bool:
        return all(gw.revision() not in before for gw in cluster.replicas)

    assert wait_for(rolled_out, timeout=10), [gw.log()[-2000:] for gw in cluster.replicas]
    assert len({gw.revision() for gw in cluster.replicas}) == 1
    for gw in cluster.replicas:
        response = httpx.post(f"{gw.base_url}/chat/completions", json=body("mock/other"),
                              headers=gw.headers, timeout=10)  # fmt: skip
        cluster.sent.append(response.headers["x-custos-request-id"])
        assert response.headers.get("x-ratelimit-limit-requests") == "45"


def _stream(gw: GatewayProcess, action: Any) -> tuple[str, bytes]:
    """A stream through ``gw``; ``action()`` once its first chunk arrived; (request id, rest)."""
    request = body(f"mock/{STREAM_MODEL}", stream=True, max_tokens=60)
    rest = b""
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", headers=gw.headers,
                      json=request, timeout=30) as response:  # fmt: skip
        request_id = response.headers["x-custos-request-id"]
        chunks = response.iter_raw()
        next(chunks)
        action()
        with contextlib.suppress(httpx.HTTPError):  # a replica killed: the stream is cut
            rest = b"".join(chunks)
    return request_id, rest


def _calls(store_url: str, request_id: str) -> list[dict[str, Any]]:
    return [r for r in stored_records(store_url, "llm.call") if r["request_id"] == request_id]


def test_a_replica_stopped_mid_stream_finishes_and_records_it(cluster: Cluster) -> None:
    """A pod being deleted: SIGTERM; the stream in flight ends normally and is recorded once."""
    gw = cluster.replicas[1]
    request_id, rest = _stream(gw, lambda: gw.process.send_signal(signal.SIGTERM))
    assert b"data: [DONE]" in rest
    # uvicorn re-raises the signal once it has shut down gracefully: "terminated by SIGTERM".
    assert gw.process.wait(40) in (0, -signal.SIGTERM)
    gw.stop()
    cluster.sent.append(request_id)
    [record] = eventually(lambda: _calls(cluster.store.url, request_id), bool)
    assert record["http.response.status_code"] == 200 and record["outcome"] == "served"
    cluster.replicas[1] = cluster.start(1)


def test_a_replica_killed_mid_stream_is_replaced_and_the_rest_recorded(cluster: Cluster) -> None:
    """kill -9 mid-stream: the client sees the stream cut; the calls the replica had finished
    are recorded (its spool is replayed when it comes back). The cut stream itself cannot be
    recorded by the process that died (docs/deployment.md)."""
    gw = cluster.replicas[2]
    finished = cluster.fire(6, body("mock/guarded"), replicas=[gw])
    assert {r.status_code for r in finished} == {200}
    request_id, rest = _stream(gw, gw.process.kill)
    assert b"data: [DONE]" not in rest
    gw.stop()
    cluster.replicas[2] = cluster.start(2)
    ids = {r.headers["x-custos-request-id"] for r in finished}
    recorded = eventually(
        lambda: {r["request_id"] for r in stored_records(cluster.store.url, "llm.call")} & ids,
        lambda found: found == ids,
    )
    assert recorded == ids
    assert not [r for r in _calls(cluster.store.url, request_id) if r["outcome"] == "served"]


def test_redis_down_rate_limits_fail_open_budgets_fail_closed_then_back(cluster: Cluster) -> None:
    cluster.redis.stop()
    try:
        for gw in cluster.replicas:
            limited = cluster.fire(1, body("mock/other"), replicas=[gw])[0]
            assert limited.status_code == 200, limited.text
            assert "x-ratelimit-limit-requests" not in limited.headers  # nothing counted
            budgeted = cluster.fire(1, body("mock/guarded"), replicas=[gw])[0]
            assert budgeted.status_code == 503
            assert budgeted.json()["error"]["code"] == "budget_unavailable"
    finally:
        cluster.redis.start()
    for gw in cluster.replicas:
        assert wait_for(lambda gw=gw: cluster.fire(1, body("mock/guarded"), replicas=[gw])[0]
                        .status_code == 200, timeout=10)  # fmt: skip
        limited = cluster.fire(1, body("mock/other"), replicas=[gw])[0]
        assert limited.headers.get("x-ratelimit-limit-requests") == str(cluster.rpm)
    # Invalidations travel through Redis too: they flow again once it is back.
    _revoke_and_time(cluster, "revoked-after-redis")


def test_a_load_run_across_three_replicas_matches_the_records_exactly(cluster: Cluster) -> None:
    """Budgets and rate limits under concurrent load: what callers were admitted and charged
    is exactly what the records say, and what the budget says it spent."""
    first = len(cluster.sent)
    responses = []
    for _ in range(3):  # three waves of 80: 240 requests, half rate-limited, half budgeted
        responses += cluster.fire(40, body("mock/load-limited"))
        responses += cluster.fire(40, body("mock/load-budgeted", content="load " * 5))
    ids = cluster.sent[first:]
    records = eventually(
        lambda: {
            r["request_id"]: r
            for r in stored_records(cluster.store.url, "llm.call")
            if r["request_id"] in set(ids)
        },
        lambda found: len(found) == len(ids),
    )
    assert len(records) == len(ids) == 240
    by_model: dict[str, Counter[int]] = {"mock/load-limited": Counter(),
                                         "mock/load-budgeted": Counter()}  # fmt: skip
    for response in responses:
        record = records[response.headers["x-custos-request-id"]]
        assert record["http.response.status_code"] == response.status_code
        by_model[record["gen_ai.request.model"]][response.status_code] += 1
    assert by_model["mock/load-limited"] == Counter({200: 100, 429: 20})
    budgeted = [r for r in records.values() if r["gen_ai.request.model"] == "mock/load-budgeted"]
    charged = sum(r["cost_micros"] or 0 for r in budgeted)
    budgeted_ids = {r["request_id"] for r in budgeted}
    admitted = [
        r
        for r in responses
        if r.status_code == 200 and r.headers["x-custos-request-id"] in budgeted_ids
    ]
    from_clients = sum(u["prompt_tokens"] + 10 * u["completion_tokens"]
                       for u in (r.json()["usage"] for r in admitted))  # fmt: skip
    assert charged == from_clients <= 4000  # the stated bound: every reservation covers its call
    assert by_model["mock/load-budgeted"][429] > 0

    def budget() -> dict[str, Any]:
        [found] = cluster.admin("GET", "/budgets", params={"budget": "load-budget"}).json()["data"]
        return found

    settled = eventually(budget, lambda b: b["reserved_micros"] == 0)
    assert settled["spent_micros"] == charged


def test_every_request_has_one_record_and_the_log_verifies(cluster: Cluster) -> None:
    """Last: every chat response any test received has exactly one record, in a log that
    verifies, checkpoints signed by the cluster's key included."""
    wanted = Counter(cluster.sent)
    assert set(wanted.values()) == {1}

    def found() -> Counter[str]:
        records = stored_records(cluster.store.url, "llm.call")
        return Counter(r["request_id"] for r in records if r["request_id"] in wanted)

    assert eventually(found, lambda c: c == wanted, timeout=15) == wanted
    assert eventually(lambda: _unsequenced(cluster), lambda n: n == 0) == 0
    time.sleep(1.0)  # a checkpoint over the last records
    env = {**os.environ, "CUSTOS_TEST_MOCK_KEY": MOCK_KEY, "CUSTOS_TEST_TOKEN_KEY": TOKEN_KEY}
    verify = subprocess.run(
        [*CUSTOS, "audit", "verify", "--store", cluster.store.url, "--public-key", cluster.vkey],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
