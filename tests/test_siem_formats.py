"""The SIEM formats and their config, without a gateway: CEF escaping (each rule, and any
string read back as written), RFC 5424 structure and octet counting, OCSF for every event
type, HEC batches, and the ``audit.export`` entries the config accepts and refuses."""

from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st
from syslog_rfc5424_parser import SyslogMessage

from custos.audit.gateway_info import GatewayInfo
from custos.audit.records import events
from custos.audit.records.record import leaf_hash, seal
from custos.audit.siem.cef import escape_header, escape_value, extension, to_cef
from custos.audit.siem.hec import batch_body, hec_event
from custos.audit.siem.ocsf import to_ocsf
from custos.audit.siem.syslog import frame, message, sd_escape
from custos.config.loader import ConfigError, parse_config
from custos.config.siem import SplunkHECSettings, SyslogSettings
from tests.siem_receivers import split_frames
from tests.test_siem_sinks import _sd_unescape, check_ocsf, parse_cef

GATEWAY = GatewayInfo("gw | one=1 \\ two")


def _records() -> list[dict]:
    """One record of every event type the gateway writes, through the real builders."""
    made = [
        events.auth_failure(request_id="req-1", route="/admin/v1/users", method="DELETE",
                            code="invalid_token", client="10.1.2.3", revision="r1",
                            gateway=GATEWAY),
        events.admin_change({"id": 7, "at": _now(), "actor": "user:u1", "actor_role": "admin",
                             "action": "user.delete", "target_type": "user", "target_id": "u2",
                             "before": {"email": "a@b.c"}, "after": None}, GATEWAY),
        events.config_revision(revision="r2", previous="r1", text_sha256="ab" * 32,
                               source="/etc/custos.yaml", trigger="reload", gateway=GATEWAY),
        events.audit_purge(cutoff_ms=1_700_000_000_000, retention_days=30,
                           seq_ranges=[(0, 9)], count=10, team_holds=[], trigger="schedule",
                           gateway=GATEWAY),
    ]  # fmt: skip
    return [seal(record, at_ms=at_ms).fields for record, at_ms in made] + [_llm_call()]


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _llm_call() -> dict:
    fields = {
        "event_type": "llm.call", "request_id": "req-9", "time_start": "2026-07-01T12:00:00.123Z",
        "time_end": "2026-07-01T12:00:01.000Z", "gateway.instance": "gw1",
        "gateway.version": "0.1.0", "config.revision": "r1", "principal.kind": "user",
        "principal.id": "usr_1", "principal.teams": ["payments"], "team": "payments",
        "auth.token_id": "tok_1", "metadata": {"project": "a=b|c"}, "data_classes": [
            {"class": "customer_data", "count": 1, "source": "declared"}],
        "api.protocol": "openai", "api.operation": "chat", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "chat-default", "gen_ai.provider.name": "azure.ai.openai",
        "provider.account": "azure-eu", "provider.model": "gpt-5.5", "cloud.region": "eu",
        "http.response.status_code": 403, "outcome": "denied", "stopped_at": "guardrails",
        "error.type": "guardrail_blocked", "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 0, "cost_micros": 0, "latency_ms": 877,
    }  # fmt: skip
    return seal(fields, at_ms=1_782_907_200_123).fields


# -- CEF ---------------------------------------------------------------------------------------


def test_cef_escaping_rules() -> None:
    assert escape_header("a|b\\c") == "a\\|b\\\\c"
    assert escape_header("line\nbreak\r\nx") == "line break x"
    assert escape_value("a=b\\c|d") == "a\\=b\\\\c|d"  # pipes stay as they are in values
    assert escape_value("one\ntwo\rthree") == "one\\ntwo\\rthree"
    assert extension([("a", "x y"), ("b", None), ("c", True), ("d", ["p", "q"])]) == (
        "a=x y c=true d=p,q"
    )


@given(st.text(), st.text())
def test_any_cef_value_reads_back(first: str, second: str) -> None:
    line = "CEF:0|V|P|1|c|n|3|" + extension([("cs1", first), ("cs2", second)])
    _, ext = parse_cef(line)
    # A CR LF pair is one line break to a CEF reader only if escaped as written: both are.
    assert ext.get("cs1", "") == first and ext.get("cs2", "") == second


@given(st.text(min_size=1))
def test_any_cef_header_reads_back_on_one_line(name: str) -> None:
    line = f"CEF:0|V|P|1|c|{escape_header(name)}|3|x=1"
    assert "\n" not in line and "\r" not in line
    header, ext = parse_cef(line)
    assert header[4] == name.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    assert ext == {"x": "1"}


def test_cef_lines_for_every_event_type() -> None:
    for fields in _records():
        body_hash = "00" * 32
        header, ext = parse_cef(to_cef(5, fields, body_hash))
        assert header[0:2] == ["Custos", "Custos AI Gateway"]
        assert header[3] == fields["event_type"]
        assert ext["externalId"] == fields["event_id"] and ext["CustosAuditSeq"] == "5"
        assert ext["dvchost"] == GATEWAY.instance or fields["event_type"] == "llm.call"
    denied = parse_cef(to_cef(1, _llm_call(), "00" * 32))
    assert denied[0][5] == "6"  # a denial is a warning
    assert denied[1]["outcome"] == "denied" and denied[1]["cs1"] == "payments"


# -- syslog ------------------------------------------------------------------------------------


def test_rfc5424_message_parses_back_and_frames_count_octets() -> None:
    settings = SyslogSettings(name="s", host="127.0.0.1", port=1)
    fields = _records()[1]  # admin.change: notice
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    msg = message(settings, 41, body, fields, leaf_hash(body).hex())
    parsed = SyslogMessage.parse(msg.decode()).as_dict()
    assert parsed["facility"] == "audit" and parsed["severity"] == "notice"
    assert parsed["hostname"] == "gw|one=1\\two"  # printable ASCII without spaces
    assert parsed["msgid"] == "admin.change" and parsed["procid"] is None
    sd = parsed["sd"]["custos@32473"]
    assert sd["seq"] == "41" and sd["leaf_hash"] == leaf_hash(body).hex()
    assert msg.endswith(b"\xef\xbb\xbf" + body)
    # Octet counting counts bytes, not characters.
    unicode_msg = "<14>1 - - - - - - é€😀".encode()
    framed = frame(unicode_msg) + frame(msg)
    assert framed.startswith(b"%d " % len(unicode_msg))
    assert split_frames(framed) == [unicode_msg, msg]


def test_sd_values_escape_quote_backslash_bracket() -> None:
    raw = 'a"b\\c]d'
    assert sd_escape(raw) == 'a\\"b\\\\c\\]d'
    line = f'<14>1 - - - - - [x@1 v="{sd_escape(raw)}"] m'
    assert _sd_unescape(SyslogMessage.parse(line).as_dict()["sd"]["x@1"]["v"]) == raw


# -- OCSF --------------------------------------------------------------------------------------


def test_ocsf_event_for_every_event_type() -> None:
    activities = {}
    for fields in _records():
        event = to_ocsf(3, fields, "ab" * 32)
        check_ocsf(event)
        activities[fields["event_type"]] = event["activity_id"]
        assert event["metadata"]["sequence"] == 3 and event["metadata"]["uid"] == fields["event_id"]
        # Nothing the record holds is lost: what has no attribute is under "unmapped".
        assert "salt" in event["unmapped"]
    assert activities == {"auth.failure": 4, "admin.change": 4, "config.revision": 3,
                          "audit.purge": 4, "llm.call": 1}  # fmt: skip
    call = to_ocsf(0, _llm_call(), "ab" * 32)
    assert call["status_id"] == 2 and call["severity_id"] == 3
    assert call["actor"]["user"] == {"uid": "usr_1", "type": "user", "credential_uid": "tok_1",
                                     "groups": [{"name": "payments"}]}  # fmt: skip
    assert call["cloud"] == {"provider": "azure.ai.openai", "region": "eu"}
    assert call["unmapped"]["cost_micros"] == 0 and call["duration"] == 877
    assert call["time"] == 1_782_907_200_123


def test_a_record_the_mapping_cannot_read_is_still_sent() -> None:
    odd = dict(_llm_call(), **{"principal.teams": 5})  # not a list
    check_ocsf(to_ocsf(0, odd, "00" * 32))


# -- HEC ---------------------------------------------------------------------------------------


def test_hec_batch_is_concatenated_json_with_exact_times() -> None:
    settings = SplunkHECSettings(name="h", url="http://127.0.0.1:1", token="t", index="ai")
    fields = _llm_call()
    body = batch_body([hec_event(settings, n, fields, 1_782_907_200_123, "ab") for n in (0, 1)])
    assert body.count(b'"time":1782907200.123') == 2
    decoder, first = json.JSONDecoder(), None
    first, end = decoder.raw_decode(body.decode())
    assert first["index"] == "ai" and first["fields"]["seq"] == "0"
    assert first["sourcetype"] == "custos:audit" and first["event"] == fields
    assert decoder.raw_decode(body.decode(), end)[0]["fields"]["seq"] == "1"


# -- config ------------------------------------------------------------------------------------

BASE = textwrap.dedent(
    """\
    version: 1
    providers:
      openai-main:
        type: openai
        base_url: http://127.0.0.1:9999/v1
        api_key: ${env:CUSTOS_T_SIEM_KEY}
        models:
          gpt-5.5: {input_per_mtok: 1.25, output_per_mtok: 10.0}
    """
)


def _config(export: str) -> str:
    return BASE + f"audit:\n  export:\n{textwrap.indent(textwrap.dedent(export), '    ')}"


def test_siem_export_entries_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUSTOS_T_SIEM_KEY", "k")
    monkeypatch.setenv("CUSTOS_T_HEC", "hec-secret")
    loaded = parse_config(
        _config(
            """\
            - syslog: {name: soc, host: siem.example, port: 6514, format: cef, tls: {}}
            - splunk_hec: {name: splunk, url: "https://splunk:8088/", token: "${env:CUSTOS_T_HEC}"}
            """
        )
    )
    syslog, hec = loaded.config.audit.siem_sinks
    assert isinstance(syslog, SyslogSettings) and syslog.tls is not None
    assert isinstance(hec, SplunkHECSettings) and hec.token == "hec-secret"
    assert hec.url == "https://splunk:8088" and "hec-secret" not in repr(hec)


@pytest.mark.parametrize(
    ("export", "fragment"),
    [
        ('- splunk_hec: {name: s, url: "http://h:8088", token: literal-token}', "secret"),
        ("- syslog: {name: a, host: h, port: 1}\n- syslog: {name: a, host: h, port: 2}",
         "two SIEM sinks are named 'a'"),
        ("- syslog: {name: a, host: h, port: 1}\n  jsonl: {path: ./x}", "each export entry"),
        ("- syslog: {name: Bad Name, host: h, port: 1}", "lowercase"),
        ("- syslog: {name: a, host: h, port: 1, format: leef}", "format"),
        ('- splunk_hec: {name: s, url: "ftp://h", token: "${env:CUSTOS_T_HEC}"}', "http"),
    ],
)  # fmt: skip
def test_bad_siem_entries_are_refused(
    export: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOS_T_SIEM_KEY", "k")
    monkeypatch.setenv("CUSTOS_T_HEC", "hec-secret")
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(export))
    assert fragment in str(caught.value)
    assert "literal-token" not in str(caught.value)
