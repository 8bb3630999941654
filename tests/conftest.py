"""Shared fixtures: a real mock provider and real gateway processes on loopback ports.

Tests talk to the gateway the way users do, over HTTP with the official SDKs. The gateway runs in
its own process (``custos serve``), so what is tested is what is shipped, signals included.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CUSTOS = [sys.executable, "-m", "custos.cli"]
MOCK_KEY = "mock-key-for-tests"
#: The token hash key every test gateway uses (``identity.token_hash_key``).
TOKEN_KEY = "test-token-hash-key-0123456789abcdef"
ADMIN_EMAIL = "admin@custos.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class MockProvider:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*CUSTOS, "mock-provider", "--port", str(self.port), "--api-key", MOCK_KEY],
            cwd=ROOT,
        )
        wait_http(f"{self.url}/_mock/stats", self.process)

    def requests(self) -> list[dict]:
        return httpx.get(f"{self.url}/_mock/requests").json()

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_mock/requests")

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_mock/stats").json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def standard_config(mock_url: str) -> str:
    """Every kind of provider account, each pointing at the mock, with distinct prices."""
    return textwrap.dedent(
        f"""\
        version: 1
        gateway: {{listen: "127.0.0.1:8787", max_body_bytes: 65536}}
        state: {{store: "sqlite:///./custos.db"}}
        identity:
          token_hash_key: ${{env:CUSTOS_TEST_TOKEN_KEY}}
        access:
          - id: everyone-everything
            subjects: ["*"]
            models: ["*"]
        providers:
          openai-main:
            type: openai
            base_url: {mock_url}/v1
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            region: us
            timeout_s: 2
            models:
              gpt-5.5: {{input_per_mtok: 1.25, output_per_mtok: 10.0, cached_input_per_mtok: 0.125}}
              gpt-5.5+status=429: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+status=500: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+status=503: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+status=401: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+status=400: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+malformed: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+latency_ms=5000: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+drop_after=3: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+no_usage: {{input_per_mtok: 1, output_per_mtok: 1}}
              gpt-5.5+chunks=200+chunk_delay_ms=50: {{input_per_mtok: 1, output_per_mtok: 1}}
              text-embedding-3-small: {{input_per_mtok: 0.02}}
          azure-eu:
            type: azure_openai
            base_url: {mock_url}
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            api_version: "2024-10-21"
            region: eu
            models:
              gpt-5.5: {{deployment: gpt55-eu, input_per_mtok: 2.5, output_per_mtok: 20.0}}
              text-embedding-3-small: {{deployment: emb-eu, input_per_mtok: 0.04}}
          claude-main:
            type: anthropic
            base_url: {mock_url}
            api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
            region: us
            models:
              claude-sonnet-4.5:
                {{input_per_mtok: 3.0, output_per_mtok: 15.0, cached_input_per_mtok: 0.3}}
              claude-sonnet-4.5+no_usage: {{input_per_mtok: 3.0, output_per_mtok: 15.0}}
          local-vllm:
            type: openai_compatible
            base_url: {mock_url}/v1
            models:
              llama-3.1-8b: {{input_per_mtok: 0.1, output_per_mtok: 0.2}}
        virtual_models:
          chat-default:
            targets: [{{model: openai-main/gpt-5.5+status=503}}, {{model: azure-eu/gpt-5.5}}]
            retry: {{attempts: 2, backoff_ms: 1, on_status: [503]}}
          chat-no-fallback:
            targets: [{{model: openai-main/gpt-5.5+status=400}}, {{model: azure-eu/gpt-5.5}}]
        """
    )


def issue_admin_token(store_url: str) -> str:
    """Create the first admin in the store and return a PAT for it, as ``custos init`` does."""
    from custos.identity.tokens import TokenService
    from custos.state.backends import open_store
    from custos.state.models import Actor

    async def bootstrap() -> str:
        store = await open_store(store_url)
        try:
            actor = Actor.system("tests")
            user = await store.create_user(actor, email=ADMIN_EMAIL, roles=("admin",))
            issued = await TokenService(store, TOKEN_KEY).issue_token(
                actor, kind="pat", principal_id=user.id, name="tests"
            )
            return issued.secret
        finally:
            await store.close()

    return asyncio.run(bootstrap())


OPEN_ACCESS = """access:
  - id: everyone-everything
    subjects: ["*"]
    models: ["*"]
"""


def without_open_access(config_text: str) -> str:
    """``standard_config`` without its allow-everything rule, for tests of access itself."""
    assert OPEN_ACCESS in config_text
    return config_text.replace(OPEN_ACCESS, "")


class GatewayProcess:
    """``custos serve`` on a free port with the given config text.

    When the config keeps its store in ``./custos.db`` (as ``standard_config`` does), an admin
    user and its token are created first: ``token`` authenticates as that admin.
    """

    def __init__(
        self,
        config_text: str,
        tmp_path: Path,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        """``args``: more ``custos serve`` options (``--workers 3``)."""
        self.token = ""
        store = (yaml.safe_load(config_text).get("state") or {}).get("store")
        if store == "sqlite:///./custos.db":
            self.token = issue_admin_token(f"sqlite:///{tmp_path / 'custos.db'}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp_path / "custos.yaml"
        self.config_path.write_text(config_text)
        self.log_path = tmp_path / "gateway.log"
        self._log = self.log_path.open("wb")
        command = [*CUSTOS, "serve", "--config", str(self.config_path), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *args],
            cwd=tmp_path,
            env={
                **os.environ,
                "CUSTOS_TEST_MOCK_KEY": MOCK_KEY,
                "CUSTOS_TEST_TOKEN_KEY": TOKEN_KEY,
                **(env or {}),
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(f"{self.url}/readyz", self.process)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n--- gateway log ---\n{self.log()}") from None

    @property
    def headers(self) -> dict[str, str]:
        """Headers that authenticate as the admin."""
        return {"authorization": f"Bearer {self.token}"}

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def revision(self) -> str:
        return httpx.get(f"{self.url}/readyz").json()["revision"]

    def sighup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics").text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
            if not match or match.group(1) != name:
                continue
            found = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
            if found == wanted:
                return float(match.group(3))
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


@pytest.fixture(scope="session")
def mock_provider() -> Iterator[MockProvider]:
    mock = MockProvider()
    yield mock
    mock.stop()


@pytest.fixture(scope="session")
def gateway(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    yield from serve_gateway(standard_config(mock_provider.url), tmp_path_factory.mktemp("gateway"))


def serve_gateway(config_text: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway fixture's body: the process for the fixture's scope, stopped after it."""
    process = GatewayProcess(config_text, tmp_path)
    yield process
    process.stop()
