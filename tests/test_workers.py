"""``custos serve --workers N``: N processes on one port, each a full replica sharing PostgreSQL
and Redis; SIGHUP passed on, a dead worker replaced, a graceful stop of all; refused where
the state could not be shared."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.audit_helpers import eventually, stored_records
from tests.cluster_helpers import ClusterStore, alive, body, child_pids, fire, new_cluster_store
from tests.conftest import CUSTOS, ROOT, GatewayProcess, MockProvider
from tests.limits_helpers import provider_config, wait_for, with_rules
from tests.store_fixtures import REDIS_URL, drop_pg_schema

WORKERS = 3
RULES = """
rate_limits:
  - {id: other-per-minute, when: {models: [mock/other]}, limit_to: 30, unit: requests_per_minute}
"""


def workers_config(mock_url: str, cluster: ClusterStore, rules: str = RULES) -> str:
    config = provider_config(
        mock_url, store=cluster.url, counters=REDIS_URL, counters_prefix=cluster.prefix
    )
    return with_rules(config, rules)


@pytest.fixture(scope="module")
def served(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, ClusterStore]]:
    cluster = new_cluster_store("workers")
    # --no-watch: a config change reaches the workers only through the supervisor's SIGHUP.
    gw = GatewayProcess(
        workers_config(mock_provider.url, cluster),
        tmp_path_factory.mktemp("workers"),
        args=("--workers", str(WORKERS), "--no-watch"),
    )
    gw.token = cluster.admin_token
    assert wait_for(lambda: gw.log().count("is serving") == WORKERS, timeout=30), gw.log()
    yield gw, cluster
    gw.stop()
    asyncio.run(drop_pg_schema(cluster.schema))


def _instances(store_url: str, request_ids: set[str]) -> set[str]:
    def calls() -> list[dict]:
        return [r for r in stored_records(store_url, "llm.call") if r["request_id"] in request_ids]

    records = eventually(calls, lambda found: len(found) == len(request_ids))
    assert len(records) == len(request_ids)
    return {r["gateway.instance"] for r in records}


def test_every_worker_serves_and_records_under_its_own_instance(served) -> None:
    gw, cluster = served
    assert len(child_pids(gw.process.pid)) == WORKERS
    responses = fire([gw], cluster.admin_token, 90, body())
    assert [r.status_code for r in responses] == [200] * 90
    ids = {r.headers["x-custos-request-id"] for r in responses}
    instances = _instances(cluster.url, ids)
    assert {i.rsplit("/", 1)[1] for i in instances} == {f"worker-{n}" for n in range(WORKERS)}
    # One spool per worker, beside each other in audit.spool.path.
    spool = gw.config_path.parent / "custos-audit-spool"
    assert sorted(p.name for p in spool.iterdir()) == [f"worker-{n}" for n in range(WORKERS)]


def test_a_rate_limit_is_exact_across_the_workers(served) -> None:
    gw, cluster = served
    responses = fire([gw], cluster.admin_token, 45, body("mock/other"))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 30 and statuses.count(429) == 15


def test_a_revoked_token_is_refused_by_every_worker_within_a_second(served) -> None:
    gw, cluster = served
    admin = {"authorization": f"Bearer {cluster.admin_token}"}
    made = httpx.post(f"{gw.url}/admin/v1/tokens", headers=admin, json={"name": "w"}).json()
    # Known to every worker first (each caches what it has seen).
    assert {r.status_code for r in fire([gw], made["token"], 30, body())} == {200}
    revoked = httpx.post(f"{gw.url}/admin/v1/tokens/{made['record']['id']}/revoke", headers=admin)
    assert revoked.status_code == 200
    time.sleep(1.0)
    assert {r.status_code for r in fire([gw], made["token"], 30, body())} == {401}


def test_sighup_reloads_every_worker(served, mock_provider: MockProvider) -> None:
    gw, cluster = served
    before = gw.revision()
    changed = RULES.replace("limit_to: 30", "limit_to: 31")
    gw.config_path.write_text(workers_config(mock_provider.url, cluster, changed))
    time.sleep(0.5)
    assert all(_revision_on_new_connection(gw) == before for _ in range(20))  # --no-watch
    gw.sighup()

    def everywhere() -> bool:
        return all(_revision_on_new_connection(gw) != before for _ in range(30))

    assert wait_for(everywhere, timeout=10)


def _revision_on_new_connection(gw: GatewayProcess) -> str:
    return httpx.get(f"{gw.url}/readyz", headers={"connection": "close"}).json()["revision"]


def test_a_killed_worker_is_replaced(served) -> None:
    gw, cluster = served
    victim = child_pids(gw.process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: "starting a replacement" in gw.log(), timeout=5), gw.log()

    def three_new() -> bool:
        pids = child_pids(gw.process.pid)
        return len(pids) == WORKERS and victim not in pids

    assert wait_for(three_new, timeout=10)
    assert wait_for(lambda: gw.log().count("is serving") == WORKERS + 1, timeout=30), gw.log()
    assert {r.status_code for r in fire([gw], cluster.admin_token, 30, body())} == {200}


def test_sigterm_lets_a_stream_finish_then_stops_every_worker(served) -> None:
    """Last in this module: it stops the fixture's gateway."""
    gw, cluster = served
    pids = child_pids(gw.process.pid)
    stream = body("mock/m+chunks=20+chunk_delay_ms=30", stream=True, max_tokens=40)
    headers = {"authorization": f"Bearer {cluster.admin_token}"}
    with httpx.stream("POST", f"{gw.base_url}/chat/completions", headers=headers, json=stream,
                      timeout=30) as response:  # fmt: skip
        chunks = response.iter_raw()
        next(chunks)
        gw.process.send_signal(signal.SIGTERM)
        rest = b"".join(chunks)
    assert response.status_code == 200 and b"data: [DONE]" in rest
    assert gw.process.wait(40) == 0
    assert not any(alive(pid) for pid in pids)


def test_workers_are_refused_on_state_one_process_holds(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    (tmp_path / "custos.yaml").write_text(provider_config(mock_provider.url))  # SQLite, memory
    done = subprocess.run(
        [*CUSTOS, "serve", "--config", str(tmp_path / "custos.yaml"), "--workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "CUSTOS_TEST_TOKEN_KEY": "k" * 32, "CUSTOS_TEST_MOCK_KEY": "m"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "--workers 2 needs state shared between processes" in done.stderr
    assert "state.store must be PostgreSQL" in done.stderr
    assert "state.counters must be a redis://" in done.stderr
    zero = subprocess.run([*CUSTOS, "serve", "-c", "x.yaml", "--workers", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert zero.returncode == 2 and "from 1 to 256" in zero.stderr


def test_a_worker_that_cannot_start_stops_the_whole(
    mock_provider: MockProvider, tmp_path: Path
) -> None:
    cluster = ClusterStore("none", "postgresql://postgres@127.0.0.1:1/none", "", "test-x:")
    (tmp_path / "custos.yaml").write_text(workers_config(mock_provider.url, cluster))
    started = time.monotonic()
    done = subprocess.run(
        [*CUSTOS, "serve", "--config", "custos.yaml", "--workers", "2", "--port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=90,
        env={**os.environ, "CUSTOS_TEST_TOKEN_KEY": "k" * 32, "CUSTOS_TEST_MOCK_KEY": "m"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "before it could serve; stopping" in done.stderr
    assert time.monotonic() - started < 60


def test_what_workers_require_of_the_config(
    mock_provider: MockProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    from custos.config.loader import parse_config
    from custos.server.workers import SharedStateRequired, require_shared_state

    cluster = ClusterStore("none", "postgresql://postgres@127.0.0.1:1/none", "", "test-x:")
    monkeypatch.setenv("CUSTOS_TEST_TOKEN_KEY", "k" * 32)
    monkeypatch.setenv("CUSTOS_TEST_MOCK_KEY", "m")
    shared = workers_config(mock_provider.url, cluster)
    config = parse_config(shared, source="t").config
    require_shared_state(config, 1)
    require_shared_state(config, 4)  # PostgreSQL, Redis counters, invalidation auto
    memory = parse_config(shared.replace("identity:\n", "identity:\n  invalidation: memory\n"),
                          source="t").config  # fmt: skip
    require_shared_state(memory, 1)  # one process: anything goes
    with pytest.raises(SharedStateRequired, match=r"identity\.invalidation must not be memory"):
        require_shared_state(memory, 2)


def test_a_crash_loop_stops_the_supervisor() -> None:
    from custos.server.workers import MAX_RESTARTS, Supervisor

    supervisor = Supervisor("custos.yaml", listener=None, workers=2)  # type: ignore[arg-type]
    assert all(supervisor._may_restart() for _ in range(MAX_RESTARTS))
    assert not supervisor._may_restart()
