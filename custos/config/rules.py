"""Config schema of the rules that share the ``when`` matcher: rate limits and budgets.

``WhenSettings`` is the one condition every rule writes (DESIGN §2); ``custos.policy.when``
compiles it. Each field takes either a list (ORed: any value matches) or a mapping
``{in: [...], not_in: [...]}``; fields are ANDed; a field left out does not constrain; ``{}``
matches every request.

    when:
      subjects: [team:support-ai, user:lead@northwind.example]   # * = every caller
      models: {in: ["azure-eu/*", chat-default], not_in: [azure-eu/gpt-5.5-pro]}
      metadata: {environment: production, project: [alpha, beta]}

``rate_limits`` are evaluated in order and the first whose ``when`` matches applies; every
matching entry of ``budgets`` is charged and each must have room. ``limits`` holds the settings
both share. Money is exact: ``limit_usd`` allows six decimals and becomes micro-dollars.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from custos.request_values import RequestValue

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_SUBJECT = re.compile(r"^(\*|(user|team|virtualaccount):\S+)$")
_DIMENSION = re.compile(r"^(user|team|virtualaccount|model|metadata\.[^\s,=|]{1,128})$")
_USD_PLACES = 6


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Selection(_Strict):
    """Values a fact must be among (``in``) and must not be among (``not_in``).

    ``in_`` ``None`` means "any value"; written as a plain list in the file, it is ``in``.
    """

    in_: list[str] | None = Field(default=None, alias="in")
    not_in: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _says_something(self) -> Selection:
        if self.in_ is not None and not self.in_:
            raise ValueError("an empty list matches nothing: give at least one value, or leave "
                             "the field out")  # fmt: skip
        if self.in_ is None and not self.not_in:
            raise ValueError("give 'in', 'not_in' or both")
        for value in (*(self.in_ or ()), *self.not_in):
            if not value:
                raise ValueError("values must be non-empty strings")
        return self


def _as_selection(value: Any) -> Any:
    """A list (or one string) is shorthand for ``{in: [...]}``."""
    if isinstance(value, str):
        return {"in": [value]}
    if isinstance(value, list):
        return {"in": value}
    return value


Select = Annotated[Selection, BeforeValidator(_as_selection)]


class WhenSettings(_Strict):
    """The condition of a rule (see the module docstring). ``{}`` matches every request."""

    subjects: Select | None = None
    models: Select | None = None
    metadata: dict[str, Select] | None = None
    data_classes: Select | None = None
    mcp_tools: Select | None = None

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, value: Selection | None) -> Selection | None:
        if value is not None:
            for subject in (*(value.in_ or ()), *value.not_in):
                if not _SUBJECT.match(subject):
                    raise ValueError(
                        f"{subject!r} must be user:EMAIL, team:NAME, virtualaccount:NAME or *"
                    )
        return value

    @field_validator("metadata")
    @classmethod
    def _keys(cls, value: dict[str, Selection] | None) -> dict[str, Selection] | None:
        if value is not None and any(not key or len(key) > 128 for key in value):
            raise ValueError("metadata keys must be 1 to 128 characters")
        return value


#: ``when`` fields that are facts only later stages know; a budget or rate limit naming one would
#: never match, so the file is refused instead.
_LATER_FACTS = {
    "data_classes": "data classes are detected by the input guardrails (stage 6), after budgets "
    "and rate limits (stages 4 and 5)",
    "mcp_tools": "budgets do not count MCP tool calls (they cost nothing); a rate limit with "
    "unit tool_calls_per_minute|hour|day does",
}


def _no_later_facts(when: WhenSettings, *, allowed: tuple[str, ...] = ()) -> WhenSettings:
    for name, why in _LATER_FACTS.items():
        if name not in allowed and getattr(when, name) is not None:
            raise ValueError(f"when.{name} cannot be used here: {why}")
    return when


def _applies_per(value: list[str]) -> list[str]:
    if len(value) > 2:
        raise ValueError("at most two dimensions")
    if len(set(value)) != len(value):
        raise ValueError("a dimension is named twice")
    for dimension in value:
        if not _DIMENSION.match(dimension):
            raise ValueError(
                f"{dimension!r} must be user, team, virtualaccount, model or metadata.KEY"
            )
    return value


#: A rule's ``when``, limited to the facts known at stages 4 and 5.
RuleWhen = Annotated[WhenSettings, AfterValidator(_no_later_facts)]
#: What a rule keeps one counter per (at most two dimensions).
AppliesPer = Annotated[list[str], AfterValidator(_applies_per)]

RateUnit = Literal[
    "requests_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "tokens_per_minute",
    "tokens_per_hour",
    "tokens_per_day",
    "tool_calls_per_minute",
    "tool_calls_per_hour",
    "tool_calls_per_day",
]


class RateLimitRule(_Strict):
    """``limit_to`` requests (or input + output tokens) per sliding minute, hour or day, with
    one counter per value of ``applies_per`` (none: one counter for every matching request).

    A ``tool_calls_per_*`` rule counts MCP tool calls (``/mcp/*``) and may select them with
    ``when: {mcp_tools: [...]}``; the other units count model calls. Each kind of call meets
    the first rule of its own kind whose ``when`` matches."""

    id: Annotated[str, Field(pattern=_NAME)]
    limit_to: Annotated[int, Field(gt=0, le=10**12)]
    unit: RateUnit
    when: WhenSettings = Field(default_factory=WhenSettings)
    applies_per: AppliesPer = Field(default_factory=list)

    @field_validator("when")
    @classmethod
    def _known_facts(cls, value: WhenSettings, info: ValidationInfo) -> WhenSettings:
        tools = str(info.data.get("unit", "")).startswith("tool_calls")
        return _no_later_facts(value, allowed=("mcp_tools",) if tools else ())

    @property
    def counts_tool_calls(self) -> bool:
        return self.unit.startswith("tool_calls")


def _usd(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError("must be a number of US dollars")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError("must be a number of US dollars") from None
    if not amount.is_finite() or amount <= 0:
        raise ValueError("must be a positive number of US dollars")
    if -amount.as_tuple().exponent > _USD_PLACES:  # type: ignore[operator]
        raise ValueError(f"at most {_USD_PLACES} decimal places (whole micro-dollars)")
    # Redis scripts compute in doubles: micro-dollars stay exact below 2**53 (about 9e9 USD).
    if amount > Decimal(10**9):
        raise ValueError("must be at most 1e9 US dollars")
    return amount


class BudgetAlerts(_Strict):
    """A POST to ``webhook`` the first time spend reaches each percentage, per period and split."""

    at_percent: Annotated[
        list[Annotated[int, Field(ge=1, le=1000)]], Field(min_length=1, max_length=20)
    ]
    webhook: RequestValue
    #: Extra request headers (an authorization for the receiver); use ``${env:NAME}`` for secrets.
    headers: dict[RequestValue, RequestValue] = Field(default_factory=dict, repr=False)

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("at_percent")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("a percentage is listed twice")
        return sorted(value)


class BudgetRule(_Strict):
    """``limit_usd`` per UTC ``period`` for every request ``when`` matches; with ``applies_per``,
    that limit holds for each value separately. ``audit`` mode records a breach and lets the
    call through."""

    id: Annotated[str, Field(pattern=_NAME)]
    when: RuleWhen = Field(default_factory=WhenSettings)
    limit_usd: Annotated[Decimal, BeforeValidator(_usd)]
    period: Literal["day", "week", "month", "quarter", "total"]
    mode: Literal["enforce", "audit"] = "enforce"
    applies_per: AppliesPer = Field(default_factory=list)
    alerts: BudgetAlerts | None = None

    @property
    def limit_micros(self) -> int:
        return int(self.limit_usd * 1_000_000)


FailMode = Literal["fail_open", "fail_closed"]


class CountersDown(_Strict):
    """What a request under a budget or rate limit gets while the counters cannot be reached."""

    budgets: FailMode = "fail_closed"
    rate_limits: FailMode = "fail_open"


class LimitsSettings(_Strict):
    """Settings budgets and rate limits share."""

    #: 429 (OpenAI's status for quota) or 402 (Payment Required) when a budget has no room.
    budget_exceeded_status: Literal[429, 402] = 429
    #: Output tokens reserved for a request that sets no ``max_tokens`` /
    #: ``max_completion_tokens``, unless its model declares ``max_output_tokens``.
    default_output_tokens: Annotated[int, Field(ge=1, le=10_000_000)] = 4096
    #: A reservation whose request died (process crash) is released after this long. Live
    #: requests renew theirs, so this is not a limit on how long a call may take.
    reservation_ttl_s: Annotated[int, Field(ge=10, le=86_400)] = 300
    #: How often settled spend is written to the store's ledger (in one batch).
    ledger_flush_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    on_counters_down: CountersDown = Field(default_factory=CountersDown)


def unique_ids(rules: list[Any], section: str) -> list[Any]:
    """Refuse two rules with one id: the id is what the audit record names."""
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if rule.id in seen:
            raise ValueError(
                f"id {rule.id!r} is used by {section}[{seen[rule.id]}] and {section}[{index}]"
            )
        seen[rule.id] = index
    return rules
