"""The few client headers a provider sees, by an allow-list.

Clients select provider features by header: ``anthropic-beta`` (beta features, such as a larger
output or interleaved thinking), ``anthropic-version`` (the Messages API version) and
``OpenAI-Beta``. Each goes only to an account that speaks the protocol it belongs to, and only
when the client speaks that protocol too: a translated request carries the features its body
asks for in the other protocol's own form, so a beta flag for one provider means nothing to the
other and is dropped. Every other client header stays at the gateway (credentials, metadata,
cookies, tracing).
"""

from __future__ import annotations

import re

from custos.errors import GatewayError, bad_request

#: Header name -> the protocol whose accounts receive it.
PASSED_HEADERS: dict[bytes, str] = {
    b"anthropic-beta": "anthropic",
    b"anthropic-version": "anthropic",
    b"openai-beta": "openai",
}
#: Beta names are lowercase words, digits and dashes (``output-128k-2025-02-19``); OpenAI's take
#: ``name=version``. A list is comma-separated, with optional spaces or tabs (HTTP's OWS) around
#: the commas; it is forwarded rebuilt from its names, so nothing else is passed on raw.
_NAME = re.compile(r"[A-Za-z0-9._=\-]+")
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
_OWS = " \t"
#: The longest value forwarded, repeated headers joined.
_MAX_VALUE = 1024

ClientHeaders = tuple[tuple[str, str], ...]


def checked_client_headers(pairs: tuple[tuple[bytes, bytes], ...]) -> ClientHeaders:
    """The allow-listed headers, each checked; repeated ones joined with commas as HTTP allows.
    A value outside the form, or longer than ``_MAX_VALUE`` joined, is a 400 naming the header:
    a provider would refuse it anyway, and it must not reach a log or another system
    unchecked."""
    joined: dict[str, list[str]] = {}
    for name, raw in pairs:
        key = name.decode("latin-1")
        names = joined.setdefault(key, [])
        names.extend(_names(key, raw.decode("latin-1")))
        if len(",".join(names)) > _MAX_VALUE:
            raise _invalid(key, f"at most {_MAX_VALUE} characters, repeated headers joined")
    if len(joined.get("anthropic-version", ())) > 1:
        raise bad_request(
            "Send one anthropic-version header.", code="invalid_header", param="anthropic-version"
        )
    return tuple((key, ",".join(names)) for key, names in joined.items())


def _names(key: str, value: str) -> list[str]:
    """The comma-separated names of one header value; only ASCII spaces and tabs (not what
    ``str.strip`` or ``\\s`` also take: NEL, no-break space, other controls) surround them."""
    if key == "anthropic-version":
        version = value.strip(_OWS)
        if not _VERSION.fullmatch(version):
            raise _invalid(key, "a date such as 2023-06-01")
        return [version]
    names = [part.strip(_OWS) for part in value.split(",")]
    if len(value) > _MAX_VALUE or not all(_NAME.fullmatch(n) for n in names):
        raise _invalid(key, "a comma-separated list of names")
    return names


def _invalid(key: str, form: str) -> GatewayError:
    return bad_request(f"The {key} header must be {form}", code="invalid_header", param=key)


def provider_headers(
    headers: dict[str, str], client: ClientHeaders, wire: str, client_protocol: str
) -> None:
    """Add the client's headers for ``wire`` to ``headers`` (the adapter's own, operator's
    configured headers included). Betas add to the operator's; an operator's pinned
    ``anthropic-version`` wins over the client's."""
    if client_protocol != wire:
        return
    present = {name.lower(): name for name in headers}
    for name, value in client:
        if PASSED_HEADERS[name.encode()] != wire:
            continue
        existing = present.get(name)
        if existing is None:
            headers[name] = value
        elif name != "anthropic-version":
            headers[existing] = f"{headers[existing]},{value}"
