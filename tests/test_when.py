"""The one ``when`` matcher (custos.policy.when) and the config of the rules that use it."""

from __future__ import annotations

import fnmatch
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.config.loader import ConfigError, parse_config
from custos.config.rules import WhenSettings
from custos.policy.when import Facts, When


def when(**fields: object) -> When:
    return When.compile(WhenSettings.model_validate(fields))


def facts(
    subjects: tuple[str, ...] = ("user:ann@x.example",),
    model: str = "azure-eu/gpt-5.5",
    metadata: dict[str, str] | None = None,
    data_classes: tuple[str, ...] = (),
    mcp_tool: str | None = None,
) -> Facts:
    return Facts(frozenset(subjects), model, metadata or {}, frozenset(data_classes), mcp_tool)


def test_an_empty_when_matches_every_request():
    matcher = when()
    assert matcher.matches_all
    assert matcher.matches(facts())
    assert matcher.matches(facts(subjects=(), model="", mcp_tool="jira.search"))


def test_subjects_are_ored_and_users_compared_case_folded():
    matcher = when(subjects=["team:support", "user:Lead@X.example"])
    assert matcher.matches(facts(subjects=("user:ann@x.example", "team:support")))
    assert matcher.matches(facts(subjects=("user:lead@x.example",)))
    assert not matcher.matches(facts(subjects=("user:ann@x.example", "team:sales")))
    assert when(subjects=["*"]).matches(facts(subjects=("virtualaccount:bot",)))


def test_subjects_not_in_excludes_anyone_sharing_a_value():
    matcher = when(subjects={"not_in": ["team:interns"]})
    assert matcher.matches(facts(subjects=("user:a@x", "team:support")))
    assert not matcher.matches(facts(subjects=("user:a@x", "team:support", "team:interns")))
    both = when(subjects={"in": ["team:support"], "not_in": ["user:a@x"]})
    assert both.matches(facts(subjects=("user:b@x", "team:support")))
    assert not both.matches(facts(subjects=("user:a@x", "team:support")))


def test_models_take_exact_names_globs_and_exclusions():
    matcher = when(
        models={"in": ["azure-eu/*", "chat-default"], "not_in": ["azure-eu/gpt-5.5-pro"]}
    )
    assert matcher.matches(facts(model="azure-eu/gpt-5.5"))
    assert matcher.matches(facts(model="chat-default"))
    assert not matcher.matches(facts(model="azure-eu/gpt-5.5-pro"))
    assert not matcher.matches(facts(model="openai-main/gpt-5.5"))
    # A glob is anchored at both ends; a dot is a dot.
    assert not when(models=["gpt-5*"]).matches(facts(model="openai/gpt-5.5"))
    assert not when(models=["a.b"]).matches(facts(model="axb"))
    assert when(models={"not_in": ["*-mini"]}).matches(facts(model="x/gpt-5.5"))
    assert not when(models={"not_in": ["*-mini"]}).matches(facts(model="x/gpt-5-mini"))


def test_metadata_values_and_a_missing_key():
    matcher = when(metadata={"environment": "production", "project": ["alpha", "beta"]})
    assert matcher.matches(facts(metadata={"environment": "production", "project": "beta"}))
    assert not matcher.matches(facts(metadata={"environment": "staging", "project": "beta"}))
    assert not matcher.matches(facts(metadata={"environment": "production"}))
    excluding = when(metadata={"environment": {"not_in": ["development"]}})
    assert excluding.matches(facts(metadata={}))  # a missing key is among no not_in list
    assert not excluding.matches(facts(metadata={"environment": "development"}))


def test_data_classes_and_mcp_tools():
    assert when(data_classes=["customer_data"]).matches(facts(data_classes=("customer_data",)))
    assert not when(data_classes=["customer_data"]).matches(facts(data_classes=()))
    assert when(data_classes={"not_in": ["secrets"]}).matches(facts(data_classes=("pii",)))
    tools = when(mcp_tools={"in": ["jira.*"], "not_in": ["jira.delete_*"]})
    assert tools.matches(facts(mcp_tool="jira.search"))
    assert not tools.matches(facts(mcp_tool="jira.delete_issue"))
    assert not tools.matches(facts(mcp_tool=None))


def test_fields_are_anded():
    matcher = when(subjects=["team:support"], models=["azure-eu/*"], metadata={"env": "prod"})
    good = facts(subjects=("team:support",), model="azure-eu/m", metadata={"env": "prod"})
    assert matcher.matches(good)
    assert not matcher.matches(
        facts(subjects=("team:sales",), model="azure-eu/m", metadata={"env": "prod"})
    )
    assert not matcher.matches(
        facts(subjects=("team:support",), model="x/m", metadata={"env": "prod"})
    )
    assert not matcher.matches(facts(subjects=("team:support",), model="azure-eu/m", metadata={}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"models": []}, "an empty list matches nothing"),
        ({"models": {}}, "give 'in', 'not_in' or both"),
        ({"subjects": ["alice@x.example"]}, "must be user:EMAIL"),
        ({"models": {"in": ["a"], "nope": ["b"]}}, "Extra inputs"),
        ({"colour": ["red"]}, "Extra inputs"),
    ],
)
def test_a_bad_when_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        WhenSettings.model_validate(fields)


# -- the compiled matcher agrees with a plain reading of the rules ------------------------------

VALUES = st.sampled_from(["a", "b", "c"])
SUBJECTS = st.sampled_from(["user:a@x", "team:t1", "team:t2", "virtualaccount:v"])
MODELS = st.sampled_from(["p/m1", "p/m2", "q/m1", "vm"])
PATTERNS = st.sampled_from(["p/m1", "p/*", "*/m1", "vm", "*"])


def selections(values: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    some = st.lists(values, min_size=1, max_size=3)
    return st.one_of(
        st.none(),
        some,
        st.fixed_dictionaries({"not_in": some}),
        st.fixed_dictionaries({"in": some, "not_in": some}),
    )


def _in_not_in(selection: object) -> tuple[list[str] | None, list[str]]:
    if isinstance(selection, list):
        return selection, []
    assert isinstance(selection, dict)
    return selection.get("in"), selection["not_in"]


def reference(rule: dict[str, object], f: Facts) -> bool:
    """The semantics of the module docstring, read literally (no compilation, no shortcuts)."""
    for name, selection in rule.items():
        if selection is None:
            continue
        if name == "metadata":
            assert isinstance(selection, dict)
            for key, sub in selection.items():
                wanted, excluded = _in_not_in(sub)
                value = f.metadata.get(key)
                if wanted is not None and value not in wanted:
                    return False
                if value is not None and value in excluded:
                    return False
            continue
        wanted, excluded = _in_not_in(selection)
        if name == "subjects":
            if wanted is not None and "*" not in wanted and not set(wanted) & f.subjects:
                return False
            if set(excluded) & f.subjects or ("*" in excluded and f.subjects):
                return False
        elif name == "models":
            if wanted is not None and not any(fnmatch.fnmatchcase(f.model, p) for p in wanted):
                return False
            if any(fnmatch.fnmatchcase(f.model, p) for p in excluded):
                return False
    return True


@settings(max_examples=400, deadline=None)
@given(
    subjects=selections(SUBJECTS),
    models=selections(PATTERNS),
    meta=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["k1", "k2"]),
            selections(VALUES).filter(lambda s: s is not None),
            max_size=2,
        ),
    ),
    who=st.frozensets(SUBJECTS, max_size=3),
    model=MODELS,
    metadata=st.dictionaries(st.sampled_from(["k1", "k2"]), VALUES, max_size=2),
)
def test_the_compiled_matcher_agrees_with_the_reference(
    subjects, models, meta, who, model, metadata
):
    rule = {"subjects": subjects, "models": models, "metadata": meta}
    settings_ = WhenSettings.model_validate({k: v for k, v in rule.items() if v is not None})
    f = Facts(who, model, metadata)
    assert When.compile(settings_).matches(f) == reference(rule, f)


# -- rules in the config file -----------------------------------------------------------------

BASE = textwrap.dedent(
    """\
    version: 1
    providers:
      local:
        type: openai_compatible
        base_url: http://127.0.0.1:9/v1
        models:
          m: {input_per_mtok: 1, output_per_mtok: 2}
    """
)


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_rules_are_read_with_their_defaults():
    text = BASE + textwrap.dedent(
        """\
        rate_limits:
          - {id: r1, limit_to: 60, unit: requests_per_minute, applies_per: [user, metadata.project]}
        budgets:
          - {id: b1, when: {subjects: [team:support]}, limit_usd: 12.5, period: month}
        """
    )
    config = parse_config(text).config
    assert config.rate_limits[0].when == WhenSettings()
    assert config.rate_limits[0].applies_per == ["user", "metadata.project"]
    budget = config.budgets[0]
    assert (budget.mode, budget.limit_micros, budget.alerts) == ("enforce", 12_500_000, None)
    assert config.limits.on_counters_down.budgets == "fail_closed"
    assert config.limits.on_counters_down.rate_limits == "fail_open"
    assert config.limits.budget_exceeded_status == 429


def test_rule_errors_name_their_path_and_line():
    text = BASE + textwrap.dedent(
        """\
        rate_limits:
          - {id: ok, limit_to: 1, unit: tokens_per_day}
          - id: bad-unit
            limit_to: 60
            unit: requests_per_fortnight
          - id: bad-split
            limit_to: 0
            unit: requests_per_hour
            applies_per: [user, team, model]
        budgets:
          - id: b
            limit_usd: 1.0000001
            period: year
            when: {data_classes: [customer_data]}
          - id: b2
            limit_usd: 5
            period: day
            applies_per: [colour]
            alerts: {at_percent: [50, 50], webhook: "ftp://x"}
        """
    )
    found = {path: (line, message) for line, path, message in problems(text)}
    assert found["rate_limits[1].unit"][0] == line_of(text, "requests_per_fortnight")
    assert found["rate_limits[1].unit"][1].startswith("must be 'requests_per_minute'")
    assert found["rate_limits[2].limit_to"][0] == line_of(text, "limit_to: 0")
    assert "at most two" in found["rate_limits[2].applies_per"][1]
    assert "decimal places" in found["budgets[0].limit_usd"][1]
    assert found["budgets[0].period"][0] == line_of(text, "period: year")
    assert "stage 6" in found["budgets[0].when"][1]
    assert "metadata.KEY" in found["budgets[1].applies_per"][1]
    assert "twice" in found["budgets[1].alerts.at_percent"][1]
    assert "http" in found["budgets[1].alerts.webhook"][1]


def test_rule_ids_are_unique_per_section():
    text = BASE + textwrap.dedent(
        """\
        rate_limits:
          - {id: same, limit_to: 1, unit: requests_per_minute}
          - {id: same, limit_to: 2, unit: requests_per_minute}
        """
    )
    [(line, path, message)] = problems(text)
    assert (line, path) == (line_of(text, "rate_limits:"), "rate_limits")
    assert "rate_limits[0] and rate_limits[1]" in message


def test_a_model_without_a_price_needs_unpriced_allow():
    unpriced = BASE.replace("m: {input_per_mtok: 1, output_per_mtok: 2}", "m: {}")
    [(_line, path, message)] = problems(unpriced)
    assert path == "providers.local.models.m.input_per_mtok"
    assert "unpriced: allow" in message
    allowed = BASE.replace("m: {input_per_mtok: 1, output_per_mtok: 2}", "m: {unpriced: allow}")
    assert parse_config(allowed).config.providers["local"].models["m"].unpriced == "allow"
    both = BASE.replace("input_per_mtok: 1,", "input_per_mtok: 1, unpriced: allow,")
    assert "remove one" in problems(both)[0][2]


def test_every_glob_of_a_list_matches_whole_names_only():
    # Each alternative is anchored at both ends, not only the last one in the list.
    matcher = when(models=["azure-eu/*-mini", "claude-main/*"])
    assert matcher.matches(facts(model="azure-eu/gpt-5-mini"))
    assert not matcher.matches(facts(model="azure-eu/gpt-5-mini-pro"))
    assert matcher.matches(facts(model="claude-main/sonnet"))
