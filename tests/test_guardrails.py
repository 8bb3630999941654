"""Guardrails at the model hooks and data classes from content, through the official SDKs.

One gateway with guardrails of each operation and enforcing mode at both hooks, selected per
request by the metadata ``project``; the mock's ``echo`` model answers with the prompt's own
words, so what an output guardrail sees is chosen by the test. Each test checks what the client
got, what reached the provider, and the request's audit record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import anthropic
import openai
import pytest

from tests.audit_helpers import recorded, serve_http
from tests.conftest import GatewayProcess, MockProvider, standard_config

ECHO = "openai-main/gpt-5.5+echo"
ECHO_STREAM = "openai-main/gpt-5.5+echo+chunks=100"
ECHO_SLOW = "openai-main/gpt-5.5+echo+latency_ms=400"
CLAUDE_ECHO = "claude-main/claude-sonnet-4.5+echo+chunks=100"

_MODELS = (
    "      gpt-5.5+echo: {input_per_mtok: 1, output_per_mtok: 1}\n"
    "      gpt-5.5+echo+chunks=100: {input_per_mtok: 1, output_per_mtok: 1}\n"
    "      gpt-5.5+echo+latency_ms=400: {input_per_mtok: 1, output_per_mtok: 1}\n"
)
_CLAUDE = "      claude-sonnet-4.5+echo+chunks=100: {input_per_mtok: 3, output_per_mtok: 15}\n"


class Webhook(BaseHTTPRequestHandler):
    """A guardrail service: ``mode`` says how it answers; it keeps what it was sent."""

    mode = "allow"
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Webhook.seen.append(body)
        mode = Webhook.mode
        if mode == "slow":
            time.sleep(0.4)
            mode = "allow"
        if mode == "hang":
            time.sleep(2)
        status, answer = 200, b'{"verdict": "allow"}'
        if mode == "block":
            answer = b'{"verdict": "block", "reason": "not today"}'
        elif mode == "error":
            status, answer = 500, b"{}"
        elif mode == "garbage":
            answer = b"<html>surprise</html>"
        elif mode == "rewrite":
            texts = [t.replace("Zurich", "[CITY]") for t in body["texts"]]
            answer = json.dumps({"verdict": "allow", "texts": texts}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def _config(mock_url: str, hook_url: str) -> str:
    text = standard_config(mock_url)
    text = text.replace(
        "      text-embedding-3-small: {input", _MODELS + "      text-embedding-3-small: {input", 1
    )
    text = text.replace(
        "      claude-sonnet-4.5+no_usage:", _CLAUDE + "      claude-sonnet-4.5+no_usage:"
    )
    rules = [
        {"id": "redact-pii-in", "hook": "llm_input", "type": "pii", "operation": "mutate",
         "when": {"metadata": {"project": "redact"}}},
        {"id": "no-codenames", "hook": "llm_input", "type": "keywords",
         "keywords": {"codenames": ["Falcon", "Osprey"]},
         "when": {"metadata": {"project": "guarded"}}},
        {"id": "watch-quarterly", "hook": "llm_input", "type": "regex", "enforcing": "audit",
         "patterns": {"quarterly": "quarterly results"}},
        {"id": "no-leaks-out", "hook": "llm_output", "type": "regex",
         "patterns": {"leak": "LEAK-[0-9]{4}|alpha bravo"},
         "when": {"metadata": {"project": "guarded"}}},
        {"id": "redact-pii-out", "hook": "llm_output", "type": "pii", "operation": "mutate",
         "when": {"metadata": {"project": "redact-out"}}},
        {"id": "customer-words", "hook": "llm_input", "type": "regex",
         "patterns": {"refund": "refund"}, "when": {"data_classes": ["customer_data"]}},
        {"id": "hook-enforce", "hook": "llm_input", "type": "webhook", "timeout_ms": 250,
         "webhook": {"url": hook_url}, "when": {"metadata": {"project": "hook-enforce"}}},
        {"id": "hook-lenient", "hook": "llm_input", "type": "webhook", "timeout_ms": 250,
         "enforcing": "enforce_but_ignore_on_error", "webhook": {"url": hook_url},
         "when": {"metadata": {"project": "hook-lenient"}}},
        {"id": "hook-audit", "hook": "llm_input", "type": "webhook", "timeout_ms": 250,
         "enforcing": "audit", "webhook": {"url": hook_url},
         "when": {"metadata": {"project": "hook-audit"}}},
        {"id": "hook-slow", "hook": "llm_input", "type": "webhook", "timeout_ms": 2000,
         "webhook": {"url": hook_url}, "when": {"metadata": {"project": "hook-slow"}}},
        {"id": "hook-rewrite", "hook": "llm_input", "type": "webhook", "operation": "mutate",
         "webhook": {"url": hook_url}, "when": {"metadata": {"project": "hook-rewrite"}}},
    ]  # fmt: skip
    classes = {"customer_data": {"detectors": ["pii.email", "pattern.customer_id"],
                                 "patterns": {"customer_id": "CUST-[0-9]{6}"}}}  # fmt: skip
    return (
        text + "guardrails: " + json.dumps(rules) + "\ndata_classes: " + json.dumps(classes) + "\n"
    )


@pytest.fixture(scope="module")
def hook() -> Iterator[str]:
    server, url = serve_http(Webhook)
    yield url + "/check"
    server.shutdown()


@pytest.fixture(scope="module")
def gw(
    mock_provider: MockProvider, hook: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(
        _config(mock_provider.url, hook), tmp_path_factory.mktemp("guardrails")
    )
    yield process
    process.stop()


def oai(gw: GatewayProcess, project: str | None = None) -> openai.OpenAI:
    headers = {"x-custos-metadata": json.dumps({"project": project})} if project else {}
    return openai.OpenAI(
        base_url=gw.base_url, api_key=gw.token, default_headers=headers, max_retries=0
    )


def claude(gw: GatewayProcess, project: str) -> anthropic.Anthropic:
    headers = {"x-custos-metadata": json.dumps({"project": project})}
    return anthropic.Anthropic(
        base_url=gw.url, api_key=gw.token, default_headers=headers, max_retries=0
    )


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def decisions(gw: GatewayProcess, request_id: str) -> dict[str, dict[str, Any]]:
    record = recorded(gw, request_id)
    return {d["rule"]: d for d in record["decisions"] if d["stage"] == "guardrails"}


# -- input ----------------------------------------------------------------------------------------


def test_input_mutate_redacts_before_the_provider(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    mock_provider.clear()
    raw = oai(gw, "redact").chat.completions.with_raw_response.create(
        model=ECHO,
        messages=user("mail ann.lee@example.com and ann.lee@example.com or bo@example.org"),
    )
    answer = raw.parse().choices[0].message.content
    assert answer == "mail <EMAIL_1> and <EMAIL_1> or <EMAIL_2>"
    sent = json.dumps(mock_provider.requests()[-1])
    assert "example.com" not in sent and "<EMAIL_1>" in sent
    decided = decisions(gw, raw.headers["x-custos-request-id"])["redact-pii-in"]
    assert decided["decision"] == "mutate" and decided["input"]["found"] == {"pii.email": 3}
    assert decided["input"]["hook"] == "llm_input"
    assert "redact-pii-in" in raw.headers["x-custos-applied"].split(",")


def test_a_data_class_and_a_pii_guardrail_over_the_same_text_both_see_every_value(
    gw: GatewayProcess, mock_provider: MockProvider
) -> None:
    """Data-class detection and the ``pii`` guardrail read the same strings (the scan of a text
    is shared): the class counts what it selects before the guardrail masks it, the guardrail
    masks every address, and the values never reach the provider."""
    mock_provider.clear()
    raw = oai(gw, "redact").chat.completions.with_raw_response.create(
        model=ECHO, messages=user("ticket CUST-123456: mail ann@example.com, cc bo@example.org")
    )
    assert raw.parse().choices[0].message.content == (
        "ticket CUST-123456: mail <EMAIL_1>, cc <EMAIL_2>"
    )
    assert "example" not in json.dumps(mock_provider.requests()[-1])
    request_id = raw.headers["x-custos-request-id"]
    record = recorded(gw, request_id)
    assert record["data_classes"] == [{"class": "customer_data", "count": 3, "source": "detected"}]
    decided = decisions(gw, request_id)["redact-pii-in"]
    assert decided["decision"] == "mutate" and decided["input"]["found"] == {"pii.email": 2}
    applied = raw.headers["x-custos-applied"].split(",")
    assert "redact-pii-in" in applied and "watch-quarterly" in applied


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_input_validate_blocks_in_the_callers_protocol(
    gw: GatewayProcess, mock_provider: MockProvider, sdk: str
) -> None:
    mock_provider.clear()
    if sdk == "openai":
        with pytest.raises(openai.BadRequestError) as caught:
            oai(gw, "guarded").chat.completions.create(
                model=ECHO, messages=user("brief me on Falcon")
            )
        assert caught.value.code == "guardrail_blocked"
    else:
        with pytest.raises(anthropic.BadRequestError) as caught:  # type: ignore[assignment]
            claude(gw, "guarded").messages.create(
                model=CLAUDE_ECHO, max_tokens=50, messages=user("brief me on Falcon")
            )  # type: ignore[arg-type]
    message = str(caught.value)
    assert "no-codenames" in message and "Falcon" not in message
    assert mock_provider.requests() == []
    request_id = caught.value.response.headers["x-custos-request-id"]
    record = recorded(gw, request_id)
    assert record["stopped_at"] == "guardrails" and record["outcome"] == "denied"
    blocked = decisions(gw, request_id)["no-codenames"]
    assert blocked["decision"] == "deny" and blocked["input"]["found"] == {"keyword.codenames": 1}


def test_audit_mode_decides_and_lets_through(gw: GatewayProcess) -> None:
    raw = oai(gw).chat.completions.with_raw_response.create(
        model=ECHO, messages=user("our quarterly results")
    )
    assert raw.parse().choices[0].message.content == "our quarterly results"
    decided = decisions(gw, raw.headers["x-custos-request-id"])["watch-quarterly"]
    assert decided["decision"] == "audit_only" and decided["reason"] == "found"


# -- output ---------------------------------------------------------------------------------------


def test_output_validate_blocks_a_plain_response(gw: GatewayProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai(gw, "guarded").chat.completions.create(model=ECHO, messages=user("say LEAK-1234 now"))
    assert caught.value.code == "guardrail_blocked" and "LEAK" not in str(caught.value)
    record = recorded(gw, caught.value.response.headers["x-custos-request-id"])
    assert record["gen_ai.usage.output_tokens"] > 0  # the provider answered: it is charged


def test_output_validate_ends_a_stream_split_across_chunks(gw: GatewayProcess) -> None:
    """``alpha bravo`` arrives in two chunks; neither word may reach the client."""
    got = ""
    with pytest.raises(openai.APIError):
        stream = oai(gw, "guarded").chat.completions.create(
            model=ECHO_STREAM, messages=user("one two three alpha bravo four"), stream=True
        )
        for chunk in stream:
            if chunk.choices:
                got += chunk.choices[0].delta.content or ""
    assert "alpha" not in got and "bravo" not in got


def test_output_validate_ends_an_anthropic_stream(gw: GatewayProcess) -> None:
    got = ""
    with (
        pytest.raises(anthropic.APIError),
        claude(gw, "guarded").messages.stream(
            model=CLAUDE_ECHO,
            max_tokens=100,
            messages=user("one two alpha bravo three"),  # type: ignore[arg-type]
        ) as stream,
    ):
        for text in stream.text_stream:
            got += text
    assert "alpha" not in got


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_output_mutate_redacts_a_stream(gw: GatewayProcess, sdk: str) -> None:
    prompt = "write to ann.lee@example.com or call +44 20 7946 0958 then ann.lee@example.com again"
    if sdk == "openai":
        stream = oai(gw, "redact-out").chat.completions.create(
            model=ECHO_STREAM, messages=user(prompt), stream=True
        )
        got = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    else:
        with claude(gw, "redact-out").messages.stream(
            model=CLAUDE_ECHO,
            max_tokens=100,
            messages=user(prompt),  # type: ignore[arg-type]
        ) as stream:
            got = "".join(stream.text_stream)
    assert got == "write to <EMAIL_1> or call <PHONE_1> then <EMAIL_1> again"


def test_output_mutate_redacts_a_plain_response(gw: GatewayProcess) -> None:
    completion = oai(gw, "redact-out").chat.completions.create(
        model=ECHO, messages=user("card 4111 1111 1111 1111 ok")
    )
    assert completion.choices[0].message.content == "card <PAN_1> ok"
    # Rewritten from the answer the adapter parsed: still named for the model asked for.
    assert completion.model == ECHO


# -- data classes ---------------------------------------------------------------------------------


def test_detected_data_classes_are_recorded_and_match_rules(gw: GatewayProcess) -> None:
    raw = oai(gw).chat.completions.with_raw_response.create(
        model=ECHO, messages=user("ticket for CUST-123456 and ann@example.com")
    )
    record = recorded(gw, raw.headers["x-custos-request-id"])
    assert record["data_classes"] == [{"class": "customer_data", "count": 2, "source": "detected"}]
    assert record["data_classes.detectors"]
    # A rule whose when names the class applies only to requests that carry it.
    with pytest.raises(openai.BadRequestError):
        oai(gw).chat.completions.create(model=ECHO, messages=user("refund CUST-123456"))
    oai(gw).chat.completions.create(model=ECHO, messages=user("refund policy please"))


# -- webhooks -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "mode", "passes", "outcome"),
    [
        ("hook-enforce", "allow", True, "allow"),
        ("hook-enforce", "block", False, "deny"),
        ("hook-enforce", "hang", False, "deny"),
        ("hook-enforce", "error", False, "deny"),
        ("hook-enforce", "garbage", False, "deny"),
        ("hook-lenient", "hang", True, "allow"),
        ("hook-lenient", "garbage", True, "allow"),
        ("hook-lenient", "block", False, "deny"),
        ("hook-audit", "block", True, "audit_only"),
        ("hook-audit", "error", True, "audit_only"),
    ],
)
def test_webhook_verdicts_and_failures(
    gw: GatewayProcess, project: str, mode: str, passes: bool, outcome: str
) -> None:
    Webhook.mode = mode
    client = oai(gw, project)
    if passes:
        raw = client.chat.completions.with_raw_response.create(
            model=ECHO, messages=user("hello Zurich")
        )
        request_id = raw.headers["x-custos-request-id"]
    else:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=ECHO, messages=user("hello Zurich"))
        expected = 400 if mode == "block" else 503
        assert caught.value.status_code == expected
        request_id = caught.value.response.headers["x-custos-request-id"]
    decided = decisions(gw, request_id)[project]
    assert decided["decision"] == outcome
    assert Webhook.seen[-1]["texts"] == ["hello Zurich"] and Webhook.seen[-1]["hook"] == "llm_input"


def test_a_validate_webhook_overlaps_the_provider_call(gw: GatewayProcess) -> None:
    """The webhook takes 0.4 s and so does the provider: together about 0.4 s, not 0.8 s."""
    Webhook.mode = "slow"
    client = oai(gw, "hook-slow")
    client.chat.completions.create(model=ECHO, messages=user("warm up"))
    started = time.monotonic()
    client.chat.completions.create(model=ECHO_SLOW, messages=user("hello"))
    took = time.monotonic() - started
    assert 0.4 <= took < 0.7, took


def test_a_mutate_webhook_rewrites_before_the_call(gw: GatewayProcess) -> None:
    Webhook.mode = "rewrite"
    answer = (
        oai(gw, "hook-rewrite")
        .chat.completions.create(model=ECHO, messages=user("meet in Zurich"))
        .choices[0]
        .message.content
    )
    assert answer == "meet in [CITY]"


def test_the_webhook_is_not_called_for_other_requests(gw: GatewayProcess) -> None:
    Webhook.seen.clear()
    oai(gw).chat.completions.create(model=ECHO, messages=user("plain"))
    assert Webhook.seen == []


def test_metrics_count_verdicts(gw: GatewayProcess) -> None:
    assert gw.metric("custos_guardrail_verdicts_total", guardrail="no-codenames",
                     hook="llm_input", outcome="deny") >= 1  # fmt: skip


def test_output_mutate_redacts_a_responses_stream_and_its_final_events(gw: GatewayProcess) -> None:
    prompt = "write to ann.lee@example.com or call +44 20 7946 0958 today"
    expected = "write to <EMAIL_1> or call <PHONE_1> today"
    stream = oai(gw, "redact-out").responses.create(model=ECHO_STREAM, input=prompt, stream=True)
    deltas, final = "", None
    for event in stream:
        if event.type == "response.output_text.delta":
            deltas += event.delta
        elif event.type == "response.output_text.done":
            assert event.text == expected
        elif event.type == "response.completed":
            final = event.response.output_text
    assert deltas == expected and final == expected


def test_output_mutate_redacts_a_responses_answer(gw: GatewayProcess) -> None:
    answer = oai(gw, "redact-out").responses.create(model=ECHO, input="mail bo@example.org now")
    assert answer.output_text == "mail <EMAIL_1> now"
