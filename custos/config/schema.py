"""The config file's schema: what each section may hold, checked before anything is served.

Models are pydantic with ``extra="forbid"`` so a misspelt key is an error, never silently ignored.
Sections of DESIGN §2 that the gateway does not implement yet are refused by name
(``UNSUPPORTED_SECTIONS``), with a message that says so, rather than accepted and not enforced.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from custos.config.audit import AuditSettings
from custos.config.guardrails import DataClasses, GuardrailSettings
from custos.config.mcp import McpServers, VirtualMcpServers, check_mcp_names, tool_glob
from custos.config.residency import ResidencyRule
from custos.config.rules import BudgetRule, LimitsSettings, RateLimitRule, unique_ids
from custos.request_values import RequestValue

#: Sections of the design's config file that later work fills in. Accepting them before they are
#: enforced would let a reviewer believe a rule holds when it does not.
UNSUPPORTED_SECTIONS: tuple[str, ...] = ()

PROVIDER_TYPES = (
    "openai",
    "openai_compatible",
    "azure_openai",
    "anthropic",
    "gemini",
    "vertex",
    "bedrock",
)
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_EMAIL_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                           r"[A-Za-z]{2,63}$")  # fmt: skip
_ACCOUNT_GLOB = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9._*-]{0,63}$")
_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")
#: Prices are kept exact: USD per million tokens with at most six decimals, i.e. whole
#: pico-dollars per token, so cost arithmetic never touches a float.
_PRICE_PLACES = 6


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySettings(_Strict):
    listen: str = "127.0.0.1:8787"
    region: str | None = None
    max_body_bytes: Annotated[int, Field(gt=0, le=256 * 1024 * 1024)] = 8 * 1024 * 1024
    #: A request head (request line and headers) larger than this is answered 431.
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 64 * 1024
    #: Seconds from a head's first bytes to its end, and from its end to the body's, before
    #: the request is answered 408 and its connection closed.
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    instance: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        match = _LISTEN.match(value)
        if not match or not 0 < int(match["port"]) < 65536:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:8787")
        return value

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class StateSettings(_Strict):
    store: str = "sqlite:///./custos.db"
    counters: str = "memory"
    #: Prefix of every Redis key the counters use (several gateways can share one Redis).
    counters_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "custos:"

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("must be a sqlite:///PATH or postgresql://… URL")
        return value

    @field_validator("counters")
    @classmethod
    def _known_counters(cls, value: str) -> str:
        if value != "memory" and not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be 'memory' or a redis://… URL")
        return value


def _price(value: float | int | str | Decimal) -> Decimal:
    price = Decimal(str(value))
    if not price.is_finite():
        raise ValueError("must be a finite number")
    if price < 0:
        raise ValueError("a price cannot be negative")
    if -price.as_tuple().exponent > _PRICE_PLACES:  # type: ignore[operator]
        raise ValueError(f"at most {_PRICE_PLACES} decimal places (USD per million tokens)")
    return price


Price = Decimal


class ModelSettings(_Strict):
    """One model a provider account serves, with its price in USD per million tokens.

    A model without a price is refused unless it says ``unpriced: allow``: its calls then cost
    0 (budgets never stop them) and the metric ``custos_unpriced_calls`` counts them.
    """

    #: Listed first so that ``input_per_mtok``'s check can see it.
    unpriced: Literal["allow"] | None = None
    input_per_mtok: Annotated[Price | None, Field(validate_default=True)] = None
    output_per_mtok: Price = Decimal(0)
    cached_input_per_mtok: Price | None = None
    cache_write_per_mtok: Price | None = None
    per_request_usd: Price = Decimal(0)
    #: The name the provider knows the model by, when it differs from the key (Azure deployments).
    deployment: RequestValue | None = None
    upstream_model: RequestValue | None = None
    #: The most output tokens the model can produce: what a budget reserves for a request
    #: that sets no max_tokens (``limits.default_output_tokens`` when not given).
    max_output_tokens: Annotated[int | None, Field(ge=1, le=10_000_000)] = None
    #: The field a request translated from Anthropic's protocol sets the output limit by:
    #: current OpenAI models take only ``max_completion_tokens``; some OpenAI-compatible
    #: servers know only ``max_tokens``.
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"

    @field_validator(
        "input_per_mtok",
        "output_per_mtok",
        "cached_input_per_mtok",
        "cache_write_per_mtok",
        "per_request_usd",
        mode="before",
    )
    @classmethod
    def _exact_price(cls, value: object) -> Decimal | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
            raise ValueError("must be a number")
        try:
            return _price(value)
        except ArithmeticError as exc:
            raise ValueError("must be a number") from exc

    @field_validator("input_per_mtok")
    @classmethod
    def _priced(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        unpriced = info.data.get("unpriced") == "allow"
        if value is None and not unpriced:
            raise ValueError(
                "required (USD per million tokens); a model without a price needs 'unpriced: allow'"
            )
        if value is not None and unpriced:
            raise ValueError("'unpriced: allow' is for models without a price: remove one")
        return value


class ProviderSettings(_Strict):
    type: Literal[
        "openai", "openai_compatible", "azure_openai", "anthropic", "gemini", "vertex", "bedrock"
    ]
    #: Optional for gemini, vertex and bedrock, whose public endpoints are known (see
    #: ``_default_base_url``).
    base_url: RequestValue = ""
    api_key: RequestValue | None = Field(default=None, repr=False)
    #: vertex: the service account's JSON key, normally ``${file:path}``.
    credentials: str | None = Field(default=None, repr=False)
    #: vertex: the Google Cloud project; the key file's ``project_id`` when left out.
    project: str | None = None
    #: bedrock: the AWS credentials (references), a session token for temporary ones.
    access_key_id: RequestValue | None = Field(default=None, repr=False)
    secret_access_key: RequestValue | None = Field(default=None, repr=False)
    session_token: RequestValue | None = Field(default=None, repr=False)
    region: str | None = None
    api_version: RequestValue | None = None
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    #: A response body larger than this is not read: the caller gets a 502.
    max_response_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024 * 1024)] = 64 * 1024 * 1024
    headers: dict[RequestValue, RequestValue] = Field(default_factory=dict, repr=False)
    models: dict[RequestValue, ModelSettings]

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("models")
    @classmethod
    def _some_models(cls, value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        if not value:
            raise ValueError("a provider account must list at least one model with its price")
        for name in value:
            if not name or "/" in name or len(name) > 200:
                raise ValueError(
                    f"model name {name!r} must be non-empty, at most 200 chars, no '/'"
                )
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_base_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("base_url"):
            default = _DEFAULT_BASE_URLS.get(data.get("type"))  # type: ignore[arg-type]
            region = data.get("region")
            if default is not None and ("{region}" not in default or _valid_region(data, region)):
                return {**data, "base_url": default.format(region=region)}
        return data

    @model_validator(mode="after")
    def _type_needs(self) -> ProviderSettings:
        if self.type == "vertex":
            _vertex_needs(self)
        if self.type == "bedrock":
            _bedrock_needs(self)
        if not self.base_url:
            raise ValueError(f"{self.type} needs base_url")
        if self.type == "azure_openai" and not self.api_version:
            raise ValueError("azure_openai needs api_version (e.g. 2024-10-21)")
        if self.type in ("openai", "azure_openai", "anthropic", "gemini") and not self.api_key:
            raise ValueError(f"{self.type} needs api_key (use ${{env:NAME}} or ${{file:path}})")
        return self


#: Public endpoints of the provider types that have one per region or one in all.
_DEFAULT_BASE_URLS = {
    "gemini": "https://generativelanguage.googleapis.com",
    "vertex": "https://{region}-aiplatform.googleapis.com",
    "bedrock": "https://bedrock-runtime.{region}.amazonaws.com",
}
#: Region names as each cloud writes them (europe-west4; eu-central-1).
_GCP_REGION = re.compile(r"[a-z0-9-]+")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")


def _valid_region(data: dict[str, Any], region: Any) -> bool:
    """Whether ``region`` may be put into the type's default endpoint."""
    pattern = _REGION if data.get("type") == "bedrock" else _GCP_REGION
    return isinstance(region, str) and pattern.fullmatch(region) is not None


def _vertex_needs(settings: ProviderSettings) -> None:
    """A vertex account needs a region, a service-account key and a project (or the key's)."""
    from custos.config.service_account import ServiceAccountKey  # the schema stays import-light

    if not settings.region or not _GCP_REGION.fullmatch(settings.region):
        raise ValueError("vertex needs region (e.g. europe-west4)")
    if not settings.credentials:
        raise ValueError("vertex needs credentials (a service-account key: ${file:path})")
    key = ServiceAccountKey.parse(settings.credentials)  # raises ValueError naming what is wrong
    if not (settings.project or key.project_id):
        raise ValueError("vertex needs project (the key file has no project_id)")


def _bedrock_needs(settings: ProviderSettings) -> None:
    """A bedrock account signs for one region, with an access key pair."""
    if not settings.region or not _REGION.fullmatch(settings.region):
        raise ValueError("bedrock needs region (e.g. eu-central-1): it is part of the signature")
    if not (settings.access_key_id and settings.secret_access_key):
        raise ValueError(
            "bedrock needs access_key_id and secret_access_key (use ${env:NAME} or ${file:path})"
        )


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_SUBJECT = re.compile(r"^(\*|(user|team|virtualaccount):\S+)$")


class TeamSettings(_Strict):
    """A team declared in the file (GitOps); it appears in the store like one made by the API."""

    members: list[str] = Field(default_factory=list)
    managers: list[str] = Field(default_factory=list)

    @field_validator("members", "managers")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for email in value:
            if not _EMAIL.match(email):
                raise ValueError(f"{email!r} is not an email address")
        return value


class AccessRule(_Strict):
    """A grant: these subjects may call these models, these MCP tools (``server/tool``
    globs), or both. Default deny: a model or tool no grant names is refused."""

    id: str | None = None
    subjects: Annotated[list[str], Field(min_length=1)]
    models: list[str] = Field(default_factory=list)
    mcp_tools: list[str] = Field(default_factory=list)

    @field_validator("mcp_tools")
    @classmethod
    def _tool_globs(cls, value: list[str]) -> list[str]:
        return [tool_glob(v) for v in value]

    @model_validator(mode="after")
    def _grants_something(self) -> AccessRule:
        if not self.models and not self.mcp_tools:
            raise ValueError("a grant names models, mcp_tools or both")
        return self

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, value: list[str]) -> list[str]:
        for subject in value:
            if not _SUBJECT.match(subject):
                raise ValueError(
                    f"{subject!r} must be user:EMAIL, team:NAME, virtualaccount:NAME or *"
                )
        return value


class MetadataSettings(_Strict):
    """The contract of the X-Custos-Metadata header."""

    required: list[str] = Field(default_factory=list)
    allowed: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(default_factory=dict)


class ClaimMapping(_Strict):
    #: The claim naming the principal: an email for users, a name for virtual accounts.
    subject: str = "email"
    teams: str | None = "groups"
    roles: str | None = None


class ConsoleSignIn(_Strict):
    """Signing in to the web console through this IdP: OIDC authorization code with PKCE, as a
    public client (docs/console.md). The IdP's user must exist in Custos with that email."""

    client_id: Annotated[str, Field(min_length=1, max_length=500)]
    #: Where the IdP sends the browser back; by default this gateway's own
    #: ``/ui/signin/oidc/callback`` at the host the browser used. Set it behind a proxy.
    redirect_url: str | None = None
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email"])
    #: By default read from the issuer's ``/.well-known/openid-configuration``.
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None

    @field_validator("redirect_url", "authorization_endpoint", "token_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class IdPSettings(_Strict):
    """An OIDC identity provider whose bearer JWTs the gateway accepts."""

    name: Annotated[str, Field(pattern=_NAME)]
    issuer: str
    audience: str | list[str]
    jwks_url: RequestValue
    algorithms: list[Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]] = (
        Field(default_factory=lambda: ["RS256", "ES256"])
    )
    principal: Literal["user", "virtualaccount"] = "user"
    claims: ClaimMapping = Field(default_factory=ClaimMapping)
    leeway_s: Annotated[int, Field(ge=0, le=300)] = 30
    #: An unknown ``kid`` refetches the key set, but not more often than this.
    jwks_min_refresh_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    #: The key set is refetched when older than this, whatever the tokens say.
    jwks_max_age_s: Annotated[float, Field(gt=0, le=86400)] = 600.0
    #: How long a request waits for a key-set fetch (one at a time) before it goes on without.
    jwks_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    #: What this IdP may assert (``None``: anything; required when more than one IdP is
    #: configured). ``email_domains``: the domains of the users it vouches for (principal
    #: ``user``); its tokens for other emails are refused, so it can never claim another
    #: IdP's users or the config's teams and grants for them.
    email_domains: list[str] | None = None
    #: The teams its teams claim may name; other names in the claim are dropped.
    teams: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    #: The virtual accounts it vouches for (principal ``virtualaccount``): names or ``*`` globs.
    accounts: list[str] | None = None
    #: Sign-in to the web console through this IdP (users only).
    console: ConsoleSignIn | None = None

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("email_domains")
    @classmethod
    def _domains(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty list allows nothing: list the domains, or leave it out")
        for domain in value:
            if not _EMAIL_DOMAIN.match(domain):
                raise ValueError(f"{domain!r} is not an email domain (write corp.example)")
        return [d.casefold() for d in value]

    @field_validator("accounts")
    @classmethod
    def _account_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list allows nothing: list the accounts, or leave it out")
        for name in value or ():
            if not _ACCOUNT_GLOB.match(name):
                raise ValueError(f"{name!r} is not an account name or '*' glob (e.g. ci-*)")
        return value

    @model_validator(mode="after")
    def _scope_fits_principal(self) -> IdPSettings:
        if self.principal != "user" and self.console is not None:
            raise ValueError("console sign-in is for an IdP with principal: user")
        if self.principal == "user" and self.accounts is not None:
            raise ValueError("accounts is for an IdP with principal: virtualaccount")
        if self.principal == "virtualaccount" and self.email_domains is not None:
            raise ValueError("email_domains is for an IdP with principal: user")
        return self

    def unscoped(self) -> str | None:
        """What this IdP must still list to be one of several, or ``None``."""
        if self.principal == "user" and self.email_domains is None:
            return "email_domains (the email domains of the users it vouches for)"
        if self.principal == "virtualaccount" and self.accounts is None:
            return "accounts (the virtual accounts it vouches for)"
        if self.claims.teams is not None and self.teams is None:
            return (
                f"teams (the teams its {self.claims.teams!r} claim may name), or set "
                "claims.teams to null"
            )
        return None


class IdentitySettings(_Strict):
    #: HMAC key for stored token hashes (at least 32 bytes). Optional with a SQLite store, where
    #: a key file beside the database is created once; required with PostgreSQL, where every
    #: replica must share it. Losing it invalidates every token.
    token_hash_key: Annotated[str | None, Field(repr=False)] = None
    #: Where invalidations (a revoked token, a changed team) travel between replicas:
    #: ``auto`` picks Redis when counters are in Redis, else PostgreSQL LISTEN/NOTIFY with a
    #: PostgreSQL store, else in process.
    invalidation: str = "auto"
    idp: list[IdPSettings] = Field(default_factory=list)

    @field_validator("idp")
    @classmethod
    def _idps_kept_apart(cls, value: list[IdPSettings]) -> list[IdPSettings]:
        """Tokens go to an IdP by issuer, so each issuer is configured once; with several IdPs,
        each lists what it may assert, so none can speak for another's users."""
        for what, key in (("name", "name"), ("issuer", "issuer")):
            seen = [getattr(idp, key) for idp in value]
            twice = next((v for v in seen if seen.count(v) > 1), None)
            if twice is not None:
                raise ValueError(f"idp {what}s must be unique: {twice!r} is configured more "
                                 "than once")  # fmt: skip
        if len(value) > 1:
            missing = [f"idp {idp.name!r} needs {need}" for idp in value
                       if (need := idp.unscoped()) is not None]  # fmt: skip
            if missing:
                raise ValueError(
                    "with more than one IdP each must list what it may assert: "
                    + "; ".join(missing)
                )
        return value

    @field_validator("token_hash_key")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @field_validator("invalidation")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ("auto", "memory", "postgresql") and not value.startswith("redis"):
            raise ValueError("must be auto, memory, postgresql or a redis://… URL")
        return value


class TargetSettings(_Strict):
    model: str
    weight: Annotated[int, Field(ge=0, le=1000)] = 1


class RetrySettings(_Strict):
    attempts: Annotated[int, Field(ge=1, le=10)] = 1
    #: The wait before retry n is drawn between 0 and backoff_ms * 2^(n-1) ("full" jitter, so
    #: callers that failed together do not retry together); "none" waits exactly that long.
    backoff_ms: Annotated[int, Field(ge=0, le=60_000)] = 100
    jitter: Literal["full", "none"] = "full"
    on_status: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504])


class TimeoutSettings(_Strict):
    """How long one attempt on a target may take before the next is tried (besides the
    account's own ``timeout_s`` and ``connect_timeout_s``)."""

    #: A plain call's whole answer; a stream's first event when ``first_token_s`` is not set.
    attempt_s: Annotated[float | None, Field(gt=0, le=3600)] = None
    #: A stream's first event: a stream that has not started by then falls back.
    first_token_s: Annotated[float | None, Field(gt=0, le=3600)] = None


class CooldownSettings(_Strict):
    """A target that keeps failing is skipped for ``cooldown_s``, then tried by one probe.

    It trips when ``failures`` of its last ``of_last`` attempts (default: ``failures``, i.e. in
    a row) within ``window_s`` failed with a status in ``fallback_on`` (timeouts and broken
    streams included)."""

    failures: Annotated[int, Field(ge=1, le=100)] = 3
    of_last: Annotated[int | None, Field(ge=1, le=1000)] = None
    window_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    cooldown_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0

    @model_validator(mode="after")
    def _window_holds_the_failures(self) -> CooldownSettings:
        if self.of_last is not None and self.of_last < self.failures:
            raise ValueError("of_last must be at least failures")
        return self

    @property
    def last(self) -> int:
        return self.of_last or self.failures


class StickySettings(_Strict):
    """Requests with the same value of this metadata key go to the same target while it is
    healthy (rendezvous hashing over the targets, by weight)."""

    metadata: Annotated[str, Field(min_length=1, max_length=64)]


class VirtualModelSettings(_Strict):
    """A name clients call that the gateway resolves to ordered provider targets."""

    strategy: Literal["priority", "weighted", "latency"] = "priority"
    targets: Annotated[list[TargetSettings], Field(min_length=1)]
    retry: RetrySettings = Field(default_factory=RetrySettings)
    fallback_on: list[int] = Field(default_factory=lambda: [401, 403, 404, 429, 500, 502, 503, 504])
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    #: Off unless set: a target's failures then make the route skip it for a while.
    cooldown: CooldownSettings | None = None
    sticky: StickySettings | None = None


class Config(_Strict):
    version: Literal[1]
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    state: StateSettings = Field(default_factory=StateSettings)
    providers: dict[Annotated[str, Field(pattern=_NAME)], ProviderSettings]
    virtual_models: dict[Annotated[str, Field(pattern=_NAME)], VirtualModelSettings] = Field(
        default_factory=dict
    )
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    teams: dict[Annotated[str, Field(pattern=_NAME)], TeamSettings] = Field(default_factory=dict)
    access: list[AccessRule] = Field(default_factory=list)
    metadata: MetadataSettings = Field(default_factory=MetadataSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    rate_limits: list[RateLimitRule] = Field(default_factory=list)
    budgets: list[BudgetRule] = Field(default_factory=list)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    guardrails: list[GuardrailSettings] = Field(default_factory=list)
    data_classes: DataClasses = Field(default_factory=dict)
    residency: list[ResidencyRule] = Field(default_factory=list)
    mcp_servers: McpServers = Field(default_factory=dict)
    virtual_mcp_servers: VirtualMcpServers = Field(default_factory=dict)

    @field_validator("rate_limits", "budgets", "guardrails", "residency")
    @classmethod
    def _unique_rule_ids(cls, value: list[RateLimitRule], info: ValidationInfo) -> list[Any]:
        return unique_ids(value, str(info.field_name))

    @model_validator(mode="after")
    def _store_needs_shared_key(self) -> Config:
        if self.state.store.startswith("postgres") and self.identity.token_hash_key is None:
            raise ValueError(
                "identity.token_hash_key is required with a PostgreSQL store (every replica "
                "must share it); use ${env:NAME} or ${file:path}"
            )
        return self

    @model_validator(mode="after")
    def _content_needs_shared_key(self) -> Config:
        audit = self.audit
        if (audit.content in ("redacted", "full") and audit.content_key is None
                and self.state.store.startswith("postgres")):  # fmt: skip
            raise ValueError(
                f"audit.content_key is required for audit.content: {audit.content} with a "
                "PostgreSQL store (every replica must share it); use ${env:NAME} or ${file:path}"
            )
        return self

    @field_validator("virtual_mcp_servers")
    @classmethod
    def _mcp_names(cls, value: VirtualMcpServers, info: ValidationInfo) -> VirtualMcpServers:
        check_mcp_names(info.data.get("mcp_servers") or {}, value)
        return value

    @model_validator(mode="after")
    def _residency_knows_regions(self) -> Config:
        """With residency rules, every account says where it is: one without a region would
        be allowed by no rule, silently (docs/residency.md)."""
        if self.residency:
            missing = [name for name, p in self.providers.items() if not p.region]
            if missing:
                raise ValueError(
                    "residency rules need every provider account's region; "
                    f"{', '.join(repr(m) for m in missing)} ha{'s' if len(missing) == 1 else 've'}"
                    " none (write where it serves from: eu-west-1, eu, on-prem, ...)"
                )
        return self

    @model_validator(mode="after")
    def _targets_exist(self) -> Config:
        for name, vm in self.virtual_models.items():
            if name in self.providers:
                raise ValueError(f"virtual model {name!r} has the name of a provider account")
            for target in vm.targets:
                account, _, model = target.model.partition("/")
                if account not in self.providers or model not in self.providers[account].models:
                    raise ValueError(
                        f"virtual_models.{name}: target {target.model!r} is not a configured "
                        "provider-account/model"
                    )
        return self
