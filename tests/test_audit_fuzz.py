"""Fuzzing the LLM routes for what the audit trail must survive: every request that reaches an
LLM route (chat, messages, responses, count_tokens, embeddings) has exactly one ``llm.call``
record, found by the ``x-custos-request-id`` it was answered with, whose integers a record can
hold; a path that matches no route has none; and ``/metrics`` stays small.

The requests carry huge and boundary integers (2^31, 2^53, 2^63, 2^64, negative, floats,
booleans) in every count the gateway reads, control characters in the prompt and in metadata,
and odd paths (trailing slashes, doubled slashes, dot segments, a query). One gateway (with an
audit-mode budget, so every request is reserved for) serves every example; the examples are the
same on every run (``derandomize``) and bounded in number.

The other three routes get odd bodies of their own: ``input`` in every shape (strings, items,
token arrays of huge integers, objects, numbers), boundary ``max_output_tokens`` and
``dimensions``, and control characters in the text. count_tokens is its own operation and
charged to no limit, but recorded all the same.

The odd paths are a fixed list, so that the ``route`` label of the request metrics, which is
still the raw path on this branch, stays bounded here too; a path per slash count is the
metrics label test's to try.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.wire import MAX_INT, MAX_TOKENS
from tests.audit_helpers import integers_in, recorded, records_of
from tests.conftest import GatewayProcess, MockProvider, standard_config
from tests.limits_helpers import with_rules

CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"
#: Paths that reach each route, and paths that (as sent) reach none; the client may normalise
#: some of the latter (dot segments), and the gateway decodes %2F: the answer says which.
ROUTED = {
    CHAT: [CHAT, CHAT + "/", CHAT + "//", CHAT + "?trace=1"],
    MESSAGES: [MESSAGES, MESSAGES + "/", MESSAGES + "///", MESSAGES + "?beta=x"],
}
UNROUTED = ["//v1/chat/completions", "/v1//messages", "/v1/./chat/completions",
            "/v1/chat%2Fcompletions", "/v1/messages/../messages"]  # fmt: skip
MODELS = {CHAT: ["openai-main/gpt-5.5", "claude-main/claude-sonnet-4.5"],
          MESSAGES: ["claude-main/claude-sonnet-4.5", "openai-main/gpt-5.5"]}  # fmt: skip
BUDGET = """
budgets:
  - id: fuzz-watch
    when: {}
    limit_usd: 1000
    period: day
    mode: audit
"""
#: /metrics may grow by at most this much over the whole run (new status codes and error codes
#: add series; a label per request would not fit).
METRICS_GROWTH = 48 * 1024

_BOUNDARY = [2**62, 2**63 - 1, 2**53, 2**53 - 1, 2**64, 2**31, 2**31 - 1, 2**70, 2**63,
             -(2**63), -1, 0, 1, 16]  # fmt: skip
#: Half boundary integers (the largest first: examples favour the first of a list), half
#: anything else a JSON number or its impostors can be.
_count = st.sampled_from(_BOUNDARY) | (
    st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.sampled_from(["16", None])
)
#: Text with control characters (C0, DEL, C1), NUL included, and some ordinary letters.
_text = st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Ll", "Zs"]), max_size=24)
_metadata = st.dictionaries(
    st.sampled_from(["team", "run", "data_classification", "k\x01", "note"]), _text, max_size=3
)


class Fuzzed:
    """The gateway every example goes to, one keep-alive client, and /metrics' size at start."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.client = httpx.Client(timeout=30)
        self.baseline = len(self.client.get(f"{gw.url}/metrics").content)

    def send(
        self,
        path: str,
        body: dict[str, Any],
        metadata: dict[str, str],
        stream: bool,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``body`` (streamed if asked) with ``metadata``; never a 5xx, a 413 or a 415."""
        if stream:
            body["stream"] = True
        sent = {**self.gw.headers, "content-type": "application/json",
                "x-custos-metadata": json.dumps(metadata), **(headers or {})}  # fmt: skip
        # json.dumps writes integers past 64 bits and floats as they are (no range check).
        response = self.client.post(f"{self.gw.url}{path}", headers=sent, content=json.dumps(body))
        assert response.status_code not in (413, 415) and response.status_code < 500, (
            body,
            response.text,
        )
        return response


@pytest.fixture(scope="module")
def fuzzed(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    config = with_rules(standard_config(mock_provider.url), BUDGET)
    gw = GatewayProcess(config, tmp_path_factory.mktemp("fuzz"))
    fuzz = Fuzzed(gw)
    yield fuzz
    fuzz.client.close()
    gw.stop()


def _unknown_route(response: httpx.Response) -> bool:
    if response.status_code != 404:
        return False
    body = response.json()
    error = body.get("error") or {}
    return error.get("code") == "unknown_route" or "No route" in str(error.get("message"))


def _body(route: str, model: str, counts: dict[str, Any], prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    body.update(counts)
    if route == MESSAGES:
        body.setdefault("max_tokens", 8)
    return body


_requests = st.sampled_from([CHAT, MESSAGES]).flatmap(
    lambda route: st.tuples(
        st.just(route),
        st.sampled_from(ROUTED[route]) | st.sampled_from(UNROUTED),
        st.sampled_from(MODELS[route]),
        st.dictionaries(
            st.sampled_from(
                ["max_tokens", "max_completion_tokens", "n"] if route == CHAT else ["max_tokens"]
            ),
            _count,
            max_size=2,
        ),
        _text,
        st.just({}) | _metadata,  # half without: a malformed classification stops at stage 2
        st.booleans(),
    )
)

RESPONSES, COUNT_TOKENS, EMBEDDINGS = "/v1/responses", "/v1/messages/count_tokens", "/v1/embeddings"
OPERATION = {RESPONSES: "chat", COUNT_TOKENS: "count_tokens", EMBEDDINGS: "embeddings"}
#: Each route's paths: as named, with a trailing slash and with a query.
MORE_ROUTED = {route: [route, route + "/", route + "?x=1"] for route in OPERATION}
MORE_MODELS = {
    RESPONSES: ["openai-main/gpt-5.5", "claude-main/claude-sonnet-4.5"],
    COUNT_TOKENS: ["claude-main/claude-sonnet-4.5", "openai-main/gpt-5.5"],
    EMBEDDINGS: ["openai-main/text-embedding-3-small", "azure-eu/text-embedding-3-small"],
}
_huge = st.sampled_from(_BOUNDARY)
#: ``input`` as a Responses or embeddings client may send it, and as it may not.
_input = st.one_of(
    _text,
    st.lists(_text, max_size=3),
    st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": _text}), max_size=2),
    st.builds(
        lambda text: [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        ],
        _text,
    ),
    st.lists(_huge, min_size=1, max_size=3),
    st.lists(st.lists(_huge, max_size=3), min_size=1, max_size=2),
    st.lists(st.lists(st.just({"a": 1}), max_size=1), min_size=1, max_size=1),
    st.just({"a": 1}) | _huge | st.none(),
)
_more_requests = st.sampled_from(list(OPERATION)).flatmap(
    lambda route: st.tuples(
        st.just(route),
        st.sampled_from(MORE_ROUTED[route]),
        st.sampled_from(MORE_MODELS[route]),
        st.dictionaries(
            st.sampled_from(
                {
                    RESPONSES: ["max_output_tokens"],
                    COUNT_TOKENS: ["max_tokens"],
                    EMBEDDINGS: ["dimensions"],
                }[route]
            ),
            _count,
            max_size=1,
        ),
        _input,
        _text,
        st.just({}) | _metadata,
        st.booleans(),
    )
)


def _fuzzing(examples: int) -> settings:
    """The same examples on every run, as many as asked, each as slow as a gateway is."""
    slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    return settings(
        max_examples=examples, derandomize=True, deadline=None, database=None,
        suppress_health_check=slow,
    )  # fmt: skip


@_fuzzing(50)
@given(request=_requests)
def test_every_request_has_one_record_and_metrics_stay_small(
    fuzzed: Fuzzed, request: tuple[Any, ...]
) -> None:
    gw, client = fuzzed.gw, fuzzed.client
    route, path, model, counts, prompt, metadata, stream = request
    response = fuzzed.send(path, _body(route, model, counts, prompt), metadata, stream)
    request_id = response.headers["x-custos-request-id"]
    if _unknown_route(response):  # the client may have normalised an odd path into a route
        assert path in UNROUTED, response.text
        assert records_of(gw, request_id, client) == []
    else:
        record = recorded(gw, request_id, client, timeout=3)  # stored within ~60 ms
        assert record["http.response.status_code"] == response.status_code
        if path in ROUTED[route]:
            assert record["api.protocol"] == ("anthropic" if route == MESSAGES else "openai")
        outside = [i for i in integers_in(record) if abs(i) > MAX_INT]
        assert outside == [], record
        asked = record["gen_ai.request.max_tokens"]
        assert asked is None or 1 <= asked <= MAX_TOKENS
    metrics = client.get(f"{gw.url}/metrics").text
    _assert_metrics_small(fuzzed, metrics)


def _assert_metrics_small(fuzzed: Fuzzed, metrics: str) -> None:
    assert len(metrics.encode()) < fuzzed.baseline + METRICS_GROWTH
    labels = set(re.findall(r'route="([^"]*)"', metrics))
    assert len(labels) <= 3 + sum(len(paths) for paths in ROUTED.values()) + len(OPERATION), labels
    lost = dict(re.findall(r"^custos_audit_(dropped|repaired)_total (\S+)$", metrics, re.M))
    assert lost == {"dropped": "0.0", "repaired": "0.0"}


def _more_body(route: str, model: str, counts: dict[str, Any], value: Any, text: str) -> Any:
    if route == COUNT_TOKENS:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            body["messages"] = value  # items where messages go
    else:
        body = {"model": model, "input": value}
        if route == RESPONSES:
            body["instructions"] = text
    body.update(counts)
    return body


@_fuzzing(40)
@given(request=_more_requests)
def test_responses_count_tokens_and_embeddings_requests_have_one_record_each(
    fuzzed: Fuzzed, request: tuple[Any, ...]
) -> None:
    gw, client = fuzzed.gw, fuzzed.client
    route, path, model, counts, value, text, metadata, stream = request
    body = _more_body(route, model, counts, value, text)
    anthropic = {"anthropic-version": "2023-06-01"} if route == COUNT_TOKENS else {}
    response = fuzzed.send(path, body, metadata, stream, anthropic)
    record = recorded(gw, response.headers["x-custos-request-id"], client, timeout=3)
    assert record["http.response.status_code"] == response.status_code
    assert record["gen_ai.operation.name"] == OPERATION[route]
    outside = [i for i in integers_in(record) if abs(i) > MAX_INT]
    assert outside == [], record
    asked = record["gen_ai.request.max_tokens"]
    assert asked is None or 1 <= asked <= MAX_TOKENS
    _assert_metrics_small(fuzzed, client.get(f"{gw.url}/metrics").text)
