"""The web console at /ui, driven in headless Chromium (Debian's chromium and chromedriver).

One gateway and one browser for the module. The people: an admin, an auditor, a team manager
of ``blue``, ``alice`` (member of ``blue``) and ``bob`` (member of ``red``), each with a
personal token made through the admin API, and a few model calls from each. Each test signs
in as the role it is about and checks what that role can and cannot see or do, against what
the admin API answers the same principal. ``make test`` installs the browser packages when they
are missing (the Makefile's ``browsers`` target).

With ``CUSTOS_CONSOLE_SCREENSHOTS=DIR`` set, the last test also writes a screenshot of every
page at desktop (1280 px) and narrow (390 px) widths into DIR.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from custos.audit.log.checkpoint import generate_pem
from tests.audit_helpers import serve_http
from tests.conftest import CUSTOS, GatewayProcess, MockProvider, standard_config

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CLASSES = {"customer_data": {"detectors": ["pii.email"]}}
MODEL = "openai-main/gpt-5.5"


class IdP(BaseHTTPRequestHandler):
    """A minimal OIDC provider: discovery, an authorize endpoint that signs in ``user`` at once
    (no login page), a token endpoint that checks the PKCE verifier, and its key set."""

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    url = ""
    user = "alice@custos.test"
    codes: dict[str, dict[str, str]] = {}
    exchanges: list[dict[str, str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, body: Any, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/.well-known/openid-configuration":
            base = IdP.url
            self._json({"issuer": base, "authorization_endpoint": f"{base}/authorize",
                        "token_endpoint": f"{base}/token", "jwks_uri": f"{base}/jwks"})  # fmt: skip
        elif path == "/jwks":
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(IdP.key.public_key()))
            self._json({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})
        elif path == "/authorize":
            params = dict(urllib.parse.parse_qsl(query))
            code = secrets.token_urlsafe(16)
            IdP.codes[code] = {**params, "email": IdP.user}
            target = params["redirect_uri"] + "?" + urllib.parse.urlencode(
                {"code": code, "state": params["state"]})  # fmt: skip
            self.send_response(302)
            self.send_header("location", target)
            self.send_header("content-length", "0")
            self.end_headers()
        else:
            self._json({"error": "not_found"}, 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        IdP.exchanges.append(form)
        granted = IdP.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if granted is None or digest.rstrip(b"=").decode() != granted["code_challenge"]:
            self._json({"error": "invalid_grant"}, 400)
            return
        now = int(time.time())
        claims = {"iss": IdP.url, "aud": granted["client_id"], "sub": "s-1", "iat": now,
                  "exp": now + 300, "nonce": granted["nonce"],
                  "email": granted["email"]}  # fmt: skip
        token = jwt.encode(claims, IdP.key, algorithm="RS256", headers={"kid": "k1"})
        self._json({"id_token": token, "token_type": "Bearer", "access_token": "x"})


@pytest.fixture(scope="module")
def idp() -> Iterator[str]:
    server, url = serve_http(IdP)
    IdP.url = url
    yield url
    server.shutdown()


@pytest.fixture(scope="module")
def gw(
    mock_provider: MockProvider, tmp_path_factory: pytest.TempPathFactory, idp: str
) -> Iterator[Any]:
    identity = "identity:\n  token_hash_key: ${env:CUSTOS_TEST_TOKEN_KEY}\n"
    with_idp = identity + (
        f"  idp:\n    - {{name: corp, issuer: '{idp}', audience: custos,"
        f" jwks_url: '{idp}/jwks', console: {{client_id: custos-console}}}}\n"
    )
    text = (
        standard_config(mock_provider.url).replace(identity, with_idp)
        + "data_classes: "
        + json.dumps(CLASSES)
        + "\naudit: {checkpoint_interval_s: 0.3}\n"
        + "budgets:\n"
        + "  - {id: monthly, when: {}, limit_usd: 100, period: month}\n"
        + "  - {id: per-team, when: {}, limit_usd: 5, period: day, applies_per: [team]}\n"
    )
    process = GatewayProcess(text, tmp_path_factory.mktemp("console"),
                             env={"CUSTOS_AUDIT_SIGNING_KEY": generate_pem().decode()})  # fmt: skip
    yield process
    process.stop()


def admin_api(gw: GatewayProcess, method: str, path: str, token: str | None = None,
              **kw: Any) -> httpx.Response:  # fmt: skip
    headers = {"authorization": f"Bearer {token or gw.token}"}
    return httpx.request(method, f"{gw.url}/admin/v1{path}", headers=headers, timeout=30, **kw)


def _call(gw: GatewayProcess, token: str, text: str = "hello") -> str:
    client = openai.OpenAI(base_url=gw.base_url, api_key=token, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-custos-request-id"]


@pytest.fixture(scope="module")
def people(gw: GatewayProcess) -> dict[str, Any]:
    """Tokens of each role and the request ids of each one's calls."""
    for team in ("blue", "red"):
        assert admin_api(gw, "POST", "/teams", json={"name": team}).status_code == 201
    out: dict[str, Any] = {"admin": gw.token, "requests": {}}
    users = {
        "auditor": (["auditor"], None, None),
        "manager": (["team_manager", "member"], "blue", "manager"),
        "alice": (["member"], "blue", "member"),
        "bob": (["member"], "red", "member"),
    }
    for name, (roles, team, membership) in users.items():
        made = admin_api(gw, "POST", "/users",
                         json={"email": f"{name}@custos.test", "roles": roles})  # fmt: skip
        assert made.status_code == 201, made.text
        user_id = made.json()["id"]
        if team is not None:
            added = admin_api(gw, "POST", f"/teams/{team}/members",
                              json={"user": user_id, "role": membership})  # fmt: skip
            assert added.status_code == 201, added.text
        issued = admin_api(gw, "POST", "/tokens", json={"name": name, "user": user_id})
        assert issued.status_code == 201, issued.text
        out[name] = issued.json()["token"]
    out["requests"]["alice"] = [
        _call(gw, out["alice"], "reply to someone@northwind.example"),
        _call(gw, out["alice"]),
    ]
    out["requests"]["bob"] = [_call(gw, out["bob"])]
    out["requests"]["admin"] = [_call(gw, gw.token)]
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


#: Every page source the browser was shown, for the no-secret check.
SEEN: list[tuple[str, str]] = []


def visit(browser: webdriver.Chrome, url: str) -> str:
    browser.get(url)
    SEEN.append((browser.current_url, browser.page_source))
    return browser.page_source


def sign_in(browser: webdriver.Chrome, gw: GatewayProcess, token: str) -> None:
    browser.delete_all_cookies()
    visit(browser, f"{gw.url}/ui/signin")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda d: "/ui/signin" not in d.current_url)
    SEEN.append((browser.current_url, browser.page_source))


def nav_labels(browser: webdriver.Chrome) -> list[str]:
    return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "header nav a")]


def heading(browser: webdriver.Chrome) -> str:
    return browser.find_element(By.TAG_NAME, "h1").text


class Signed:
    """An HTTP client signed in to the console (for statuses, headers and forged posts)."""

    def __init__(self, gw: GatewayProcess, token: str) -> None:
        self.client = httpx.Client(base_url=gw.url, timeout=60)
        page = self.client.get("/ui/signin")
        csrf = _csrf(page.text)
        done = self.client.post("/ui/signin", data={"csrf": csrf, "token": token})
        assert done.status_code == 303, done.text
        self.csrf = _csrf(self.client.get("/ui/identity").text)

    def get(self, path: str) -> httpx.Response:
        response = self.client.get(path)
        SEEN.append((path, response.text))
        return response

    def post(self, path: str, data: dict[str, str], **kw: Any) -> httpx.Response:
        return self.client.post(path, data=data, **kw)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


# -- sign-in, sessions, headers --------------------------------------------------------------------


def test_sign_in_session_cookie_headers_and_sign_out(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    anonymous = httpx.get(f"{gw.url}/ui/traces")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/ui/signin")
    form = httpx.get(f"{gw.url}/ui/signin")
    csp = form.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "<script>" not in form.text
    assert form.headers["x-frame-options"] == "DENY"
    assert form.headers["cache-control"] == "no-store"

    # A wrong token: refused with the directory's reason, recorded as an auth failure.
    browser.delete_all_cookies()
    visit(browser, f"{gw.url}/ui/signin")
    browser.find_element(By.ID, "token").send_keys("cst_pat_not_a_real_token")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    error = WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "signin-error"))
    assert "not valid" in error[0].text or "malformed" in error[0].text

    deadline = time.monotonic() + 10
    while True:  # recorded as the admin API records a refused token
        failures = admin_api(gw, "GET", "/audit/events", params={"event_type": "auth.failure"})
        routes = [json.loads(e["record"]).get("http.route") for e in failures.json()["data"]]
        if "/ui/signin" in routes or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "/ui/signin" in routes, routes

    sign_in(browser, gw, people["admin"])
    assert browser.current_url.endswith("/ui/traces")
    assert nav_labels(browser) == ["Traces", "Spend", "Budgets", "Identity", "Audit log",
                                   "Config", "Quarter question"]  # fmt: skip
    cookie = browser.get_cookie("custos_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["value"] not in browser.page_source

    browser.find_element(By.CSS_SELECTOR, ".who button").click()
    WebDriverWait(browser, 10).until(lambda d: "/ui/signin" in d.current_url)
    visit(browser, f"{gw.url}/ui/traces")
    assert "/ui/signin" in browser.current_url  # the session is gone

    # A virtual account's token cannot sign in (the admin API refuses them too).
    assert admin_api(gw, "POST", "/accounts", json={"name": "bot", "team": "blue",
                     "allowed_models": ["openai-main/*"]}).status_code == 201  # fmt: skip
    vat = admin_api(gw, "POST", "/tokens", json={"name": "b", "account": "bot"}).json()["token"]
    client = httpx.Client(base_url=gw.url)
    refused = client.post("/ui/signin", data={"csrf": _csrf(client.get("/ui/signin").text),
                                               "token": vat})  # fmt: skip
    assert refused.status_code == 403 and "custos_console=" not in refused.headers.get(
        "set-cookie", ""
    )


def test_sign_in_through_the_identity_provider(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    assert "identity:\n  token_hash_key" in gw.config_path.read_text()
    browser.delete_all_cookies()
    IdP.user = "alice@custos.test"
    visit(browser, f"{gw.url}/ui/signin?next=/ui/identity")
    browser.find_element(By.LINK_TEXT, "corp").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/ui/identity"))
    assert browser.find_element(By.CSS_SELECTOR, ".who span").text == "alice@custos.test"
    # The roles are the store's: alice is a member, as with her token.
    assert nav_labels(browser) == ["Traces", "Identity"]
    assert people["requests"]["alice"][0] in visit(browser, f"{gw.url}/ui/traces")
    exchange = IdP.exchanges[-1]
    assert exchange["client_id"] == "custos-console" and len(exchange["code_verifier"]) >= 43
    assert browser.get_cookie("custos_console_oidc") is None  # the pending sign-in is spent

    # An email the IdP vouches for but Custos does not know: refused, and no session.
    browser.delete_all_cookies()
    IdP.user = "carol@custos.test"
    visit(browser, f"{gw.url}/ui/signin")
    browser.find_element(By.LINK_TEXT, "corp").click()
    error = WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "signin-error"))
    assert "not a Custos user" in error[0].text
    assert browser.get_cookie("custos_console") is None

    # A callback this browser did not start (a sign-in CSRF) is refused.
    client = httpx.Client(base_url=gw.url)
    started = client.get("/ui/signin/oidc/corp")
    assert started.status_code == 302
    state = urllib.parse.parse_qs(urllib.parse.urlparse(started.headers["location"]).query)[
        "state"
    ][0]
    fresh = httpx.Client(base_url=gw.url)
    refused = fresh.get(f"/ui/signin/oidc/callback?code=x&state={state}")
    assert refused.status_code == 401 and "custos_console=" not in refused.headers.get(
        "set-cookie", ""
    )
    assert client.get("/ui/signin/oidc/nope").status_code == 404


def test_csrf_is_required_on_every_change(gw: GatewayProcess, people: dict[str, Any]) -> None:
    before = len(admin_api(gw, "GET", "/tokens", people["alice"]).json()["data"])
    alice = Signed(gw, people["alice"])
    for data in ({"name": "forged"}, {"name": "forged", "csrf": "wrong"}):
        refused = alice.post("/ui/tokens", data)
        assert refused.status_code == 403, refused.text
    other_site = alice.post("/ui/tokens", {"name": "forged", "csrf": alice.csrf},
                            headers={"origin": "https://evil.example"})  # fmt: skip
    assert other_site.status_code == 403
    assert len(admin_api(gw, "GET", "/tokens", people["alice"]).json()["data"]) == before
    # The sign-in form is protected too (a login CSRF), and sign-out needs the token.
    fresh = httpx.Client(base_url=gw.url)
    assert fresh.post("/ui/signin", data={"token": people["alice"]}).status_code == 403
    assert alice.post("/ui/signout", {}).status_code == 403
    assert alice.get("/ui/identity").status_code == 200


# -- traces ------------------------------------------------------------------------------------


def test_each_role_sees_the_traces_the_rule_allows(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    alice_ids, bob_ids = people["requests"]["alice"], people["requests"]["bob"]
    admin_ids = people["requests"]["admin"]
    expected = {
        "admin": (alice_ids + bob_ids + admin_ids, []),
        "auditor": (alice_ids + bob_ids + admin_ids, []),
        "manager": (alice_ids, bob_ids + admin_ids),  # manages blue: alice's team
        "alice": (alice_ids, bob_ids + admin_ids),
        "bob": (bob_ids, alice_ids + admin_ids),
    }
    for role, (seen, hidden) in expected.items():
        sign_in(browser, gw, people[role])
        source = visit(browser, f"{gw.url}/ui/traces")
        for rid in seen:
            assert rid in source, (role, rid)
        # Exactly what the admin API lists for the same principal.
        listed = admin_api(gw, "GET", "/audit/traces", people[role]).json()["data"]
        shown = browser.find_elements(By.CSS_SELECTOR, "#traces tbody td:nth-child(2) a")
        assert [t["request_id"] for t in listed] == [a.text for a in shown], role
        for rid in hidden:
            assert rid not in source, (role, rid)
            # Changing the id in the URL reveals nothing: the same 404 as a made-up id.
            page = visit(browser, f"{gw.url}/ui/traces/{rid}")
            assert (
                heading(browser) == "Not found"
                and rid not in page.split("<main")[1].split("no trace for request")[0]
            )
            visit(browser, f"{gw.url}/ui/traces/{rid}/proof")
            assert "Not found" in browser.page_source
    bob = Signed(gw, people["bob"])
    assert bob.get(f"/ui/traces/{alice_ids[0]}").status_code == 404
    assert bob.get(f"/ui/traces/{alice_ids[0]}/proof").status_code == 404
    assert bob.get("/ui/traces/000000000000000000000000").status_code == 404
    refused = admin_api(gw, "GET", f"/audit/traces/{alice_ids[0]}", people["bob"])
    assert refused.status_code == 404
    assert (
        admin_api(gw, "GET", f"/audit/traces/{alice_ids[0]}", people["alice"]).json()["records"][0][
            "request_id"
        ]
        == alice_ids[0]
    )


def test_trace_filters_and_the_trace_page(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    sign_in(browser, gw, people["auditor"])
    source = visit(browser, f"{gw.url}/ui/traces?team=red")
    assert people["requests"]["bob"][0] in source
    assert all(rid not in source for rid in people["requests"]["alice"])
    source = visit(browser, f"{gw.url}/ui/traces?data_class=customer_data")
    assert people["requests"]["alice"][0] in source and people["requests"]["alice"][1] not in source
    source = visit(browser, f"{gw.url}/ui/traces?user=bob@custos.test&status=200&outcome=served")
    rows = browser.find_elements(By.CSS_SELECTOR, "#traces tbody tr")
    assert len(rows) == 1 and people["requests"]["bob"][0] in source
    visit(browser, f"{gw.url}/ui/traces?request_id={people['requests']['admin'][0]}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#traces tbody tr a")) == 1

    rid = people["requests"]["alice"][0]
    deadline = time.monotonic() + 15
    while True:  # the record is sequenced and covered by a checkpoint within moments
        visit(browser, f"{gw.url}/ui/traces/{rid}")
        proof = browser.find_element(By.CSS_SELECTOR, ".proof").text
        if "included" in proof or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert "included in the checkpoint" in proof
    decisions = browser.find_element(By.CSS_SELECTOR, "table.decisions").text
    assert "everyone-everything" in decisions and "allow" in decisions
    attempts = browser.find_element(By.CSS_SELECTOR, "table.attempts").text
    assert MODEL in attempts and "200" in attempts
    assert "customer_data" in browser.page_source
    auditor = Signed(gw, people["auditor"])
    document = auditor.get(f"/ui/traces/{rid}/proof").json()
    assert document["proofs"][0]["format"] == "custos-audit-proof/1"
    assert json.loads(document["proofs"][0]["record"])["request_id"] == rid


# -- per role: pages and actions ----------------------------------------------------------------


def test_what_each_role_can_open(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    readers_only = ("spend", "audit", "config", "quarter")
    for role in ("alice", "manager"):
        sign_in(browser, gw, people[role])
        wanted = ["Traces", "Budgets", "Identity"] if role == "manager" else ["Traces", "Identity"]
        assert nav_labels(browser) == wanted
        for page in readers_only:
            visit(browser, f"{gw.url}/ui/{page}")
            assert heading(browser) == "Not allowed", (role, page)
            assert "admin or auditor role" in browser.page_source
    sign_in(browser, gw, people["auditor"])
    for page in readers_only:
        visit(browser, f"{gw.url}/ui/{page}")
        assert heading(browser) != "Not allowed", page
    # The auditor reads every user and token but is offered no change, and is refused one.
    visit(browser, f"{gw.url}/ui/identity")
    users = browser.find_element(By.ID, "users").text
    assert all(f"{n}@custos.test" in users for n in ("alice", "bob", "manager"))
    assert not browser.find_elements(By.CSS_SELECTOR, "form[action$='/revoke']")
    assert not browser.find_elements(By.ID, "create-user")
    auditor = Signed(gw, people["auditor"])
    refused = auditor.post("/ui/teams", {"name": "green", "csrf": auditor.csrf})
    assert refused.status_code == 403 and "read-only" in refused.text
    assert "green" not in admin_api(gw, "GET", "/teams").text
    # A member sees only themselves, as GET /admin/v1/users answers them.
    sign_in(browser, gw, people["alice"])
    visit(browser, f"{gw.url}/ui/identity")
    api_users = [u["email"] for u in admin_api(gw, "GET", "/users", people["alice"]).json()["data"]]
    assert api_users == ["alice@custos.test"]
    assert browser.find_element(By.ID, "users").text.count("@custos.test") == 1
    alice = Signed(gw, people["alice"])
    refused = alice.post("/ui/users", {"email": "eve@custos.test", "member": "1",
                                       "csrf": alice.csrf})  # fmt: skip
    assert refused.status_code == 403 and "admin role" in refused.text
    # The manager sees blue's account, not others'; and manages blue's members' traces only.
    sign_in(browser, gw, people["manager"])
    visit(browser, f"{gw.url}/ui/identity")
    assert "bot" in browser.find_element(By.ID, "accounts").text


def test_admin_changes_are_recorded_like_the_apis(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    sign_in(browser, gw, people["admin"])
    visit(browser, f"{gw.url}/ui/identity")
    browser.find_element(By.ID, "team-name").send_keys("green")
    browser.find_element(By.CSS_SELECTOR, "#create-team button").click()
    WebDriverWait(browser, 10).until(lambda d: "Team green created" in d.page_source)
    assert "green" in browser.find_element(By.ID, "teams").text
    events = admin_api(gw, "GET", "/events", params={"target_type": "team"}).json()["data"]
    created = [e for e in events if e["action"] == "team.create" and e.get("after", {}).get("name")
               == "green"]  # fmt: skip
    assert len(created) == 1 and created[0]["actor_role"] == "admin"
    admin_id = admin_api(gw, "GET", "/me").json()["id"]
    assert created[0]["actor"] == f"user:{admin_id}"


# -- tokens ------------------------------------------------------------------------------------


def test_a_token_is_shown_once_and_its_revocation_counts_at_once(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    sign_in(browser, gw, people["alice"])
    visit(browser, f"{gw.url}/ui/identity")
    browser.find_element(By.ID, "t-name").send_keys("notebook")
    browser.find_element(By.CSS_SELECTOR, "#create-token button").click()
    secret_field = WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "secret"))
    secret = secret_field.get_attribute("value")
    assert secret and secret.startswith("cst_")
    people.setdefault("made", []).append(secret)
    assert _call(gw, secret)  # the new token works on the model routes at once
    # Shown once: the next page and the token list never hold it.
    source = visit(browser, f"{gw.url}/ui/identity")
    assert secret not in source and "notebook" in browser.find_element(By.ID, "tokens").text
    with pytest.raises(NoSuchElementException):
        browser.find_element(By.ID, "secret")

    row = browser.find_element(By.XPATH, "//table[@id='tokens']//tr[td[1]='notebook']")
    row.find_element(By.CSS_SELECTOR, "form[action$='/revoke'] button").click()
    browser.switch_to.alert.accept()
    WebDriverWait(browser, 10).until(lambda d: "Token notebook (" in d.page_source)
    with pytest.raises(openai.AuthenticationError):
        _call(gw, secret)


def test_rotation_keeps_the_old_token_for_its_grace(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    alice = Signed(gw, people["alice"])
    made = alice.post("/ui/tokens", {"name": "rotated", "csrf": alice.csrf})
    assert made.status_code == 201
    old = re.search(r'id="secret"[^>]*value="([^"]+)"', made.text)
    assert old
    old_secret = old.group(1)
    token_id = re.search(r"Id <code>(tok_[0-9a-f]+)</code>", made.text)
    assert token_id
    rotated = alice.post(f"/ui/tokens/{token_id.group(1)}/rotate",
                         {"grace_seconds": "600", "csrf": alice.csrf})  # fmt: skip
    assert rotated.status_code == 201 and "works until" in rotated.text
    new = re.search(r'id="secret"[^>]*value="([^"]+)"', rotated.text)
    assert new and new.group(1) != old_secret
    people.setdefault("made", []).extend([old_secret, new.group(1)])
    assert _call(gw, old_secret) and _call(gw, new.group(1))
    # Bob cannot touch alice's token: it does not exist for him.
    bob = Signed(gw, people["bob"])
    refused = bob.post(f"/ui/tokens/{token_id.group(1)}/revoke", {"csrf": bob.csrf})
    assert refused.status_code == 404


# -- spend, audit, config, quarter --------------------------------------------------------------


def test_the_spend_charts_totals_are_the_reports(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    today = time.strftime("%Y-%m-%d", time.gmtime())
    sign_in(browser, gw, people["auditor"])
    for measure, key in (("cost_micros", "cost_micros"), ("requests", "requests")):
        visit(browser, f"{gw.url}/ui/spend?from={today}&to={today}&by=team&measure={measure}")
        params = {"from": today, "to": today, "group_by": "team"}
        report = admin_api(gw, "GET", "/audit/report", people["auditor"], params=params).json()
        for chart in ("day-chart", "group-chart"):
            svg = browser.find_element(By.CSS_SELECTOR, f"#{chart} svg")
            bars = [int(b.get_attribute("data-value") or 0)
                    for b in svg.find_elements(By.CSS_SELECTOR, "rect.bar")]  # fmt: skip
            assert sum(bars) == int(svg.get_attribute("data-total") or -1) == report["totals"][key]
        assert report["totals"]["requests"] >= 4
        totals = browser.find_element(By.ID, "totals")
        assert (
            int(totals.get_attribute("data-cost-micros") or -1) == report["totals"]["cost_micros"]
        )
        teams = {r["group"]["team"]: r[key] for r in report["rows"]}
        bars = browser.find_elements(By.CSS_SELECTOR, "#group-chart rect.bar")
        assert sorted(int(b.get_attribute("data-value") or 0) for b in bars) == sorted(
            teams.values()
        )
    # Per model and per data class (a call can carry several classes), bar for row.
    for by in ("model", "data_class"):
        visit(browser, f"{gw.url}/ui/spend?from={today}&to={today}&by={by}&measure=requests")
        params = {"from": today, "to": today, "group_by": by}
        rows = admin_api(gw, "GET", "/audit/report", people["auditor"], params=params).json()
        bars = browser.find_elements(By.CSS_SELECTOR, "#group-chart rect.bar")
        assert sorted(int(b.get_attribute("data-value") or 0) for b in bars) == sorted(
            r["requests"] for r in rows["rows"]
        ), by
        day = browser.find_element(By.CSS_SELECTOR, "#day-chart svg")
        assert int(day.get_attribute("data-total") or -1) == rows["totals"]["requests"]


def test_spend_per_metadata_key_is_the_reports(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    """Grouped by a metadata key, the chart's bars and the table are the report's rows (the
    calls without the key in "(none)"), and the totals are the report's."""
    client = openai.OpenAI(base_url=gw.base_url, api_key=people["bob"], max_retries=0)
    for project in ("apollo", "apollo", "gemini"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Custos-Metadata": json.dumps({"project": project})},
        )  # fmt: skip
    today = time.strftime("%Y-%m-%d", time.gmtime())
    params = {"from": today, "to": today, "group_by": "metadata.project"}
    deadline = time.monotonic() + 15
    while True:  # the audit writer stores the records within moments
        report = admin_api(gw, "GET", "/audit/report", people["auditor"], params=params).json()
        projects = {r["group"]["metadata.project"]: r for r in report["rows"]}
        stored = {k: v["requests"] for k, v in projects.items() if k}
        if stored == {"apollo": 2, "gemini": 1} or time.monotonic() > deadline:
            break  # (the three records may reach the store in different batches)
        time.sleep(0.2)
    assert {k: v["requests"] for k, v in projects.items() if k} == {"apollo": 2, "gemini": 1}
    assert projects[None]["requests"] >= 4  # the other tests' calls carry no metadata
    cli = subprocess.run(
        [*CUSTOS, "audit", "report", "--url", gw.url, "--from", today, "--to", today,
         "--group-by", "metadata.project", "--format", "json"],
        env={**os.environ, "CUSTOS_TOKEN": people["auditor"]}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert json.loads(cli.stdout)["rows"] == report["rows"]
    sign_in(browser, gw, people["auditor"])
    visit(browser, f"{gw.url}/ui/spend?from={today}&to={today}")
    options = browser.find_elements(By.CSS_SELECTOR, "#s-by option")
    assert "metadata.project" in [o.text for o in options]
    for measure in ("requests", "cost_micros"):
        visit(browser, f"{gw.url}/ui/spend?from={today}&to={today}&by=metadata.project"
                       f"&measure={measure}")  # fmt: skip
        assert heading(browser) == "Spend and usage"
        bars = browser.find_elements(By.CSS_SELECTOR, "#group-chart rect.bar")
        shown = {b.get_attribute("data-label"): int(b.get_attribute("data-value") or 0)
                 for b in bars}  # fmt: skip
        assert shown == {(k or "(none)"): v[measure] for k, v in projects.items()}, measure
        chart = browser.find_element(By.CSS_SELECTOR, "#group-chart svg")
        assert int(chart.get_attribute("data-total") or -1) == report["totals"][measure]
        assert sum(shown.values()) == report["totals"][measure]
    cells = browser.find_elements(By.CSS_SELECTOR, "#group-table tbody tr td:first-child")
    assert sorted(c.text for c in cells) == sorted(k or "(none)" for k in projects)


def test_budgets_are_the_apis_for_each_role(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    def shown() -> list[tuple[str, str, int]]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#budgets tbody tr")
        out = []
        for row in rows:
            cells = row.find_elements(By.TAG_NAME, "td")
            meter = row.find_element(By.CSS_SELECTOR, "svg.meter")
            out.append((cells[0].text, cells[1].text, int(meter.get_attribute("data-spent") or -1)))
        return sorted(out)

    def listed(token: str) -> list[tuple[str, str, int]]:
        data = admin_api(gw, "GET", "/budgets", token).json()["data"]
        return sorted(
            (b["id"], ", ".join(f"{k}={v}" for k, v in s["split"].items()) or "—",
             s["spent_micros"])
            for b in data for s in b["splits"]
        )  # fmt: skip

    seen = {}
    for role in ("auditor", "manager"):
        sign_in(browser, gw, people[role])
        visit(browser, f"{gw.url}/ui/budgets")
        seen[role] = shown()
        assert seen[role] == listed(people[role]), role
    assert {(b, split) for b, split, _ in seen["auditor"]} >= {
        ("monthly", "—"), ("per-team", "team=blue"), ("per-team", "team=red")}  # fmt: skip
    assert [(b, split) for b, split, _ in seen["manager"]] == [("per-team", "team=blue")]
    assert all(spent > 0 for _, _, spent in seen["auditor"])
    assert not browser.find_elements(By.ID, "refusals")  # the report is for readers
    sign_in(browser, gw, people["alice"])
    visit(browser, f"{gw.url}/ui/budgets")
    assert heading(browser) == "Not allowed"


def test_a_budgets_burn_down_is_its_ledger_for_each_role(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    """A budget's page draws its current period day by day from the spend ledger: once the
    ledger is written (about once a second), today's spend so far is the counters' spent, as
    GET /admin/v1/budgets says; a team manager sees only their team's split; a member none."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    sign_in(browser, gw, people["auditor"])
    deadline = time.monotonic() + 15
    while True:
        listed = admin_api(gw, "GET", "/budgets", people["auditor"],
                           params={"budget": "monthly"}).json()["data"][0]  # fmt: skip
        visit(browser, f"{gw.url}/ui/budgets/monthly")
        rows = browser.find_elements(By.CSS_SELECTOR, ".burn-days tbody tr")
        last = rows[-1].find_elements(By.TAG_NAME, "td") if rows else []
        so_far = int(last[2].get_attribute("data-value") or -1) if last else -1
        if so_far == listed["spent_micros"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert so_far == listed["spent_micros"] > 0
    assert last[0].text == today
    chart = browser.find_element(By.CSS_SELECTOR, ".burn-down svg")
    assert int(chart.get_attribute("data-last") or -1) == so_far
    assert int(chart.get_attribute("data-limit") or -1) == listed["limit_micros"]
    periods = browser.find_elements(By.CSS_SELECTOR, "#periods tbody tr")
    current = [p for p in periods if p.find_element(By.TAG_NAME, "td").text == listed["period_key"]]
    assert len(current) == 1
    cell = current[0].find_elements(By.TAG_NAME, "td")[2]
    assert int(cell.get_attribute("data-value") or -1) == so_far
    visit(browser, f"{gw.url}/ui/budgets")
    browser.find_element(By.LINK_TEXT, "per-team").click()
    assert heading(browser) == "Budget per-team"
    assert {h.text for h in browser.find_elements(By.CSS_SELECTOR, ".burn-down h2")} >= {
        "team=blue",
        "team=red",
    }

    # The admin API's GET /budgets/{budget}/history is the same function, with the same rule.
    history = admin_api(gw, "GET", "/budgets/monthly/history", people["auditor"]).json()
    assert history["days"][0]["days"][-1] == {
        "day": today, "spent_micros": history["days"][0]["days"][-1]["spent_micros"],
        "cumulative_micros": so_far,
    }  # fmt: skip
    manager = Signed(gw, people["manager"])
    page = manager.get("/ui/budgets/per-team")
    assert page.status_code == 200 and "team=blue" in page.text and "team=red" not in page.text
    theirs = admin_api(gw, "GET", "/budgets/per-team/history", people["manager"]).json()
    assert [d["split"] for d in theirs["days"]] == [{"team": "blue"}]
    assert {p["split"]["team"] for p in theirs["periods"]} == {"blue"}
    for path, token, status in (
        ("monthly", people["manager"], 404),  # not one of theirs
        ("monthly", people["alice"], 403),
        ("no-such", gw.token, 404),
    ):
        assert admin_api(gw, "GET", f"/budgets/{path}/history", token).status_code == status
        assert Signed(gw, token).get(f"/ui/budgets/{path}").status_code == status


def test_audit_page_verifies_and_downloads_a_proof(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    sign_in(browser, gw, people["auditor"])
    visit(browser, f"{gw.url}/ui/audit")
    assert "Not verified" in browser.find_element(By.ID, "last-verification").text
    assert "records" in browser.find_element(By.ID, "checkpoint").text
    browser.find_element(By.CSS_SELECTOR, "form[action$='/audit/verify'] button").click()
    # It runs in the background; the page shows its progress and reloads itself until done.
    WebDriverWait(browser, 60).until(lambda d: "Last run" in d.page_source)
    last = browser.find_element(By.ID, "last-verification").text
    assert "OK" in last and "checkpoints valid" in last and "auditor@custos.test" in last, last
    auditor = Signed(gw, people["auditor"])
    rid = people["requests"]["bob"][0]
    document = auditor.get(f"/ui/audit/proof?ref={rid}")
    assert document.headers["content-disposition"].startswith("attachment")
    assert document.json()["proofs"][0]["inclusion_proof"] is not None
    alice = Signed(gw, people["alice"])
    assert alice.get(f"/ui/audit/proof?ref={rid}").status_code == 403
    assert alice.post("/ui/audit/verify", {"csrf": alice.csrf}).status_code == 403
    assert alice.get("/ui/audit/export").status_code == 403

    # The export is the stored records, as the API pages them.
    exported = auditor.get("/ui/audit/export?event_type=llm.call").text.splitlines()
    stored = admin_api(gw, "GET", "/audit/events", params={"event_type": "llm.call"}).json()
    assert exported == [e["record"] for e in stored["data"]]

    # Legal holds: the auditor reads them, only an admin sets and releases them.
    assert not browser.find_elements(By.ID, "set-hold")
    refused = auditor.post("/ui/audit/holds", {"reason": "case 7", "csrf": auditor.csrf})
    assert refused.status_code == 403
    sign_in(browser, gw, people["admin"])
    visit(browser, f"{gw.url}/ui/audit")
    browser.find_element(By.ID, "h-team").send_keys("blue")
    browser.find_element(By.ID, "h-reason").send_keys("case 7")
    browser.find_element(By.CSS_SELECTOR, "#set-hold button").click()
    WebDriverWait(browser, 10).until(lambda d: "set on blue" in d.page_source)
    assert "blue: case 7" in browser.find_element(By.ID, "holds").text
    holds = admin_api(gw, "GET", "/audit/holds", params={"active": "true"}).json()["data"]
    assert [(h["team"], h["reason"]) for h in holds] == [("blue", "case 7")]
    release = browser.find_element(By.CSS_SELECTOR, "#holds form")
    release.find_element(By.NAME, "reason").send_keys("case closed")
    release.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 10).until(lambda d: " released." in d.page_source)
    assert admin_api(gw, "GET", "/audit/holds", params={"active": "true"}).json()["data"] == []


def test_config_page_shows_the_served_revision_and_history(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    sign_in(browser, gw, people["admin"])
    visit(browser, f"{gw.url}/ui/config")
    assert browser.find_element(By.ID, "served").text == gw.revision()
    history = browser.find_element(By.ID, "revisions").text
    assert gw.revision() in history and "start" in history
    assert "customer_data" in browser.find_element(By.ID, "diff").text


def test_the_quarter_question_and_the_records_behind_a_cell(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    sign_in(browser, gw, people["auditor"])
    visit(browser, f"{gw.url}/ui/quarter")
    table = browser.find_element(By.ID, "quarter")
    row = table.find_element(By.XPATH, ".//tr[th='blue' and td[1]='customer_data']")
    link = row.find_element(By.TAG_NAME, "a")
    assert link.text == "1"
    auditor = Signed(gw, people["auditor"])
    href = link.get_attribute("href") or ""
    lines = auditor.get(href.removeprefix(gw.url)).text.splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [people["requests"]["alice"][0]]
    # Each cell is the report's number, and its download holds that many records.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    params = {"from": today, "to": today, "group_by": "team,data_class,provider"}
    report = admin_api(gw, "GET", "/audit/report", people["auditor"], params=params).json()
    unlabelled = next(r["requests"] for r in report["rows"] if r["group"] == {
        "team": "blue", "data_class": None, "provider": "openai-main"})  # fmt: skip
    none_link = table.find_element(By.XPATH, ".//tr[th='blue' and td[1]='(none)']").find_element(
        By.TAG_NAME, "a"
    )
    assert none_link.text == str(unlabelled)
    records = auditor.get((none_link.get_attribute("href") or "").removeprefix(gw.url))
    assert len(records.text.splitlines()) == unlabelled


def test_every_field_is_labelled_and_the_keyboard_reaches_the_content(
    gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome
) -> None:
    from selenium.webdriver.common.keys import Keys

    sign_in(browser, gw, people["admin"])
    rid = people["requests"]["alice"][0]
    for path in ("traces", f"traces/{rid}", "spend", "budgets", "identity", "audit", "config",
                 "quarter"):  # fmt: skip
        visit(browser, f"{gw.url}/ui/{path}")
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
        unlabelled = browser.execute_script(
            """return [...document.querySelectorAll('input:not([type=hidden]), select')]
                 .filter(e => !(e.id && document.querySelector(`label[for="${e.id}"]`))
                              && !e.closest('label') && !e.getAttribute('aria-label'))
                 .map(e => e.outerHTML);"""
        )
        assert unlabelled == [], (path, unlabelled)
        for table in browser.find_elements(By.CSS_SELECTOR, "table"):
            assert table.find_elements(By.CSS_SELECTOR, "thead th"), path
    # The first Tab reaches the skip link, which moves the focus to the page's content.
    visit(browser, f"{gw.url}/ui/traces")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    # The filters are reached and sent with the keyboard alone.
    field = browser.find_element(By.ID, "f-team")
    field.send_keys("red", Keys.ENTER)
    WebDriverWait(browser, 10).until(lambda d: "team=red" in d.current_url)


def test_no_secret_in_any_page_or_the_log(gw: GatewayProcess, people: dict[str, Any]) -> None:
    secrets = [people[r] for r in ("admin", "auditor", "manager", "alice", "bob")]
    secrets += people.get("made", [])
    assert len(SEEN) > 20
    for url, source in SEEN:
        for secret in secrets:
            assert secret not in source, url
        # Nothing the CSP would block: no inline script, no inline style, no outside asset.
        assert "<script>" not in source and " style=" not in source, url
        assert not re.search(r'(src|href)="(https?:)?//', source), url
    log = gw.log()
    for secret in secrets:
        assert secret not in log
    assert "ERROR custos.console" not in log


def test_screenshots(gw: GatewayProcess, people: dict[str, Any], browser: webdriver.Chrome) -> None:
    """Every page at 1280 and 390 px, into $CUSTOS_CONSOLE_SCREENSHOTS (outside the repo)."""
    target = os.environ.get("CUSTOS_CONSOLE_SCREENSHOTS")
    if not target:
        pytest.skip("set CUSTOS_CONSOLE_SCREENSHOTS=DIR to write screenshots")
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    rid = people["requests"]["alice"][0]
    pages = {"traces": "/ui/traces", "trace": f"/ui/traces/{rid}", "spend": "/ui/spend",
             "spend-metadata": "/ui/spend?by=metadata.project",
             "budgets": "/ui/budgets", "budget": "/ui/budgets/per-team",
             "identity": "/ui/identity", "audit": "/ui/audit", "config": "/ui/config",
             "quarter": "/ui/quarter"}  # fmt: skip
    try:
        for width in (1280, 390):
            browser.set_window_size(width, 900)
            browser.delete_all_cookies()
            visit(browser, f"{gw.url}/ui/signin")
            browser.save_screenshot(str(out / f"signin-{width}.png"))
            sign_in(browser, gw, people["admin"])
            for name, path in pages.items():
                visit(browser, f"{gw.url}{path}")
                height = browser.execute_script("return document.body.scrollHeight")
                browser.set_window_size(width, min(max(int(height), 600), 4000))
                browser.save_screenshot(str(out / f"{name}-{width}.png"))
                browser.set_window_size(width, 900)
    finally:
        browser.set_window_size(1280, 900)


def test_cookies_are_secure_over_tls_and_next_stays_inside_the_console() -> None:
    from custos.console.pages.auth import _safe_next
    from custos.console.web import cookie

    assert cookie("c", "v", secure=True).endswith(b"; Secure")
    assert b"Secure" not in cookie("c", "v", secure=False)
    assert b"HttpOnly" in cookie("c", "v", secure=False)
    for outside in ("https://evil.example/ui/x", "//evil.example/ui/", "/admin", None):
        assert _safe_next(outside) == "/ui/traces", outside
    assert _safe_next("/ui/spend?by=model") == "/ui/spend?by=model"


def test_a_running_verification_shows_its_progress_and_reloads() -> None:
    from custos.audit.service import LogStatus
    from custos.console.pages.audit import Verification
    from custos.console.web import templates

    running = Verification(started="2026-12-07T10:00:00+00:00", by="a@b", total=1000, done=250)
    html = templates().get_template("audit.html").render(
        principal=None, csrf="", nav=[], path="/ui/audit", flash=[], prefix="/ui",
        log=LogStatus(1000, 990, "t", "00", 3), holds=[], last=running, can_hold=False,
        event_types=[],
    )  # fmt: skip
    assert '<meta http-equiv="refresh" content="2">' in html
    assert 'value="250" max="1000"' in html and "250 of 1000 records checked" in html
