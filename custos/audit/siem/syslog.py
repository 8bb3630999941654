"""RFC 5424 syslog messages, framed by octet counting (RFC 6587 §3.4.1), over TCP or TLS.

A message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [SD-ID seq="…" event_id="…" event_type="…"
    leaf_hash="…"] MSG

- ``PRI`` is ``facility * 8 + severity`` (``custos.audit.siem.levels``); ``TIMESTAMP`` the
  record's ``time_start`` (UTC, milliseconds); ``HOSTNAME`` the gateway instance; ``MSGID`` the
  event type; ``PROCID`` is the NILVALUE.
- The structured data element carries the sequence number, event id and type and the leaf hash;
  its values are escaped as §6.3.3 says (``"``, ``\\`` and ``]`` take a backslash).
- ``MSG`` is, by ``format``: ``rfc5424`` — a UTF-8 BOM and the record's canonical JSON, byte for
  byte as stored (so ``SHA-256(0x00 || MSG without BOM)`` is the leaf hash); ``ocsf`` — a BOM
  and the OCSF event as JSON; ``cef`` — the CEF line (no BOM: CEF readers expect ``CEF:`` first).
- Framing: ``MSG-LEN SP SYSLOG-MSG``, the length in octets, so a message may hold any byte.

**Sending.** Each batch goes over a connection of its own. With ``ack: close`` a batch counts
as received only when the receiver closed the connection after reading it to its end: over TCP
we shut our side down and wait for the receiver's; over TLS we send close_notify and wait for
the receiver's answer or its orderly close. A reset, a timeout or a refused connection fails
the batch, which is sent again (a receiver that crashed mid-batch may see the batch's head
twice: every message carries its sequence number and event id for that). Sockets are blocking
and run in a worker thread, where ``ssl`` can wait for the peer's close_notify.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any, Final

import orjson

from custos.audit.siem.cef import to_cef
from custos.audit.siem.levels import level_of
from custos.audit.siem.ocsf import to_ocsf
from custos.config.siem import SyslogSettings

BOM: Final = b"\xef\xbb\xbf"
NIL: Final = "-"


def sd_escape(value: object) -> str:
    """An SD-PARAM value (RFC 5424 §6.3.3): ``"``, ``\\`` and ``]`` escaped with a backslash."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_field(value: object, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit`` characters."""
    text = "".join(c for c in str(value or "") if "!" <= c <= "~")[:limit]
    return text or NIL


def message(settings: SyslogSettings, seq: int, body: bytes, fields: dict[str, Any],
            leaf_hash: str) -> bytes:  # fmt: skip
    """The RFC 5424 message of one record (not yet framed)."""
    pri = settings.facility * 8 + level_of(fields).syslog
    sd = (
        f'[{settings.sd_id} seq="{seq}" event_id="{sd_escape(fields["event_id"])}"'
        f' event_type="{sd_escape(fields["event_type"])}" leaf_hash="{leaf_hash}"]'
    )
    header = (
        f"<{pri}>1 {_header_field(fields['time_start'], 64)}"
        f" {_header_field(fields.get('gateway.instance'), 255)} {settings.app_name} {NIL}"
        f" {_header_field(fields['event_type'], 32)} {sd} "
    )
    if settings.format == "cef":
        msg = to_cef(seq, fields, leaf_hash).encode("utf-8")
    elif settings.format == "ocsf":
        msg = BOM + orjson.dumps(to_ocsf(seq, fields, leaf_hash))
    else:
        msg = BOM + body
    return header.encode("ascii") + msg


def frame(msg: bytes) -> bytes:
    """RFC 6587 octet counting: the length in octets, a space, the message."""
    return b"%d %s" % (len(msg), msg)


class SyslogSender:
    """Sends a batch of framed messages over one connection (blocking: call it in a thread)."""

    def __init__(self, settings: SyslogSettings) -> None:
        self.settings = settings
        self._tls: ssl.SSLContext | None = None
        if settings.tls is not None:
            tls = settings.tls
            context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file is not None:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            self._tls = context

    def send(self, data: bytes) -> None:
        """Send ``data`` and return once it counts as received (raises ``OSError`` if not)."""
        s = self.settings
        raw = socket.create_connection((s.host, s.port), timeout=s.timeout_s)
        try:
            if self._tls is None:
                raw.sendall(data)
                if s.ack == "close":
                    raw.shutdown(socket.SHUT_WR)
                    _read_to_eof(raw)
                return
            name = s.tls.server_name if s.tls is not None and s.tls.server_name else s.host
            with self._tls.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(data)
                if s.ack == "close":
                    _tls_close(tls)
        finally:
            raw.close()


def _read_to_eof(sock: socket.socket) -> None:
    """Wait for the receiver to close its side (a reset or a timeout raises)."""
    while sock.recv(65536):
        pass  # a syslog receiver has nothing to say; whatever it says is ignored


def _tls_close(tls: ssl.SSLSocket) -> None:
    """Send close_notify and wait for the receiver's, or for its orderly TCP close."""
    # A receiver that closes without a close_notify, after reading: an orderly end too.
    with contextlib.suppress(ssl.SSLEOFError, ssl.SSLZeroReturnError):
        tls.unwrap()
