"""SIEM sinks end to end: a gateway process sends its audit log to a local receiver (syslog over
TCP or TLS, Splunk HEC) and every record arrives exactly once, in sequence order, across a
receiver outage and a gateway restart (the cursor is in the store). What arrives is read back
with independent parsers: RFC 5424 with ``syslog-rfc5424-parser``, CEF with the parser below
(written from the CEF rules), OCSF checked against the API Activity class's required
attributes and constraints (OCSF 1.6.0) and validated by ``pydantic-ocsf``'s model of it."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from ocsf.v1_6_0.events import APIActivity
from syslog_rfc5424_parser import SyslogMessage

import tests.conftest as conftest
from custos.audit.log.sequencer import Sequencer
from custos.audit.records.record import leaf_hash
from custos.audit.siem.follower import Follower, Leaf, read_cursor, read_leaves
from custos.audit.siem.hec import HECRefused
from custos.audit.siem.syslog import SyslogSender, frame
from custos.audit.storage.store import AuditStore
from custos.config.siem import SplunkHECSettings, SyslogSettings
from custos.state.backends import open_store
from custos.state.store import Store
from tests.audit_helpers import eventually, query, unguarded
from tests.audit_log_worker import record
from tests.conftest import GatewayProcess, MockProvider, standard_config
from tests.siem_receivers import HECReceiver, SyslogReceiver, self_signed
from tests.store_fixtures import pg_url, store, store_url  # noqa: F401  (fixtures)

HEC_TOKEN = "hec-token-0123456789"
SD_ID = "custos@32473"
BOM = b"\xef\xbb\xbf"

# -- readers, independent of the code under test ---------------------------------------------


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A CEF line's header fields after ``CEF:0`` (vendor, product, version, class id, name,
    severity) and its extension, unescaped."""
    assert line.startswith("CEF:0|"), line
    header, pos, field = [], len("CEF:0|"), ""
    while len(header) < 6:
        char = line[pos]
        if char == "\\":
            field += line[pos + 1]
            pos += 2
            continue
        if char == "|":
            header.append(field)
            field = ""
        else:
            field += char
        pos += 1
    rest = line[pos:]
    # A key starts after a space (or at the start) and ends at an unescaped "=".
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9]+)=", rest))
    extension = {}
    for i, match in enumerate(keys):
        stop = keys[i + 1].start() if i + 1 < len(keys) else len(rest)
        raw = rest[match.end() : stop]
        assert not re.search(r"(?<!\\)(\\\\)*=", raw.replace("\\\\", "")), raw
        extension[match.group(1)] = _cef_unescape(raw)
    return header, extension


def _cef_unescape(raw: str) -> str:
    out, i = "", 0
    while i < len(raw):
        if raw[i] == "\\":
            nxt = raw[i + 1]
            out += {"n": "\n", "r": "\r"}.get(nxt, nxt)
            i += 2
        else:
            out += raw[i]
            i += 1
    return out


def _sd_unescape(value: str) -> str:
    return re.sub(r"\\([\\\"\]])", r"\1", value)


#: OCSF 1.6.0, API Activity (6003): the attributes required of the event and of the objects
#: it uses, and each object's "at least one of" constraint.
OCSF_REQUIRED = (
    "activity_id",
    "category_uid",
    "class_uid",
    "type_uid",
    "time",
    "severity_id",
    "metadata",
    "actor",
    "api",
    "src_endpoint",
)
OCSF_OBJECTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # path: (required, at least one of)
    "metadata": (("product", "version"), ()),
    "metadata.product": ((), ("name", "uid")),
    "api": (("operation",), ()),
    "actor": ((), ("process", "user", "invoked_by", "session", "app_name", "app_uid")),
    "actor.user": ((), ("account", "name", "uid")),
    "src_endpoint": (
        (),
        (
            "ip",
            "uid",
            "name",
            "hostname",
            "svc_name",
            "instance_uid",
            "interface_uid",
            "interface_name",
            "domain",
        ),
    ),
    "dst_endpoint": (
        (),
        (
            "ip",
            "uid",
            "name",
            "hostname",
            "svc_name",
            "instance_uid",
            "interface_uid",
            "interface_name",
            "domain",
        ),
    ),
    "http_response": (("code",), ()),
    "cloud": (("provider",), ()),
}


def check_ocsf(event: dict[str, Any]) -> None:
    """Fails unless ``event`` is a valid OCSF API Activity event (the required attributes and
    constraints above, the classification's arithmetic and enums, JSON types)."""
    missing = [k for k in OCSF_REQUIRED if event.get(k) is None]
    assert not missing, f"missing {missing}"
    assert event["category_uid"] == 6 and event["class_uid"] == 6003
    assert event["activity_id"] in (0, 1, 2, 3, 4, 99)
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert event["severity_id"] in (0, 1, 2, 3, 4, 5, 6, 99)
    assert event.get("status_id", 0) in (0, 1, 2, 99)
    assert isinstance(event["time"], int) and event["time"] > 1_600_000_000_000
    for path, (required, one_of) in OCSF_OBJECTS.items():
        obj: Any = event
        for part in path.split("."):
            obj = obj.get(part) if isinstance(obj, dict) else None
        if obj is None:
            continue
        assert isinstance(obj, dict), path
        assert all(obj.get(k) is not None for k in required), f"{path} lacks one of {required}"
        if one_of:
            assert any(obj.get(k) is not None for k in one_of), f"{path}: none of {one_of}"
    for resource in event.get("resources", []):
        assert resource.get("name") or resource.get("uid")
    assert event["metadata"]["version"] == "1.6.0"
    # Types, the captions of every *_id (status, severity, activity, class, category) and the
    # type_uid arithmetic, by pydantic-ocsf's model of the class. It does not know profile
    # attributes (cloud, declared in metadata.profiles), and it types http_request.http_method
    # as an integer where the schema has a string enum of method names: that attribute is
    # checked against the schema's enum here instead.
    profiles = {"cloud": {"cloud"}}
    allowed = set(APIActivity.model_fields).union(
        *(profiles[p] for p in event["metadata"].get("profiles", []))
    )
    assert set(event) <= allowed, f"not API Activity attributes: {set(event) - allowed}"
    checked = json.loads(json.dumps(event))
    method = checked.get("http_request", {}).pop("http_method", None)
    assert method in (None, "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT",
                      "TRACE")  # fmt: skip
    APIActivity.model_validate(checked)


# -- what a receiver got, as (sequence number, event id) ---------------------------------------


def from_syslog(messages: list[bytes], fmt: str, stored: dict[str, bytes]) -> list[tuple[int, str]]:
    seqs = []
    for raw in messages:
        parsed = SyslogMessage.parse(raw.decode("utf-8")).as_dict()
        assert parsed["version"] == 1 and parsed["facility"] == "audit"
        assert parsed["appname"] == "custos"
        sd = {k: _sd_unescape(v) for k, v in parsed["sd"][SD_ID].items()}
        seq, event_id = int(sd["seq"]), sd["event_id"]
        body = stored[event_id]
        assert sd["leaf_hash"] == leaf_hash(body).hex()
        record = json.loads(body)
        assert parsed["msgid"] == record["event_type"] == sd["event_type"]
        assert parsed["timestamp"] == record["time_start"]
        msg = raw.split(b"] ", 1)[1]
        if fmt == "rfc5424":
            assert msg == BOM + body  # the stored bytes, exactly
        elif fmt == "ocsf":
            event = json.loads(msg.removeprefix(BOM))
            check_ocsf(event)
            assert event["metadata"]["uid"] == event_id and event["metadata"]["sequence"] == seq
        else:
            header, ext = parse_cef(msg.decode("utf-8"))
            assert header[:4] == [
                "Custos",
                "Custos AI Gateway",
                record["gateway.version"],
                record["event_type"],
            ]
            assert ext["externalId"] == event_id and int(ext["CustosAuditSeq"]) == seq
            assert ext["CustosLeafHash"] == sd["leaf_hash"]
            if record["event_type"] == "llm.call":
                assert ext["outcome"] == record["outcome"]
                assert ext.get("suser") == (record["principal.id"] or None)
        seqs.append((seq, event_id))
    return seqs


def from_hec(
    events: list[dict[str, Any]], fmt: str, stored: dict[str, bytes]
) -> list[tuple[int, str]]:
    seqs = []
    for event in events:
        fields = event["fields"]
        seq, event_id = int(fields["seq"]), fields["event_id"]
        body = stored[event_id]
        assert fields["leaf_hash"] == leaf_hash(body).hex()
        record = json.loads(body)
        assert event["host"] == record["gateway.instance"]
        if fmt == "ocsf":
            assert event["sourcetype"] == "ocsf:api_activity"
            check_ocsf(event["event"])
            assert event["event"]["metadata"]["uid"] == event_id
        else:
            assert event["sourcetype"] == "custos:audit"
            # Re-encoded canonically, the event is the stored record byte for byte.
            canonical = json.dumps(
                event["event"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
            assert canonical == body
        seqs.append((seq, event_id))
    return seqs


# -- the gateway ----------------------------------------------------------------------------


class Sinked:
    """A receiver and the config entry pointing a gateway at it."""

    def __init__(self, case: str, tmp_path: Path) -> None:
        self.kind, self.fmt, transport = case.split("-")
        self.hec: HECReceiver | None = None
        self.syslog: SyslogReceiver | None = None
        common = (
            "name: soc, batch_size: 4, poll_interval_s: 0.1, timeout_s: 3,"
            " retry: {initial_s: 0.05, max_s: 0.3}"
        )
        if self.kind == "hec":
            self.hec = HECReceiver(HEC_TOKEN)
            self.entry = (
                f'{{splunk_hec: {{{common}, url: "{self.hec.url}",'
                f' token: "${{env:SIEM_HEC_TOKEN}}", format: {self.fmt}}}}}'
            )
        else:
            tls = self_signed(tmp_path) if transport == "tls" else None
            self.syslog = SyslogReceiver(tls)
            tls_entry = f', tls: {{ca_file: "{tls[0]}"}}' if tls else ""
            self.entry = (
                f"{{syslog: {{{common}, host: 127.0.0.1, port: {self.syslog.port},"
                f" format: {self.fmt}{tls_entry}}}}}"
            )

    def start(self) -> None:
        (self.hec or self.syslog).start()  # type: ignore[union-attr]

    def stop(self) -> None:
        (self.hec or self.syslog).stop()  # type: ignore[union-attr]

    def received(self, stored: dict[str, bytes]) -> list[tuple[int, str]]:
        if self.hec is not None:
            return from_hec(list(self.hec.events), self.fmt, stored)
        assert self.syslog is not None
        return from_syslog(list(self.syslog.messages), self.fmt, stored)

    def count(self) -> int:
        return len(self.hec.events) if self.hec else len(self.syslog.messages)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.hec is not None:
            self.hec.close()
        elif self.syslog is not None:
            self.syslog.stop()


CASES = [
    "syslog-rfc5424-tcp",
    "syslog-cef-tls",
    "syslog-ocsf-tls",
    "hec-custos-http",
    "hec-ocsf-http",
]


@pytest.fixture(params=CASES)
def sinked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sinked]:
    found = Sinked(request.param, tmp_path)
    found.start()
    yield found
    found.close()


def _calls(gateway: GatewayProcess, n: int) -> None:
    for i in range(n):
        # Mostly served calls, and a refused credential now and then (a denied llm.call).
        token = gateway.headers if i % 4 else {"authorization": "Bearer not-a-token"}
        httpx.post(
            f"{gateway.base_url}/chat/completions",
            headers={**gateway.headers, **token},
            json={"model": "openai-main/gpt-5.5", "messages": [{"role": "user", "content": "hi"}]},
            timeout=15,
        )


def _stored(db_url: str) -> tuple[dict[str, bytes], list[str]]:
    """Every stored record's bytes by event id, and the event ids in sequence order."""
    rows = query(db_url, "SELECT event_id, record FROM audit_events")
    leaves = query(db_url, "SELECT seq, event_id FROM audit_leaves ORDER BY seq")
    assert [int(r["seq"]) for r in leaves] == list(range(len(leaves)))
    return {r["event_id"]: bytes(r["record"]) for r in rows}, [r["event_id"] for r in leaves]


def _delivered_all(sinked: Sinked, db_url: str, timeout: float = 30) -> list[int]:
    """Waits until the receiver holds every sequenced record, then checks each arrived once
    and in order; returns the sequence numbers received."""

    def state() -> tuple[int, int]:
        return sinked.count(), len(_stored(db_url)[1])

    # The store gets the calls' records in batches (one every 200 ms at most): wait until it
    # holds them all, i.e. the log stopped growing for longer than that, and all went out.
    previous = -1
    deadline = time.monotonic() + timeout
    while True:
        eventually(state, lambda s: s[0] >= s[1] > 0, timeout=max(1.0, deadline - time.monotonic()))
        if state()[1] == previous or time.monotonic() > deadline:
            break
        previous = state()[1]
        time.sleep(0.6)
    stored, order = _stored(db_url)
    got = sinked.received(stored)
    seqs = [seq for seq, _ in got]
    assert seqs == list(range(len(seqs))), f"not once each, in order: {seqs}"
    # Each sequence number came with the record the log holds at that position.
    assert all(order[seq] == event_id for seq, event_id in got)
    return seqs


def test_every_record_once_in_order_across_outage_and_restart(
    mock_provider: MockProvider, sinked: Sinked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = standard_config(mock_provider.url) + f"audit: {{export: [{sinked.entry}]}}\n"
    env = {"SIEM_HEC_TOKEN": HEC_TOKEN}
    db_url = f"sqlite:///{tmp_path / 'custos.db'}"
    gateway = GatewayProcess(config, tmp_path, env=env)
    try:
        _calls(gateway, 6)
        first = _delivered_all(sinked, db_url)
        assert gateway.metric("custos_siem_records_total", sink="soc") == len(first)

        # The receiver goes away; the gateway keeps serving and the sink keeps retrying.
        sinked.stop()
        _calls(gateway, 6)
        eventually(lambda: gateway.log().count("delivery failed"), lambda n: n >= 3)
        assert gateway.log().count("delivery failed") >= 3
        assert gateway.metric("custos_siem_failures_total", sink="soc") >= 3
        assert gateway.metric("custos_siem_lag_records", sink="soc") > 0
        assert HEC_TOKEN not in gateway.log()
        sinked.start()
        second = _delivered_all(sinked, db_url)
        assert len(second) > len(first)
    finally:
        gateway.stop()

    # A new gateway process on the same store resumes from the cursor.
    token = gateway.token
    monkeypatch.setattr(conftest, "issue_admin_token", lambda _url: token)
    gateway = GatewayProcess(config, tmp_path, env=env)
    try:
        _calls(gateway, 5)
        third = _delivered_all(sinked, db_url)
        stored, order = _stored(db_url)
        assert len(third) > len(second)
        # Each received sequence number is the record the log holds at that position.
        kinds = {json.loads(stored[order[s]])["event_type"] for s in third}
        assert {"llm.call", "config.revision", "admin.change"} <= kinds
    finally:
        gateway.stop()
    cursor = query(db_url, "SELECT position FROM audit_cursors WHERE name = 'siem:soc'")
    assert int(cursor[0]["position"]) >= len(third)


# -- the follower on each store, without a receiver ------------------------------------------


class FlakySink:
    """Refuses its first ``fail`` batches (a receiver that is down), then keeps what it gets."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.calls = 0
        self.delivered: list[int] = []

    async def deliver(self, leaves: Sequence[Leaf]) -> int:
        self.calls += 1
        if self.calls <= self.fail:
            raise OSError("receiver down")
        self.delivered.extend(leaf.seq for leaf in leaves)
        return len(leaves)

    async def close(self) -> None:
        return None


def _settings(**extra: Any) -> SyslogSettings:
    base = {"name": "unit", "host": "127.0.0.1", "port": 1, "batch_size": 5,
            "poll_interval_s": 0.01, "retry": {"initial_s": 0.01, "max_s": 0.05}}  # fmt: skip
    return SyslogSettings(**{**base, **extra})


async def _sequenced(db: Store, tag: str, n: int) -> None:
    await AuditStore(db).insert([record(tag, i) for i in range(n)])
    sequencer = Sequencer(db)
    assert await sequencer.lead()
    while await sequencer.tick():
        pass
    await sequencer.step_down()


async def _run_until(follower: Follower, sink: FlakySink, count: int) -> None:
    task = asyncio.create_task(follower.run())
    deadline = time.monotonic() + 20
    while len(sink.delivered) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    follower.stop()
    await asyncio.wait_for(task, 5)


async def test_follower_retries_then_delivers_in_order_and_resumes(store: Store) -> None:  # noqa: F811
    await _sequenced(store, "a", 23)
    sink = FlakySink(fail=3)
    follower = Follower(store, _settings(), sink)
    await _run_until(follower, sink, 23)
    await follower.close()
    assert sink.delivered == list(range(23))
    assert sink.calls == 3 + 5  # three refusals, then five batches of at most five
    assert await read_cursor(store, "unit") == 23
    # A new follower (a restart) resumes at the cursor: only the new records.
    await _sequenced(store, "b", 4)
    again = FlakySink()
    restarted = Follower(store, _settings(), again)
    while await restarted.step():
        pass
    assert again.delivered == [23, 24, 25, 26]


async def test_follower_skips_purged_bodies_and_can_start_at_the_newest(store: Store) -> None:  # noqa: F811
    await _sequenced(store, "a", 6)
    leaves = await read_leaves(store, 0, 10)
    async with unguarded(store) as tx:  # as the retention purge leaves them: empty bodies
        await tx.execute(
            "UPDATE audit_events SET record = $1 WHERE leaf_hash = $2",
            b"",
            bytes.fromhex(leaves[2].leaf_hash),
        )
    sink = FlakySink()
    follower = Follower(store, _settings(), sink)
    while await follower.step():
        pass
    assert sink.delivered == [0, 1, 3, 4, 5]
    assert await read_cursor(store, "unit") == 6
    late = FlakySink()
    newest = Follower(store, _settings(name="late", start="newest"), late)
    assert not await newest.step()
    await _sequenced(store, "b", 2)
    while await newest.step():
        pass
    assert late.delivered == [6, 7]


async def test_one_replica_sends_for_a_sink(pg_url: str) -> None:  # noqa: F811
    first, second = await open_store(pg_url), await open_store(pg_url)
    try:
        await _sequenced(first, "a", 40)
        sinks = [FlakySink(), FlakySink()]
        followers = [
            Follower(db, _settings(), s) for db, s in zip((first, second), sinks, strict=True)
        ]
        tasks = [asyncio.create_task(f.run()) for f in followers]
        deadline = time.monotonic() + 20
        while sum(len(s.delivered) for s in sinks) < 40 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # a second sender, if there were one, would have sent by now
        for follower, task in zip(followers, tasks, strict=True):
            follower.stop()
            await asyncio.wait_for(task, 5)
            await follower.close()
        assert sorted(len(s.delivered) for s in sinks) == [0, 40]
        assert sinks[0].delivered + sinks[1].delivered == list(range(40))
    finally:
        await first.close()
        await second.close()


async def test_hec_busy_collector_and_wrong_token(
    store: Store,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    if store.dialect != "sqlite":
        pytest.skip("the sink's HTTP side does not depend on the store")
    await _sequenced(store, "a", 9)
    receiver = HECReceiver(HEC_TOKEN)
    receiver.start()
    try:
        wrong = SplunkHECSettings(
            name="hec",
            url=receiver.url,
            token="not-the-token",
            batch_size=4,
            max_batch_bytes=1024,
            retry={"initial_s": 0.01, "max_s": 0.02},
        )
        refused = Follower(store, wrong)
        with pytest.raises(HECRefused) as caught:
            await refused.step()
        assert "403" in str(caught.value) and "not-the-token" not in str(caught.value)
        assert await read_cursor(store, "hec") == 0 and receiver.events == []
        await refused.close()

        receiver.busy = True
        right = Follower(store, wrong.model_copy(update={"token": HEC_TOKEN}))
        task = asyncio.create_task(right.run())
        deadline = time.monotonic() + 10
        while receiver.refused < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        receiver.busy = False
        while len(receiver.events) < 9 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        right.stop()
        await asyncio.wait_for(task, 5)
        await right.close()
        assert [int(e["fields"]["seq"]) for e in receiver.events] == list(range(9))
        assert receiver.refused >= 3 and await read_cursor(store, "hec") == 9
        # A request holds at most 1 KiB (or a single event): batches of four were cut short.
        assert all(size <= 1024 or events == 1 for size, events in receiver.batches), (
            receiver.batches
        )
        assert len(receiver.batches) > 3 and sum(n for _, n in receiver.batches) == 9
        assert HEC_TOKEN not in caplog.text
    finally:
        receiver.close()


def test_syslog_batch_is_not_acknowledged_by_a_receiver_that_drops_it() -> None:
    """A receiver that reads a little and closes (its unread data makes the close a reset), or
    that never closes, does not acknowledge: the sender raises and the batch stays unsent."""
    import socket
    import threading

    def serve(listener: socket.socket, read: int | None) -> None:
        conn, _ = listener.accept()
        if read is None:
            time.sleep(3)  # holds the connection open: no acknowledgement within timeout_s
        else:
            conn.recv(read)
        conn.close()

    for read in (10, None):
        listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=serve, args=(listener, read), daemon=True).start()
        port = listener.getsockname()[1]
        sender = SyslogSender(_settings(port=port, timeout_s=1))
        # A reset needs data left unread; a receiver that holds the connection gets a small
        # batch it could read at once: what is missing is only its close.
        data = frame(b"x" * 4_000_000) if read else frame(b"<14>1 - - - - - - hi")
        with pytest.raises(OSError):
            sender.send(data)
        listener.close()
