"""Two gateway processes sharing PostgreSQL (store) and Redis (invalidation), as in a cluster."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_EMAIL, TOKEN_KEY, GatewayProcess, MockProvider
from tests.store_fixtures import PG_URL, create_pg_schema, drop_pg_schema, with_search_path

REDIS_URL = "redis://127.0.0.1:6379/0"


def cluster_config(mock_url: str, store_url: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        state: {{store: "{store_url}"}}
        identity:
          token_hash_key: ${{env:CUSTOS_TEST_TOKEN_KEY}}
          invalidation: {REDIS_URL}
        access:
          - {{subjects: ["*"], models: ["*"]}}
        providers:
          openai-main:
            type: openai
            base_url: {mock_url}/v1
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            models:
              gpt-5.5: {{input_per_mtok: 1.25, output_per_mtok: 10.0}}
        """
    )


async def _bootstrap(store_url: str) -> str:
    from custos.admin.bootstrap import bootstrap
    from custos.identity.tokens import TokenService
    from custos.state.backends import open_store

    store = await open_store(store_url)
    try:
        done = await bootstrap(store, TokenService(store, TOKEN_KEY), ADMIN_EMAIL)
        return done.secret
    finally:
        await store.close()


@pytest.fixture(scope="module")
def cluster(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess, str]]:
    schema = asyncio.run(create_pg_schema())
    store_url = with_search_path(PG_URL, schema)
    admin_token = asyncio.run(_bootstrap(store_url))
    config = cluster_config(mock_provider.url, store_url)
    first = GatewayProcess(config, tmp_path_factory.mktemp("replica-a"))
    second = GatewayProcess(config, tmp_path_factory.mktemp("replica-b"))
    yield first, second, admin_token
    first.stop()
    second.stop()
    asyncio.run(drop_pg_schema(schema))


def _admin(gw: GatewayProcess, token: str, method: str, path: str, **kw: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"}
    return httpx.request(method, f"{gw.url}/admin/v1{path}", headers=headers, timeout=10, **kw)


def _chat_status(gw: GatewayProcess, token: str) -> int:
    response = httpx.post(
        f"{gw.base_url}/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    return response.status_code


def _new_token(gw: GatewayProcess, admin_token: str, name: str) -> dict:
    response = _admin(gw, admin_token, "POST", "/tokens", json={"name": name})
    assert response.status_code in (200, 201), response.text
    return response.json()


def _wait_for_status(gw: GatewayProcess, token: str, status: int, timeout: float) -> float:
    """Seconds until ``token`` gets ``status`` from ``gw``; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _chat_status(gw, token) == status:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"still not {status} after {timeout}s")


def test_a_token_made_on_one_replica_works_on_the_other(cluster) -> None:
    first, second, admin = cluster
    made = _new_token(first, admin, "made-on-a")
    _wait_for_status(second, made["token"], 200, timeout=1.0)


def test_revoked_through_one_replica_is_refused_by_the_other_within_a_second(cluster) -> None:
    first, second, admin = cluster
    made = _new_token(first, admin, "to-revoke")
    _wait_for_status(second, made["token"], 200, timeout=1.0)
    revoked_at = time.monotonic()
    response = _admin(first, admin, "POST", f"/tokens/{made['record']['id']}/revoke")
    assert response.status_code == 200, response.text
    _wait_for_status(second, made["token"], 401, timeout=5.0)
    elapsed = time.monotonic() - revoked_at
    assert elapsed < 1.0, f"the other replica refused the token only after {elapsed:.3f}s"
    assert _chat_status(first, made["token"]) == 401


def test_rotation_grace_period_then_only_the_new_token(cluster) -> None:
    first, second, admin = cluster
    old = _new_token(first, admin, "to-rotate")
    _wait_for_status(second, old["token"], 200, timeout=1.0)
    response = _admin(
        first, admin, "POST", f"/tokens/{old['record']['id']}/rotate", json={"grace_seconds": 2}
    )
    assert response.status_code in (200, 201), response.text
    new = response.json()["token"]
    assert new != old["token"]
    for gw in (first, second):
        _wait_for_status(gw, new, 200, timeout=1.0)
        assert _chat_status(gw, old["token"]) == 200  # both work during the grace period
    time.sleep(2.2)
    for gw in (first, second):
        assert _chat_status(gw, old["token"]) == 401
        assert _chat_status(gw, new) == 200
