"""Built-in PII detectors: pure functions over text, compiled regular expressions, checksums.

Each detector finds one class of value and names it with the data-class taxonomy the audit
records use (``pii.email``, ``fin.pan``, …). Where a class has a checksum, a candidate must pass
it (Luhn for payment cards, ISO 7064 mod 97-10 for IBANs): a random 16-digit number is not a
card number nine times in ten, and that is most of what keeps false positives down.

What is detected (deliberately narrow: a placeholder in an audit copy is cheap, a missed value
is not, but a redactor that eats every number makes the copy useless):

- ``pii.email``: ``local@domain.tld``;
- ``pii.phone``: an international number written with ``+`` and its country code (8 to 15
  digits, spaces, dots, dashes or parentheses between groups), or a North American number
  ``(415) 555-2671`` / ``415-555-2671`` / ``415.555.2671``;
- ``fin.pan``: 13 to 19 digits, optionally grouped by single spaces or dashes, passing Luhn;
- ``fin.iban``: country code, check digits and BBAN, grouped or not, of the length the country
  uses (unknown countries: 15 to 34 characters), passing mod 97;
- ``pii.national_id.us_ssn``: ``AAA-GG-SSSS`` with the numbers the SSA never issues excluded;
- ``pii.ip_address``: a dotted-quad IPv4 address.

``scan`` returns the matches (overlaps resolved in the order above, highest first, so that the
digits of an IBAN are not also reported as a phone number); ``redact`` replaces each with a
placeholder such as ``[EMAIL]`` and counts them per class. Values are never logged or kept.

The guardrails package builds its ``pii`` guardrail on these; the audit trail uses ``redact``
for ``audit.content: redacted``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

#: Changes whenever what the detectors find changes (recorded as the detection's source).
DETECTOR_VERSION: Final = "custos.pii/1"

EMAIL: Final = "pii.email"
PHONE: Final = "pii.phone"
CARD: Final = "fin.pan"
IBAN: Final = "fin.iban"
US_SSN: Final = "pii.national_id.us_ssn"
IPV4: Final = "pii.ip_address"

PLACEHOLDERS: Final = {
    EMAIL: "[EMAIL]",
    PHONE: "[PHONE]",
    CARD: "[CARD]",
    IBAN: "[IBAN]",
    US_SSN: "[SSN]",
    IPV4: "[IPV4]",
}


@dataclass(frozen=True, slots=True)
class Match:
    """One detected value: its class and where it is (``text[start:end]``)."""

    kind: str
    start: int
    end: int


# -- checksums ---------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 / ISO 7064 mod 97-10: move the first four characters to the end, letters to
    numbers (A=10 … Z=35); the number mod 97 must be 1. ``iban`` is compact (no spaces)."""
    if len(iban) < 15 or len(iban) > 34 or not iban.isascii() or not iban.isalnum():
        return False
    if not (iban[:2].isalpha() and iban[:2].isupper() and iban[2:4].isdigit()):
        return False
    rearranged = iban[4:] + iban[:4]
    remainder = 0
    for char in rearranged.upper():
        value = int(char, 36)  # '0'-'9' → 0-9, 'A'-'Z' → 10-35
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
    return remainder == 1


#: The length of an IBAN in each country that issues them (ISO 13616 registry).
IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


# -- the detectors -----------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-])"
)
_INTERNATIONAL_PHONE = re.compile(
    r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,6}(?!\w)"
)
_NANP_PHONE = re.compile(r"(?<![\w(+])(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?!\w)")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_US_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\.?\w)")


def _emails(text: str) -> Iterator[Match]:
    for found in _EMAIL.finditer(text):
        yield Match(EMAIL, found.start(), found.end())


def _phones(text: str) -> Iterator[Match]:
    for found in _INTERNATIONAL_PHONE.finditer(text):
        digits = sum(c.isdigit() for c in found.group())
        if 8 <= digits <= 15:
            yield Match(PHONE, found.start(), found.end())
    for found in _NANP_PHONE.finditer(text):
        yield Match(PHONE, found.start(), found.end())


def _cards(text: str) -> Iterator[Match]:
    for found in _CARD.finditer(text):
        value = found.group()
        if "  " in value or "--" in value:
            continue
        digits = value.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield Match(CARD, found.start(), found.end())


def _ibans(text: str) -> Iterator[Match]:
    # Searched step by step rather than with ``finditer``: a greedy candidate may run on into
    # the next IBAN, which must be looked for from the end of the one accepted.
    position = 0
    while (found := _IBAN.search(text, position)) is not None:
        end = _iban_end(text, found)
        if end is None:
            position = found.start() + 1
            continue
        yield Match(IBAN, found.start(), end)
        position = end


def _iban_end(text: str, found: re.Match[str]) -> int | None:
    """Where the IBAN starting at ``found`` ends, if the candidate begins with a valid one."""
    candidate = found.group()
    compact = candidate.replace(" ", "")
    expected = IBAN_LENGTHS.get(compact[:2])
    # An unknown country: the whole candidate must be the IBAN.
    length = len(compact) if expected is None else expected
    if len(compact) < length:
        return None
    # The span of the first ``length`` characters of the candidate (spaces skipped).
    end, seen = 0, 0
    while seen < length:
        if candidate[end] != " ":
            seen += 1
        end += 1
    after = found.start() + end
    if after < len(text) and text[after].isalnum():
        return None  # runs on into a longer word: not this IBAN
    return after if iban_valid(compact[:length]) else None


def _ssns(text: str) -> Iterator[Match]:
    for found in _US_SSN.finditer(text):
        yield Match(US_SSN, found.start(), found.end())


def _ipv4s(text: str) -> Iterator[Match]:
    for found in _IPV4.finditer(text):
        yield Match(IPV4, found.start(), found.end())


#: In priority order: where two matches overlap, the earlier detector's wins.
DETECTORS: Final[tuple[tuple[str, Callable[[str], Iterator[Match]]], ...]] = (
    (EMAIL, _emails),
    (IBAN, _ibans),
    (CARD, _cards),
    (US_SSN, _ssns),
    (PHONE, _phones),
    (IPV4, _ipv4s),
)

#: A text without one of these characters cannot hold any value above: skip the regexes.
_TRIGGER = re.compile(r"[@\d]")


def scan(text: str) -> list[Match]:
    """Every detected value in ``text``, by position; overlapping matches are resolved by
    detector priority (``DETECTORS``), then by the earlier start."""
    if not _TRIGGER.search(text):
        return []
    taken: list[Match] = []
    for _kind, detect in DETECTORS:
        for found in detect(text):
            if not any(found.start < t.end and t.start < found.end for t in taken):
                taken.append(found)
    taken.sort(key=lambda m: m.start)
    return taken


def redact(text: str) -> tuple[str, Counter[str]]:
    """``text`` with each detected value replaced by its class's placeholder, and how many
    values of each class were replaced."""
    matches = scan(text)
    if not matches:
        return text, Counter()
    parts: list[str] = []
    counts: Counter[str] = Counter()
    position = 0
    for found in matches:
        parts.append(text[position : found.start])
        parts.append(PLACEHOLDERS[found.kind])
        counts[found.kind] += 1
        position = found.end
    parts.append(text[position:])
    return "".join(parts), counts
