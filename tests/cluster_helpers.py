"""Helpers for the tests of several gateways (replicas, workers) on one PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN_EMAIL, TOKEN_KEY, GatewayProcess
from tests.store_fixtures import PG_URL, create_pg_schema, require_pg, with_search_path


@dataclass(frozen=True)
class ClusterStore:
    """A PostgreSQL schema of its own with an admin, and a Redis key prefix of its own."""

    schema: str
    url: str
    admin_token: str
    prefix: str


async def _bootstrap(store_url: str) -> str:
    from custos.admin.bootstrap import bootstrap
    from custos.identity.tokens import TokenService
    from custos.state.backends import open_store

    store = await open_store(store_url)
    try:
        return (await bootstrap(store, TokenService(store, TOKEN_KEY), ADMIN_EMAIL)).secret
    finally:
        await store.close()


def new_cluster_store(name: str) -> ClusterStore:
    asyncio.run(require_pg())
    schema = asyncio.run(create_pg_schema())
    url = with_search_path(PG_URL, schema)
    return ClusterStore(schema, url, asyncio.run(_bootstrap(url)),
                        f"test-{name}-{secrets.token_hex(4)}:")  # fmt: skip


def body(model: str = "mock/m", content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 5,
            "messages": [{"role": "user", "content": content}], **extra}  # fmt: skip


def fire(
    gateways: Sequence[GatewayProcess], token: str, count: int, request: dict[str, Any]
) -> list[httpx.Response]:
    """``count`` concurrent chat requests, spread round-robin over ``gateways``, each on a
    connection of its own (so ``--workers`` spreads them over its processes)."""

    async def one(client: httpx.AsyncClient, gw: GatewayProcess) -> httpx.Response:
        return await client.post(
            f"{gw.base_url}/chat/completions",
            headers={"authorization": f"Bearer {token}", "connection": "close"},
            json=request,
        )

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [one(client, gateways[i % len(gateways)]) for i in range(count)]
            return list(await asyncio.gather(*calls))

    return asyncio.run(run())


def child_pids(parent: int) -> list[int]:
    """The ``--workers`` processes of supervisor ``parent`` (not multiprocessing's tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def configmap_mount(directory: Path, name: str, text: str) -> Path:
    """``directory`` laid out as Kubernetes mounts a ConfigMap: ``name`` is a symlink to
    ``..data/name``, ``..data`` a symlink to a timestamped directory. Returns the file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    _configmap_version(directory, name, text, "..2026_01_01_00_00_00.000000001")
    os.symlink("..2026_01_01_00_00_00.000000001", directory / "..data")
    os.symlink(f"..data/{name}", directory / name)
    return directory / name


def configmap_update(directory: Path, name: str, text: str) -> None:
    """What the kubelet does on a ConfigMap update: a new timestamped directory, ``..data``
    swapped to it by one rename, the old directory removed."""
    old = os.readlink(directory / "..data")
    new = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns()}"
    _configmap_version(directory, name, text, new)
    os.symlink(new, directory / "..data_tmp")
    os.rename(directory / "..data_tmp", directory / "..data")
    shutil.rmtree(directory / old)


def _configmap_version(directory: Path, name: str, text: str, version: str) -> None:
    (directory / version).mkdir()
    (directory / version / name).write_text(text)
