"""Hot reload of the config file, each test against its own ``custos serve`` process.

A changed file is applied without dropping a request; a request keeps the revision it started
with; a file that fails validation (or cannot even be parsed) is refused, the log says why with
path and line, the old revision keeps serving, and a later fix is applied; an edit that changes
nothing changes no revision.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

import tests.conftest as conftest
from custos.config.loader import revision_of
from tests.audit_helpers import query
from tests.conftest import GatewayProcess

SLOW = "gpt-5.5+latency_ms=300"
STREAM = "gpt-5.5+chunks=20+chunk_delay_ms=20"
CLAUDE_STREAM = "claude-sonnet-4.5+chunks=20+chunk_delay_ms=20"
LONG_STREAM = "gpt-5.5+chunks=100+chunk_delay_ms=20"
LONG_WAIT = "gpt-5.5+latency_ms=1500"
WORDS = 20  # the mock's default reply length


def config_text(
    mock_url: str, extra_models: tuple[str, ...] = (), *, drop: tuple[str, ...] = ()
) -> str:
    models = [m for m in ("gpt-5.5", SLOW, STREAM, LONG_STREAM, LONG_WAIT) if m not in drop]
    models += list(extra_models)
    model_lines = "".join(f"      {m}: {{input_per_mtok: 1, output_per_mtok: 2}}\n" for m in models)
    return (
        textwrap.dedent(
            f"""\
            version: 1
            gateway: {{listen: "127.0.0.1:8787", max_body_bytes: 65536}}
            state: {{store: "sqlite:///./custos.db"}}
            identity:
              token_hash_key: ${{env:CUSTOS_TEST_TOKEN_KEY}}
            access:
              - {{subjects: ["*"], models: ["*"]}}
            providers:
              openai-main:
                type: openai
                base_url: {mock_url}/v1
                api_key: ${{env:CUSTOS_TEST_MOCK_KEY}}
                timeout_s: 10
                models:
            """
        )
        + model_lines
        + "  claude-main:\n"
        "    type: anthropic\n"
        f"    base_url: {mock_url}\n"
        "    api_key: ${env:CUSTOS_TEST_MOCK_KEY}\n"
        "    models:\n"
        f"      {CLAUDE_STREAM}: {{input_per_mtok: 3, output_per_mtok: 15}}\n"
    )


def replace_atomically(path: Path, text: str) -> None:
    """Write the way editors and Kubernetes do: a new file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def revision_of_text(text: str) -> str:
    return revision_of(yaml.safe_load(text))


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.05)


async def async_wait_until(
    condition: Callable[[], object], timeout: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def own_gateway(mock_provider, tmp_path) -> Iterator[GatewayProcess]:
    process = GatewayProcess(config_text(mock_provider.url), tmp_path)
    yield process
    process.stop()


def reloads(gateway: GatewayProcess) -> dict[str, float]:
    return {
        r: gateway.metric("custos_config_reloads_total", result=r)
        for r in ("applied", "refused", "unchanged")
    }


def chat(model: str, **extra: object) -> dict[str, object]:
    return {
        "model": f"openai-main/{model}",
        "messages": [{"role": "user", "content": "hello there"}],
        **extra,
    }


# -- the checks a request under load must pass ---------------------------------------------------


def sse_data(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def check_chat_body(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    body = response.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop", body
    assert len(choice["message"]["content"].split()) == WORDS, body
    assert body["usage"]["completion_tokens"] == WORDS, body


def check_chat_stream(status: int, text: str, words: int = WORDS) -> None:
    assert status == 200, text
    data = sse_data(text)
    assert data and data[-1] == "[DONE]", text[-500:]
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert not [c for c in chunks if "error" in c], text[-500:]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(content.split()) == words, content
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == words, chunks[-1]


def check_messages_stream(status: int, text: str) -> None:
    assert status == 200, text
    events = [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]
    assert "error" not in events, text[-500:]
    assert events[0] == "message_start" and events[-1] == "message_stop", events
    deltas = [orjson.loads(d) for d in sse_data(text)]
    content = "".join(
        d["delta"].get("text", "") for d in deltas if d["type"] == "content_block_delta"
    )
    assert len(content.split()) == WORDS, content


@dataclass
class Done:
    kind: str
    started: float
    ended: float
    error: str | None


async def one_request(client: httpx.AsyncClient, kind: str) -> None:
    if kind == "slow":
        check_chat_body(await client.post("/v1/chat/completions", json=chat(SLOW)))
    elif kind in ("stream", "long-stream"):
        model = STREAM if kind == "stream" else LONG_STREAM
        body = chat(model, stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = (await response.aread()).decode()
        check_chat_stream(response.status_code, text)
    else:
        body = {
            "model": f"claude-main/{CLAUDE_STREAM}",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "hello there"}],
        }
        async with client.stream("POST", "/v1/messages", json=body) as response:
            text = (await response.aread()).decode()
        check_messages_stream(response.status_code, text)


# -- (a) hot reload under load -------------------------------------------------------------------


async def test_hot_reload_under_load_drops_nothing(mock_provider, own_gateway):
    gateway = own_gateway
    concurrency = 20
    kinds = ["slow", "stream", "claude-stream", "long-stream"]
    done: list[Done] = []
    stop = asyncio.Event()
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )

    async with httpx.AsyncClient(
        base_url=gateway.url, headers=gateway.headers, timeout=30, limits=limits
    ) as client:

        async def worker(index: int) -> None:
            await asyncio.sleep(index * 0.02)  # staggered, so the workers do not run in lockstep
            while not stop.is_set():
                kind = kinds[index % len(kinds)]
                started = time.monotonic()
                error = None
                try:
                    await one_request(client, kind)
                except Exception as exc:  # collected, reported below with the others
                    error = f"{type(exc).__name__}: {exc}"
                done.append(Done(kind, started, time.monotonic(), error))

        async def revision() -> str:
            return (await client.get("/readyz")).json()["revision"]

        workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        try:
            await async_wait_until(_ready(lambda: len(done) >= concurrency), what="the load to run")
            first = await revision()
            applied_before = reloads(gateway)["applied"]
            seen = [first]
            written_at: list[float] = []
            observed_at: list[float] = []
            extra: tuple[str, ...] = ()
            for step in range(1, 5):
                so_far = len(done)  # sustained load between reloads, not one burst
                await async_wait_until(
                    _ready(lambda n=so_far: len(done) >= n + concurrency),
                    what="load between reloads",
                )
                extra = (*extra, f"gpt-5.5+words={step}")
                text = config_text(mock_provider.url, extra)
                written_at.append(time.monotonic())
                replace_atomically(gateway.config_path, text)
                if step % 2 == 0:
                    gateway.sighup()  # a SIGHUP racing the watcher must be as harmless

                async def changed(expected: str = revision_of_text(text)) -> bool:
                    return await revision() == expected

                await async_wait_until(changed, what=f"revision of step {step}")
                observed_at.append(time.monotonic())
                seen.append(await revision())
                response = await client.post("/v1/chat/completions", json=chat(extra[-1]))
                assert response.status_code == 200, response.text
                assert len(response.json()["choices"][0]["message"]["content"].split()) == step
            gateway.sighup()  # with nothing changed: unchanged, still harmless
            await async_wait_until(
                _ready(lambda: reloads(gateway)["unchanged"] >= 1), what="the SIGHUP reload"
            )
            # keep the load on a little after the last reload too
            settled = len(done)
            await async_wait_until(
                _ready(lambda: len(done) >= settled + concurrency), what="more load"
            )
        finally:
            stop.set()
            await asyncio.gather(*workers)

    failures = [d for d in done if d.error]
    assert not failures, f"{len(failures)} of {len(done)} failed, e.g. {failures[:3]}"
    assert len(done) >= 6 * concurrency
    assert {d.kind for d in done} == set(kinds)
    assert len(set(seen)) == 5, seen  # every step produced a new revision
    assert reloads(gateway)["applied"] - applied_before == 4
    assert reloads(gateway)["refused"] == 0
    for before, after in zip(
        written_at, observed_at, strict=True
    ):  # each swap had requests in flight
        spanning = [d for d in done if d.started < before and d.ended > after]
        assert len(spanning) >= 3, (before, after, spanning)
    wait_until(lambda: gateway.metric("custos_active_streams") == 0, what="active streams to be 0")
    assert "Traceback" not in gateway.log(), gateway.log()


def _ready(predicate: Callable[[], object]) -> Callable[[], object]:
    async def check() -> object:
        return predicate()

    return check


async def test_in_flight_requests_keep_the_revision_they_started_with(mock_provider, own_gateway):
    """A model removed by a reload still finishes the stream and the slow call already on it;
    the next request for it is a 404."""
    gateway = own_gateway
    async with httpx.AsyncClient(
        base_url=gateway.url, headers=gateway.headers, timeout=30
    ) as client:
        slow = asyncio.create_task(client.post("/v1/chat/completions", json=chat(LONG_WAIT)))
        body = chat(LONG_STREAM, stream=True, stream_options={"include_usage": True})
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            chunks = response.aiter_bytes()
            received = b""
            while received.count(b"data: ") < 3:
                received += await anext(chunks)
            text = config_text(mock_provider.url, drop=(LONG_STREAM, LONG_WAIT))
            replace_atomically(gateway.config_path, text)

            async def applied() -> bool:
                return (await client.get("/readyz")).json()["revision"] == revision_of_text(text)

            await async_wait_until(applied, what="the reload")
            for model in (LONG_STREAM, LONG_WAIT):
                gone = await client.post("/v1/chat/completions", json=chat(model))
                assert gone.status_code == 404, gone.text
                assert gone.json()["error"]["code"] == "model_not_found"
            assert not slow.done(), "the slow call should still be in flight"
            received += b"".join([chunk async for chunk in chunks])
        check_chat_stream(200, received.decode(), words=WORDS)
        check_chat_body(await slow)


# -- SIGHUP alone --------------------------------------------------------------------------------


@pytest.fixture
def unwatched_gateway(mock_provider, tmp_path, monkeypatch) -> Iterator[GatewayProcess]:
    """``custos serve --no-watch``: only SIGHUP reloads."""
    launcher = (
        "import sys; from custos.cli import main; sys.exit(main([*sys.argv[1:], '--no-watch']))"
    )
    monkeypatch.setattr(conftest, "CUSTOS", [sys.executable, "-c", launcher])
    process = GatewayProcess(config_text(mock_provider.url), tmp_path)
    yield process
    process.stop()


def test_sighup_applies_a_changed_file(mock_provider, unwatched_gateway):
    gateway = unwatched_gateway
    before = gateway.revision()
    text = config_text(mock_provider.url, ("gpt-5.5+words=3",))
    replace_atomically(gateway.config_path, text)
    time.sleep(1.0)  # a negative: without a watcher, nothing may happen on its own
    assert gateway.revision() == before
    assert (
        httpx.post(
            f"{gateway.base_url}/chat/completions",
            headers=gateway.headers,
            json=chat("gpt-5.5+words=3"),
        ).status_code
        == 404
    )
    gateway.sighup()
    wait_until(lambda: gateway.revision() == revision_of_text(text), what="the SIGHUP reload")
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers,
        json=chat("gpt-5.5+words=3"),
    )
    assert response.status_code == 200, response.text
    assert reloads(gateway)["applied"] == 1


# -- (b) an invalid file is refused, the old revision keeps serving ------------------------------

BROKEN = [
    # (what is wrong, how to break the file, what the log must say)
    ("yaml", lambda t: t.replace("    timeout_s: 10\n", "\ttimeout_s: 10\n"), "not valid YAML"),
    (
        "schema",
        lambda t: t.replace("type: openai\n", "type: openia\n"),
        "providers.openai-main.type: must be",
    ),
    (
        "secret",
        lambda t: t.replace("${env:CUSTOS_TEST_MOCK_KEY}", "${env:CUSTOS_T_UNSET_VAR}", 1),
        "providers.openai-main.api_key: environment variable CUSTOS_T_UNSET_VAR is not set",
    ),
    ("tag", lambda t: t.replace("timeout_s: 10", "timeout_s: !!float ten"), "not valid YAML"),
    ("unknown section", lambda t: t + "rate_limit: []\n", "rate_limit: unknown key"),
]


def broken_line(text: str, broken: str) -> int:
    """The first line where ``broken`` differs from ``text`` (1-based)."""
    for number, (old, new) in enumerate(
        zip(text.splitlines(), broken.splitlines(), strict=False), 1
    ):
        if old != new:
            return number
    return len(text.splitlines()) + 1


def test_invalid_files_are_refused_and_a_fix_is_applied(mock_provider, own_gateway):
    gateway = own_gateway
    good = gateway.config_path.read_text()
    serving = gateway.revision()
    assert serving == revision_of_text(good)
    for name, breaks, says in BROKEN:
        refused = reloads(gateway)["refused"]
        broken = breaks(good)
        assert broken != good, name
        logged = len(gateway.log())
        replace_atomically(gateway.config_path, broken)
        wait_until(lambda r=refused: reloads(gateway)["refused"] > r, what=f"refusal of {name}")
        # One atomic replace can be seen as two file events, so the counter may have moved for
        # the previous file's second refusal: wait for this file's own message too.
        wait_until(lambda n=logged, s=says: s in gateway.log()[n:], what=f"{name} in the log")
        assert gateway.revision() == serving, name
        log = gateway.log()[logged:]
        assert "config reload refused" in log and says in log, log
        assert " WARNING custos.config: config reload refused" in log, log  # not an ERROR
        assert f"line {broken_line(good, broken)}: " in log, (name, log)
        assert str(gateway.config_path) in log, log
        assert "Traceback" not in log, log
        assert conftest.MOCK_KEY not in log
        # still serving, on the old revision
        response = httpx.post(
            f"{gateway.base_url}/chat/completions", headers=gateway.headers, json=chat("gpt-5.5")
        )
        assert response.status_code == 200, response.text
        # SIGHUP on the same broken file: refused again, still serving
        refused = reloads(gateway)["refused"]
        gateway.sighup()
        wait_until(
            lambda r=refused: reloads(gateway)["refused"] > r, what=f"SIGHUP refusal of {name}"
        )
        assert gateway.revision() == serving
    assert reloads(gateway)["applied"] == 0
    fixed = config_text(mock_provider.url, ("gpt-5.5+words=3",))
    replace_atomically(gateway.config_path, fixed)
    wait_until(lambda: gateway.revision() == revision_of_text(fixed), what="the fix to apply")
    assert reloads(gateway)["applied"] == 1
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers,
        json=chat("gpt-5.5+words=3"),
    )
    assert response.status_code == 200, response.text
    assert gateway.process.poll() is None


def test_a_file_edited_in_place_ends_on_the_new_revision(mock_provider, own_gateway):
    """Not every writer renames: a truncate-and-write may be seen half-written (and refused),
    but the gateway must end on the complete file's revision."""
    gateway = own_gateway
    text = config_text(mock_provider.url, ("gpt-5.5+words=2",))
    with gateway.config_path.open("w") as handle:
        half = len(text) // 2
        handle.write(text[:half])
        handle.flush()
        handle.write(text[half:])
    wait_until(lambda: gateway.revision() == revision_of_text(text), what="the in-place edit")


# -- (c) an edit that changes nothing ------------------------------------------------------------


def test_whitespace_and_comment_edits_keep_the_revision(own_gateway):
    gateway = own_gateway
    text = gateway.config_path.read_text()
    serving = gateway.revision()
    edits = [
        "\n\n" + text + "\n\n",
        "# reviewed by platform-lead\n" + text.replace("\n", "   \n"),
        text.replace("    timeout_s: 10\n", "").replace(
            "    type: openai\n", "    type: openai\n    timeout_s: 10\n"
        ),
    ]
    for number, edited in enumerate(edits, 1):
        assert edited != text
        unchanged = reloads(gateway)["unchanged"]
        replace_atomically(gateway.config_path, edited)
        wait_until(lambda u=unchanged: reloads(gateway)["unchanged"] > u, what=f"edit {number}")
        assert gateway.revision() == serving
    assert reloads(gateway)["applied"] == 0
    assert reloads(gateway)["refused"] == 0
    assert "applied" not in gateway.log()


# -- (d) only the config file and the files it references count --------------------------------


def keyed_from_file(text: str) -> str:
    """``text`` with the Anthropic account's key read from ``secrets/claude.key``."""
    needle = "    api_key: ${env:CUSTOS_TEST_MOCK_KEY}\n    models:\n      " + CLAUDE_STREAM
    assert needle in text
    return text.replace(
        needle, needle.replace("env:CUSTOS_TEST_MOCK_KEY", "file:secrets/claude.key")
    )


@pytest.fixture
def file_keyed_gateway(mock_provider, tmp_path) -> Iterator[GatewayProcess]:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "claude.key").write_text(conftest.MOCK_KEY + "\n")
    process = GatewayProcess(keyed_from_file(config_text(mock_provider.url)), tmp_path)
    yield process
    process.stop()


def claude_status(gateway: GatewayProcess) -> int:
    body = {"model": f"claude-main/{CLAUDE_STREAM}", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    return httpx.post(f"{gateway.url}/v1/messages", headers=gateway.headers, json=body).status_code


def test_database_writes_beside_the_config_cause_no_reload(mock_provider, file_keyed_gateway):
    """The documented layout keeps ./custos.db (and its -wal, -shm, .key) beside the config:
    writing to the store, or to other files beside a referenced one, is no reason to reload."""
    gateway = file_keyed_gateway
    before, logged = reloads(gateway), len(gateway.log())
    for number in range(40):  # admin API writes, each a SQLite (WAL) commit
        created = httpx.post(
            f"{gateway.url}/admin/v1/users",
            headers=gateway.headers,
            json={"email": f"user{number}@custos.test"},
        )
        assert created.status_code in (200, 201), created.text
    (gateway.config_path.parent / "secrets" / "unrelated.txt").write_text("not referenced")
    gateway.config_path.touch()  # a touch changes no byte
    time.sleep(1.5)  # a negative: the watcher debounces for 0.2 s
    assert reloads(gateway) == before
    assert "config" not in gateway.log()[logged:]
    # An actual edit still reloads ...
    text = keyed_from_file(config_text(mock_provider.url, ("gpt-5.5+words=3",)))
    replace_atomically(gateway.config_path, text)
    wait_until(lambda: gateway.revision() == revision_of_text(text), what="the edit to apply")
    assert reloads(gateway)["applied"] == before["applied"] + 1
    # ... and so does a referenced file: a rotated key is used at once (same revision).
    assert claude_status(gateway) == 200
    revision = gateway.revision()
    key_file = gateway.config_path.parent / "secrets" / "claude.key"
    replace_atomically(key_file, "a-rotated-key-the-mock-refuses\n")
    wait_until(lambda: claude_status(gateway) == 502, what="the rotated key to be used")
    assert gateway.revision() == revision
    replace_atomically(key_file, conftest.MOCK_KEY)
    wait_until(lambda: claude_status(gateway) == 200, what="the key to be rotated back")
    reloaded = [line for line in gateway.log()[logged:].splitlines() if "config" in line]
    assert reloaded and all(" INFO " in line for line in reloaded), reloaded
    assert conftest.MOCK_KEY not in gateway.log()


def test_the_config_history_holds_references_never_their_values(mock_provider, own_gateway):
    gateway = own_gateway
    text = config_text(mock_provider.url, ("gpt-5.5+words=4",))
    replace_atomically(gateway.config_path, text)
    wait_until(lambda: gateway.revision() == revision_of_text(text), what="the edit to apply")
    store = f"sqlite:///{gateway.config_path.parent / 'custos.db'}"
    stored = [row["text"] for row in query(store, "SELECT text FROM audit_config_texts")]
    assert len(stored) == 2 and stored[1] == text
    for kept in stored:
        assert "${env:CUSTOS_TEST_MOCK_KEY}" in kept and "${env:CUSTOS_TEST_TOKEN_KEY}" in kept
        assert conftest.MOCK_KEY not in kept and conftest.TOKEN_KEY not in kept
