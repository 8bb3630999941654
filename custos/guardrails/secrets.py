"""Built-in secret detectors: credentials that must not reach a model or come back from one.

What is detected (kinds ``secret.*``), from the formats the providers document (the plugin list
of Yelp's detect-secrets is the reference for which ones matter):

- provider API keys: ``openai_api_key`` (``sk-``, ``sk-proj-``, ``sk-svcacct-``, ``sk-admin-``),
  ``anthropic_api_key`` (``sk-ant-``), ``aws_access_key_id`` (``AKIA``, ``ASIA``, ``ABIA``,
  ``ACCA``, ``A3T…``), ``aws_secret_access_key`` (40 characters next to its name),
  ``gcp_api_key`` (``AIza``), ``github_token`` (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``,
  ``ghr_``, ``github_pat_``), ``gitlab_token`` (``glpat-``), ``slack_token`` (``xoxb-`` …),
  ``slack_webhook``, ``stripe_key`` (``sk_live_``, ``rk_live_``), ``azure_storage_key``
  (``AccountKey=``), ``huggingface_token`` (``hf_``), ``sendgrid_api_key`` (``SG.``),
  ``npm_token`` (``npm_``), ``pypi_token`` (``pypi-AgEIcHlwaS5vcmc``);
- ``private_key``: a PEM private key block (``-----BEGIN … PRIVATE KEY-----`` to its end, or
  to the end of its base64 body when the end line is missing);
- ``jwt``: three base64url parts whose first decodes to a JSON object naming an ``alg``;
- ``url_credentials``: a password in a URL (``scheme://user:password@host``), placeholders
  (``${…}``, ``<…>``, ``****``) excepted;
- ``password``: a value assigned to a password-like name (``password: …``, ``Passwort=…``,
  ``mot de passe : …``, ``contraseña: …``), placeholders excepted;
- ``high_entropy``: a token of 20 to 200 base64 or hex characters whose Shannon entropy is
  high for its length, either next to a name that says it is a secret (``token``, ``key``,
  ``secret``, ``bearer``, …) or, without such a name, at least 32 characters mixing capitals,
  small letters and digits at 4.5 bits per character or more. Never a UUID, never a token
  next to a word naming a hash (``sha``, ``commit``, ``md5``, ``checksum``, ``digest``, …),
  never part of a ``data:`` URI or a base64 blob longer than 200 characters, never hex
  without a secret's name before it (git SHAs and hashes are hex), never a URL's path, an SSH
  public key, a certificate's or public key's PEM body, base64 of readable text or a path of
  lower-case words.

``scan(text)`` returns the matches by position (overlaps go to the earlier rule of
``RULES``, so a key with a known format is not also reported as high entropy).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

import orjson

from custos.guardrails.spans import first_disjoint

#: Changes whenever what the detectors find changes.
DETECTOR_VERSION: Final = "custos.secrets/1"


@dataclass(frozen=True, slots=True)
class Match:
    kind: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Rule:
    """A secret with a known shape: its expression (group 1, if any, is the secret itself), an
    optional check of the value, and what must be there for the expression to be tried (the
    scan stays one pass over the text plus a few substring searches):

    - ``prefix``: a token (a run of base64-like characters, see ``_TOKEN``) starts with it;
    - ``literal``: the text contains it (case-sensitive);
    - ``names``: where one of them is (any case) shortly before a ``:`` or ``=``, the
      expression is matched there."""

    kind: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    prefix: str = ""
    literal: str = ""
    names: tuple[str, ...] = ()


def _placeholder(value: str) -> bool:
    """Not a secret's value: a reference (``${…}``, ``<…>``), a mask (``****``), a word such as
    ``none``, code (``passphrase.encode()``, ``os.environ['X']``), a metavariable
    (``--password=PASSWORD``) or a single short word (``passwd: Passwort nicht geändert``)."""
    lowered = value.lower().strip("'\"")
    return (
        not lowered
        or lowered[0] in "$<{[%"
        or set(lowered) <= set("*x.•-_")
        or lowered
        in ("password", "secret", "changeme", "redacted", "hidden", "none", "null", "true", "false")
        or any(c in lowered for c in "()[]{}")
        or _DOTTED_NAME.fullmatch(value) is not None
        or (value.isalpha() and len(value) < 12)
        or (value.isupper() and value.replace("_", "").replace("-", "").isalpha())
    )


_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _jwt(value: str) -> bool:
    header = value.split(".", 1)[0]
    try:
        decoded = orjson.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        return False
    return isinstance(decoded, dict) and isinstance(decoded.get("alg"), str)


_B64 = r"[A-Za-z0-9+/]"
_END = r"(?![A-Za-z0-9_-])"


def _prefixed(kind: str, prefix: str, rest: str) -> Rule:
    """A token that starts with ``prefix`` and goes on with ``rest``."""
    pattern = re.compile(f"{re.escape(prefix)}{rest}{_END}")
    return Rule(f"secret.{kind}", pattern, prefix=prefix)


def _not_placeholder(value: str) -> bool:
    return not _placeholder(value)


RULES: Final = (
    Rule("secret.private_key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
         literal="PRIVATE KEY"),
    _prefixed("anthropic_api_key", "sk-ant-", r"[A-Za-z0-9_-]{32,}"),
    Rule("secret.openai_api_key", re.compile(
        r"sk-(?:(?:proj|svcacct|admin)-)?(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])"
        rf"[A-Za-z0-9_-]{{32,}}{_END}"), prefix="sk-"),
    _prefixed("stripe_key", "sk_live_", r"[A-Za-z0-9]{20,}"),
    _prefixed("stripe_key", "rk_live_", r"[A-Za-z0-9]{20,}"),
    *(_prefixed("aws_access_key_id", p, "[A-Z2-7]{16}")
      for p in ("AKIA", "ASIA", "ABIA", "ACCA")),
    _prefixed("aws_access_key_id", "A3T", "[A-Z0-9][A-Z2-7]{16}"),
    Rule("secret.aws_secret_access_key", re.compile(
        rf"(?i:secret[ _-]?access[ _-]?key|aws[\w ]{{0,20}}?secret)[\w\"' ]{{0,20}}[:=]+\s*"
        rf"[\"']?({_B64}{{40}})(?![A-Za-z0-9+/=])"), names=("secret", "aws")),
    _prefixed("gcp_api_key", "AIza", "[0-9A-Za-z_-]{35}"),
    *(_prefixed("github_token", f"gh{c}_", "[A-Za-z0-9]{36,}") for c in "pousr"),
    _prefixed("github_token", "github_pat_", "[A-Za-z0-9_]{50,}"),
    _prefixed("gitlab_token", "glpat-", "[A-Za-z0-9_-]{20,}"),
    *(_prefixed("slack_token", f"xox{c}-", "[A-Za-z0-9-]{10,}") for c in "abposrce"),
    Rule("secret.slack_webhook", re.compile(
        r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,}"),
        literal="hooks.slack.com"),
    Rule("secret.azure_storage_key", re.compile(rf"AccountKey=({_B64}{{80,90}}={{0,2}})"),
         literal="AccountKey="),
    _prefixed("huggingface_token", "hf_", "[A-Za-z0-9]{30,}"),
    _prefixed("sendgrid_api_key", "SG.", r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{40,50}"),
    _prefixed("npm_token", "npm_", "[A-Za-z0-9]{36}"),
    _prefixed("pypi_token", "pypi-", "AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}"),
    Rule("secret.jwt", re.compile(
        r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*(?![\w.-])"), _jwt,
        prefix="eyJ"),
    Rule("secret.url_credentials", re.compile(
        r"://(?<=[a-zA-Z0-9+.-]://)[^\s:/@]{1,64}:([^\s:/@]{3,128})@[\w.-]+"),
        _not_placeholder, literal="://"),
    Rule("secret.password", re.compile(
        r"(?i:passwor[dt]|passwd|passcode|pwd|kennwort|mot de passe|mdp|contraseña|clave)"
        r"\b[\"']?(?:\s+(?i:is|ist|lautet|est|es|was|war))?\s*[:=]\s*[\"']?"
        r"([^\s\"',;]{6,128})"),
        _not_placeholder, names=("pass", "pwd", "kennwort", "mot de passe", "mdp",
                                 "contraseña", "clave")),
)  # fmt: skip
#: The rules tried by a substring search, and those tried next to their names only (two
#: lists, so that a scan does not walk the prefixed rules a third time).
_LITERAL_RULES: Final = tuple(r for r in RULES if r.literal)
_NAMED_RULES: Final = tuple(r for r in RULES if r.names and not r.literal)
_PREFIXES: Final = tuple(sorted({r.prefix for r in RULES if r.prefix}))
#: The rules of each prefix, longest prefix first (``sk-ant-`` before ``sk-``).
_BY_PREFIX: Final = {p: [r for r in RULES if r.prefix == p]
                     for p in sorted(_PREFIXES, key=len, reverse=True)}  # fmt: skip

_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
#: A PEM body without its END line: whole lines of base64 (16 characters or more, or a short
#: last line with its padding), or ``Name: value`` header lines; "\\n" as written in JSON too.
_PEM_BODY = re.compile(
    r"(?:(?:\r?\n|\\n)(?:[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9+/]{1,15}={1,2}|[A-Za-z-]+: [^\n]*)"
    r"(?=\r?\n|\\n|$))*"
)

# -- high entropy ----------------------------------------------------------------------------

#: Tokens: 16 or more base64 (standard or URL-safe) characters or dots, after a character that
#: is none of those (the scan runs over the text with a space before it).
_TOKEN = re.compile(r"[^A-Za-z0-9+/_.-][A-Za-z0-9+/_.-]{16,}")
#: Each byte as ``b"a"`` if it is one of ``_TOKEN``'s characters, else ``b" "``: a text holds a
#: token only if its UTF-8 bytes so translated hold sixteen ``a`` in a row, which a substring
#: search finds at memory speed. ``re`` tries ``_TOKEN`` at every position (some 150
#: instructions a character: 18,000 for a two-line answer); the translation and the search
#: cost a tenth of that, and most texts hold no token at all.
_TOKEN_CHARS: Final = frozenset(string.ascii_letters + string.digits + "+/_.-")
_TOKEN_BYTES: Final = bytes(ord("a") if chr(b) in _TOKEN_CHARS else ord(" ") for b in range(256))
_SIXTEEN: Final = b"a" * 16
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_SECRET_NAMES = ("token", "key", "secret", "passw", "bearer", "auth", "credential", "api",
                 "private", "signature", "session", "cookie", "jeton", "clé", "schlüssel",
                 "geheim", "clave", "secreto", "contraseña", "passwort", "senha")  # fmt: skip
_HASH_NAMES = ("sha", "md5", "hash", "commit", "checksum", "digest", "integrity", "etag",
               "fingerprint", "revision", "rev", "blake", "crc", "hmac", "prüfsumme",
               "empreinte", "huella", "uuid", "guid", "id")  # fmt: skip
#: What base64 file contents begin with (PNG, JPEG, GIF, WebP, PDF, ZIP, gzip), and SSH public
#: keys (``ssh-rsa``, ``ssh-ed25519``, ``ecdsa-…``): public data, not secrets.
_FILE_MAGIC = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "JVBERi", "UEsDB", "H4sI",
               "AAAAB3NzaC1", "AAAAC3NzaC1", "AAAAE2VjZHNh")  # fmt: skip
_WORD = re.compile(r"[^\W\d_]+")
_BLOB = 200
#: A path of lower-case words (``custos/audit/key2026``): named like a key, but not one.
_PATH = re.compile(r"/?[a-z0-9_.-]{1,24}(?:/[a-z0-9_.-]{1,24})+/?")
#: Words and numbers joined by separators (``3+cache_write_tokens``, ``Order_2024-Final``): an
#: identifier, however varied its letters.
_WORDY = re.compile(r"(?:[A-Za-z][a-z]+|\d+)(?:[+/_.-]+(?:[A-Za-z][a-z]+|\d+))+")


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value`` (its characters' frequencies)."""
    length = len(value)
    return -sum(n / length * math.log2(n / length) for n in Counter(value).values())


def _names_before(text: str, start: int) -> list[str]:
    """The words in the 40 characters before ``start`` on its line, lower case."""
    line_start = text.rfind("\n", max(0, start - 40), start) + 1
    return _WORD.findall(text[max(line_start, start - 40) : start].lower())


def _is_prose(token: str) -> bool:
    """Whether ``token`` is base64 of readable text (words and spaces), not of key bytes."""
    if len(token) < 24:
        return False
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True).decode()
    except (binascii.Error, ValueError):
        return False
    return decoded.count(" ") >= 2 and decoded.isprintable()


def _sequence(token: str) -> bool:
    """Whether ``token`` holds five characters in a row in alphabet order (``abcde``, ``01234``):
    an alphabet or a made-up example, which a random token holds a few times in a million."""
    run = 1
    for previous, char in itertools.pairwise(token):
        run = run + 1 if ord(char) == ord(previous) + 1 else 1
        if run >= 5:
            return True
    return False


def _high_entropy(text: str, start: int, token: str) -> bool:
    if len(token) > _BLOB or token.startswith(_FILE_MAGIC) or _UUID.search(token):
        return False
    before = text[max(0, start - 8) : start].lower()
    if "base64," in before or "data:" in before:
        return False
    names = _names_before(text, start)
    if any(w.startswith(_HASH_NAMES) for w in names[-3:]):
        return False
    named = any(w.startswith(_SECRET_NAMES) for w in names[-3:])
    body = token.rstrip("=")
    if _is_prose(body) or _PATH.fullmatch(body) or _WORDY.fullmatch(body) or _sequence(body):
        return False
    if _HEX.fullmatch(body):
        return named and len(body) >= 20 and shannon_entropy(body) >= 3.0
    entropy = shannon_entropy(body)
    if named:  # (a random 20 characters of base62 hold a digit 97 times in 100: names do not)
        return any(c.isdigit() for c in body) and entropy >= min(4.0, math.log2(len(body)) - 0.6)
    mixed = (any(c.isupper() for c in body) and any(c.islower() for c in body)
             and sum(c.isdigit() for c in body) >= 2)  # fmt: skip
    return len(body) >= 32 and mixed and entropy >= 4.5


def _matches(text: str, rule: Rule, candidates: Iterator[re.Match[str]]) -> Iterator[Match]:
    for found in candidates:
        value = found.group(1) if rule.pattern.groups else found.group()
        if rule.check is not None and not rule.check(value):
            continue
        start, end = (found.start(1), found.end(1)) if rule.pattern.groups else found.span()
        if rule.kind == "secret.private_key":
            end = _pem_end(text, end)
        yield Match(rule.kind, start, end)


def _named(text: str, rule: Rule, assignments: list[int]) -> Iterator[re.Match[str]]:
    """The rule's expression matched where one of its names is, in the 48 characters before
    a ``:`` or ``=`` (every named secret is assigned: ``password: …``)."""
    seen: set[int] = set()
    for position in assignments:
        window = max(0, position - 48)
        snippet = text[window:position].lower()
        if len(snippet) != position - window:  # lower case changed the length: search it all
            found = rule.pattern.search(text, window, position + 300)
            if found is not None and found.start() not in seen:
                seen.add(found.start())
                yield found
            continue
        for name in rule.names:
            at = snippet.rfind(name)
            if at == -1 or (at > 0 and snippet[at - 1].isalnum()) or window + at in seen:
                continue
            found = rule.pattern.match(text, window + at)
            if found is not None:
                seen.add(window + at)
                yield found


def _assignments(text: str) -> list[int]:
    """Where the text has ``:`` or ``=`` (found with ``str.find``, much faster than ``re``)."""
    found = []
    for sign in ":=":
        position = text.find(sign)
        while position != -1:
            found.append(position)
            position = text.find(sign, position + 1)
    return found


def _pem_end(text: str, header_end: int) -> int:
    """The end of the block whose header ends at ``header_end``: its END line, or the end of
    its base64 body."""
    closing = _PEM_END.search(text, header_end, header_end + 16_384)
    if closing is not None:
        return closing.end()
    return _pem_body_end(text, header_end)


def _pem_body_end(text: str, header_end: int) -> int:
    body = _PEM_BODY.match(text, header_end)
    return body.end() if body is not None else header_end


def _tokens(text: str) -> Iterator[tuple[int, str]]:
    """Each token of the text and where it starts."""
    if _SIXTEEN not in text.encode("utf-8", "surrogatepass").translate(_TOKEN_BYTES):
        return  # (non-ASCII characters are never token characters: their bytes are >= 0x80)
    padded = " " + text
    for found in _TOKEN.finditer(padded):
        yield found.start(), found.group()[1:]  # (in ``text``: one less, plus the delimiter)


def scan(text: str) -> list[Match]:
    """Every secret found in ``text``, by position (see the module docstring)."""
    found: list[Match] = []
    high_entropy: list[Match] = []
    public = _public_blocks(text) if "-----BEGIN " in text else []
    for start, token in _tokens(text):
        if token.startswith(_PREFIXES):
            for prefix, rules in _BY_PREFIX.items():
                if token.startswith(prefix):
                    for rule in rules:
                        found.extend(_matches(text, rule, _one(rule.pattern.match(text, start))))
        if token.startswith("//") and start > 0 and text[start - 1] == ":":
            continue  # a URL: its path and ids are not secrets (its ?key=… values are tokens)
        for part_start, part in _parts(start, token):
            if _high_entropy(text, part_start, part) and not _inside(public, part_start):
                high_entropy.append(Match("secret.high_entropy", part_start,
                                          part_start + len(part)))  # fmt: skip
    assignments = _assignments(text)
    for rule in _LITERAL_RULES:
        if rule.literal in text:
            found.extend(_matches(text, rule, rule.pattern.finditer(text)))
        elif rule.names and assignments:
            found.extend(_matches(text, rule, _named(text, rule, assignments)))
    if assignments:
        for rule in _NAMED_RULES:
            found.extend(_matches(text, rule, _named(text, rule, assignments)))
    found.extend(high_entropy)
    if not found:
        return []
    return first_disjoint(found)  # token shapes, then the others, then high entropy


_PUBLIC_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*(?:PUBLIC KEY|CERTIFICATE(?: REQUEST)?))-----"
)


def _public_blocks(text: str) -> list[tuple[int, int]]:
    """The spans of PEM blocks that hold no secret (public keys, certificates)."""
    spans = []
    for begin in _PUBLIC_PEM.finditer(text):
        end = text.find(f"-----END {begin.group(1)}-----", begin.end(), begin.end() + 65_536)
        spans.append((begin.start(), end if end != -1 else _pem_body_end(text, begin.end())))
    return spans


def _inside(spans: list[tuple[int, int]], position: int) -> bool:
    """Whether ``position`` is in one of ``spans`` (by start, as ``_public_blocks`` gives)."""
    at = bisect.bisect_right(spans, (position, math.inf)) - 1
    return at >= 0 and any(start <= position < end for start, end in spans[max(0, at - 2) : at + 1])


def _one(found: re.Match[str] | None) -> Iterator[re.Match[str]]:
    if found is not None:
        yield found


def _parts(start: int, token: str) -> Iterator[tuple[int, str]]:
    """The dot-separated parts of a token of 20 characters or more, where they start."""
    if "." not in token:
        if len(token) >= 20:
            yield start, token
        return
    for part in token.split("."):
        if len(part) >= 20:
            yield start, part
        start += len(part) + 1
