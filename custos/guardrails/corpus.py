"""Precision and recall of the built-in detectors over a labelled corpus.

A corpus is JSON lines, one text each: ``{"text": …, "language": "en", "expected": [kinds]}``
(``expected``: the ``pii.*``/``fin.*`` and ``secret.*`` kinds the text holds, and
``injection`` for a prompt injection; empty for a clean text). Each detector runs as a
guardrail with its defaults would (``pii`` and ``secrets`` with every kind,
``prompt_injection`` at its default threshold) and is scored per text and kind: a kind
expected and found is a true positive, expected and not found a false negative, found and not
expected a false positive. ``flagged_clean`` lists the clean texts (no expected kind) on which
any detector found anything, which is what a blocking guardrail would have refused.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custos.guardrails.detectors import Detector, InjectionDetector, PIIDetector, SecretsDetector


@dataclass(frozen=True, slots=True)
class Entry:
    text: str
    language: str
    expected: frozenset[str]


@dataclass(slots=True)
class Counts:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "tp": self.true_positives, "fp": self.false_positives,
                "fn": self.false_negatives}  # fmt: skip


@dataclass(slots=True)
class Report:
    entries: int = 0
    by_detector: dict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))
    by_kind: dict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))
    #: (detector, text) of each clean text a detector flagged.
    flagged_clean: list[tuple[str, str]] = field(default_factory=list)
    #: (detector, text, missed kinds, extra kinds) of each text scored wrong.
    mistakes: list[tuple[str, str, list[str], list[str]]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "detectors": {n: c.as_dict() for n, c in sorted(self.by_detector.items())},
            "kinds": {n: c.as_dict() for n, c in sorted(self.by_kind.items())},
            "flagged_clean": [{"detector": d, "text": t} for d, t in self.flagged_clean],
        }


Detectors = dict[str, tuple[Detector, tuple[str, ...]]]


#: Each detector as a default guardrail, and which expected kinds are its to find.
def default_detectors() -> Detectors:
    return {
        "pii": (PIIDetector(), ("pii.", "fin.")),
        "secrets": (SecretsDetector(), ("secret.",)),
        "prompt_injection": (InjectionDetector(), ("injection",)),
    }


def load(path: Path) -> list[Entry]:
    """The corpus at ``path``; a malformed line is a ``ValueError`` naming it."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            entries.append(Entry(raw["text"], raw.get("language", "?"),
                                 frozenset(raw.get("expected", []))))  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not a corpus entry ({exc})") from None
    return entries


def _found_kinds(detector: Detector, name: str, text: str) -> set[str]:
    found = {f.kind for f in detector.find(text)}
    return {"injection"} if name == "prompt_injection" and found else found


def evaluate(entries: Iterable[Entry], detectors: Detectors | None = None) -> Report:
    """Score each detector over ``entries`` (see the module docstring)."""
    chosen = detectors if detectors is not None else default_detectors()
    report = Report()
    for entry in entries:
        report.entries += 1
        for name, (detector, families) in chosen.items():
            expected = {k for k in entry.expected if k.startswith(families)}
            found = _found_kinds(detector, name, entry.text)
            for kind in expected | found:
                counts = (report.by_detector[name], report.by_kind[kind])
                for c in counts:
                    if kind in expected and kind in found:
                        c.true_positives += 1
                    elif kind in found:
                        c.false_positives += 1
                    else:
                        c.false_negatives += 1
            if found and not entry.expected:
                report.flagged_clean.append((name, entry.text))
            if found != expected:
                report.mistakes.append((name, entry.text, sorted(expected - found),
                                        sorted(found - expected)))  # fmt: skip
    return report


def table(report: Report) -> Iterator[str]:
    """The report as text lines: per detector, then per kind."""
    yield f"{report.entries} texts"
    for title, rows in (("detector", report.by_detector), ("kind", report.by_kind)):
        yield ""
        yield f"{title:<32} {'precision':>9} {'recall':>7} {'tp':>5} {'fp':>4} {'fn':>4}"
        for name, c in sorted(rows.items()):
            yield (f"{name:<32} {c.precision:>9.3f} {c.recall:>7.3f} {c.true_positives:>5} "
                   f"{c.false_positives:>4} {c.false_negatives:>4}")  # fmt: skip
    yield ""
    yield f"clean texts flagged: {len(report.flagged_clean)}"
