"""The SIEM sinks of ``audit.export``: syslog (RFC 5424 over TCP or TLS) and Splunk HEC.

```yaml
audit:
  export:
    - syslog:
        name: soc-syslog        # keys the sink's cursor: renaming it starts a new cursor
        host: siem.example.com
        port: 6514
        format: cef             # rfc5424 (the record's JSON) | cef | ocsf
        tls: {ca_file: /etc/custos/siem-ca.pem}   # absent: plain TCP
    - splunk_hec:
        name: splunk
        url: https://splunk.example.com:8088      # events go to /services/collector/event
        token: ${env:SPLUNK_HEC_TOKEN}
        format: ocsf            # custos (the record as it is) | ocsf
        index: ai_gateway
```

Every sink follows the audit log in sequence order from a cursor kept in the store (the next
sequence number to send), moved only after the receiver acknowledged a batch; see
``custos.audit.siem`` and docs/siem.md. The sinks are set up once, at start.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from custos.request_values import RequestValue

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(_Strict):
    """Backoff between failed attempts at one batch: ``initial_s`` doubling up to ``max_s``.
    A batch is retried until it is acknowledged (the cursor never skips a record); the waits
    are bounded, the attempts are not."""

    initial_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0


class TLSSettings(_Strict):
    """TLS to the receiver. Without ``ca_file`` the system's trust store verifies it."""

    ca_file: str | None = None
    #: A client certificate and its key (PEM files), for receivers that require one.
    cert_file: str | None = None
    key_file: str | None = None
    #: The name the certificate must carry (default: ``host``).
    server_name: str | None = None


class _Sink(_Strict):
    #: Keys the sink's cursor in the store (``audit_cursors``: ``siem:NAME``).
    name: str
    #: Where a new cursor starts: ``oldest`` (the whole log) or ``newest`` (records sequenced
    #: from now on). Ignored once the cursor exists.
    start: Literal["oldest", "newest"] = "oldest"
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    #: How often the log is read for new records when the sink is caught up.
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    retry: RetrySettings = Field(default_factory=RetrySettings)

    @field_validator("name")
    @classmethod
    def _a_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("lowercase letters, digits, '.', '_' and '-' (at most 63)")
        return value


class SyslogSettings(_Sink):
    """RFC 5424 messages over TCP (RFC 6587 octet-counting framing) or TLS (RFC 5425)."""

    host: RequestValue
    port: Annotated[int, Field(ge=1, le=65535)]
    #: ``rfc5424``: the record's canonical JSON as MSG; ``cef``: a CEF line; ``ocsf``: the
    #: OCSF API Activity event as JSON.
    format: Literal["rfc5424", "cef", "ocsf"] = "rfc5424"
    tls: TLSSettings | None = None
    #: RFC 5424 facility: 13 is "log audit".
    facility: Annotated[int, Field(ge=0, le=23)] = 13
    app_name: Annotated[str, Field(pattern=r"^[!-~]{1,48}$")] = "custos"
    #: The SD-ID of the structured data element carrying the sequence number, event id, type
    #: and leaf hash (``name@PEN``; 32473 is the example number of RFC 5612).
    sd_id: Annotated[str, Field(pattern=r"^[!#-<>-\\^-~]{1,32}$")] = "custos@32473"
    #: When a batch counts as received: ``close`` (default) — the receiver closed the
    #: connection after reading to its end (our FIN or TLS close_notify answered); ``sent`` —
    #: once written, for receivers that never close (a receiver dying mid-batch loses it).
    ack: Literal["close", "sent"] = "close"


class SplunkHECSettings(_Sink):
    """Splunk's HTTP Event Collector (``POST {url}/services/collector/event``)."""

    #: The collector's base URL (``https://splunk.example.com:8088``).
    url: RequestValue
    #: The HEC token: a reference (``${env:NAME}`` or ``${file:path}``), sent as
    #: ``Authorization: Splunk <token>``.
    token: RequestValue = Field(repr=False)
    format: Literal["custos", "ocsf"] = "custos"
    index: str | None = None
    source: str = "custos"
    #: Default: ``custos:audit`` for the custos format, ``ocsf:api_activity`` for OCSF.
    sourcetype: str | None = None
    #: A CA file for a collector whose certificate the system does not trust.
    ca_file: str | None = None
    #: The most bytes one request carries (a batch is cut short before it; collectors refuse
    #: larger bodies: Splunk's max_content_length).
    max_batch_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 1 << 20

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")
