"""The built-in detectors against the labelled corpus (tests/corpus): precision and recall
floors per detector, no clean look-alike flagged, and the corpus as its builder writes it.

The floors are below what is measured (docs/guardrails.md has the figures: 1.000 on both
corpora since the fixes the held-out set prompted; 0.878 to 1.000 on the held-out set as first
seen), so that a real regression fails and a new hard example does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from custos.cli import main
from custos.guardrails import corpus, pii, secrets

CORPORA = Path(__file__).parent / "corpus"
FLOORS = {  # detector: (precision, recall)
    "pii": (0.97, 0.95),
    "secrets": (0.97, 0.95),
    "prompt_injection": (0.97, 0.95),
}


@pytest.fixture(scope="module")
def entries() -> list[corpus.Entry]:
    return corpus.load(CORPORA / "detectors.jsonl") + corpus.load(CORPORA / "holdout.jsonl")


@pytest.fixture(scope="module")
def report(entries: list[corpus.Entry]) -> corpus.Report:
    return corpus.evaluate(entries)


def test_the_corpus_is_large_varied_and_covers_every_kind(entries: list[corpus.Entry]) -> None:
    assert len(entries) >= 500
    languages = {e.language for e in entries}
    assert {"en", "de", "fr", "es"} <= languages and len(languages) >= 6
    clean = [e for e in entries if not e.expected]
    assert len(clean) >= 150
    expected = set().union(*(e.expected for e in entries))
    assert set(pii.PRIORITY) <= expected
    assert {r.kind for r in secrets.RULES} | {"secret.high_entropy"} <= expected
    assert "injection" in expected
    for language in ("en", "de", "fr", "es"):
        kinds = set().union(*(e.expected for e in entries if e.language == language))
        assert "injection" in kinds and any(k.startswith("secret.") for k in kinds)
        assert any(k.startswith(("pii.", "fin.")) for k in kinds)
        assert any(not e.expected for e in entries if e.language == language)


@pytest.mark.parametrize("detector", sorted(FLOORS))
def test_precision_and_recall_floors(report: corpus.Report, detector: str) -> None:
    counts = report.by_detector[detector]
    precision, recall = FLOORS[detector]
    mistakes = [m for m in report.mistakes if m[0] == detector]
    assert counts.precision >= precision, mistakes
    assert counts.recall >= recall, mistakes


def test_no_clean_look_alike_is_flagged(report: corpus.Report) -> None:
    assert report.flagged_clean == []


def test_the_corpus_file_is_what_its_builder_writes() -> None:
    from tests.corpus import build

    written = [json.loads(line) for line in (CORPORA / "detectors.jsonl").read_text().splitlines()]
    assert written == build.entries


def test_eval_command_prints_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guardrails", "eval", "--corpus", str(CORPORA / "holdout.jsonl"), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["entries"] == 92
    assert set(figures["detectors"]) == set(FLOORS)
    assert figures["kinds"]["fin.iban"]["recall"] == 1.0
    assert main(["guardrails", "eval", "--corpus", str(CORPORA / "holdout.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "precision" in text and "prompt_injection" in text and "clean texts flagged: 0" in text


def test_eval_command_refuses_a_bad_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "expected": []}\n{"no text": 1}\n')
    assert main(["guardrails", "eval", "--corpus", str(bad)]) == 1
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert main(["guardrails", "eval", "--corpus", str(tmp_path / "missing.jsonl")]) == 1
