"""Built-in PII detectors: compiled regular expressions to find candidates, checksums and
number plans (``phonenumbers``, ``python-stdnum``) to accept them.

Each detector finds one class of value and names it with the data-class taxonomy the audit
records use (``pii.email``, ``fin.pan``, …). Where a class has a checksum, a candidate must pass
it: a random 16-digit number is not a card number nine times in ten, and that is most of what
keeps false positives down. Identifiers whose checksum is weak (a plain run of 9 or 11 digits
passing one time in ten or eleven) are only taken next to a word that names them
(``Steuer-ID``, ``BSN``, ``PESEL``); a phone number written nationally (no ``+``) only next to
a word such as ``phone``, ``Tel.``, ``téléphone``, ``teléfono`` (North American numbers in their
usual ``(415) 555-2671`` layout are taken as they are).

What is detected (``scan``):

- ``pii.email``: ``local@domain.tld``, letters of any script (``josé@correo.es``), not inside
  a URL (``scheme://user:password@host`` is a credential);
- ``pii.phone``: ``+CC …`` or ``00CC …`` numbers that ``phonenumbers`` says are valid; North
  American ``(415) 555-2671`` / ``415-555-2671`` / ``415.555.2671``; national numbers of the
  countries in ``PHONE_REGIONS`` next to a phone word;
- ``fin.pan``: 13 to 19 digits, optionally grouped by single spaces or dashes, passing Luhn;
- ``fin.iban``: country code, check digits and BBAN, grouped or not, of the length the country
  uses (unknown countries: 15 to 34 characters), passing ISO 7064 mod 97-10;
- ``fin.vat_id``: EU (and UK) VAT numbers with their country prefix, valid per ``stdnum``;
- ``pii.national_id.*``: ``us_ssn`` (``AAA-GG-SSSS``, never-issued numbers excluded; with
  spaces or none next to ``SSN``),
  ``uk_nino``, ``fr_nir``, ``es_dni`` (DNI and NIE), ``it_cf`` (codice fiscale); next to their
  name: ``de_idnr``, ``nl_bsn``, ``pl_pesel``;
- ``pii.ip_address``: a dotted-quad IPv4 address (not when it follows a word such as
  ``version``; never loopback, ``0.0.0.0`` or broadcast); ``pii.ip_address.v6``: an IPv6
  address with at least one digit (never ``::1`` or ``::``).

``scan`` returns the matches by position (overlaps resolved by ``PRIORITY``, so that the digits
of an IBAN are not also reported as a phone number); ``redact`` replaces each with a placeholder
such as ``[EMAIL]`` and counts them per class. Values are never logged or kept. The guardrails
package builds its ``pii`` guardrail on these; the audit trail uses ``redact`` for
``audit.content: redacted``.

How it stays fast (a 100 KB prompt in about a millisecond): three cheap passes find every
candidate (runs of digits and separators, runs starting with capitals, and ``@``/``:``), and the
precise expressions and checks run only on those short runs.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import phonenumbers
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.eu import vat
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.pl import pesel
from stdnum.us import ssn

from custos.guardrails.spans import first_disjoint

#: Changes whenever what the detectors find changes (recorded as the detection's source).
DETECTOR_VERSION: Final = "custos.pii/2"

EMAIL: Final = "pii.email"
PHONE: Final = "pii.phone"
CARD: Final = "fin.pan"
IBAN: Final = "fin.iban"
VAT: Final = "fin.vat_id"
US_SSN: Final = "pii.national_id.us_ssn"
UK_NINO: Final = "pii.national_id.uk_nino"
FR_NIR: Final = "pii.national_id.fr_nir"
ES_DNI: Final = "pii.national_id.es_dni"
IT_CF: Final = "pii.national_id.it_cf"
DE_IDNR: Final = "pii.national_id.de_idnr"
NL_BSN: Final = "pii.national_id.nl_bsn"
PL_PESEL: Final = "pii.national_id.pl_pesel"
IPV4: Final = "pii.ip_address"
IPV6: Final = "pii.ip_address.v6"

PLACEHOLDERS: Final = {
    EMAIL: "[EMAIL]",
    PHONE: "[PHONE]",
    CARD: "[CARD]",
    IBAN: "[IBAN]",
    VAT: "[VAT]",
    US_SSN: "[SSN]",
    UK_NINO: "[NATIONAL_ID]",
    FR_NIR: "[NATIONAL_ID]",
    ES_DNI: "[NATIONAL_ID]",
    IT_CF: "[NATIONAL_ID]",
    DE_IDNR: "[NATIONAL_ID]",
    NL_BSN: "[NATIONAL_ID]",
    PL_PESEL: "[NATIONAL_ID]",
    IPV4: "[IPV4]",
    IPV6: "[IPV6]",
}

#: Every kind ``scan`` reports, highest priority first: where two matches overlap, the one of
#: the earlier kind wins (then the earlier start).
PRIORITY: Final = (EMAIL, IBAN, VAT, CARD, IT_CF, ES_DNI, UK_NINO, FR_NIR, US_SSN, DE_IDNR,
                   PL_PESEL, NL_BSN, PHONE, IPV4, IPV6)  # fmt: skip
_RANK: Final = {kind: rank for rank, kind in enumerate(PRIORITY)}

#: Countries whose nationally written numbers (next to a phone word) are recognised.
PHONE_REGIONS: Final = ("DE", "FR", "GB", "ES", "IT", "NL", "BE", "AT", "CH", "PL", "IE", "PT",
                        "SE", "DK", "US")  # fmt: skip


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


def nino_valid(value: str) -> bool:
    """A UK National Insurance number (compact): the prefixes HMRC never issues excluded."""
    return (
        len(value) == 9
        and value[0] not in "DFIQUV"
        and value[1] not in "DFIOQUV"
        and value[:2] not in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ")
        and value[2:8].isdigit()
        and value[8] in "ABCD"
    )


# -- candidate passes --------------------------------------------------------------------------

#: Runs of digits and the separators numbers are written with, at least four digits.
_DIGIT_RUN = re.compile(r"\d(?:[ \-./()]{0,2}\d){3,}[\d \-./()]*")
#: Runs that start with two capitals or a capital and a digit (IBAN, VAT, NINO, CF, NIE) and
#: hold at least five digits.
_UPPER_RUN = re.compile(r"[A-Z][A-Z\d](?:[A-Z \-.]{0,8}\d){5}[A-Z\d \-.]*")
_TRIGGER = re.compile(r"[@\d]")

#: Internationalised addresses too (RFC 6531): letters of any script in both parts.
_EMAIL_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")
_EMAIL_LOCAL_MARKS = frozenset("._%+-")
_INTERNATIONAL_PHONE = re.compile(
    r"(?<![\w+])(?:\+|00)\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){2,6}(?!\w)"
)
_NANP_PHONE = re.compile(r"(?<![\w(+])(?:\(\d{3}\) ?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-])")
_NATIONAL_PHONE = re.compile(r"(?<![\w+])\(?\d[\d ()/.-]{5,18}\d(?!\w)")
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")
_VAT = re.compile(
    r"(?<![A-Za-z0-9])(?:AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|GB|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT"
    r"|RO|SE|SI|SK|XI)[ -]?[0-9A-Z](?:[ .]?[0-9A-Z]){6,13}"
)
_US_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
#: Next to its name, an SSN also written with spaces or none.
_US_SSN_NAMED = re.compile(r"(?<![\w-])\d{3} ?\d{2} ?\d{4}(?![\w-])")
_UK_NINO = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])")
_FR_NIR = re.compile(r"(?<![\w-])[12] ?\d{2} ?\d{2} ?\d{2} ?\d{3} ?\d{3} ?\d{2}(?![\w-])")
_ES_DNI = re.compile(r"(?<![\w-])\d{8}-?[A-Z](?![\w-])")
_ES_NIE = re.compile(r"(?<![\w-])[XYZ]-?\d{7}-?[A-Z](?![\w-])")
_IT_CF = re.compile(r"(?<![A-Za-z0-9])[A-Z]{6}[0-9LMNPQRSTUV]{2}[A-EHLMPR-T][0-9LMNPQRSTUV]{2}"
                    r"[A-Z][0-9LMNPQRSTUV]{3}[A-Z](?![A-Za-z0-9])")  # fmt: skip
_ELEVEN_DIGITS = re.compile(r"(?<![\w-])\d{2} ?\d{3} ?\d{3} ?\d{3}(?![\w-])")
_NINE_DIGITS = re.compile(r"(?<![\w-])\d{3}[ .]?\d{2}[ .]?\d{2}[ .]?\d{2}(?![\w-])|"
                          r"(?<![\w-])\d{4}\.\d{2}\.\d{3}(?![\w-])")  # fmt: skip
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\.?\w)")
#: Dates are not phone numbers, whatever word is near them.
_DATE = re.compile(r"(?:19|20)\d\d[-./]\d\d?[-./]\d\d?|\d\d?[-./]\d\d?[-./](?:19|20)?\d\d")
#: A number in groups (``06 12 34 56 78``, ``612-34-56-78``), as phones are written.
_DECIMAL = re.compile(r"\d+[.,]\d+")
_GROUPED = re.compile(r"\(?\d{2,4}\)?(?:[ .-]\d{2,4}){2,5}")
_DIGITS_ONLY = str.maketrans("", "", "0123456789")
#: Addresses that identify no one: loopback, "any", broadcast.
_NOBODYS_IPV4 = ("127.", "0.0.0.0", "255.255.255.255")
_SPACES_COLONS = re.compile(r"[\s:]+")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")

#: Words (or their beginnings) that say a number after them is a phone number, in the
#: languages we serve; and the names of the identifiers taken only next to their name.
_PHONE_WORDS: Final = (
    "phone",
    "tel",
    "mobile",
    "cell",
    "call",
    "fax",
    "ring",
    "telefon",
    "handy",
    "mobil",
    "anruf",
    "ruf",
    "erreichbar",
    "téléphone",
    "portable",
    "appel",
    "joindre",
    "teléfono",
    "telefono",
    "móvil",
    "movil",
    "llam",
    "cellulare",
    "chiam",
    "bellen",
    "telefoon",
    "whatsapp",
    "reach",
)
#: Weaker words (``numéro``, ``contact``): the number must then be written in groups.
_NUMBER_WORDS: Final = ("número", "numéro", "numero", "nummer", "contact", "kontakt")  # fmt: skip
_DE_IDNR_WORDS: Final = ("steuer", "idnr", "steueridentifikationsnummer", "tin", "tax")
_NL_BSN_WORDS: Final = ("bsn", "burgerservicenummer", "sofinummer")
_PL_PESEL_WORDS: Final = ("pesel",)
_US_SSN_WORDS: Final = ("ssn", "social")
_VERSION_WORDS: Final = ("version", "versión", "release", "build", "ver", "v", "versie",
                         "section", "sections", "chapter", "clause", "step", "§")  # fmt: skip
_WORD = re.compile(r"\w+")


def _words_before(text: str, start: int, before: int = 40) -> list[str]:
    """The words (lower case) in the ``before`` characters ahead of ``start``."""
    return _WORD.findall(text[max(0, start - before) : start].lower())


def _named(words: list[str], names: tuple[str, ...]) -> bool:
    """Whether one of ``words`` begins with one of ``names``."""
    return any(w.startswith(names) for w in words)


def _in_url(text: str, start: int) -> bool:
    """Whether ``start`` is inside a URL (``scheme://user:password@host``: not an address)."""
    word = max(text.rfind(" ", 0, start), text.rfind("\n", 0, start), start - 200)
    return "://" in text[max(0, word) : start]


def _emails(text: str) -> Iterator[Match]:
    position = text.find("@")
    while position != -1:
        domain = _EMAIL_DOMAIN.match(text, position + 1)
        if domain is not None:
            start = position
            while (
                start > 0
                and position - start <= 64
                and (text[start - 1].isalnum() or text[start - 1] in _EMAIL_LOCAL_MARKS)
            ):
                start -= 1
            if (
                start < position
                and position - start <= 64
                and text[start].isalnum()
                and not _in_url(text, start)
            ):
                yield Match(EMAIL, start, domain.end())
        position = text.find("@", position + 1)


@functools.lru_cache(maxsize=4096)
def _phone_valid(candidate: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _phones(text: str, start: int, end: int, digits: int, words: list[str]) -> Iterator[Match]:
    """Phone numbers in a run of ``digits`` digits, ``words`` the words before it."""
    if text[start] == "+" or "00" in text[start:end]:
        for found in _INTERNATIONAL_PHONE.finditer(text, start, end):
            value = found.group()
            count = sum(c.isdigit() for c in value)
            if value.startswith("00"):
                value = "+" + value[2:]
                count -= 2
            if 8 <= count <= 15 and _phone_valid(value, None):
                yield Match(PHONE, found.start(), found.end())
    if digits >= 10:
        for found in _NANP_PHONE.finditer(text, start, end):
            if _phone_valid(found.group(), "US"):
                yield Match(PHONE, found.start(), found.end())
    strong = _named(words, _PHONE_WORDS)
    if strong or _named(words, _NUMBER_WORDS):
        last_digit = _last_digit(text, start, end)
        for found in _NATIONAL_PHONE.finditer(text, start, end):
            value = found.group()
            if found.start() > start + 1 or found.end() < last_digit:
                continue  # part of a longer number (a timestamp, an id)
            if _DATE.fullmatch(value) or " / " in value or _DECIMAL.fullmatch(value):
                continue  # a date, two numbers side by side, a decimal number
            if not (strong or _GROUPED.fullmatch(value)):
                continue
            if not value.startswith(("+", "00")) and any(
                _phone_valid(value, region) for region in PHONE_REGIONS
            ):
                yield Match(PHONE, found.start(), found.end())


def _last_digit(text: str, start: int, end: int) -> int:
    """Where the run ``text[start:end]`` ends, after its last digit."""
    stop = end
    while stop > start and not text[stop - 1].isdigit():
        stop -= 1
    return stop


def _cards(text: str, start: int, end: int) -> Iterator[Match]:
    for found in _CARD.finditer(text, start, end):
        value = found.group()
        if "  " in value or "--" in value:
            continue
        digits = value.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield Match(CARD, found.start(), found.end())


def _checked(
    text: str, start: int, end: int, pattern: re.Pattern[str], kind: str, valid: object
) -> Iterator[Match]:
    for found in pattern.finditer(text, start, end):
        if valid(found.group()):  # type: ignore[operator]
            yield Match(kind, found.start(), found.end())


def _ipv4s(text: str, start: int, end: int) -> Iterator[Match]:
    """IPv4 addresses, but not a version or section number (``version 1.2.3.4``,
    ``§2.1.3.2``), a network (``192.168.0.0/24``) or an address that is nobody's."""
    for found in _IPV4.finditer(text, start, end):
        at, after = found.start(), found.end()
        line = text[max(0, at - 40) : at].rsplit("\n", 1)[-1].lower()
        version = any(w in _VERSION_WORDS or w.endswith("version")
                      for w in _SPACES_COLONS.split(line)[-4:])  # fmt: skip
        section = at > 0 and text[at - 1] == "§"
        network = text.startswith("/", after) and text[after + 1 : after + 2].isdigit()
        if not (version or section or network or found.group().startswith(_NOBODYS_IPV4)):
            yield Match(IPV4, at, after)


def _digit_run(text: str, run: re.Match[str]) -> Iterator[Match]:
    """The numeric values in one run of digits and separators (``start``: the run with the
    ``+`` or ``(`` before it; ``end``: one character past it, for the expressions'
    look-aheads)."""
    value = run.group()
    digits = len(value) - len(value.translate(_DIGITS_ONLY))
    start = run.start()
    if start > 0 and text[start - 1] in "+(":
        start -= 1
    end = min(run.end() + 1, len(text))
    if digits >= 7:
        words = _words_before(text, start)
        yield from _phones(text, start, end, digits, words)
        if digits >= 13:
            yield from _cards(text, start, end)
            yield from _checked(text, start, end, _FR_NIR, FR_NIR, nir.is_valid)
        if digits >= 9:
            yield from _checked(text, start, end, _US_SSN, US_SSN, ssn.is_valid)
            if _named(words, _US_SSN_WORDS):
                yield from _checked(text, start, end, _US_SSN_NAMED, US_SSN,
                                    lambda v: ssn.is_valid(v.replace(" ", "")))  # fmt: skip
            if _named(words, _NL_BSN_WORDS):
                yield from _checked(text, start, end, _NINE_DIGITS, NL_BSN, bsn.is_valid)
        if digits >= 11 and _named(words, _DE_IDNR_WORDS):
            yield from _checked(text, start, end, _ELEVEN_DIGITS, DE_IDNR, idnr.is_valid)
        if digits >= 11 and _named(words, _PL_PESEL_WORDS):
            yield from _checked(text, start, end, _ELEVEN_DIGITS, PL_PESEL, pesel.is_valid)
    if digits >= 8:
        yield from _checked(text, start, end, _ES_DNI, ES_DNI, dni.is_valid)
    if "." in value:
        yield from _ipv4s(text, start, end)


def _upper_run(text: str, run: re.Match[str]) -> Iterator[Match]:
    start, end = run.start(), min(run.end() + 1, len(text))
    yield from _ibans(text, start, end)
    yield from _vats(text, start, end)
    yield from _checked(text, start, end, _UK_NINO, UK_NINO,
                        lambda v: nino_valid(v.replace(" ", "")))  # fmt: skip
    yield from _checked(text, start, end, _ES_NIE, ES_DNI, nie.is_valid)
    yield from _checked(text, start, end, _IT_CF, IT_CF, codicefiscale.is_valid)


def _ibans(text: str, start: int, end: int) -> Iterator[Match]:
    # Searched step by step rather than with ``finditer``: a greedy candidate may run on into
    # the next IBAN, which must be looked for from the end of the one accepted.
    position = start
    while (found := _IBAN.search(text, position, end)) is not None:
        after = _iban_end(text, found)
        if after is None:
            position = found.start() + 1
            continue
        yield Match(IBAN, found.start(), after)
        position = after


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


def _vats(text: str, start: int, end: int) -> Iterator[Match]:
    """VAT numbers: the longest prefix of a candidate that ends a word and is valid."""
    for found in _VAT.finditer(text, start, end):
        stop = found.end()
        for _ in range(8):
            candidate = text[found.start() : stop].rstrip(" .")
            stop = found.start() + len(candidate)
            if stop <= found.start() + 9:
                break
            word_ends = stop >= len(text) or not text[stop].isalnum()
            if word_ends and vat.is_valid(candidate):
                yield Match(VAT, found.start(), stop)
                break
            stop -= 1


def _ipv6s(text: str) -> Iterator[Match]:
    position = text.find(":")
    while position != -1:
        start, end = position, position + 1
        while start > 0 and text[start - 1] in _HEX_COLON:
            start -= 1
        while end < len(text) and text[end] in _HEX_COLON:
            end += 1
        candidate = text[start:end]
        before = text[start - 1] if start > 0 else " "
        after = text[end] if end < len(text) else " "
        groups = [g for g in candidate.split(":") if g]
        if (
            candidate.count(":") >= 2
            and any(c.isdigit() for c in candidate)
            and (len(groups) >= 3 or (candidate[0] != ":" and len(groups[0]) >= 3))  # not [1::2]
            and not (before.isalnum() or before in "._")
            and not (after.isalnum() or after == "_")
            and _ipv6_valid(candidate)
        ):
            yield Match(IPV6, start, end)
        position = text.find(":", end + 1)


def _ipv6_valid(candidate: str) -> bool:
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified)


def _may_hold_pii(text: str) -> bool:
    """Whether ``text`` has an ``@`` or a digit, without which nothing here matches.

    ``re`` has no fast scan for a character class (it tries the class at every position, some
    12 ns a character), while ``in`` searches at memory speed: an ASCII text, what most prompts
    are, is checked eleven times with ``in`` (a 1,200-character prompt in under 1 µs instead of
    15). Any other text goes through the expression, whose ``\\d`` takes every script's digits.
    """
    if text.isascii():  # written out: a loop over the eleven costs more than the searches
        return ("@" in text or "0" in text or "1" in text or "2" in text or "3" in text
                or "4" in text or "5" in text or "6" in text or "7" in text or "8" in text
                or "9" in text)  # fmt: skip
    return _TRIGGER.search(text) is not None


def scan(text: str) -> list[Match]:
    """Every detected value in ``text``, by position; overlapping matches are resolved by
    ``PRIORITY``, then by the earlier start."""
    if not _may_hold_pii(text):
        return []
    found: list[Match] = list(_emails(text))
    for run in _DIGIT_RUN.finditer(text):
        found.extend(_digit_run(text, run))
    for run in _UPPER_RUN.finditer(text):
        found.extend(_upper_run(text, run))
    if "::" in text or text.count(":") >= 7:
        found.extend(_ipv6s(text))
    if not found:
        return []
    found.sort(key=lambda m: (_RANK[m.kind], m.start))
    return first_disjoint(found)


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
