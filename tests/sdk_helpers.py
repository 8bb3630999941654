"""What the SDK suites (``test_openai_sdk.py``, ``test_anthropic_sdk.py``) share.

Expected usage is computed from the mock provider's published token formula, expected cost from
the prices written in ``standard_config`` with ``Decimal`` and half-up rounding: neither comes from
the gateway's own code. What the gateway charged is read from its Prometheus counters before and
after a call (the suites run sequentially, so a delta belongs to the call in between).
"""

from __future__ import annotations

import json
import re
import threading
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import uvicorn
import yaml

from custos.mock import count_tokens
from tests.conftest import GatewayProcess, free_port, standard_config
from tests.google_helpers import service_account

#: A tool with every kind of required property, and the arguments the mock builds for it.
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "note": {"type": "string"},
    },
    "required": ["city", "days", "metric", "unit"],
}
WEATHER_ARGS = {"city": "mock", "days": 1, "metric": True, "unit": "c"}
WEATHER_ARGS_JSON = json.dumps(WEATHER_ARGS, separators=(",", ":"))
#: Output tokens of the mock's call to ``get_weather``: name plus compact JSON arguments.
WEATHER_CALL_TOKENS = count_tokens("get_weather") + count_tokens(WEATHER_ARGS_JSON)
OPENAI_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": WEATHER_SCHEMA,
    },
}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": WEATHER_SCHEMA,
}

#: The mock's default reply length in tokens (= words).
REPLY_WORDS = 20


def prices(model: str) -> tuple[Decimal, Decimal]:
    """(input, output) USD per million tokens of ``account/model``, as ``standard_config`` says."""
    account, name = model.split("/", 1)
    config = yaml.safe_load(standard_config("http://unused"))
    settings = config["providers"][account]["models"][name]
    return Decimal(str(settings["input_per_mtok"])), Decimal(
        str(settings.get("output_per_mtok", 0))
    )


def expected_cost(model: str, input_tokens: int, output_tokens: int = 0) -> int:
    """Micro-dollars: tokens x USD per million tokens, summed, rounded half up."""
    price_in, price_out = prices(model)
    exact = input_tokens * price_in + output_tokens * price_out
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def reply_words(text: str) -> list[str]:
    return text.split(" ")


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_text_reply(text: str | None, prompt: str, words: int = REPLY_WORDS) -> None:
    """The mock's reply: 'Mock reply to' + the first 8 words of the prompt + filler words."""
    assert text is not None
    echoed = " ".join(re.findall(r"\w+", prompt)[:8])
    assert text.startswith(f"Mock reply to {echoed}"), text
    assert len(reply_words(text)) == words


class Charge(NamedTuple):
    """Tokens in, tokens out, micro-dollars; compares equal to a plain tuple."""

    input: int
    output: int
    cost: int


_HTTP = httpx.Client(timeout=10)
_SAMPLE = re.compile(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$")


def scrape(gateway: GatewayProcess) -> dict[tuple[str, str], float]:
    """Every sample of ``/metrics``, keyed by (name, labels sorted by name as 'k="v",...')."""
    samples: dict[tuple[str, str], float] = {}
    for line in _HTTP.get(f"{gateway.url}/metrics").text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = ",".join(sorted(match.group(2).split(","))) if match.group(2) else ""
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


class Meter:
    """Tokens and cost the gateway charged to one served model since the meter was made."""

    def __init__(self, gateway: GatewayProcess, model: str) -> None:
        self.gateway = gateway
        self.model = model
        self.before = self.read()

    def read(self) -> Charge:
        """All three counters from one scrape (``GatewayProcess.metric`` scrapes per sample)."""
        samples = scrape(self.gateway)
        return Charge(
            int(samples.get(("custos_tokens_total", f'direction="input",model="{self.model}"'), 0)),
            int(
                samples.get(("custos_tokens_total", f'direction="output",model="{self.model}"'), 0)
            ),
            int(samples.get(("custos_cost_micros_total", f'model="{self.model}"'), 0)),
        )

    def delta(self, *, at_least_input: int = 1, settle_within_s: float = 2.0) -> Charge:
        """The charge so far. A stream settles as its last bytes leave, so a client that read
        them may ask before the counters moved: wait (a little) for ``at_least_input`` tokens."""
        deadline = time.monotonic() + settle_within_s
        while True:
            now = self.read()
            if now.input - self.before.input >= at_least_input or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return Charge(
            now.input - self.before.input,
            now.output - self.before.output,
            now.cost - self.before.cost,
        )

    def unchanged(self) -> bool:
        time.sleep(0.05)
        return self.read() == self.before


def last_request(mock: Any, path_part: str = "") -> dict[str, Any]:
    """The last request the mock received whose path contains ``path_part``."""
    matching = [r for r in mock.requests() if path_part in r["path"]]
    assert matching, f"the mock received no request on {path_part!r}"
    return matching[-1]


# -- a second gateway process, for configurations the standard one does not have ----------------


class ASGIThread:
    """An ASGI app served by uvicorn from a daemon thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("ASGI server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def config_with(mock_url: str, edit: Any) -> str:
    """``standard_config`` with ``edit(config_dict)`` applied (the ``${env:...}`` refs survive)."""
    config = yaml.safe_load(standard_config(mock_url))
    edit(config)
    return yaml.safe_dump(config, sort_keys=False)


#: USD per million tokens (input, output) of the accounts ``add_translated_accounts`` adds.
TRANSLATED_PRICES = (Decimal("1.25"), Decimal("10"))
#: One model per provider type that speaks neither client protocol, as that function adds them.
TRANSLATED_MODELS = {
    "gemini": "gemini-main/gemini-2.5-flash",
    "vertex": "vertex-eu/gemini-2.5-pro",
    "bedrock": "aws-us/claude",
}


def add_translated_accounts(config: dict[str, Any], mock_url: str, tmp: Path) -> None:
    """A Gemini, a Vertex AI (its key file written in ``tmp``, the gateway's directory) and a
    Bedrock account on the mock, priced at ``TRANSLATED_PRICES``."""
    (tmp / "sa.json").write_text(service_account(f"{mock_url}/token").json)
    (tmp / "aws-key-id").write_text("AKIDTRANSLATEDTEST")
    price = {
        "input_per_mtok": str(TRANSLATED_PRICES[0]),
        "output_per_mtok": str(TRANSLATED_PRICES[1]),
    }
    providers = config["providers"]
    providers["gemini-main"] = {
        "type": "gemini",
        "base_url": mock_url,
        "api_key": "${env:CUSTOS_TEST_MOCK_KEY}",
        "models": {"gemini-2.5-flash": price},
    }
    providers["vertex-eu"] = {
        "type": "vertex",
        "base_url": mock_url,
        "credentials": "${file:sa.json}",
        "region": "europe-west4",
        "models": {"gemini-2.5-pro": price},
    }
    providers["aws-us"] = {
        "type": "bedrock",
        "base_url": mock_url,
        "region": "us-east-1",
        "access_key_id": "${file:aws-key-id}",
        "secret_access_key": "${env:CUSTOS_TEST_MOCK_KEY}",
        "models": {"claude": {**price, "upstream_model": "anthropic.claude-sonnet-4-5-v1:0"}},
    }


def add_every_provider_type(config: dict[str, Any], mock_url: str, tmp: Path) -> None:
    """The standard config with every provider type answering: a key for the OpenAI-compatible
    account (the mock wants one) and the accounts of ``add_translated_accounts``."""
    config["providers"]["local-vllm"]["api_key"] = "${env:CUSTOS_TEST_MOCK_KEY}"
    add_translated_accounts(config, mock_url, tmp)


# -- the weather tool's first turn, for the OpenAI tool-call round trips ------------------------


def openai_weather_call(client: Any, model: str) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Ask ``model`` the weather question with the weather tool: its reply must be one call to
    the tool with the mock's arguments. Returns the reply, the call and the conversation
    continued with the assistant's turn and the tool's answer ("Sunny, 21 C")."""
    question = user("What is the weather in Paris?")
    first = client.chat.completions.create(
        model=model, messages=question, tools=[OPENAI_WEATHER_TOOL]
    )
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == WEATHER_ARGS
    assert first.usage.completion_tokens == WEATHER_CALL_TOKENS
    follow_up = [
        *question,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    return first, call, follow_up
