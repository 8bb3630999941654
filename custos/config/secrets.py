"""Where the config file holds secrets, and the refusal of a secret written into it literally.

The file's text is kept for ever in the audit's config history (``audit_config_texts``), so a
secret must never be part of it: wherever one is expected the file names it with
``${env:NAME}`` or ``${file:path}`` and only the reference is stored. The places:

- ``providers.*.api_key``, ``providers.*.credentials`` (vertex), bedrock's ``access_key_id``,
  ``secret_access_key`` and ``session_token``, ``identity.token_hash_key``,
  ``audit.content_key``, a Splunk HEC export's ``token``, ``mcp_servers.*.auth.token``: the
  whole value is references;
- a header whose name says it carries a credential (``Authorization``, ``api-key``,
  ``x-api-key``, anything with *key*, *token*, *secret*, *auth*, *password*, *cookie* or
  *signature*) in any ``headers`` map (providers, OTLP export, budget alerts): references,
  optionally after an auth scheme (``Bearer ${env:TOKEN}``);
- any URL (store, counters, invalidation, base URLs, webhooks): a password in it, or a query
  parameter named like a credential (``?token=``, ``?sig=``), is a reference;
- ``audit.signing_key`` and ``retiring_signing_key`` are paths: PEM text there is a key.

These checks run on the file as written, before references are resolved.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from custos.config.refs import REFERENCE

#: Fields whose whole value is a secret.
_SECRET_FIELDS = (
    ("providers", "*", "api_key"),
    ("providers", "*", "credentials"),
    ("providers", "*", "access_key_id"),
    ("providers", "*", "secret_access_key"),
    ("providers", "*", "session_token"),
    ("identity", "token_hash_key"),
    ("audit", "content_key"),
    ("audit", "export", "*", "splunk_hec", "token"),
    ("mcp_servers", "*", "auth", "token"),
)
_KEY_PATHS = (("audit", "signing_key"), ("audit", "retiring_signing_key"))
_CREDENTIAL_NAME = re.compile(
    r"auth|key|token|secret|passw|cookie|signature|^sig$|credential", re.IGNORECASE
)
#: What may stand beside references in a credential header: an auth scheme.
_AUTH_SCHEME = re.compile(r"^\s*(?:[A-Za-z][A-Za-z0-9_-]*\s+)?$")
#: A reference, replaced before a URL is parsed (its own ``/`` and ``:`` would split it).
_PLACEHOLDER = "\ue000"

USE_A_REFERENCE = (
    "use ${env:NAME} or ${file:path} (the file's text is kept in the config history, so a "
    "secret must not be written into it)"
)

Path_ = tuple[str | int, ...]


def literal_secrets(document: Any) -> list[tuple[Path_, str]]:
    """Every place the document holds a secret written in literally, with what is wrong."""
    return [found for path, value in _strings(document, ()) if (found := _check(path, value))]


def _strings(value: Any, path: Path_) -> Iterator[tuple[Path_, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))
    elif isinstance(value, str):
        yield path, value


def _check(path: Path_, value: str) -> tuple[Path_, str] | None:
    if any(_matches(path, pattern) for pattern in _SECRET_FIELDS):
        if _without_references(value).strip():
            return path, f"a secret written into the file: {USE_A_REFERENCE}"
        return None
    if len(path) >= 2 and path[-2] == "headers" and _CREDENTIAL_NAME.search(str(path[-1])):
        if not REFERENCE.search(value) or not _AUTH_SCHEME.match(_without_references(value)):
            return path, f"this header carries a credential: {USE_A_REFERENCE}"
        return None
    if path in _KEY_PATHS and "-----BEGIN" in value:
        return path, "is the path of a PEM file, not the key itself: write the key to a file"
    if "://" in value:
        return _check_url(path, value)
    return None


def _check_url(path: Path_, value: str) -> tuple[Path_, str] | None:
    try:
        parts = urlsplit(REFERENCE.sub(_PLACEHOLDER, value.strip()))
        password = parts.password
    except ValueError:
        return None  # not a URL the schema will accept either; it says so
    if password and password.strip(_PLACEHOLDER):
        return path, f"the URL holds a password: {USE_A_REFERENCE} for the password"
    for name, parameter in parse_qsl(parts.query, keep_blank_values=True):
        if _CREDENTIAL_NAME.search(name) and parameter.strip(_PLACEHOLDER):
            return path, f"the URL's query parameter {name!r} is a credential: {USE_A_REFERENCE}"
    return None


def _without_references(value: str) -> str:
    return REFERENCE.sub("", value)


def _matches(path: Path_, pattern: tuple[str, ...]) -> bool:
    return len(path) == len(pattern) and all(
        p in ("*", part) for part, p in zip(path, pattern, strict=True)
    )
