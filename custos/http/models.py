"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models the caller may call, in its protocol.

A client that sends ``anthropic-version`` is an Anthropic client and gets Anthropic's shape
(``{"data": [{"type": "model", "id", "display_name", "created_at"}], "has_more", "first_id",
"last_id"}``, paged by ``limit``, ``after_id`` and ``before_id``); any other gets OpenAI's
(``{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}``). A model the
caller may not call does not exist for it: ``/v1/models/{id}`` answers 404, as the list leaves it
out.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from custos.errors import GatewayError, bad_request
from custos.http.requests import require_model
from custos.identity.principal import Principal
from custos.runtime import Runtime
from custos.wire import ApiProtocol

#: The route's path as metrics and dispatch name it; the id follows the prefix.
ONE_MODEL_PREFIX = "/v1/models/"
#: Models carry no creation date of their own; Anthropic's shape requires one.
_CREATED_AT = "1970-01-01T00:00:00Z"
#: Anthropic's page size: 20 unless asked, at most 1000.
_DEFAULT_LIMIT = 20
_MAX_LIMIT = 1000

_NAMES_CACHE: dict[tuple[object, ...], tuple[str, ...]] = {}
_NAMES_CACHE_SIZE = 1024
#: OpenAI's list, the common answer, kept serialised per revision and set of names.
_OPENAI_LISTS: dict[tuple[str, tuple[str, ...]], bytes] = {}


def client_protocol(headers: list[tuple[bytes, bytes]]) -> ApiProtocol:
    return "anthropic" if any(name == b"anthropic-version" for name, _ in headers) else "openai"


def allowed_names(runtime: Runtime, principal: Principal) -> tuple[str, ...]:
    """The model names this principal may call, sorted; cached per revision and grant."""
    key = (runtime.revision, principal.subjects, principal.account_models, principal.token_models)
    cached = _NAMES_CACHE.get(key)
    if cached is None:
        names = [n for n in sorted(runtime.routes) if principal.may_use_model(n)]
        cached = tuple(runtime.access.allowed_models(principal.subjects, names))
        if len(_NAMES_CACHE) >= _NAMES_CACHE_SIZE:
            _NAMES_CACHE.clear()
        _NAMES_CACHE[key] = cached
    return cached


def models_list(
    runtime: Runtime, principal: Principal, protocol: ApiProtocol, query: bytes
) -> bytes:
    names = allowed_names(runtime, principal)
    if protocol == "openai":
        key = (runtime.revision, names)
        cached = _OPENAI_LISTS.get(key)
        if cached is None:
            data = [_openai_model(runtime, n) for n in names]
            cached = orjson.dumps({"object": "list", "data": data})
            if len(_OPENAI_LISTS) >= _NAMES_CACHE_SIZE:
                _OPENAI_LISTS.clear()
            _OPENAI_LISTS[key] = cached
        return cached
    page, has_more = _page(names, parse_qs(query.decode("latin-1")))
    return orjson.dumps(
        {
            "data": [_anthropic_model(n) for n in page],
            "has_more": has_more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
    )


def one_model(runtime: Runtime, principal: Principal, protocol: ApiProtocol, name: str) -> bytes:
    require_model({"model": name})  # an id is checked as a body's model is: it is echoed
    if name not in allowed_names(runtime, principal):
        raise GatewayError(
            404,
            "model_not_found",
            f"The model '{name}' does not exist or you do not have access to it.",
            param="model",
        )
    if protocol == "anthropic":
        return orjson.dumps(_anthropic_model(name))
    return orjson.dumps(_openai_model(runtime, name))


def _openai_model(runtime: Runtime, name: str) -> dict[str, Any]:
    owner = "custos" if runtime.routes[name].virtual else name.split("/", 1)[0]
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


def _anthropic_model(name: str) -> dict[str, Any]:
    return {"type": "model", "id": name, "display_name": name, "created_at": _CREATED_AT}


def _page(names: tuple[str, ...], query: dict[str, list[str]]) -> tuple[tuple[str, ...], bool]:
    """One page of ``names`` as Anthropic pages: ``after_id`` forwards, ``before_id`` back."""
    limit = _limit(query.get("limit"))
    after, before = _one(query, "after_id"), _one(query, "before_id")
    if after is not None:
        start = names.index(after) + 1 if after in names else len(names)
        page = names[start : start + limit]
        return page, start + limit < len(names)
    if before is not None:
        end = names.index(before) if before in names else 0
        start = max(end - limit, 0)
        return names[start:end], start > 0
    return names[:limit], limit < len(names)


def _limit(values: list[str] | None) -> int:
    if not values:
        return _DEFAULT_LIMIT
    value = values[-1]
    if not value.isdigit() or not 1 <= int(value) <= _MAX_LIMIT:
        raise bad_request(f"limit must be an integer from 1 to {_MAX_LIMIT}", param="limit")
    return int(value)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None
