"""The mock provider as a plain ASGI 3 application, plus the two ways to serve it.

Hot path (non-streaming) per request: one dict of the headers, one deque append, one BLAKE2b of
the body for the ids, one orjson parse, one orjson dump, two ASGI sends. Knob parsing of model
names is cached; nothing else is allocated per request beyond the response itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any
from urllib.parse import parse_qsl

import orjson

from . import anthropic_wire as anth
from . import bedrock_wire as bedrock
from . import gemini_wire as gem
from . import openai_wire as oai
from . import responses_wire as resp
from .knobs import BadRequest, Knobs, knobs_for

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Header = tuple[bytes, bytes]
Headers = list[Header]

#: How many requests ``GET /_mock/requests`` remembers.
RECORDED_REQUESTS = 200

_JSON = (b"content-type", b"application/json")
_AZURE_PREFIX = "/openai/deployments/"
#: AI Studio: /v1beta/models/{model}:{method}; Vertex AI: /v1/projects/{project}/locations/
#: {region}/publishers/google/models/{model}:{method}.
_GEMINI_PATH = re.compile(
    r"^/(?:v1|v1beta)/models/([^/]+):(generateContent|streamGenerateContent)$"
)
_VERTEX_PATH = re.compile(
    r"^/(?:v1|v1beta1)/projects/[^/]+/locations/[^/]+/publishers/google/models/([^/]+)"
    r":(generateContent|streamGenerateContent)$"
)
_TOKEN_PATH = "/token"
_BEDROCK_PREFIX = "/model/"
_EVENTSTREAM_HEADERS: Headers = [(b"content-type", b"application/vnd.amazon.eventstream")]
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]

# ---------------------------------------------------------------- deliberate connection drops

# Set inside the request's task when ``drop_after`` ends a stream without its terminating chunk;
# uvicorn then closes the socket (what we want) and logs an error (what we do not want).
_DROPPING: contextvars.ContextVar[bool] = contextvars.ContextVar("mock_dropping", default=False)


class _DeliberateDropFilter(logging.Filter):
    """Silences uvicorn's 'returned without completing response' for deliberate drops only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _DROPPING.get()


def _install_drop_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DeliberateDropFilter) for f in logger.filters):
        logger.addFilter(_DeliberateDropFilter())


# ------------------------------------------------------------------------------ plumbing


@dataclass(slots=True)
class _Request:
    """What a handler needs from one HTTP request."""

    path: str
    query: bytes
    headers: dict[bytes, bytes]
    body: bytes
    receive: Receive
    send: Send
    raw_path: bytes = b""
    _digest: str = ""

    def digest(self) -> str:
        # Ids are a hash of what was asked, so identical requests get identical responses.
        if not self._digest:
            data = self.path.encode() + b"\0" + self.body
            self._digest = blake2b(data, digest_size=12).hexdigest()
        return self._digest


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _respond(send: Send, status: int, body: bytes, extra: Sequence[Header] = ()) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _retry_headers(status: int, seconds: float) -> Headers:
    if status not in (429, 503, 529):
        return []
    return [
        (b"retry-after", str(math.ceil(seconds)).encode()),
        (b"retry-after-ms", str(round(seconds * 1000)).encode()),
    ]


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("We could not parse the JSON body of your request.") from exc
    if not isinstance(value, dict):
        raise BadRequest("The request body must be a JSON object.")
    return value


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# ------------------------------------------------------------------------------ the app


class MockProvider:
    """ASGI 3 app speaking OpenAI, Azure OpenAI, Anthropic and Bedrock; see ``custos.mock``'s
    contract."""

    def __init__(self, api_key: str = "mock-key") -> None:
        self.api_key = api_key
        self._bearer = b"Bearer " + api_key.encode()
        self._key = api_key.encode()
        self.requests: deque[tuple[float, str, str, bytes, Headers, bytes]] = deque(
            maxlen=RECORDED_REQUESTS
        )
        self.stats: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)
        self._failures: dict[tuple[str, Knobs], int] = {}
        self.tokens = gem.TokenIssuer({})
        self._failing_since: dict[tuple[str, Knobs], float] = {}
        # path -> (method, handler); Azure and /v1/models/{id} are matched by prefix.
        self._routes: dict[str, tuple[str, Callable[[_Request], Awaitable[None]]]] = {
            "/v1/chat/completions": ("POST", self._route_chat_completions),
            "/v1/embeddings": ("POST", self._route_embeddings),
            "/v1/models": ("GET", self._route_models),
            "/v1/messages": ("POST", self._route_messages),
            "/v1/messages/count_tokens": ("POST", self._route_count_tokens),
            "/v1/responses": ("POST", self._route_responses),
            "/openai/v1/responses": ("POST", self._route_azure_responses),
        }
        _install_drop_filter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        else:  # websockets: refuse
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        body = await _read_body(receive)
        if path.startswith("/_mock/"):
            await self._control(method, path, send)
            return
        query: bytes = scope["query_string"]
        self.requests.append((time.time(), method, path, query, scope["headers"], body))
        self.stats["requests_total"] += 1
        req = _Request(
            path, query, dict(scope["headers"]), body, receive, send, scope.get("raw_path") or b""
        )
        try:
            await self._route(method, req)
        except BadRequest as exc:  # raised before any byte was sent
            await self._bad_request(req, exc)
        except (TypeError, AttributeError, KeyError) as exc:
            # A field of the wrong type deep in the body: still the caller's fault, so a 400.
            await self._bad_request(req, BadRequest(f"Invalid request body: {exc}"))

    async def _route(self, method: str, req: _Request) -> None:
        path = req.path
        if path.startswith(_AZURE_PREFIX):
            deployment, _, operation = path[len(_AZURE_PREFIX) :].partition("/")
            if deployment and operation in ("chat/completions", "embeddings"):
                if await self._guard(method, "POST", req):
                    await self._azure(req, deployment, operation)
                return
        if await self._route_google(method, req):
            return
        if path.startswith(_BEDROCK_PREFIX):
            model, _, action = path[len(_BEDROCK_PREFIX) :].rpartition("/")
            if model and action in ("converse", "converse-stream"):
                if await self._guard(method, "POST", req):
                    await self._converse(req, model, stream=action == "converse-stream")
                return
        route = self._routes.get(path)
        if route is None and path.startswith("/v1/models/"):
            route = ("GET", self._route_model)
        if route is None:
            await self._error(req, 404, f"Unknown path {path}.")
        elif await self._guard(method, route[0], req):
            await route[1](req)

    async def _guard(self, method: str, allowed: str, req: _Request) -> bool:
        if method == allowed:
            return True
        await self._error(req, 405, f"Method {method} not allowed for {req.path}.")
        return False

    # ---- errors in the caller's format

    def _family(self, req: _Request) -> str:
        if req.path == _TOKEN_PATH or req.path.endswith(("generateContent", "GenerateContent")):
            return "google"
        if req.path.startswith(_BEDROCK_PREFIX):
            return "bedrock"
        if req.path.startswith("/openai/"):
            return "azure"
        if req.path.startswith("/v1/messages") or b"anthropic-version" in req.headers:
            return "anthropic"
        return "openai"

    async def _error(
        self,
        req: _Request,
        status: int,
        message: str | None = None,
        *,
        extra: Sequence[Header] = (),
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        family = self._family(req)
        if family == "anthropic":
            body = anth.anthropic_error(status, message, request_id="req_" + req.digest())
        elif family == "google":
            body = gem.google_error(status, message)
        elif family == "bedrock":
            body, kind = bedrock.bedrock_error(status, message)
            extra = [*extra, (b"x-amzn-errortype", kind.encode())]
        elif family == "azure":
            body = oai.azure_error(status, message, code=code)
        else:
            body = oai.openai_error(status, message, param=param, code=code)
        await _respond(req.send, status, body, [*extra, *self._id_header(req)])

    async def _bad_request(self, req: _Request, exc: BadRequest) -> None:
        code = "BadRequest" if self._family(req) == "azure" else None
        await self._error(req, 400, exc.message, param=exc.param, code=code)

    def _id_header(self, req: _Request) -> Headers:
        family = self._family(req)
        if family == "bedrock":
            return [(b"x-amzn-requestid", req.digest().encode())]
        name = b"request-id" if family == "anthropic" else b"x-request-id"
        return [(name, b"req_" + req.digest().encode())]

    # ---- authentication

    async def _auth_openai(self, req: _Request) -> bool:
        given = req.headers.get(b"authorization")
        if given == self._bearer:
            return True
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            if given is None
            else "Incorrect API key provided."
        )
        await self._error(req, 401, message, code="invalid_api_key")
        return False

    async def _auth_azure(self, req: _Request) -> bool:
        if req.headers.get(b"api-key") != self._key:
            await self._error(req, 401, code="401")
            return False
        if b"api-version=" not in req.query:
            raise BadRequest("Missing required query parameter 'api-version'.", "api-version")
        return True

    async def _auth_anthropic(self, req: _Request) -> bool:
        # Anthropic takes the key as x-api-key or, as anthropic SDK 2.x sends it, as a bearer token.
        given = req.headers.get(b"x-api-key")
        bearer = req.headers.get(b"authorization")
        if given != self._key and bearer != self._bearer:
            missing = given is None and bearer is None
            message = "x-api-key header is required" if missing else "invalid x-api-key"
            await self._error(req, 401, message)
            return False
        if b"anthropic-version" not in req.headers:
            raise BadRequest("anthropic-version: header is required")
        return True

    # ---- knobs shared by every generating route

    async def _apply_knobs(self, req: _Request, model: str) -> Knobs | None:
        """Wait ``latency_ms``, then answer an injected error; None when one was sent."""
        knobs = knobs_for(model, req.headers)
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)
        if knobs.status is None or not self._should_fail(model, knobs):
            return knobs
        self.stats["errors_injected"] += 1
        await self._error(req, knobs.status, extra=_retry_headers(knobs.status, knobs.retry_after))
        return None

    def _should_fail(self, model: str, knobs: Knobs) -> bool:
        if knobs.fail_for_ms is not None:
            first = self._failing_since.setdefault((model, knobs), time.monotonic())
            return time.monotonic() - first < knobs.fail_for_ms / 1000
        if knobs.fail_first is None:
            return True
        seen = self._failures.get((model, knobs), 0)
        self._failures[(model, knobs)] = seen + 1
        return seen < knobs.fail_first

    async def _send_json(self, req: _Request, body: bytes, knobs: Knobs, malformed: bytes) -> None:
        await _respond(req.send, 200, malformed if knobs.malformed else body, self._id_header(req))

    # ---- OpenAI and Azure

    async def _route_chat_completions(self, req: _Request) -> None:
        if await self._auth_openai(req):
            body = _parse_json(req.body)
            await self._chat(req, body, self._model(body), azure=False)

    async def _route_responses(self, req: _Request) -> None:
        if await self._auth_openai(req):
            body = _parse_json(req.body)
            await self._responses(req, body, self._model(body))

    async def _route_azure_responses(self, req: _Request) -> None:
        # Azure's v1 surface: the deployment is the body's model, and no api-version is needed.
        if req.headers.get(b"api-key") != self._key:
            await self._error(req, 401, code="401")
            return
        body = _parse_json(req.body)
        await self._responses(req, body, self._model(body))

    async def _responses(self, req: _Request, body: dict[str, Any], model: str) -> None:
        knobs = await self._apply_knobs(req, model)
        if knobs is None:
            return
        plan = resp.plan_response(body, model, knobs, req.digest())
        if plan.stream:
            await self._stream(req, resp.response_events(plan, knobs), knobs)
        else:
            await self._send_json(req, resp.response_json(plan), knobs, resp.MALFORMED_JSON)

    async def _route_embeddings(self, req: _Request) -> None:
        if await self._auth_openai(req):
            body = _parse_json(req.body)
            await self._embeddings(req, body, self._model(body))

    async def _azure(self, req: _Request, deployment: str, operation: str) -> None:
        if not await self._auth_azure(req):
            return
        body = _parse_json(req.body)
        if operation == "embeddings":
            await self._embeddings(req, body, deployment)
        else:
            await self._chat(req, body, deployment, azure=True)

    @staticmethod
    def _model(body: dict[str, Any]) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("You must provide a model parameter.", "model")
        return model

    async def _chat(self, req: _Request, body: dict[str, Any], model: str, *, azure: bool) -> None:
        knobs = await self._apply_knobs(req, model)
        if knobs is None:
            return
        plan = oai.plan_chat(body, model, knobs, req.digest(), azure=azure)
        if plan.stream:
            await self._stream(req, oai.chat_events(plan, knobs), knobs)
        else:
            await self._send_json(req, oai.chat_json(plan), knobs, oai.MALFORMED_JSON)

    async def _embeddings(self, req: _Request, body: dict[str, Any], model: str) -> None:
        knobs = await self._apply_knobs(req, model)
        if knobs is not None:
            await self._send_json(req, oai.embeddings_json(body, model), knobs, oai.MALFORMED_JSON)

    async def _route_models(self, req: _Request) -> None:
        if self._family(req) == "anthropic":
            if await self._auth_anthropic(req):
                await _respond(req.send, 200, anth.models_json(), self._id_header(req))
        elif await self._auth_openai(req):
            await _respond(req.send, 200, oai.models_json(), self._id_header(req))

    async def _route_model(self, req: _Request) -> None:
        if await self._auth_openai(req):
            model = req.path[len("/v1/models/") :]
            await _respond(req.send, 200, oai.model_json(model), self._id_header(req))

    # ---- Anthropic

    async def _route_messages(self, req: _Request) -> None:
        if not await self._auth_anthropic(req):
            return
        body = _parse_json(req.body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        knobs = await self._apply_knobs(req, model)
        if knobs is None:
            return
        plan = anth.plan_message(body, model, knobs, req.digest())
        if plan.stream:
            await self._stream(req, anth.message_events(plan, knobs), knobs)
        else:
            await self._send_json(req, anth.message_json(plan), knobs, anth.MALFORMED_JSON)

    async def _route_count_tokens(self, req: _Request) -> None:
        if await self._auth_anthropic(req):
            body = anth.count_tokens_json(_parse_json(req.body))
            await _respond(req.send, 200, body, self._id_header(req))

    # ---- Gemini (AI Studio and Vertex AI)

    async def _route_google(self, method: str, req: _Request) -> bool:
        """Serve the Google routes; False when the path is not one of them."""
        if req.path == _TOKEN_PATH:
            if await self._guard(method, "POST", req):
                await self._token(req)
            return True
        vertex = _VERTEX_PATH.match(req.path)
        found = vertex or _GEMINI_PATH.match(req.path)
        if found is None:
            return False
        if not await self._guard(method, "POST", req):
            return True
        if vertex is not None:
            authorized = self.tokens.valid(req.headers.get(b"authorization"))
        else:
            authorized = req.headers.get(b"x-goog-api-key") == self._key
        if vertex is None and not authorized:  # Google answers a bad key with a 400
            body = gem.google_error(400, _google_auth_message(True), reason="API_KEY_INVALID")
            await _respond(req.send, 400, body, self._id_header(req))
            return True
        if not authorized:
            await self._error(req, 401, _google_auth_message(False))
            return True
        await self._generate(req, found.group(1), stream=found.group(2) != "generateContent")
        return True

    async def _generate(self, req: _Request, model: str, *, stream: bool) -> None:
        if stream and b"alt=sse" not in req.query:
            raise BadRequest("the mock streams Gemini responses only with ?alt=sse")
        body = _parse_json(req.body)
        knobs = await self._apply_knobs(req, model)
        if knobs is None:
            return
        plan = gem.plan_generate(body, model, knobs, req.digest())
        if knobs.blocked:
            await _respond(req.send, 200, gem.blocked_json(plan), self._id_header(req))
        elif stream:
            await self._stream(req, gem.generate_events(plan, knobs), knobs)
        else:
            await self._send_json(req, gem.generate_json(plan), knobs, gem.MALFORMED_JSON)

    async def _token(self, req: _Request) -> None:
        """The service-account token endpoint; ``?expires_in=S`` sets the tokens' lifetime and
        other query parameters are knobs (``?status=500``)."""
        query = dict(parse_qsl(req.query.decode("latin-1")))
        # Knobs come from the token_uri's query (the gateway sends no x-mock headers here).
        knobs_name = "token" + "".join(f"+{k}={v}" for k, v in query.items() if k != "expires_in")
        if await self._apply_knobs(req, knobs_name) is None:
            return
        form = dict(parse_qsl(req.body.decode("latin-1")))
        host = req.headers.get(b"host", b"").decode("latin-1")
        url = f"http://{host}{req.path}" + (f"?{req.query.decode('latin-1')}" if req.query else "")
        lifetime = int(query.get("expires_in", "3600"))
        body = self.tokens.exchange(form, url, lifetime)
        await _respond(req.send, 200, body, self._id_header(req))

    # ---- Bedrock

    async def _converse(self, req: _Request, model: str, *, stream: bool) -> None:
        """Converse / ConverseStream, signed with SigV4 and the mock's key as the secret."""
        refused = bedrock.verify_sigv4(req.raw_path, req.query, req.headers, req.body, self.api_key)
        if refused is not None:
            await self._error(req, 403, refused)
            return
        body = _parse_json(req.body)
        knobs = await self._apply_knobs(req, model)
        if knobs is None:
            return
        plan = bedrock.plan_converse(body, knobs, req.digest())
        if stream:
            await self._stream(req, bedrock.converse_events(plan, knobs), knobs, framing="aws")
        else:
            await self._send_json(req, bedrock.converse_json(plan), knobs, bedrock.MALFORMED_JSON)

    # ---- streaming

    async def _stream(
        self, req: _Request, events: list[bytes], knobs: Knobs, *, framing: str = "sse"
    ) -> None:
        """Send SSE events one ASGI message each, honouring delays, drops and disconnects."""
        stats = self.stats
        stats["streams_started"] += 1
        stats["active_streams"] += 1
        # The body is read, so the next receive() returns only when the peer goes away.
        watcher = asyncio.ensure_future(req.receive())
        outcome = "cancelled"  # if we are cancelled ourselves (server shutdown)
        try:
            start = {"type": "http.response.start", "status": 200}
            framed = _EVENTSTREAM_HEADERS if framing == "aws" else _SSE_HEADERS
            await req.send({**start, "headers": framed + self._id_header(req)})
            outcome = await self._pump(req.send, events, knobs, watcher)
        except OSError:  # servers other than uvicorn may raise on a closed socket
            outcome = "cancelled"
        finally:
            watcher.cancel()
            stats["active_streams"] -= 1
            stats["streams_" + outcome] += 1

    @staticmethod
    async def _pump(
        send: Send, events: list[bytes], knobs: Knobs, watcher: asyncio.Future[Any]
    ) -> str:
        drop_after = knobs.drop_after
        for index, event in enumerate(events):
            delay = knobs.ttft_ms if index == 0 else knobs.chunk_delay_ms
            if delay:
                await asyncio.sleep(delay / 1000)
            if watcher.done():
                return "cancelled"
            if drop_after is not None and index >= drop_after:
                # Return without the final chunk: the server closes the connection mid-body.
                _DROPPING.set(True)
                return "dropped"
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await asyncio.sleep(0)  # let the watcher see a disconnect that happened meanwhile
        if watcher.done():
            return "cancelled"
        await send({"type": "http.response.body", "body": b""})
        return "completed"

    # ---- observability

    async def _control(self, method: str, path: str, send: Send) -> None:
        if path == "/_mock/requests" and method == "GET":
            await _respond(send, 200, orjson.dumps([_recorded(r) for r in self.requests]))
        elif path == "/_mock/requests" and method == "DELETE":
            self.requests.clear()
            await _respond(send, 200, b'{"cleared":true}')
        elif path == "/_mock/stats" and method == "GET":
            await _respond(send, 200, orjson.dumps(self.stats))
        elif path == "/_mock/stats" and method == "DELETE":
            self.reset_stats()
            await _respond(send, 200, b'{"cleared":true}')
        elif path == "/_mock/health" and method == "GET":
            await _respond(send, 200, b'{"status":"ok"}')
        else:
            message = f"Unknown mock control {method} {path}."
            await _respond(send, 404, oai.openai_error(404, message))

    def reset_stats(self) -> None:
        """Zero the counters (except ``active_streams``) and forget the history of
        ``fail_first`` and ``fail_for_ms``."""
        active = self.stats["active_streams"]
        self.stats.update(dict.fromkeys(_STAT_NAMES, 0), active_streams=active)
        self._failures.clear()
        self._failing_since.clear()


_STAT_NAMES = (
    "requests_total",
    "errors_injected",
    "streams_started",
    "streams_completed",
    "streams_cancelled",
    "streams_dropped",
    "active_streams",
)


def _google_auth_message(api_key: bool) -> str:
    if api_key:
        return "API key not valid. Please pass a valid API key."
    return (
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential."
    )


def _recorded(entry: tuple[float, str, str, bytes, Headers, bytes]) -> dict[str, Any]:
    """A recorded request as JSON; the body is parsed only now, when someone asks."""
    at, method, path, query, headers, body = entry
    try:
        parsed: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = body.decode("utf-8", "replace")
    return {
        "time": at,
        "method": method,
        "path": path,
        "query": query.decode("latin-1"),
        "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
        "body": parsed,
    }


def create_app(api_key: str = "mock-key") -> MockProvider:
    """A fresh mock provider (its own request log and counters) accepting ``api_key``."""
    return MockProvider(api_key)
