"""Config schema of ``guardrails:`` and ``data_classes:`` (DESIGN §2).

A guardrail is a rule the gateway enforces on what goes to a model (``hook: llm_input``) or
comes back (``llm_output``)::

    guardrails:
      - id: pii-redact
        hook: llm_input            # llm_input | llm_output | mcp_tool_pre_invoke
                                   # | mcp_tool_post_invoke
        type: pii                  # pii | secrets | regex | keywords | prompt_injection
                                   # | metadata | webhook | cedar | opa
        operation: mutate          # validate: never changes data | mutate: may rewrite it
        enforcing: enforce         # enforce | enforce_but_ignore_on_error | audit
        when: {metadata: {environment: production}}
        kinds: [pii.email, pii.phone, fin.pan]      # pii, secrets: which kinds (default all)

``validate`` guardrails refuse (400 ``guardrail_blocked``) when they find something; ``mutate``
ones replace what they find with typed placeholders (``<EMAIL_1>``) and let the call through.
``enforce_but_ignore_on_error`` lets a call through when the guardrail itself fails or times
out; ``audit`` decides and records, never blocks nor rewrites. Guardrails of one hook run in
list order (mutations apply in that order); the first ``validate`` that refuses stops the
request. ``mcp_tool_pre_invoke`` checks a tool call's arguments before the tool runs,
``mcp_tool_post_invoke`` its result before the agent sees it (``mutate`` redacts it; docs/mcp.md).

``data_classes:`` names the classes of data the organisation cares about and what detects
them in a request's content; any rule's ``when: {data_classes: [...]}`` then matches requests
that carry one, whether the caller declared it or the gateway found it::

    data_classes:
      customer_data:
        detectors: [pii.email, pii.phone, pattern.customer_id, keyword.customers]
        patterns: {customer_id: "CUST-[0-9]{6}"}
        keywords: {customers: [Northwind, Contoso]}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from custos.config import policies
from custos.config.rules import WhenSettings

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CLASS = r"^[a-z][a-z0-9_.-]{0,63}$"
_DETECTOR = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")

Hook = Literal["llm_input", "llm_output", "mcp_tool_pre_invoke", "mcp_tool_post_invoke"]
GuardrailType = Literal[
    "pii", "secrets", "regex", "keywords", "prompt_injection", "metadata", "webhook", "cedar",
    "opa",
]  # fmt: skip
#: Guardrail types that decide with a policy (``custos.guardrails.policy``), and where: before
#: a model call (``call_model``) and before a tool call (``call_tool``).
POLICY_TYPES = ("cedar", "opa")
POLICY_HOOKS = ("llm_input", "mcp_tool_pre_invoke")


#: The kinds the built-in detectors report (``custos.guardrails.pii`` and ``.secrets``; the
#: config is read below that package, tests/test_guardrail_detectors.py keeps the lists equal).
PII_KINDS = (
    "pii.email", "pii.phone", "fin.pan", "fin.iban", "fin.vat_id", "pii.national_id.us_ssn",
    "pii.national_id.uk_nino", "pii.national_id.fr_nir", "pii.national_id.es_dni",
    "pii.national_id.it_cf", "pii.national_id.de_idnr", "pii.national_id.nl_bsn",
    "pii.national_id.pl_pesel", "pii.ip_address", "pii.ip_address.v6",
)  # fmt: skip
SECRET_KINDS = (
    "secret.private_key", "secret.anthropic_api_key", "secret.openai_api_key",
    "secret.stripe_key", "secret.aws_access_key_id", "secret.aws_secret_access_key",
    "secret.gcp_api_key", "secret.github_token", "secret.gitlab_token", "secret.slack_token",
    "secret.slack_webhook", "secret.azure_storage_key", "secret.huggingface_token",
    "secret.sendgrid_api_key", "secret.npm_token", "secret.pypi_token", "secret.jwt",
    "secret.url_credentials", "secret.password", "secret.high_entropy",
)  # fmt: skip


def unknown_kinds(names: list[str], kinds: tuple[str, ...]) -> list[str]:
    """The names that are neither a kind of ``kinds`` nor a family of them (``pii.national_id``
    names every ``pii.national_id.*``)."""
    return [n for n in names if not any(k == n or k.startswith(n + ".") for k in kinds)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class WebhookSettings(_Strict):
    """A guardrail service of your own (docs/guardrails.md has the JSON contract)."""

    url: str
    #: Header name → value; values may be secret references (``${env:NAME}``).
    headers: dict[str, str] = Field(default_factory=dict)
    retries: Annotated[int, Field(ge=0, le=5)] = 0

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class GuardrailSettings(_Strict):
    id: Annotated[str, Field(pattern=_ID)]
    hook: Hook
    type: GuardrailType
    operation: Literal["validate", "mutate"] = "validate"
    enforcing: Literal["enforce", "enforce_but_ignore_on_error", "audit"] = "enforce"
    when: WhenSettings = Field(default_factory=WhenSettings)
    #: How long the guardrail may take before it counts as failed (its ``enforcing`` decides).
    timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 1000
    #: ``llm_output`` on a stream: how much of the text is held back before it is sent, so that
    #: a value split across chunks is found (and redacted) before any of it goes out.
    stream_window_chars: Annotated[int, Field(ge=16, le=65_536)] = 256
    # -- per type ------------------------------------------------------------------------------
    #: ``pii``, ``secrets``: the kinds to find (``pii.email``, ``secret.aws_access_key_id``, or
    #: a family such as ``pii.national_id``; docs/guardrails.md lists them).
    kinds: list[str] | None = None
    #: ``regex``: name → pattern.
    patterns: dict[Annotated[str, Field(pattern=_ID)], str] = Field(default_factory=dict)
    #: ``keywords``: list name → words (case-insensitive, whole words).
    keywords: dict[Annotated[str, Field(pattern=_ID)], list[str]] = Field(default_factory=dict)
    #: ``prompt_injection``: the score from which a prompt counts as an injection (default 1.0,
    #: ``custos.guardrails.injection.DEFAULT_THRESHOLD``).
    threshold: Annotated[float, Field(gt=0, le=100)] | None = None
    #: ``metadata``: keys every request must carry, and the values a key may take.
    required: list[str] = Field(default_factory=list)
    allowed: dict[str, list[str]] = Field(default_factory=dict)
    #: ``webhook``: where and how to call it.
    webhook: WebhookSettings | None = None
    #: ``cedar``: the policy files (relative to the config file's directory), and the Cedar
    #: schema they are validated against (``.json``: JSON schema; otherwise the human format).
    policies: list[str] | None = None
    cedar_schema: str | None = Field(default=None, alias="schema")
    #: ``opa`` in process: the Rego module(s); ``opa`` remote: the OPA server's address.
    policy: list[str] | None = None
    url: str | None = None
    #: ``opa``: the document that decides (a boolean, or ``{allow, reason, rule}``).
    query: str | None = None
    #: ``opa`` remote: header name → value (secret references resolved when loaded).
    headers: dict[str, str] = Field(default_factory=dict)
    _sources: policies.PolicySources | None = PrivateAttr(default=None)

    @field_validator("policies", "policy", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def policy_sources(self) -> policies.PolicySources | None:
        """A ``cedar`` or in-process ``opa`` guardrail's files, read and checked."""
        return self._sources

    @model_validator(mode="after")
    def _fits_its_type(self) -> GuardrailSettings:
        kind = self.type
        given = {
            "kinds": self.kinds is not None,
            "patterns": bool(self.patterns),
            "keywords": bool(self.keywords),
            "threshold": self.threshold is not None,
            "required": bool(self.required or self.allowed),
            "webhook": self.webhook is not None,
            "policies": self.policies is not None,
            "schema": self.cedar_schema is not None,
            "policy": self.policy is not None,
            "url": self.url is not None,
            "query": self.query is not None,
            "headers": bool(self.headers),
        }
        uses = {
            "pii": {"kinds"},
            "secrets": {"kinds"},
            "regex": {"patterns"},
            "keywords": {"keywords"},
            "prompt_injection": {"threshold"},
            "metadata": {"required"},
            "webhook": {"webhook"},
            "cedar": {"policies", "schema"},
            "opa": {"policy", "url", "query", "headers"},
        }[kind]
        stray = sorted(k for k, v in given.items() if v and k not in uses)
        if stray:
            article = "an" if kind[0] in "aeiou" else "a"
            raise ValueError(f"{article} {kind} guardrail takes no {', '.join(stray)}")
        if kind in ("pii", "secrets") and self.kinds is not None:
            unknown = unknown_kinds(self.kinds, PII_KINDS if kind == "pii" else SECRET_KINDS)
            if unknown or not self.kinds:
                raise ValueError(f"kinds: no {kind} kind {', '.join(unknown) or '(empty list)'}; "
                                 "docs/guardrails.md lists them")  # fmt: skip
        if kind == "regex" and not self.patterns:
            raise ValueError("a regex guardrail needs patterns")
        if kind == "keywords" and not any(self.keywords.values()):
            raise ValueError("a keywords guardrail needs at least one keyword")
        if kind == "metadata" and not (self.required or self.allowed):
            raise ValueError("a metadata guardrail needs required keys or allowed values")
        if kind == "webhook" and self.webhook is None:
            raise ValueError("a webhook guardrail needs webhook: {url: ...}")
        if kind == "metadata" and (self.operation == "mutate" or self.hook != "llm_input"):
            raise ValueError("a metadata guardrail validates the request: hook llm_input, "
                             "operation validate")  # fmt: skip
        if kind in POLICY_TYPES:
            self._check_policy_type()
        if kind == "prompt_injection" and self.operation == "mutate":
            raise ValueError("a prompt_injection guardrail validates: operation validate")
        for name, pattern in self.patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns.{name}: not a regular expression ({exc})") from None
        return self

    def _check_policy_type(self) -> None:
        if self.operation == "mutate" or self.hook not in POLICY_HOOKS:
            raise ValueError(f"a {self.type} guardrail decides whether a call may go on: hook "
                             f"{' or '.join(POLICY_HOOKS)}, operation validate")  # fmt: skip
        if self.type == "cedar" and not self.policies:
            raise ValueError("a cedar guardrail needs policies: [file, ...]")
        if self.type == "opa" and (self.policy is None) == (self.url is None):
            raise ValueError("an opa guardrail needs either policy: file.rego (in process) or "
                             "url: (a remote OPA), not both")  # fmt: skip
        if self.query is not None and not policies.QUERY.match(self.query):
            raise ValueError("query: write it as data.<package>.<rule> (data.custos.allow)")
        if self.headers and self.url is None:
            raise ValueError("headers are for a remote OPA (url:)")
        if self.url is not None and "@" in self.url:
            raise ValueError("url: no credentials in the address (send them in headers)")
        if self.url is not None and not re.match(r"^https?://[^\s/]+/?$", self.url):
            raise ValueError("url: the OPA server's http:// or https:// address, without a path "
                             "(the query names the document)")  # fmt: skip

    @model_validator(mode="after")
    def _read_policies(self, info: ValidationInfo) -> GuardrailSettings:
        """Read and check the policy files (relative to the config file's directory, given by
        the loader as the validation context ``base_dir``)."""
        if self.type not in POLICY_TYPES or (self.policies is None and self.policy is None):
            return self
        base_dir = Path((info.context or {}).get("base_dir") or Path.cwd())
        try:
            if self.type == "cedar":
                assert self.policies is not None
                self._sources = policies.load_cedar(self.policies, self.cedar_schema, base_dir)
            else:
                assert self.policy is not None
                self._sources = policies.load_rego(self.policy, self.opa_query, base_dir)
        except policies.PolicyProblem as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def opa_query(self) -> str:
        return self.query or policies.DEFAULT_QUERY


class DataClassSettings(_Strict):
    """What detects one data class in a request's content (any one of its detectors)."""

    #: ``pii.email``, ``fin.pan``, ``secret.aws_access_key_id``, ``pattern.NAME`` (from
    #: ``patterns``), ``keyword.NAME`` (from ``keywords``).
    detectors: list[str]
    patterns: dict[Annotated[str, Field(pattern=_ID)], str] = Field(default_factory=dict)
    keywords: dict[Annotated[str, Field(pattern=_ID)], list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _detectors_known(self) -> DataClassSettings:
        if not self.detectors:
            raise ValueError("give at least one detector")
        for name in self.detectors:
            if not _DETECTOR.match(name):
                raise ValueError(f"detector {name!r}: write it as pii.email, pattern.NAME, …")
            family, _, rest = name.partition(".")
            if family == "pattern" and rest not in self.patterns:
                raise ValueError(f"detector {name}: no pattern {rest!r} in patterns")
            if family == "keyword" and rest not in self.keywords:
                raise ValueError(f"detector {name}: no list {rest!r} in keywords")
            if family not in ("pattern", "keyword") and unknown_kinds(
                [name], PII_KINDS + SECRET_KINDS
            ):
                raise ValueError(f"detector {name}: no built-in detector of that kind; "
                                 "docs/guardrails.md lists them")  # fmt: skip
        for name, pattern in self.patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns.{name}: not a regular expression ({exc})") from None
        return self


DataClasses = dict[Annotated[str, Field(pattern=_CLASS)], DataClassSettings]
