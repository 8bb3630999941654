"""Control knobs: how a request steers the mock (errors, delays, stream shape).

Knobs come from directives in the model (or Azure deployment) name, ``base+key=value+flag``,
and from ``x-mock-<key>`` request headers (underscores become hyphens: ``x-mock-latency-ms``).
Headers override directives, because a direct caller that sets both means the header.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from .content import DEFAULT_WORDS


class BadRequest(ValueError):
    """Invalid input: answered with a 400 in the route's error format, never a 500."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class KnobError(BadRequest):
    """An unknown directive or a bad knob value."""


@dataclass(frozen=True, slots=True)
class Knobs:
    """The parsed knobs of one request; the defaults describe a healthy, fast provider."""

    status: int | None = None  # answer with this HTTP error status
    fail_first: int | None = None  # only the first N requests with this model string get status
    fail_for_ms: float | None = None  # only requests within this long of the first get status
    retry_after: float = 1.0  # seconds, for the retry-after headers of a 429 / 503
    latency_ms: float = 0.0  # wait before responding at all
    ttft_ms: float = 0.0  # wait before the first stream event
    chunk_delay_ms: float = 0.0  # wait between stream events
    chunks: int = 20  # content fragments in a stream
    words: int = DEFAULT_WORDS  # reply length in tokens
    drop_after: int | None = None  # close the connection after N stream events
    malformed: bool = False  # invalid JSON body / a garbage stream event
    no_usage: bool = False  # streams carry no usage (see the module contract)
    cached_tokens: int = 0  # Gemini: cachedContentTokenCount; Bedrock: cacheReadInputTokens
    thoughts_tokens: int = 0  # Gemini: thoughtsTokenCount
    blocked: bool = False  # Gemini: the prompt is blocked (promptFeedback.blockReason SAFETY)
    cache_write_tokens: int = 0  # Bedrock: cacheWriteInputTokens (of the rest of the prompt)
    stream_exception: bool = False  # Bedrock: a throttlingException after the first delta
    echo: bool = False  # the reply is the prompt's last message itself, word for word


DEFAULT_KNOBS = Knobs()
#: Longest reply the ``words`` knob may ask for (keeps a typo from eating the mock's memory).
MAX_WORDS = 100_000

_FLAGS = frozenset({"malformed", "no_usage", "blocked", "stream_exception", "echo"})
_INTS = frozenset(
    {
        "status",
        "fail_first",
        "chunks",
        "words",
        "drop_after",
        "cached_tokens",
        "thoughts_tokens",
        "cache_write_tokens",
    }
)
_FLOATS = frozenset({"retry_after", "latency_ms", "ttft_ms", "chunk_delay_ms", "fail_for_ms"})
_HEADER_PREFIX = b"x-mock-"


def _flag_value(raw: str) -> bool:
    return raw.strip().lower() not in ("0", "false", "no", "off")


def _number(key: str, raw: str) -> float:
    try:
        return int(raw) if key in _INTS else float(raw)
    except ValueError as exc:
        raise KnobError(f"mock directive {key!r} needs a number, got {raw!r}") from exc


def _convert(key: str, raw: str) -> object:
    if key in _FLAGS:
        return _flag_value(raw)
    if key not in _INTS and key not in _FLOATS:
        raise KnobError(f"unknown mock directive {key!r}")
    value = _number(key, raw)
    if not 0 <= value < float("inf"):  # negative, NaN or infinite
        raise KnobError(f"mock directive {key!r} must be a finite number >= 0")
    if key == "status" and not 400 <= value <= 599:
        raise KnobError("mock directive 'status' must be between 400 and 599")
    if key == "words" and value > MAX_WORDS:
        raise KnobError(f"mock directive 'words' must be at most {MAX_WORDS}")
    if key == "chunks" and value < 1:
        raise KnobError("mock directive 'chunks' must be at least 1")
    return value


def _parse_pairs(pairs: list[tuple[str, str]]) -> dict[str, object]:
    return {key: _convert(key, raw) for key, raw in pairs}


@lru_cache(maxsize=1024)
def _model_knobs(model: str) -> Knobs:
    """Knobs from ``base+key=value+flag`` (cached: a test or benchmark reuses few names)."""
    pairs: list[tuple[str, str]] = []
    for part in model.split("+")[1:]:
        key, sep, raw = part.partition("=")
        if not sep:
            if key not in _FLAGS:
                raise KnobError(f"mock directive {key!r} needs a value ({key}=...)")
            raw = "1"
        pairs.append((key.strip(), raw))
    return replace(DEFAULT_KNOBS, **_parse_pairs(pairs))  # type: ignore[arg-type]


def base_model(model: str) -> str:
    """The model name without directives."""
    return model.partition("+")[0]


def knobs_for(model: str, headers: dict[bytes, bytes]) -> Knobs:
    """Knobs of a request: model directives, then ``x-mock-*`` headers on top."""
    knobs = _model_knobs(model) if "+" in model else DEFAULT_KNOBS
    pairs = [
        (name[len(_HEADER_PREFIX) :].decode("latin-1").replace("-", "_"), value.decode("latin-1"))
        for name, value in headers.items()
        if name.startswith(_HEADER_PREFIX)
    ]
    if not pairs:
        return knobs
    return replace(knobs, **_parse_pairs(pairs))  # type: ignore[arg-type]
