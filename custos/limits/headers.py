"""What callers see of budgets and rate limits: OpenAI's ``x-ratelimit-*`` headers and the errors.

OpenAI names the headers ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` and writes
reset times as Go durations (``1s``, ``6m0s``, ``20ms``); the SDKs read ``retry-after-ms`` before
``retry-after`` (whole seconds). Errors name the rule that stopped the call, in the message of
the caller's protocol (``custos.errors`` renders it as OpenAI or Anthropic JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from custos.errors import GatewayError
from custos.policy.limits import BudgetPolicy, RateRule, parse_split
from custos.policy.periods import Period
from custos.state.counters import WindowState

Header = tuple[bytes, bytes]


def duration(ms: int) -> str:
    """Milliseconds as a Go duration, as OpenAI writes resets: ``450ms``, ``1.5s``, ``6m0s``."""
    ms = max(int(ms), 0)
    if ms < 1000:
        return f"{ms}ms"
    minutes, millis = divmod(ms, 60_000)
    seconds = f"{millis / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if minutes == 0:
        return seconds
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{seconds}"


_RESETS: dict[int, bytes] = {}


def _reset(ms: int) -> bytes:
    """A reset time for a success header, to the second (rounded up), formatted once."""
    seconds = -(-ms // 1000)
    found = _RESETS.get(seconds)
    if found is None:
        if len(_RESETS) > 100_000:
            _RESETS.clear()
        found = _RESETS[seconds] = duration(seconds * 1000).encode()
    return found


def rate_headers(rule: RateRule, states: Sequence[WindowState]) -> list[Header]:
    """The headers of an admitted request: the tightest of the rule's counters."""
    state = states[0] if len(states) == 1 else max(states, key=lambda s: s.used)
    limit, remaining, reset = rule.header_names
    return [
        (limit, rule.limit_header),
        (remaining, str(max(rule.limit - state.used, 0)).encode()),
        (reset, _reset(state.reset_ms)),
    ]


def _retry(headers: dict[str, str], retry_after_ms: int | None) -> None:
    if retry_after_ms is not None:
        headers["retry-after"] = str(max(-(-retry_after_ms // 1000), 1))
        headers["retry-after-ms"] = str(max(retry_after_ms, 1))


def _split_text(split: str) -> str:
    parts = parse_split(split)
    return " for " + ", ".join(f"{k} {v}" for k, v in parts.items()) if parts else ""


def rate_limited(
    rule: RateRule, split: str, state: WindowState, amount: int, retry_after_ms: int | None
) -> GatewayError:
    unit = rule.unit
    if retry_after_ms is None:
        message = (
            f"Rate limit '{rule.id}' ({rule.describe()}) can never admit this request: it needs "
            f"{amount} {unit} at once."
        )
    else:
        wait = duration(retry_after_ms)
        message = (
            f"Rate limit '{rule.id}' ({rule.describe()}) reached{_split_text(split)}; "
            f"retry after {wait}."
        )
    headers = {
        f"x-ratelimit-limit-{unit}": str(rule.limit),
        f"x-ratelimit-remaining-{unit}": str(max(rule.limit - state.used, 0)),
        f"x-ratelimit-reset-{unit}": duration(state.reset_ms),
    }
    _retry(headers, retry_after_ms)
    return GatewayError(429, "rate_limit_exceeded", message, headers=headers, stage="rate_limit")


def usd(micros: int) -> str:
    return f"${Decimal(micros) / 1_000_000:,.6f}".rstrip("0").rstrip(".")


def budget_exceeded(
    budget: BudgetPolicy,
    split: str,
    period: Period,
    used: int,
    amount: int,
    status: int,
    seconds_left: float | None,
) -> GatewayError:
    when = "in total" if period.end is None else f"this {period.kind}"
    message = (
        f"Budget '{budget.id}'{_split_text(split)} has no room for this request: "
        f"{usd(used)} of {usd(budget.limit_micros)} is spent or reserved {when}, and this "
        f"request may cost up to {usd(amount)}."
    )
    headers: dict[str, str] = {}
    if seconds_left is not None:
        _retry(headers, int(seconds_left * 1000))
    return GatewayError(status, "budget_exceeded", message, headers=headers, stage="budget")


def counters_down(kind: str) -> GatewayError:
    what = "budgets" if kind == "budgets" else "rate limits"
    return GatewayError(
        503,
        "budget_unavailable" if kind == "budgets" else "rate_limit_unavailable",
        f"The gateway cannot check {what} right now (its counters are unreachable), and calls "
        f"under {what} are refused until they answer again; retry shortly.",
        headers={"retry-after": "1"},
        stage="budget" if kind == "budgets" else "rate_limit",
    )
