"""What the built-in detectors cost, in CPU time (``time.process_time``) per 100 KB of text.

    .venv/bin/python bench/detectors.py [--repeat N] [--json]

1. Detector sets over a 100 KB prompt (prose with the numbers, dates, versions and prices of
   ordinary business text): ``pii``, ``secrets``, ``prompt_injection``, a ``customer_data``
   data class, and ``pii + secrets + customer_data`` as the gateway runs them on one request
   (data-class detection, then the guardrails, over the same strings). The budget is 5 ms.
2. Keyword lists of 10, 1,000 and 50,000 words over 100 KB: Aho-Corasick (``pyahocorasick``,
   what the ``keywords`` type uses) against one Python ``re`` alternation (what it used before).
3. Many patterns in one pass: the detectors' candidate expressions as one ``google-re2`` set or
   one ``hyperscan`` database, against Python ``re`` one expression at a time, when those
   libraries are installed (they are not dependencies; ``pip install google-re2 hyperscan``).

Each figure is the median of ``--repeat`` runs. Not part of ``make bench``: it measures the
detectors alone, in process.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from custos.config.guardrails import DataClassSettings, GuardrailSettings
from custos.guardrails import detectors, injection, pii, secrets

_WORDS = tuple(
    " ".join(
        (
            "the of and to in is that for it as was with be by on not this are or from at which",
            "but have an they you were she there been one all we their can has more if will would",
            "about so no what up out into them may then like some time two could these other than",
            "only new also any our its over most people after first even made customer account",
            "invoice delivery shipment please thanks regards team der die und nicht mit Rechnung",
            "Lieferung le la et pour avec facture livraison el los para con factura envío The We",
            "API OK Europe Monday",
        )
    ).split(" ")
)
_NUMBERS = ("2.4.1", "12345", "2026-07-01", "10:30", "19.99", "3", "42", "2025", "(see 4)",
            "v1.2", "#4471", "€ 1.299,00", "ORD-2024-118833")  # fmt: skip


def prose(size: int = 100_000, seed: int = 1) -> str:
    """``size`` characters of ordinary text: words, sometimes a number, sentences."""
    rng = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_NUMBERS) if rng.random() < 0.02 else rng.choice(_WORDS)
        if rng.random() < 0.07:
            word += "."
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def cpu_ms(run: Callable[[], Any], repeat: int) -> float:
    """The median CPU time of ``run()``, in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1000


# -- 1. detector sets -----------------------------------------------------------------------------


def detector_sets(text: str, repeat: int) -> dict[str, float]:
    pii_guardrail = detectors.for_guardrail(
        GuardrailSettings(id="pii-in", hook="llm_input", type="pii", operation="mutate")
    )
    secrets_guardrail = detectors.for_guardrail(
        GuardrailSettings(id="secrets-out", hook="llm_output", type="secrets")
    )
    injection_guardrail = detectors.for_guardrail(
        GuardrailSettings(id="injection", hook="llm_input", type="prompt_injection")
    )
    customer_data = detectors.data_class_detector(
        DataClassSettings(
            detectors=["pii.email", "pii.phone", "fin.iban", "pattern.customer_id"],
            patterns={"customer_id": "CUST-[0-9]{6}"},
        )
    )

    def fresh(detector: detectors.Detector) -> Callable[[], Any]:
        # A new string each run, so the one-text cache of the scanners never answers.
        return lambda: detector.find(text + " ")

    def request() -> None:
        # One request: the class detection and both guardrails read the same string.
        prompt = text + " "
        customer_data.find(prompt)
        pii_guardrail.find(prompt)
        secrets_guardrail.find(prompt)

    return {
        "pii": cpu_ms(fresh(pii_guardrail), repeat),
        "secrets": cpu_ms(fresh(secrets_guardrail), repeat),
        "customer_data class": cpu_ms(fresh(customer_data), repeat),
        "prompt_injection": cpu_ms(fresh(injection_guardrail), repeat),
        "pii + secrets + customer_data (one request)": cpu_ms(request, repeat),
    }


# -- 2. keyword lists -----------------------------------------------------------------------------


def keyword_lists(text: str, repeat: int) -> dict[str, dict[str, float]]:
    rng = random.Random(7)
    figures: dict[str, dict[str, float]] = {}
    for count in (10, 1_000, 50_000):
        words = [
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 12)))
            for _ in range(count)
        ]
        words[0] = "livraison"  # one that occurs, so both find something
        started = time.process_time()
        automaton = detectors.KeywordDetector({"list": words})
        ac_build = (time.process_time() - started) * 1000
        started = time.process_time()
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        regex = re.compile(rf"(?i:\b(?:{alternatives})\b)")
        re_build = (time.process_time() - started) * 1000
        ac_found = automaton.find(text)
        re_found = list(regex.finditer(text))
        assert len(ac_found) == len(re_found), (count, len(ac_found), len(re_found))
        figures[f"{count} keywords"] = {
            "aho-corasick scan": cpu_ms(lambda a=automaton: a.find(text), repeat),
            "re alternation scan": cpu_ms(lambda r=regex: list(r.finditer(text)), repeat),
            "aho-corasick build": ac_build,
            "re alternation build": re_build,
        }
    return figures


# -- 3. many patterns in one pass -----------------------------------------------------------------

#: The candidate expressions of the PII and secret detectors, without the look-arounds that
#: RE2 and Hyperscan do not support (Python ``re`` runs the same ones, for a fair comparison).
CANDIDATES = (
    r"\d[\d \-./()]{6,}\d",
    r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}",
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,24}",
    r"(?:\+|00)\d{1,3}(?:[ .-]?\d{1,5}){2,6}",
    r"(?:AKIA|ASIA)[A-Z2-7]{16}",
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}",
    r"gh[pousr]_[A-Za-z0-9]{36,}",
    r"AIza[0-9A-Za-z_-]{35}",
    r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r"xox[abposr]-[A-Za-z0-9-]{10,}",
    r"glpat-[A-Za-z0-9_-]{20,}",
)


def many_patterns(text: str, repeat: int) -> dict[str, Any]:
    compiled = [re.compile(p) for p in CANDIDATES]
    alternation = re.compile("|".join(f"(?:{p})" for p in CANDIDATES))
    figures: dict[str, Any] = {
        "python re, one expression at a time": cpu_ms(
            lambda: [list(p.finditer(text)) for p in compiled], repeat
        ),
        "python re, one alternation": cpu_ms(lambda: list(alternation.finditer(text)), repeat),
    }
    try:
        import re2  # type: ignore[import-not-found]

        options = re2.Options()
        patterns = re2.Set.SearchSet(options)
        for p in CANDIDATES:
            patterns.Add(p)
        patterns.Compile()
        figures["google-re2 set (which patterns match)"] = cpu_ms(
            lambda: patterns.Match(text), repeat
        )
        one = re2.compile("|".join(f"(?:{p})" for p in CANDIDATES))
        figures["google-re2 alternation (with positions)"] = cpu_ms(
            lambda: list(one.finditer(text)), repeat
        )
    except ImportError:
        figures["google-re2"] = "not installed"
    try:
        import hyperscan  # type: ignore[import-not-found]

        database = hyperscan.Database()
        database.compile(
            expressions=[p.encode() for p in CANDIDATES],
            ids=list(range(len(CANDIDATES))),
            flags=[hyperscan.HS_FLAG_SOM_LEFTMOST] * len(CANDIDATES),
        )
        data = text.encode()
        hits: list[tuple[int, int, int]] = []

        def on_match(pattern: int, start: int, end: int, flags: int, context: Any) -> None:
            hits.append((pattern, start, end))

        figures["hyperscan database (with positions)"] = cpu_ms(
            lambda: database.scan(data, match_event_handler=on_match), repeat
        )
    except ImportError:
        figures["hyperscan"] = "not installed"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="runs per figure (median)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    text = prose()
    assert not pii.scan(text) and not secrets.scan(text) and not injection.matches(text)
    results = {
        "text_bytes": len(text.encode()),
        "cpu_ms_per_100kb": detector_sets(text, args.repeat),
        "keywords_cpu_ms": keyword_lists(text, max(3, args.repeat // 5)),
        "many_patterns_cpu_ms": many_patterns(text, args.repeat),
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"text: {results['text_bytes']} bytes")
    for section in ("cpu_ms_per_100kb", "keywords_cpu_ms", "many_patterns_cpu_ms"):
        print(f"\n{section}")
        for name, value in results[section].items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} {v:.2f}" for k, v in value.items())
                print(f"  {name}: {inner}")
            else:
                print(f"  {name}: {value if isinstance(value, str) else f'{value:.2f}'}")


if __name__ == "__main__":
    main()
