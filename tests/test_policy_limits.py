"""Compiled budgets and rate limits (custos.policy.limits) and budget periods (policy.periods)."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.config.loader import parse_config
from custos.identity.principal import Principal
from custos.policy.limits import (
    NONE,
    RouteCost,
    Splitter,
    estimate_tokens,
    parse_split,
)
from custos.policy.periods import PeriodClock, period_at, period_from_key
from custos.policy.when import Facts
from custos.providers.estimate import counted_prompt_tokens, estimate_prompt_tokens
from custos.runtime import Runtime


def principal(
    kind: str = "user", name: str = "Ann@X.example", teams: tuple[str, ...] = ()
) -> Principal:
    subjects = frozenset([f"user:{name.lower()}", *(f"team:{t}" for t in teams)])
    return Principal(
        kind, "id", name, name, teams, (), frozenset(), subjects, "tok", "pat", None, None
    )  # type: ignore[arg-type]


def test_splits_per_dimension_and_their_cross_product():
    facts = Facts(frozenset(), "chat-default", {"project": "a,b=c|d"})
    ann = principal(teams=("sales", "support"))
    assert Splitter([]).splits(ann, facts) == ("",)
    assert Splitter(["user"]).splits(ann, facts) == ("user=ann@x.example",)
    assert Splitter(["team", "model"]).splits(ann, facts) == (
        "team=sales,model=chat-default",
        "team=support,model=chat-default",
    )
    [split] = Splitter(["metadata.project"]).splits(ann, facts)
    assert parse_split(split) == {"metadata.project": "a,b=c|d"}  # escaped and read back
    assert "|" not in split
    bot = principal("virtual_account", "ticket-bot")
    assert Splitter(["user", "virtualaccount"]).splits(bot, facts) == (
        "user=virtualaccount:ticket-bot,virtualaccount=ticket-bot",
    )
    assert Splitter(["virtualaccount", "team"]).splits(replace(ann, teams=()), facts) == (
        f"virtualaccount={NONE},team={NONE}",
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=40)}),
            st.fixed_dictionaries(
                {
                    "role": st.just("user"),
                    "content": st.lists(
                        st.fixed_dictionaries(
                            {"type": st.just("text"), "text": st.text(max_size=20)}
                        ),
                        max_size=2,
                    ),
                }
            ),
            st.fixed_dictionaries(
                {
                    "role": st.just("assistant"),
                    "content": st.text(max_size=10),
                    "name": st.text(max_size=5),
                }
            ),
        ),
        max_size=4,
    ),
    st.one_of(st.none(), st.text(max_size=20)),
)
def test_the_fast_input_estimate_equals_the_general_one(messages, system):
    body: dict[str, object] = {"model": "m", "messages": messages}
    if system is not None:
        body["system"] = system
    assert estimate_prompt_tokens(body) == counted_prompt_tokens(body)


COST = RouteCost(input=1_000_000, output=10_000_000, per_request=0, max_output_tokens=None)


@pytest.mark.parametrize(
    ("extra", "operation", "cost", "output"),
    [
        ({"max_tokens": 50}, "chat", COST, 50),
        ({"max_completion_tokens": 70, "max_tokens": 50}, "chat", COST, 70),
        ({}, "chat", COST, 4096),
        ({"max_tokens": True}, "chat", COST, 4096),  # not a number of tokens
        ({}, "chat", RouteCost(1, 1, 0, 900), 900),  # the model's own maximum
        ({"max_tokens": 5000}, "chat", RouteCost(1, 1, 0, 900), 900),
        ({"max_tokens": 50}, "embeddings", COST, 0),
    ],
)
def test_the_reserved_output(extra, operation, cost, output):
    body = {"messages": [{"role": "user", "content": "hello"}], **extra}
    assert estimate_tokens(body, operation, cost, 4096)[1] == output


def test_tool_definitions_count_as_input():
    body = {"messages": [{"role": "user", "content": "hi"}]}
    tools = {**body, "tools": [{"type": "function", "function": {"name": "x" * 400}}]}
    assert (
        estimate_tokens(tools, "chat", COST, 1)[0]
        >= estimate_tokens(body, "chat", COST, 1)[0] + 100
    )


def test_reservations_are_priced_at_the_dearest_target_and_rounded_up():
    text = textwrap.dedent(
        """\
        version: 1
        providers:
          a:
            type: openai_compatible
            base_url: http://127.0.0.1:9/v1
            models:
              cheap: {input_per_mtok: 0.5, output_per_mtok: 20, max_output_tokens: 100}
              dear:
                input_per_mtok: 3
                output_per_mtok: 4
                cache_write_per_mtok: 3.75
                per_request_usd: 0.000001
              open: {input_per_mtok: 1}
        virtual_models:
          both: {targets: [{model: a/cheap}, {model: a/dear}]}
          capped-and-open: {targets: [{model: a/cheap}, {model: a/open}]}
        """
    )
    runtime = Runtime(parse_config(text))
    cost = runtime.limits.costs["both"]
    assert (cost.input, cost.output, cost.per_request) == (3_750_000, 20_000_000, 1_000_000)
    assert cost.max_output_tokens is None  # a/dear declares none
    assert runtime.limits.costs["a/cheap"].max_output_tokens == 100
    assert runtime.limits.costs["capped-and-open"].max_output_tokens is None
    # 1 input token at 0.5 µ$ is 0.5 µ$: reserved as 1 (up), where a charge rounds half up.
    assert runtime.limits.costs["a/cheap"].micros(1, 0) == 1
    assert runtime.limits.costs["a/cheap"].micros(3, 0) == 2


def test_first_match_and_every_match():
    text = textwrap.dedent(
        """\
        version: 1
        providers:
          a:
            type: openai_compatible
            base_url: "http://127.0.0.1:9/v1"
            models: {m: {input_per_mtok: 1}}
        rate_limits:
          - {id: support, when: {subjects: [team:support]}, limit_to: 5, unit: requests_per_minute}
          - {id: everyone, when: {}, limit_to: 1, unit: tokens_per_hour}
          - {id: never, when: {}, limit_to: 1, unit: requests_per_day}
        budgets:
          - {id: all, when: {}, limit_usd: 1, period: day}
          - {id: support-only, when: {subjects: [team:support]}, limit_usd: 1, period: day}
        """
    )
    limits = Runtime(parse_config(text)).limits
    support = Facts(frozenset({"user:a@x", "team:support"}), "a/m")
    other = Facts(frozenset({"user:b@x"}), "a/m")
    assert limits.rate_rule(support).id == "support"  # type: ignore[union-attr]
    rule = limits.rate_rule(other)
    assert rule is not None and (rule.id, rule.per_token, rule.window_s) == ("everyone", True, 3600)
    assert [b.id for b in limits.matching_budgets(support)] == ["all", "support-only"]
    assert [b.id for b in limits.matching_budgets(other)] == ["all"]


@pytest.mark.parametrize(
    ("kind", "moment", "key", "end"),
    [
        ("day", "2026-11-27T23:59:59", "day:2026-11-27", "2026-11-28"),
        ("week", "2026-11-29T12:00:00", "week:2026-11-23", "2026-11-30"),  # a Sunday
        ("week", "2026-11-30T00:00:00", "week:2026-11-30", "2026-12-07"),  # the Monday after
        ("month", "2026-12-31T23:00:00", "month:2026-12-01", "2027-01-01"),
        ("quarter", "2026-11-27T00:00:00", "quarter:2026-10-01", "2027-01-01"),
        ("quarter", "2026-03-31T23:59:59", "quarter:2026-01-01", "2026-04-01"),
    ],
)
def test_periods_start_and_end_on_utc_boundaries(kind, moment, key, end):
    now = datetime.fromisoformat(moment).replace(tzinfo=UTC)
    period = period_at(kind, now)
    assert period.key == key
    assert period.end == datetime.fromisoformat(end).replace(tzinfo=UTC)
    assert period_from_key(key) == period
    clock = PeriodClock()
    assert clock.current(kind, now.timestamp()) == period
    assert clock.current(kind, period.end.timestamp()).key != key  # the next one, at the boundary


def test_total_never_ends():
    period = period_at("total", datetime.now(UTC))
    assert (period.key, period.start, period.end) == ("total", None, None)
    assert period.seconds_left(0) is None
