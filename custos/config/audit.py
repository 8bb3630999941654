"""The ``audit`` section of the config file.

```yaml
audit:
  content: none             # none | hash | redacted | full (see custos.audit.records.content)
  content_key: ${file:./keys/audit-content.key}   # 32 bytes, base64: the master key (KEK)
  durability: batched       # batched: durable within flush_interval_ms | strict: before release
  on_failure: spool         # spool: keep serving, spool locally | block: 503 while not durable
  flush_interval_ms: 10     # how often queued records are written and fsynced to the spool
  spool: {path: ./custos-audit-spool, max_bytes: 1073741824}
  retention_days: 400       # record bodies older than this are purged (leaf hashes stay)
  purge_in_gateway: true    # the gateway purges hourly; false: run `custos audit purge` instead
  export:
    - otlp: {endpoint: "http://127.0.0.1:4318"}   # spans and log records, OTLP over HTTP
    - jsonl: {path: ./audit.jsonl}                # every record's bytes, one per line
    - syslog: {name: soc, host: siem.example, port: 6514, format: cef, tls: {}}  # docs/siem.md
    - splunk_hec: {name: splunk, url: "https://splunk:8088", token: "${env:HEC_TOKEN}"}
  signing_key: ./keys/audit-2026.pem              # Ed25519 PKCS#8 PEM, optionally encrypted
  signing_key_name: custos/audit/key2026
  retiring_signing_key: ./keys/audit-2025.pem     # during a rotation only: signs alongside
  retiring_signing_key_name: custos/audit/key2025 # the name it was registered under
  checkpoint_export: ./audit-checkpoints.txt      # signed checkpoints, outside the database
```

Checkpoint signing keys: ``signing_key`` is the current key (its passphrase, for an encrypted
PEM, in ``CUSTOS_AUDIT_SIGNING_KEY_PASSPHRASE``; without a path, the PEM text may come from
``CUSTOS_AUDIT_SIGNING_KEY``). During a rotation ``retiring_signing_key`` is the previous key,
from a file (passphrase in ``CUSTOS_AUDIT_RETIRING_SIGNING_KEY_PASSPHRASE``): every checkpoint
then carries both signatures, so verifiers still holding only the old vkey keep accepting new
checkpoints while the new vkey is handed out. It must keep the name it was registered under
(the name is part of the key ID), the two names must differ, and it needs ``signing_key`` set
(the current key from a file). The variables are removed from the environment once read. Keys
are loaded once, at start: a rotation takes a restart (docs/audit.md, "Rotating the signing
key").

``durability``, ``on_failure`` and ``content`` take effect on reload (``content``: for requests
admitted after it); ``content_key`` is read when content is first encrypted or read, and a
changed key needs a restart. The spool (path, bound), the flush
interval and the exports are set up once, at start (a changed value is used after a restart).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from custos.config.siem import SplunkHECSettings, SyslogSettings
from custos.request_values import RequestValue


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpoolSettings(_Strict):
    #: A directory of this gateway process's own (two processes cannot share one: the first
    #: holds a lock on it).
    path: str = "./custos-audit-spool"
    #: The spool's bound: past it, records cannot be made durable and requests get 503.
    max_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 40)] = 1 << 30


class OTLPSettings(_Strict):
    #: The collector's OTLP/HTTP base URL; spans go to ``/v1/traces``, logs to ``/v1/logs``.
    endpoint: RequestValue
    headers: dict[RequestValue, RequestValue] = Field(default_factory=dict, repr=False)
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    traces: bool = True
    logs: bool = True

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class JSONLSettings(_Strict):
    path: str


class ExportSettings(_Strict):
    """One export target: exactly one of ``otlp``, ``jsonl``, ``syslog`` or ``splunk_hec``
    (the last two: SIEM sinks with a durable cursor, ``custos.config.siem``)."""

    otlp: OTLPSettings | None = None
    jsonl: JSONLSettings | None = None
    syslog: SyslogSettings | None = None
    splunk_hec: SplunkHECSettings | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ExportSettings:
        given = [v for v in (self.otlp, self.jsonl, self.syslog, self.splunk_hec) if v is not None]
        if len(given) != 1:
            raise ValueError(
                "each export entry is one of {otlp: {…}}, {jsonl: {…}}, {syslog: {…}} or "
                "{splunk_hec: {…}}"
            )
        return self


class AuditSettings(_Strict):
    content: Literal["none", "hash", "redacted", "full"] = "none"
    durability: Literal["batched", "strict"] = "batched"
    on_failure: Literal["spool", "block"] = "spool"
    flush_interval_ms: Annotated[int, Field(ge=1, le=1000)] = 10
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    retention_days: Annotated[int, Field(ge=1, le=36500)] = 400
    #: Run the retention purge in the gateway, hourly. Turn it off where the gateway's database
    #: role may not purge (an INSERT-only role) and run ``custos audit purge`` as the retention
    #: role instead (docs/audit.md has the grants).
    purge_in_gateway: bool = True
    export: list[ExportSettings] = Field(default_factory=list)
    #: Path of the Ed25519 checkpoint signing key (PKCS#8 PEM, optionally encrypted with the
    #: passphrase in CUSTOS_AUDIT_SIGNING_KEY_PASSPHRASE). Unset: the PEM text may come from
    #: CUSTOS_AUDIT_SIGNING_KEY; with neither, the log is sequenced but not signed.
    signing_key: str | None = Field(default=None, repr=False)
    #: The signed-note key name (schema-less URL style) and the checkpoint origin line.
    signing_key_name: str = "custos/audit/key1"
    #: During a rotation: the previous key's PEM file (passphrase in
    #: CUSTOS_AUDIT_RETIRING_SIGNING_KEY_PASSPHRASE), which signs every checkpoint alongside
    #: ``signing_key`` until it is removed and retired (``custos audit keys retire``).
    retiring_signing_key: str | None = Field(default=None, repr=False)
    #: The retiring key's name: the one it signed under as ``signing_key_name`` (the key ID
    #: depends on it, so a different name would make its signatures unknown to its vkey).
    retiring_signing_key_name: str | None = None
    log_origin: str = "custos/audit"
    #: A checkpoint every this many seconds (when the log grew) or every this many records.
    checkpoint_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    checkpoint_every: Annotated[int, Field(ge=1)] = 10_000
    #: An append-only file the checkpoints are exported to (keep it off the database host).
    checkpoint_export: str | None = None

    #: The master key (KEK) that wraps the content data keys: 32 random bytes, base64. Unset
    #: with a SQLite store: a key file beside the database (``<db>.content-key``, mode 0600) is
    #: created on first use. Required for ``redacted`` and ``full`` with PostgreSQL.
    content_key: str | None = Field(default=None, repr=False)

    @field_validator("content_key")
    @classmethod
    def _a_256_bit_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                key = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be base64 (e.g. `openssl rand -base64 32`)") from None
            if len(key) != 32:
                raise ValueError(f"must be 32 bytes once base64-decoded (got {len(key)})")
        return value

    @model_validator(mode="after")
    def _rotation(self) -> AuditSettings:
        if self.retiring_signing_key is None:
            if self.retiring_signing_key_name is not None:
                raise ValueError("retiring_signing_key_name is set without retiring_signing_key")
            return self
        if self.signing_key is None:
            raise ValueError(
                "retiring_signing_key signs alongside the current key during a rotation: set "
                "signing_key to the new key's PEM file too"
            )
        if self.retiring_signing_key == self.signing_key:
            raise ValueError("retiring_signing_key is the same file as signing_key")
        if self.retiring_signing_key_name is None:
            raise ValueError(
                "retiring_signing_key needs retiring_signing_key_name: the name that key was "
                "registered under (its signing_key_name before the rotation)"
            )
        if self.retiring_signing_key_name == self.signing_key_name:
            raise ValueError(
                f"signing_key_name and retiring_signing_key_name are both "
                f"{self.signing_key_name!r}: give the new key a name of its own"
            )
        return self

    @property
    def otlp(self) -> OTLPSettings | None:
        return next((e.otlp for e in self.export if e.otlp is not None), None)

    @property
    def jsonl_paths(self) -> list[str]:
        return [e.jsonl.path for e in self.export if e.jsonl is not None]

    @property
    def siem_sinks(self) -> list[SyslogSettings | SplunkHECSettings]:
        """The SIEM sinks (each follows the log with a cursor of its own)."""
        return [s for e in self.export for s in (e.syslog, e.splunk_hec) if s is not None]

    @model_validator(mode="after")
    def _sink_names_unique(self) -> AuditSettings:
        names = [s.name for s in self.siem_sinks]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(
                f"audit.export: two SIEM sinks are named {doubled[0]!r}; each needs a name of "
                "its own (the name keys its cursor)"
            )
        return self
