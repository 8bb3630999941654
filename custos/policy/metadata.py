"""Stage 2, identify: the request metadata header, checked against the config's contract.

``X-Custos-Metadata`` (``X-TFY-METADATA`` is accepted as an alias) carries a JSON object of string
keys to string values, each at most 128 characters. ``metadata.required`` keys must be present and
``metadata.allowed`` limits a key's values. Every later stage (rules' ``when``, budgets split by
``metadata.KEY``, the audit record) reads the parsed dict from the request context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from custos.errors import GatewayError

MAX_LENGTH = 128
MAX_KEYS = 64
HEADER_NAMES = (b"x-custos-metadata", b"x-tfy-metadata")


@dataclass(frozen=True, slots=True)
class MetadataContract:
    required: tuple[str, ...] = ()
    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, required: Sequence[str], allowed: Mapping[str, Sequence[str]]
    ) -> MetadataContract:
        return cls(tuple(required), {k: frozenset(v) for k, v in allowed.items()})

    def parse(self, header: bytes | None) -> dict[str, str]:
        metadata = _decode(header) if header is not None else {}
        for key in self.required:
            if key not in metadata:
                raise _invalid(f"X-Custos-Metadata must include '{key}'.", key)
        for key, values in self.allowed.items():
            if key in metadata and metadata[key] not in values:
                choices = ", ".join(sorted(values))
                raise _invalid(f"X-Custos-Metadata '{key}' must be one of: {choices}.", key)
        return metadata


def _decode(header: bytes) -> dict[str, str]:
    try:
        data = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise _invalid("X-Custos-Metadata is not valid JSON.", None) from None
    if not isinstance(data, dict):
        raise _invalid("X-Custos-Metadata must be a JSON object of strings.", None)
    if len(data) > MAX_KEYS:
        raise _invalid(f"X-Custos-Metadata has more than {MAX_KEYS} keys.", None)
    for key, value in data.items():
        if not key or len(key) > MAX_LENGTH:
            raise _invalid(
                f"X-Custos-Metadata keys must be 1 to {MAX_LENGTH} characters.", key[:MAX_LENGTH]
            )
        if not isinstance(value, str):
            raise _invalid(f"X-Custos-Metadata '{key}' must be a string.", key)
        if len(value) > MAX_LENGTH:
            raise _invalid(
                f"X-Custos-Metadata '{key}' is longer than {MAX_LENGTH} characters.", key
            )
    return data


def _invalid(message: str, key: str | None) -> GatewayError:
    param = f"metadata.{key}" if key else "metadata"
    return GatewayError(400, "invalid_metadata", message, param=param)
