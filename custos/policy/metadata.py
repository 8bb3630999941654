"""Stage 2, identify: the request metadata header, checked against the config's contract.

``X-Custos-Metadata`` (``X-TFY-METADATA`` is accepted as an alias) carries a JSON object of string
keys to string values, each at most 128 characters and free of control characters. Both headers,
or one repeated, are accepted only when every copy says the same; errors name the header sent.
``metadata.required`` keys must be present and ``metadata.allowed`` limits a key's values. Every
later stage (rules' ``when``, budgets split by
``metadata.KEY``, the audit record) reads the parsed dict from the request context.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from custos.errors import GatewayError

MAX_LENGTH = 128
MAX_KEYS = 64
#: The header's name and its alias, as the HTTP layer sees them (lower case), and as errors
#: name them.
HEADER_NAMES = (b"x-custos-metadata", b"x-tfy-metadata")
_SHOWN = {b"x-custos-metadata": "X-Custos-Metadata", b"x-tfy-metadata": "X-TFY-METADATA"}
#: Characters a key or value may not hold: C0 and C1 controls and DEL (a NUL, an escape
#: sequence or a CRLF would travel into logs, exports and reports), line and paragraph
#: separators, and the bidirectional overrides that make text read other than it is.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

#: The metadata headers of one request as sent: (lower-case name, value) pairs, in order.
MetadataHeaders = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class MetadataContract:
    required: tuple[str, ...] = ()
    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, required: Sequence[str], allowed: Mapping[str, Sequence[str]]
    ) -> MetadataContract:
        return cls(tuple(required), {k: frozenset(v) for k, v in allowed.items()})

    def parse(self, headers: MetadataHeaders) -> dict[str, str]:
        metadata, shown = _decode_all(headers)
        for key in self.required:
            if key not in metadata:
                raise _invalid(f"{shown} must include '{key}'.", key)
        for key, values in self.allowed.items():
            if key in metadata and metadata[key] not in values:
                choices = ", ".join(sorted(values))
                raise _invalid(f"{shown} '{key}' must be one of: {choices}.", key)
        return metadata


def _decode_all(headers: MetadataHeaders) -> tuple[dict[str, str], str]:
    """The one metadata object the headers carry, and the name to report it by.

    The header and its alias may both be sent, and either repeated, as long as every copy
    says the same: which one a proxy or client library kept must not change the metadata.
    """
    if not headers:
        return {}, _SHOWN[HEADER_NAMES[0]]
    decoded = [(_SHOWN.get(name, name.decode("latin-1")), value) for name, value in headers]
    objects = [_decode(value, shown) for shown, value in decoded]
    if any(other != objects[0] for other in objects[1:]):
        names = " and ".join(dict.fromkeys(shown for shown, _ in decoded))
        raise _invalid(f"The request carries {names} with different values; send one.", None)
    return objects[0], decoded[0][0]


def _decode(header: bytes, shown: str) -> dict[str, str]:
    try:
        data = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise _invalid(f"{shown} is not valid JSON.", None) from None
    if not isinstance(data, dict):
        raise _invalid(f"{shown} must be a JSON object of strings.", None)
    if len(data) > MAX_KEYS:
        raise _invalid(f"{shown} has more than {MAX_KEYS} keys.", None)
    for key, value in data.items():
        if not key or len(key) > MAX_LENGTH:
            raise _invalid(f"{shown} keys must be 1 to {MAX_LENGTH} characters.", None)
        if CONTROL_CHARACTERS.search(key):
            raise _invalid(f"{shown} keys may not contain control characters.", None)
        if not isinstance(value, str):
            raise _invalid(f"{shown} '{key}' must be a string.", key)
        if len(value) > MAX_LENGTH:
            raise _invalid(f"{shown} '{key}' is longer than {MAX_LENGTH} characters.", key)
        if CONTROL_CHARACTERS.search(value):
            raise _invalid(f"{shown} '{key}' may not contain control characters.", key)
    return data


def _invalid(message: str, key: str | None) -> GatewayError:
    param = f"metadata.{key}" if key else "metadata"
    return GatewayError(400, "invalid_metadata", message, param=param)
