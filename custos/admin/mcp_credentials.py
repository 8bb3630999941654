"""The admin operations on per-user MCP credentials (``auth: {type: per_user}``, docs/mcp.md).

``/admin/v1/mcp/credentials``:

- ``GET`` lists which servers hold a credential (never a value): the caller's own, or with
  ``?user=`` another user's (admins and auditors);
- ``PUT /{server}`` sets or replaces the caller's own credential for a ``per_user`` server:
  nobody sets another user's, an admin neither;
- ``DELETE /{server}`` deletes the caller's own, or with ``?user=`` another user's (admins).

No route returns a value, to anyone. Every change is an admin event (``mcp_credential.set`` /
``.delete``: who, which user, which server; never the value), written with the change.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from custos.admin import rights
from custos.admin.errors import BadInput, Forbidden
from custos.admin.service import AdminService
from custos.identity.principal import Principal
from custos.state import mcp_credentials as stored
from custos.state.errors import Invalid, NotFound
from custos.state.mcp_credentials import CredentialCipher, CredentialInfo
from custos.state.models import Actor


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CredentialsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, description="Another user's (id or email): admins and "
                             "auditors list, admins delete.")  # fmt: skip


class CredentialSet(_Strict):
    secret: SecretStr = Field(
        min_length=1,
        max_length=stored.MAX_SECRET_CHARS,
        description="Your credential for the server, as the server expects it after the "
        "configured scheme (e.g. an API token). Stored encrypted; never shown again.",
    )


class CredentialOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(description="The user's id.")
    server: str
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, info: CredentialInfo) -> CredentialOut:
        return cls(user=info.principal_id, server=info.server,
                   created_at=info.created_at.isoformat(),
                   updated_at=info.updated_at.isoformat())  # fmt: skip


class CredentialList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: list[CredentialOut]


def _actor(p: Principal, role: str) -> Actor:
    return Actor(id=f"user:{p.id}", role=role)


async def _other_user(svc: AdminService, p: Principal, ref: str | None) -> str | None:
    """The user ``ref`` names when it is not the caller (None: the caller)."""
    if ref is None:
        return None
    user = await svc.find_user(ref)
    return None if user.id == p.id else user.id


async def list_credentials(svc: AdminService, p: Principal, q: CredentialsQuery) -> CredentialList:
    other = await _other_user(svc, p, q.user)
    if other is not None and not rights.reads_all(p):  # as if there were no such user
        raise NotFound(f"no user with id or email {q.user!r}")
    infos = await stored.list_credentials(svc.store, other or p.id)
    return CredentialList(data=[CredentialOut.of(i) for i in infos])


async def set_credential(
    svc: AdminService, p: Principal, server: str, body: CredentialSet
) -> CredentialOut:
    """Set or replace the caller's own credential for ``server`` (a ``per_user`` server)."""
    role = rights.require_writer(p)
    known = svc.mcp_credential_servers
    if known is not None and server not in set(known()):
        raise NotFound(f"no MCP server {server!r} takes per-user credentials (auth: per_user)")
    cipher = CredentialCipher(svc.tokens.key)
    try:
        info, _ = await stored.put_credential(
            svc.store, _actor(p, role), cipher, p.id, server, body.secret.get_secret_value()
        )
    except Invalid as exc:  # its message describes the value, never repeats it
        raise BadInput(str(exc), "secret") from None
    return CredentialOut.of(info)


async def delete_credential(
    svc: AdminService, p: Principal, server: str, q: CredentialsQuery
) -> CredentialOut:
    """Delete the caller's own credential, or (admins) another user's."""
    other = await _other_user(svc, p, q.user)
    if other is None:
        role = rights.require_writer(p)
    else:
        try:
            role = rights.require_admin(p, "deleting another user's MCP credential")
        except Forbidden:
            if rights.reads_all(p):  # an auditor may know it exists, and is told why not
                raise
            raise NotFound(f"no user with id or email {q.user!r}") from None
    info = await stored.delete_credential(svc.store, _actor(p, role), other or p.id, server)
    return CredentialOut.of(info)
