"""Keyword lists matched in one pass (Aho-Corasick, ``pyahocorasick``): whole words,
case-insensitive, the longest keyword at the leftmost position, never overlapping.

Why not one regular expression: an alternation of N keywords costs Python's ``re`` time in
proportion to N at every position of the text, where the automaton costs the same for 10
keywords as for 50,000 (bench/detectors.py measures both; docs/guardrails.md has the figures).

"Whole word" means: the character before a match is not a word character (letter, digit,
``_``) unless the keyword itself begins with a non-word character, and the same after it.
Case-insensitive means the text and the keywords are compared lower-cased; for the rare text
whose lower-casing changes its length (a few non-Latin letters), the comparison falls back to
one regular expression, so positions stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import ahocorasick


def _word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


class KeywordMatcher:
    """Keyword lists by name; ``find(text)`` → ``(name, start, end)`` by position."""

    def __init__(self, lists: Mapping[str, Sequence[str]]) -> None:
        self._automaton = ahocorasick.Automaton()
        owner: dict[str, str] = {}
        for name, words in lists.items():
            for word in words:
                key = word.lower()
                if key and key not in owner:
                    owner[key] = name
        for key, name in owner.items():
            self._automaton.add_word(key, (name, len(key), _word_char(key[0]),
                                           _word_char(key[-1])))  # fmt: skip
        self._empty = not owner
        if not self._empty:
            self._automaton.make_automaton()
        self._owner = owner
        self._fallback: re.Pattern[str] | None = None

    def find(self, text: str) -> list[tuple[str, int, int]]:
        if self._empty:
            return []
        lowered = text.lower()
        if len(lowered) != len(text):
            return self._find_by_regex(text)
        candidates: list[tuple[int, int, str]] = []
        for last, (name, length, word_start, word_end) in self._automaton.iter(lowered):
            start, end = last - length + 1, last + 1
            if word_start and start > 0 and _word_char(text[start - 1]):
                continue
            if word_end and end < len(text) and _word_char(text[end]):
                continue
            candidates.append((start, -end, name))
        candidates.sort()
        found: list[tuple[str, int, int]] = []
        position = 0
        for start, negative_end, name in candidates:  # leftmost, then longest
            if start >= position:
                found.append((name, start, -negative_end))
                position = -negative_end
        return found

    def _find_by_regex(self, text: str) -> list[tuple[str, int, int]]:
        if self._fallback is None:
            words = sorted(self._owner, key=len, reverse=True)
            self._fallback = re.compile(
                "|".join(
                    (r"(?<!\w)" if _word_char(w[0]) else "")
                    + re.escape(w)
                    + (r"(?!\w)" if _word_char(w[-1]) else "")
                    for w in words
                ),
                re.IGNORECASE,
            )
        return [(self._owner.get(m.group().lower(), next(iter(self._owner.values()))),
                 m.start(), m.end()) for m in self._fallback.finditer(text)]  # fmt: skip
