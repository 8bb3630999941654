"""The built-in PII detectors (``custos.guardrails.pii``): examples and properties.

Generated values are valid by construction (Luhn and mod-97 check digits computed here, by the
definitions, not by the code under test), embedded in filler text, written in the formats people
use; the properties say they are found and replaced, that a wrong check digit is not taken for
a card or an IBAN, and that redacting keeps the rest of the text.
"""

from __future__ import annotations

import itertools
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.guardrails import pii

# -- building valid values ---------------------------------------------------------------------


def luhn_digit(payload: str) -> str:
    """The check digit that makes ``payload + digit`` pass Luhn (computed from the definition)."""
    total = 0
    for index, char in enumerate(reversed(payload)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return str((10 - total % 10) % 10)


def iban_for(country: str, bban: str) -> str:
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


def grouped(value: str, size: int, sep: str) -> str:
    return sep.join(value[i : i + size] for i in range(0, len(value), size))


filler = st.text(string.ascii_letters + " ,", max_size=12)
words = st.lists(st.text(string.ascii_letters, min_size=1, max_size=8), min_size=0, max_size=4)


def embed(before: list[str], value: str, after: list[str]) -> str:
    return " ".join([*before, value, *after]).strip() + "."


@st.composite
def cards(draw: st.DrawFn) -> tuple[str, str]:
    """A Luhn-valid card number (compact) and how it is written."""
    length = draw(st.integers(13, 19))
    payload = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    payload = str(draw(st.integers(1, 9))) + payload[1:]
    number = payload + luhn_digit(payload)
    style = draw(st.sampled_from(["compact", "spaces", "dashes"]))
    if style == "compact":
        return number, number
    return number, grouped(number, 4, " " if style == "spaces" else "-")


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(pii.IBAN_LENGTHS)))
    bban = draw(
        st.text("0123456789", min_size=pii.IBAN_LENGTHS[country] - 4,
                max_size=pii.IBAN_LENGTHS[country] - 4)
    )  # fmt: skip
    return iban_for(country, bban)


emails = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=12).map(lambda s: "a" + s),
    st.text(string.ascii_lowercase, min_size=1, max_size=12),
    st.sampled_from(["com", "org", "example", "co.uk", "de"]),
)


# -- checksums ---------------------------------------------------------------------------------


def test_checksums_on_published_examples() -> None:
    assert pii.luhn_valid("4111111111111111")
    assert pii.luhn_valid("79927398713")
    assert not pii.luhn_valid("4111111111111112")
    assert pii.iban_valid("DE89370400440532013000")
    assert pii.iban_valid("GB82WEST12345698765432")
    assert not pii.iban_valid("DE89370400440532013001")
    assert not pii.iban_valid("de89370400440532013000")


# -- examples ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+x@example.co.uk today", "write to [EMAIL] today"),
        ("card 4111 1111 1111 1111, exp 12/29", "card [CARD], exp 12/29"),
        ("card 4111-1111-1111-1111", "card [CARD]"),
        ("pay DE89 3704 0044 0532 0130 00 now", "pay [IBAN] now"),
        ("pay GB82WEST12345698765432", "pay [IBAN]"),
        ("pay DE89 3704 0044 0532 0130 00 ABC", "pay [IBAN] ABC"),
        ("ssn 123-45-6789", "ssn [SSN]"),
        ("call +44 20 7946 0958 or (415) 555-2671", "call [PHONE] or [PHONE]"),
        ("call +1-415-555-2671.", "call [PHONE]."),
        ("from 192.168.1.20.", "from [IPV4]."),
        ("peer 2001:db8::1 and fe80::1ff:fe23:4567:890a", "peer [IPV6] and [IPV6]"),
        ("VAT DE136695976, ATU13585627 and FR40303265045.", "VAT [VAT], [VAT] and [VAT]."),
        ("NINO AB 12 34 56 C", "NINO [NATIONAL_ID]"),
        ("DNI 54362315K, NIE X2482300W", "DNI [NATIONAL_ID], NIE [NATIONAL_ID]"),
        ("CF RCCMNL83S18D969H", "CF [NATIONAL_ID]"),
        ("NIR 2 95 10 99 126 111 93", "NIR [NATIONAL_ID]"),
        ("Steuer-ID 36 574 261 809", "Steuer-ID [NATIONAL_ID]"),
        ("BSN 111222333", "BSN [NATIONAL_ID]"),
        ("PESEL 44051401359", "PESEL [NATIONAL_ID]"),
        ("Tel.: 030 12345678", "Tel.: [PHONE]"),
        ("mon numéro : 06 12 34 56 78", "mon numéro : [PHONE]"),
        ("mi teléfono es 612 34 56 78", "mi teléfono es [PHONE]"),
        ("call 0044 20 7946 0958", "call [PHONE]"),
        ("Tel. +49 (0)30 12345678", "Tel. [PHONE]"),
        ("SSN 536 90 4399 and ssn: 536904399", "SSN [SSN] and ssn: [SSN]"),
        ("mail Jürgen.Müller@example.de or josé@correo.es", "mail [EMAIL] or [EMAIL]"),
    ],
)
def test_redacts(text: str, expected: str) -> None:
    assert pii.redact(text)[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "the meeting is on 2026-07-01 at 10:30",
        "order 12345678 shipped; version 1.2.3",
        "4111 1111 1111 1112 is not a card (bad check digit)",
        "DE89 3704 0044 0532 0130 02 fails mod 97",
        "000-12-3456 and 666-12-3456 are never issued",
        "999.1.1.1 is no address",
        "x = 3 * (4 + 5)",
        "order 0301234567 shipped",  # a valid German number, but no phone word before it
        "phone system launch on 2026-09-01",  # a date next to a phone word
        "Bestellnummer 36574261809",  # an 11-digit IdNr-shaped number without its name
        "reference 111222333 for the order",  # 11-proof, but no BSN before it
        "upgrade to version 1.2.3.4",
        "std::vector, a::b and 10:30:00",
        "postgres://app:s3cret@db.internal/prod",  # a URL's credentials, not an e-mail
        "Numéro de suivi 123456789012",  # a weak number word and an ungrouped number
        "order 536904399",  # an SSN's digits without its name or its dashes
    ],
)
def test_leaves_alone(text: str) -> None:
    assert pii.redact(text) == (text, {})


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=300)
@given(cards(), words, words)
def test_valid_cards_are_redacted(card: tuple[str, str], before: list[str], after: list[str]):
    _number, written = card
    redacted, counts = pii.redact(embed(before, written, after))
    assert counts == {pii.CARD: 1}
    assert written not in redacted and "[CARD]" in redacted
    for word in before + after:
        assert word in redacted


@settings(max_examples=300)
@given(cards(), st.integers(1, 9))
def test_a_wrong_check_digit_is_not_a_card(card: tuple[str, str], shift: int) -> None:
    number, _ = card
    wrong = number[:-1] + str((int(number[-1]) + shift) % 10)
    assert pii.CARD not in pii.redact(f"ref {wrong} end")[1]


@settings(max_examples=300)
@given(ibans(), st.booleans(), words, words)
def test_valid_ibans_are_redacted(iban: str, group: bool, before: list[str], after: list[str]):
    written = grouped(iban, 4, " ") if group else iban
    redacted, counts = pii.redact(embed(before, written, after))
    assert counts == {pii.IBAN: 1}
    assert iban[4:] not in redacted.replace(" ", "")


@settings(max_examples=300)
@given(ibans(), st.data())
def test_a_changed_iban_digit_fails_mod_97(iban: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(4, len(iban) - 1))
    digit = data.draw(st.sampled_from([d for d in "0123456789" if d != iban[position]]))
    changed = iban[:position] + digit + iban[position + 1 :]
    assert not pii.iban_valid(changed)
    assert pii.IBAN not in pii.redact(f"to {changed} now")[1]


@settings(max_examples=200)
@given(emails, words, words)
def test_emails_are_redacted(email: str, before: list[str], after: list[str]) -> None:
    redacted, counts = pii.redact(embed(before, email, after))
    assert counts == {pii.EMAIL: 1}
    assert email not in redacted


@settings(max_examples=300)
@given(st.lists(st.one_of(cards().map(lambda c: c[1]), ibans(), emails, filler), max_size=6))
def test_redacting_twice_changes_nothing_more(pieces: list[str]) -> None:
    once, _ = pii.redact(" ".join(pieces))
    assert pii.redact(once) == (once, {})


@given(st.text(alphabet=st.characters(blacklist_characters="@0123456789")))
def test_text_without_digits_or_at_is_untouched(text: str) -> None:
    assert pii.redact(text) == (text, {})


@given(st.text(max_size=200))
def test_matches_are_ordered_and_disjoint(text: str) -> None:
    found = pii.scan(text)
    for first, second in itertools.pairwise(found):
        assert first.end <= second.start
    _redacted, counts = pii.redact(text)
    assert sum(counts.values()) == len(found)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab @.-:١٢٣٤ä€\n9") | st.characters(), max_size=60))
def test_the_quick_first_check_agrees_with_the_expression(text: str) -> None:
    """``_may_hold_pii`` (substring searches on ASCII text) says what ``[@\\d]`` says, on ASCII
    text and on text with other scripts' digits (Arabic-Indic ١٢٣)."""
    assert pii._may_hold_pii(text) == (pii._TRIGGER.search(text) is not None)
    assert pii._may_hold_pii("x" * 500 + "7") and not pii._may_hold_pii("plain words " * 50)
