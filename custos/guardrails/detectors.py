"""Detectors as the guardrails and data classes use them: built from config, run over text.

A ``Detector`` finds values of some kinds in a text (``find(text)`` → non-overlapping
``Finding``s by position); ``redact`` replaces them with typed placeholders numbered per request
through a ``Numbering`` (the same value gets the same placeholder everywhere in one request).
``for_guardrail`` and ``data_class_detector`` build them from the config's settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from custos.config.guardrails import DataClassSettings, GuardrailSettings
from custos.guardrails import pii


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


@dataclass(slots=True)
class Numbering:
    """Placeholders given out in one request: value → ``<KIND_N>``."""

    given: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

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


class PIIDetector:
    version = pii.DETECTOR_VERSION

    def __init__(self, kinds: Iterable[str] | None = None) -> None:
        self.kinds = frozenset(kinds) if kinds is not None else None

    def find(self, text: str) -> list[Finding]:
        kinds = self.kinds
        return [Finding(m.kind, m.start, m.end) for m in pii.scan(text)
                if kinds is None or m.kind in kinds]  # fmt: skip


class PatternDetector:
    """Named regular expressions (``pattern.NAME``) and keyword lists (``keyword.NAME``: whole
    words, case-insensitive), in one alternation."""

    version = "custos.patterns/1"

    def __init__(
        self, patterns: Mapping[str, str], keywords: Mapping[str, Sequence[str]] = {}
    ) -> None:
        groups: list[str] = []
        self._kinds: list[str] = []
        for name, pattern in patterns.items():
            groups.append(f"(?:{pattern})")
            self._kinds.append(f"pattern.{name}")
        for name, words in keywords.items():
            alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
            groups.append(rf"(?i:\b(?:{alternatives})\b)")
            self._kinds.append(f"keyword.{name}")
        self._regex = re.compile("|".join(f"({g})" for g in groups))

    def find(self, text: str) -> list[Finding]:
        found = []
        for match in self._regex.finditer(text):
            if match.end() > match.start():
                found.append(Finding(self._kinds[match.lastindex - 1], match.start(), match.end()))  # type: ignore[operator]
        return found


class CombinedDetector:
    """Several detectors as one: findings by position, an overlap kept for the first."""

    def __init__(self, parts: Sequence[Detector]) -> None:
        self.parts = tuple(parts)
        self.version = "+".join(sorted({p.version for p in parts}))

    def find(self, text: str) -> list[Finding]:
        if len(self.parts) == 1:
            return self.parts[0].find(text)
        taken: list[Finding] = []
        for part in self.parts:
            for f in part.find(text):
                if not any(f.start < t.end and t.start < f.end for t in taken):
                    taken.append(f)
        taken.sort(key=lambda f: f.start)
        return taken


def for_guardrail(settings: GuardrailSettings) -> Detector:
    kind = settings.type
    if kind == "pii":
        return PIIDetector(settings.kinds)
    if kind == "regex":
        return PatternDetector(settings.patterns)
    if kind == "keywords":
        return PatternDetector({}, settings.keywords)
    raise ValueError(f"no detector for guardrails of type {kind}")


def data_class_detector(settings: DataClassSettings) -> Detector:
    """What finds one data class: its built-in detectors, patterns and keyword lists."""
    builtin = [d for d in settings.detectors if d.split(".", 1)[0] not in ("pattern", "keyword")]
    parts: list[Detector] = []
    if builtin:
        parts.append(PIIDetector(builtin))
    patterns = {n: p for n, p in settings.patterns.items() if f"pattern.{n}" in settings.detectors}
    keywords = {n: w for n, w in settings.keywords.items() if f"keyword.{n}" in settings.detectors}
    if patterns or keywords:
        parts.append(PatternDetector(patterns, keywords))
    return CombinedDetector(parts)
