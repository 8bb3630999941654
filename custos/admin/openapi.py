"""The admin API's OpenAPI 3.1 document, generated from the route table and the pydantic models.

Nothing here is written per route: each ``RouteSpec`` says its method, path, models and
whether it changes anything, and ``build_document`` derives parameters, request bodies,
responses (the success model and the error statuses that route can answer) and the
components (every model's JSON Schema, which OpenAPI 3.1 takes as it is).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from custos.admin.schemas import ErrorResponse

_PARAM = re.compile(r"\{([a-z_]+)\}")

#: What each path parameter accepts.
PATH_PARAMS: dict[str, str] = {
    "user": "A user's id (usr_…) or email.",
    "team": "A team's id (team_…) or name.",
    "account": "A virtual account's id (va_…) or name.",
    "token": "A token's id (tok_…).",
}

_ERRORS: dict[int, str] = {
    400: "The request is invalid; `error.param` names the field.",
    401: "No valid bearer token (codes missing_token, malformed_token, unknown_token, "
    "expired_token, revoked_token).",
    403: "The caller's roles (or the narrowing of its token) do not allow this; the message "
    "names what would.",
    404: "The route, or an object the request names, does not exist, or is outside what the "
    "caller may see (the two answer alike).",
    405: "The route exists but not with this method.",
    409: "The change conflicts with what is stored (a duplicate name, a revoked token, …).",
    413: "The body is larger than 1 MiB.",
    415: "The body is not sent as application/json.",
}


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One admin operation as the OpenAPI document (and the router) sees it."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    operation_id: str
    summary: str
    response: type[BaseModel]
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    #: Changes something: read-only principals are refused before the body is read.
    mutating: bool = False
    #: Needs a bearer token (only the OpenAPI document itself does not).
    auth: bool = True
    #: A query parameter or a body field names a user, team or account, which may not exist,
    #: or may be outside what the caller sees (404).
    names_objects: bool = False
    description: str = ""

    @property
    def path_params(self) -> list[str]:
        return _PARAM.findall(self.path)


def _schemas(specs: Sequence[RouteSpec]) -> tuple[dict[tuple[type[BaseModel], str], Any], dict]:
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorResponse, "serialization"): None
    }
    for spec in specs:
        if spec.body is not None:
            wanted[(spec.body, "validation")] = None
        wanted[(spec.response, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template="#/components/schemas/{model}")
    return dict(refs), top.get("$defs", {})


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = _without_null(dict(prop))
        prop.pop("title", None)
        description = prop.pop("description", None)
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        params.append(param)
    return params


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``T | None`` as just ``T``: an absent query parameter is the null."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        rest = [o for o in options if o != {"type": "null"}]
        if len(rest) == 1:
            schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **rest[0]}
    if schema.get("default", 0) is None:
        schema = {k: v for k, v in schema.items() if k != "default"}
    return schema


def body_required(model: type[BaseModel]) -> bool:
    """Whether a request must send a body: some field of ``model`` is required."""
    return any(f.is_required() for f in model.model_fields.values())


def _error_statuses(spec: RouteSpec) -> Iterable[int]:
    statuses = {405}
    if spec.auth:
        statuses |= {401, 403}
    if spec.body is not None or spec.query is not None:
        statuses.add(400)
    if spec.body is not None:
        statuses |= {413, 415}
    if spec.path_params or spec.names_objects:
        statuses.add(404)
    if spec.mutating:
        statuses.add(409)
    return sorted(statuses)


def _operation(spec: RouteSpec, refs: dict[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    error_ref = refs[(ErrorResponse, "serialization")]
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": PATH_PARAMS.get(name, name),
            "schema": {"type": "string"},
        }
        for name in spec.path_params
    ]
    if spec.query is not None:
        parameters.extend(_query_parameters(spec.query))
    responses: dict[str, Any] = {
        str(spec.status): {
            "description": spec.response.__doc__.strip().splitlines()[0]
            if spec.response.__doc__
            else spec.summary,
            "content": {"application/json": {"schema": refs[(spec.response, "serialization")]}},
        }
    }
    for status in _error_statuses(spec):
        responses[str(status)] = {
            "description": _ERRORS[status],
            "content": {"application/json": {"schema": error_ref}},
        }
    operation: dict[str, Any] = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "tags": [spec.tag],
        "responses": responses,
    }
    if spec.description:
        operation["description"] = spec.description
    if parameters:
        operation["parameters"] = parameters
    if spec.body is not None:
        operation["requestBody"] = {
            # The router reads an empty body as {} when nothing in it is required.
            "required": body_required(spec.body),
            "content": {"application/json": {"schema": refs[(spec.body, "validation")]}},
        }
    if not spec.auth:
        operation["security"] = []
    return operation


def build_document(specs: Sequence[RouteSpec], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for ``specs``."""
    refs, components = _schemas(specs)
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Custos admin API",
            "version": version,
            "description": "Users, teams, virtual accounts, tokens and admin events. "
            "Authenticate with a personal access token: `Authorization: Bearer cst_pat_…`. "
            "Roles: admin (everything), team_manager (their teams' accounts, those accounts' "
            "tokens, their members), member (their own tokens), auditor (read-only).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in dict.fromkeys(s.tag for s in specs)],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "cst_pat_…"}
            },
        },
    }
