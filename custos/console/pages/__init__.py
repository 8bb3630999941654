"""The console's pages and the route table (``ROUTES``); ``nav`` is the menu a principal sees.

Pages take the console and the request and return a response. They call the admin API's
service functions with the signed-in principal, so each page shows what the API would show
that principal; the menu only hides links a role could not use anyway.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from custos.admin import rights
from custos.console.pages import audit, auth, budgets, config, identity, quarter, spend, traces
from custos.console.web import PREFIX, Request
from custos.identity.principal import Principal

ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/", traces.home),
    ("GET", "/signin", auth.signin_form),
    ("POST", "/signin", auth.signin),
    ("POST", "/signout", auth.signout),
    ("GET", "/signin/oidc/callback", auth.oidc_callback),
    ("GET", "/signin/oidc/{idp}", auth.oidc_start),
    ("GET", "/traces", traces.listing),
    ("GET", "/traces/{request}", traces.one),
    ("GET", "/traces/{request}/proof", traces.proof),
    ("GET", "/spend", spend.page),
    ("GET", "/budgets", budgets.page),
    ("GET", "/budgets/{budget}", budgets.one),
    ("GET", "/identity", identity.page),
    ("POST", "/users", identity.create_user),
    ("POST", "/teams", identity.create_team),
    ("POST", "/accounts", identity.create_account),
    ("POST", "/tokens", identity.create_token),
    ("POST", "/tokens/{token}/rotate", identity.rotate_token),
    ("POST", "/tokens/{token}/revoke", identity.revoke_token),
    ("GET", "/audit", audit.page),
    ("POST", "/audit/verify", audit.verify),
    ("GET", "/audit/proof", audit.proof),
    ("GET", "/audit/export", audit.export),
    ("POST", "/audit/holds", audit.set_hold),
    ("POST", "/audit/holds/{hold}/release", audit.release_hold),
    ("GET", "/config", config.page),
    ("GET", "/quarter", quarter.page),
    ("GET", "/quarter/records", quarter.records),
]

#: Pages served without a session.
PUBLIC = frozenset({auth.signin_form, auth.signin, auth.oidc_start, auth.oidc_callback})


def nav(p: Principal) -> list[tuple[str, str]]:
    """(label, path) of the menu for ``p``."""
    items = [("Traces", f"{PREFIX}/traces")]
    if rights.reads_all(p):
        items.append(("Spend", f"{PREFIX}/spend"))
    if rights.reads_all(p) or rights.managed_teams(p):
        items.append(("Budgets", f"{PREFIX}/budgets"))
    items.append(("Identity", f"{PREFIX}/identity"))
    if rights.reads_all(p):
        items += [
            ("Audit log", f"{PREFIX}/audit"),
            ("Config", f"{PREFIX}/config"),
            ("Quarter question", f"{PREFIX}/quarter"),
        ]
    return items


def next_query(r: Request) -> str:
    target = r.path + ("?" + urlencode(r.query) if r.query else "")
    return urlencode({"next": target})
