"""Detectors as the guardrails and data classes use them: built from config, run over text.

Built in: ``pii`` (``custos.guardrails.pii``), ``secrets`` (``custos.guardrails.secrets``),
``prompt_injection`` (``custos.guardrails.injection``), ``regex`` (named patterns) and
``keywords`` (``custos.guardrails.keywords``). A guardrail's ``kinds`` and a data class's
``detectors`` select kinds or families of kinds (``pii.national_id``, ``secret``).

A ``Detector`` finds values of some kinds in a text (``find(text)`` → non-overlapping
``Finding``s by position; prompt-injection findings name rules, may overlap, and are never
redacted: that guardrail validates); ``redact`` replaces them with typed placeholders numbered
per request through a ``Numbering`` (the same value gets the same placeholder everywhere in one
request).
``for_guardrail`` and ``data_class_detector`` build them from the config's settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from custos.config.guardrails import DataClassSettings, GuardrailSettings
from custos.guardrails import injection, pii, secrets
from custos.guardrails.keywords import KeywordMatcher
from custos.guardrails.spans import first_disjoint

_M = TypeVar("_M")


@dataclass(frozen=True, slots=True)
class Finding:
    """One value found: its kind (``pii.email``, ``pattern.customer_id``, …) and where it is."""

    kind: str
    start: int
    end: int


class Detector(Protocol):
    #: Changes whenever what it finds changes (recorded beside detected data classes).
    version: str

    def find(self, text: str) -> list[Finding]: ...


class Numbering:
    """Placeholders given out in one request: value → ``<KIND_N>``. (A plain class: one is
    made per request, and a dataclass's default factories cost more than the dicts.)"""

    __slots__ = ("counts", "given")

    def __init__(self) -> None:
        self.given: dict[tuple[str, str], str] = {}
        self.counts: dict[str, int] = {}

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        found = self.given.get(key)
        if found is None:
            label = kind.rsplit(".", 1)[-1].upper()
            self.counts[label] = number = self.counts.get(label, 0) + 1
            found = self.given[key] = f"<{label}_{number}>"
        return found


def redact(text: str, findings: Sequence[Finding], numbering: Numbering) -> str:
    """``text`` with each finding replaced by its placeholder."""
    parts: list[str] = []
    position = 0
    for finding in findings:
        parts.append(text[position : finding.start])
        parts.append(numbering.placeholder(finding.kind, text[finding.start : finding.end]))
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)


def _selector(kinds: Iterable[str] | None) -> Callable[[str], bool]:
    """Whether a kind is selected by ``kinds``: itself or a family named by a prefix
    (``pii.national_id`` selects ``pii.national_id.us_ssn``); ``None`` selects all."""
    if kinds is None:
        return lambda kind: True
    chosen = frozenset(kinds)
    memo: dict[str, bool] = {}

    def selected(kind: str) -> bool:
        found = memo.get(kind)
        if found is None:
            parts = kind.split(".")
            prefixes = (".".join(parts[:n]) for n in range(1, len(parts) + 1))
            found = memo[kind] = any(p in chosen for p in prefixes)
        return found

    return selected


class PIIDetector:
    """The built-in PII detectors (``custos.guardrails.pii``), restricted to ``kinds``."""

    version = pii.DETECTOR_VERSION

    def __init__(self, kinds: Iterable[str] | None = None) -> None:
        self.selected = _selector(kinds)

    def find(self, text: str) -> list[Finding]:
        selected = self.selected
        return [Finding(m.kind, m.start, m.end) for m in _cached(pii.scan, text)
                if selected(m.kind)]  # fmt: skip


class SecretsDetector:
    """The built-in secret detectors (``custos.guardrails.secrets``), restricted to ``kinds``."""

    version = secrets.DETECTOR_VERSION

    def __init__(self, kinds: Iterable[str] | None = None) -> None:
        self.selected = _selector(kinds)

    def find(self, text: str) -> list[Finding]:
        selected = self.selected
        return [Finding(m.kind, m.start, m.end) for m in _cached(secrets.scan, text)
                if selected(m.kind)]  # fmt: skip


#: The last text each scanner read and what it found: data-class detection and the input
#: guardrails read the same strings of a request, so the second pass over a text is free.
_LAST: dict[Callable[[str], Any], tuple[str, Any]] = {}


def _cached(scan: Callable[[str], list[_M]], text: str) -> list[_M]:
    last = _LAST.get(scan)
    if last is not None and last[0] is text:
        return last[1]  # type: ignore[no-any-return]
    found = scan(text)
    _LAST[scan] = (text, found)
    return found


class InjectionDetector:
    """The prompt-injection rules (``custos.guardrails.injection``): the matched rules as
    findings (``injection.RULE``, possibly overlapping) when their score reaches
    ``threshold``, else nothing."""

    version = injection.RULES_VERSION

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = injection.DEFAULT_THRESHOLD if threshold is None else threshold

    def find(self, text: str) -> list[Finding]:
        hits = injection.matches(text)
        if not hits or injection.score(hits) < self.threshold:
            return []
        return sorted((Finding(f"injection.{h.rule}", h.start, h.end) for h in hits),
                      key=lambda f: f.start)  # fmt: skip


class PatternDetector:
    """Named regular expressions (``pattern.NAME``), in one alternation."""

    version = "custos.patterns/1"

    def __init__(self, patterns: Mapping[str, str]) -> None:
        self._kinds = [f"pattern.{name}" for name in patterns]
        self._regex = re.compile("|".join(f"((?:{p}))" for p in patterns.values()))
        prefixes = [literal_prefix(p) for p in patterns.values()]
        #: What every match starts with, per pattern (``None``: some pattern has no such
        #: prefix, so the expression always runs).
        self._prefixes = tuple(prefixes) if all(prefixes) else None

    def find(self, text: str) -> list[Finding]:
        # ``re`` tries the alternation at every position (some 8 instructions a character
        # even for ``CUST-[0-9]{6}``); ``in`` finds a literal at memory speed, and a text
        # without any pattern's prefix holds no match.
        if self._prefixes is not None:
            for prefix in self._prefixes:  # (a loop: a generator costs more than the search)
                if prefix in text:
                    break
            else:
                return []
        found = []
        for match in self._regex.finditer(text):
            if match.end() > match.start():
                found.append(Finding(self._kinds[match.lastindex - 1], match.start(), match.end()))  # type: ignore[operator]
        return found


#: Characters ``re`` gives a meaning to outside a character class.
_SPECIAL = frozenset("\\.^$*+?{}[]|()")


def literal_prefix(pattern: str) -> str:
    """The characters every match of ``pattern`` starts with, read conservatively: the plain
    characters before its first special one, less the last if a quantifier follows it; ``""``
    for a pattern with a ``|`` anywhere (an alternative need not start the same way)."""
    if "|" in pattern:
        return ""
    end = 0
    while end < len(pattern) and pattern[end] not in _SPECIAL:
        end += 1
    if end < len(pattern) and pattern[end] in "*+?{":
        end -= 1
    return pattern[: max(end, 0)]


class KeywordDetector:
    """Keyword lists (``keyword.NAME``): whole words, case-insensitive, Aho-Corasick."""

    version = "custos.keywords/1"

    def __init__(self, lists: Mapping[str, Sequence[str]]) -> None:
        self._matcher = KeywordMatcher(lists)

    def find(self, text: str) -> list[Finding]:
        return [Finding(f"keyword.{name}", start, end)
                for name, start, end in self._matcher.find(text)]  # fmt: skip


class CombinedDetector:
    """Several detectors as one: findings by position, an overlap kept for the first."""

    def __init__(self, parts: Sequence[Detector]) -> None:
        self.parts = tuple(parts)
        self.version = "+".join(sorted({p.version for p in parts}))

    def find(self, text: str) -> list[Finding]:
        if len(self.parts) == 1:
            return self.parts[0].find(text)
        found = [f for part in self.parts for f in part.find(text)]
        return first_disjoint(found) if len(found) > 1 else found


def for_guardrail(settings: GuardrailSettings) -> Detector:
    """The detector of a content guardrail (``pii``, ``secrets``, ``regex``, ``keywords``,
    ``prompt_injection``)."""
    kind = settings.type
    if kind == "pii":
        return PIIDetector(settings.kinds)
    if kind == "secrets":
        return SecretsDetector(settings.kinds)
    if kind == "prompt_injection":
        return InjectionDetector(settings.threshold)
    if kind == "regex":
        return PatternDetector(settings.patterns)
    if kind == "keywords":
        return KeywordDetector(settings.keywords)
    raise ValueError(f"no detector for guardrails of type {kind}")


def data_class_detector(settings: DataClassSettings) -> Detector:
    """What finds one data class: its built-in detectors (PII kinds such as ``pii.email`` or
    ``fin.pan``, secret kinds ``secret.*``), patterns and keyword lists."""
    families: dict[str, list[str]] = {}
    for name in settings.detectors:
        families.setdefault(name.split(".", 1)[0], []).append(name)
    parts: list[Detector] = []
    secret_kinds = families.pop("secret", [])
    pattern_names = {n.split(".", 1)[1] for n in families.pop("pattern", [])}
    keyword_names = {n.split(".", 1)[1] for n in families.pop("keyword", [])}
    pii_kinds = [n for names in families.values() for n in names]
    if pii_kinds:
        parts.append(PIIDetector(pii_kinds))
    if secret_kinds:
        parts.append(SecretsDetector(secret_kinds))
    if pattern_names:
        parts.append(PatternDetector({n: p for n, p in settings.patterns.items()
                                      if n in pattern_names}))  # fmt: skip
    if keyword_names:
        parts.append(KeywordDetector({n: w for n, w in settings.keywords.items()
                                      if n in keyword_names}))  # fmt: skip
    return CombinedDetector(parts)
