"""The one ``when`` matcher every rule shares, compiled once per config revision.

A rule's ``when`` (``custos.config.rules.WhenSettings``) constrains facts about a request:

=================  ==================================================  =========================
field              fact it tests                                        values
=================  ==================================================  =========================
``subjects``       the caller's subjects (``Principal.subjects``)       ``user:EMAIL``,
                                                                        ``team:NAME``,
                                                                        ``virtualaccount:NAME``,
                                                                        ``*`` (every caller)
``models``         the model name the client asked for                 exact names, ``*`` globs
``metadata``       one value per key of the request metadata           exact values
``data_classes``   the data classes detected in the request            class names
``mcp_tools``      the MCP tool being called (``server/tool``)          exact names, ``*`` globs
=================  ==================================================  =========================

Semantics, exactly:

- Fields are ANDed; a field left out does not constrain; ``{}`` matches every request.
- Each field is a selection: ``in`` (a plain list is shorthand for it) and/or ``not_in``. A
  selection holds when the fact is among ``in`` (any one value suffices: lists are ORed) and not
  among ``not_in``. For set-valued facts (subjects, data classes) "among" means "shares a
  value": ``not_in: [team:interns]`` excludes every member of that team.
- A missing fact (no metadata key, no MCP tool, no data class) is among no ``in`` list and
  among no ``not_in`` list: ``metadata: {env: {not_in: [dev]}}`` matches a request without
  ``env``; ``metadata: {env: prod}`` does not.
- Users are compared by case-folded email, as the directory names them. ``*`` in ``subjects``
  matches every authenticated caller. In ``models`` and ``mcp_tools`` ``*`` matches any run of
  characters (``azure-eu/*``, ``gpt-5*``); everything else is compared exactly.
- ``models`` tests the name the client asked for, before routing: to cover a virtual model,
  name it (``chat-default``); naming its targets does not match calls to it, as with access
  rules.

``When.compile`` turns the settings into a tuple of predicates, cheapest first; ``matches``
runs them and allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from custos.config.rules import Selection, WhenSettings
from custos.emails import email_key
from custos.policy.patterns import ModelPattern


@dataclass(slots=True)
class Facts:
    """What a ``when`` can test about one request (filled as the stages learn it; built per
    request, so not frozen, whose ``__init__`` is slower; nothing changes it)."""

    subjects: frozenset[str]
    model: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    data_classes: frozenset[str] = frozenset()
    mcp_tool: str | None = None


Predicate = Callable[[Facts], bool]


class When:
    """A compiled ``when``; ``matches(facts)`` says whether the rule applies."""

    __slots__ = ("_tests", "matches_all", "source")

    def __init__(self, tests: Iterable[Predicate], source: WhenSettings) -> None:
        self._tests = tuple(tests)
        self.source = source
        #: ``{}``: the rule applies to every request (callers can skip building facts).
        self.matches_all = not self._tests

    @classmethod
    def compile(cls, settings: WhenSettings | None) -> When:
        settings = settings or WhenSettings()
        tests: list[Predicate] = []
        if settings.models is not None:
            tests.append(_scalar(settings.models, _facts_model, glob=True))
        if settings.subjects is not None:
            tests.append(_set(_subject_selection(settings.subjects), _facts_subjects))
        for key, selection in (settings.metadata or {}).items():
            tests.append(_scalar(selection, _metadata_value(key), glob=False))
        if settings.data_classes is not None:
            tests.append(_set(settings.data_classes, _facts_classes))
        if settings.mcp_tools is not None:
            tests.append(_scalar(settings.mcp_tools, _facts_tool, glob=True))
        return cls(tests, settings)

    def matches(self, facts: Facts) -> bool:
        for test in self._tests:  # noqa: SIM110 (no generator per call on the hot path)
            if not test(facts):
                return False
        return True


# -- fact getters ----------------------------------------------------------------------------------


def _facts_model(facts: Facts) -> str | None:
    return facts.model


def _facts_tool(facts: Facts) -> str | None:
    return facts.mcp_tool


def _facts_subjects(facts: Facts) -> frozenset[str]:
    return facts.subjects


def _facts_classes(facts: Facts) -> frozenset[str]:
    return facts.data_classes


def _metadata_value(key: str) -> Callable[[Facts], str | None]:
    def get(facts: Facts) -> str | None:
        return facts.metadata.get(key)

    return get


# -- compiled selections ---------------------------------------------------------------------------


def _subject_key(subject: str) -> str:
    kind, _, name = subject.partition(":")
    return f"user:{email_key(name)}" if kind == "user" else subject


def _subject_selection(selection: Selection) -> Selection:
    return Selection(
        in_=None if selection.in_ is None else [_subject_key(s) for s in selection.in_],
        not_in=[_subject_key(s) for s in selection.not_in],
    )


class _Values:
    """Exact values, or exact values and globs: ``contains`` is one set lookup or a regex."""

    __slots__ = ("_exact", "_pattern")

    def __init__(self, values: Iterable[str], glob: bool) -> None:
        values = tuple(values)
        self._pattern = ModelPattern(values) if glob and any("*" in v for v in values) else None
        self._exact = frozenset(values)

    def contains(self, value: str) -> bool:
        if self._pattern is not None:
            return self._pattern.matches(value)
        return value in self._exact


def _scalar(selection: Selection, get: Callable[[Facts], str | None], *, glob: bool) -> Predicate:
    """A one-valued fact: in ``in`` (when given) and not in ``not_in``."""
    allowed = None if selection.in_ is None else _Values(selection.in_, glob)
    excluded = _Values(selection.not_in, glob) if selection.not_in else None

    def test(facts: Facts) -> bool:
        value = get(facts)
        if value is None:
            return allowed is None
        if allowed is not None and not allowed.contains(value):
            return False
        return excluded is None or not excluded.contains(value)

    return test


def _set(selection: Selection, get: Callable[[Facts], frozenset[str]]) -> Predicate:
    """A set-valued fact: shares a value with ``in`` (``*`` = any set) and none with ``not_in``."""
    everyone = selection.in_ is not None and "*" in selection.in_
    allowed = None if selection.in_ is None or everyone else frozenset(selection.in_)
    excluded = frozenset(selection.not_in)
    excludes_all = "*" in excluded

    def test(facts: Facts) -> bool:
        values = get(facts)
        if allowed is not None and allowed.isdisjoint(values):
            return False
        if excludes_all and values:
            return False
        return excluded.isdisjoint(values)

    return test
