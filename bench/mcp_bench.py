"""``bench/run.sh --mcp``: MCP tool calls per second through the gateway, against the tool
server directly.

The tool server (``bench/mcp_tool_server.py``, FastMCP, answering JSON) runs on the load CPU in
the mock provider's place; the gateway serves ``bench/bench-mcp.yaml`` (``BENCH_MCP_CONFIG``) on
its own CPU: token authentication, an access rule granting the server's tools, a ``cedar``
guardrail at ``mcp_tool_pre_invoke`` (the policy below, written into the gateway's state
directory) and the audit trail with its signed Merkle log. For each target an MCP session is
opened once over plain HTTP (``initialize``, then ``notifications/initialized``); then wrk
(``bench/wrk_mcp.lua``, ``BENCH_CONNECTIONS`` connections on that one session) saturates
``tools/call`` of ``echo`` for ``BENCH_WARMUP`` s (discarded) and ``BENCH_DURATION`` s, reading
every answer: only a 200 carrying a JSON-RPC result counts as a served call.

Before measuring, one call of each kind is checked properly: ``echo`` answers its text on both
targets, and through the gateway ``delete_record`` is refused by the Cedar policy's forbid rule
(so the policy is evaluated on every call, not skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import Bench

SERVER = "bench-tools"  # the server's id in bench-mcp.yaml: the gateway's endpoint /mcp/bench-tools
PROTOCOL_VERSION = "2025-06-18"
TOOL, TEXT = "echo", "a benchmark tool call"
FORBIDDEN_RULE = "no-deletes"
POLICY = f"""\
@id("bench-may-call-tools")
permit(principal, action == Action::"call_tool", resource);

@id("{FORBIDDEN_RULE}")
forbid(principal, action == Action::"call_tool", resource)
when {{ resource.name like "delete_*" }};
"""
#: The JSON-RPC message wrk sends; wrk_mcp.lua puts a fresh id in place of __ID__.
CALL_BODY = (
    '{"jsonrpc":"2.0","id":__ID__,"method":"tools/call",'
    f'"params":{{"name":"{TOOL}","arguments":{{"text":"{TEXT}"}}}}}}'
)


@dataclass(frozen=True)
class McpSessionInfo:
    """An open MCP session at one target: where to POST and the headers every message sends
    (``auth``, the bearer token, is empty for the tool server itself)."""

    url: str
    auth: str
    session_id: str
    version: str

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": self.session_id,
            "MCP-Protocol-Version": self.version,
        }
        if self.auth:
            headers["Authorization"] = f"Bearer {self.auth}"
        return headers


def post(
    run: ModuleType, url: str, message: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, str], dict[str, Any] | None]:
    """POST one JSON-RPC message: (status, headers, the JSON-RPC answer or None). An event
    stream's last ``data:`` line is taken as the answer."""
    request = urllib.request.Request(
        url, json.dumps(message).encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, got, raw = response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        status, got, raw = exc.code, dict(exc.headers), exc.read().decode(errors="replace")
    except OSError as exc:
        raise run.BenchError(f"MCP {message.get('method')} to {url}: {exc}") from None
    got = {k.lower(): v for k, v in got.items()}
    if got.get("content-type", "").startswith("text/event-stream"):
        data = [ln[5:].strip() for ln in raw.splitlines() if ln.startswith("data:")]
        raw = data[-1] if data else ""
    try:
        return status, got, json.loads(raw) if raw.strip() else None
    except ValueError:
        raise run.BenchError(f"MCP {message.get('method')} to {url}: HTTP {status}, not JSON: "
                             f"{raw[:300]}") from None  # fmt: skip


def open_session(run: ModuleType, url: str, auth: str) -> McpSessionInfo:
    """``initialize`` and ``notifications/initialized`` by hand, as the load generator talks."""
    start = McpSessionInfo(url, auth, "", PROTOCOL_VERSION).headers()
    del start["Mcp-Session-Id"], start["MCP-Protocol-Version"]
    hello = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "custos-bench", "version": "1"},
        },
    }
    status, headers, answer = post(run, url, hello, start)
    session_id = headers.get("mcp-session-id", "")
    if status != 200 or not answer or "result" not in answer or not session_id:
        raise run.BenchError(f"MCP initialize at {url}: HTTP {status}, session {session_id!r}, "
                             f"answer {answer}")  # fmt: skip
    info = McpSessionInfo(url, auth, session_id, answer["result"]["protocolVersion"])
    status, _, _ = post(run, url, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                        info.headers())  # fmt: skip
    if status != 202:
        raise run.BenchError(f"MCP notifications/initialized at {url}: HTTP {status}")
    return info


def call_tool(
    run: ModuleType, session: McpSessionInfo, name: str, arguments: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": name, "arguments": arguments}}  # fmt: skip
    status, _, answer = post(run, session.url, message, session.headers())
    return status, answer or {}


def sanity(b: Bench, run: ModuleType, sessions: dict[str, McpSessionInfo]) -> None:
    """echo answers its text on both targets; the Cedar policy refuses delete_record."""
    for target, session in sessions.items():
        status, answer = call_tool(run, session, TOOL, {"text": TEXT})
        content = answer.get("result", {}).get("content", [])
        if status != 200 or [c.get("text") for c in content] != [TEXT]:
            raise run.BenchError(f"sanity check {target} {TOOL}: HTTP {status}: {answer}")
    status, answer = call_tool(run, sessions["gateway"], "delete_record", {"record_id": "r-1"})
    error = answer.get("error") or {}
    if (error.get("data") or {}).get("code") != "policy_denied" or FORBIDDEN_RULE not in str(
        error.get("message")
    ):
        raise run.BenchError(
            f"sanity check: the Cedar policy did not refuse delete_record: HTTP {status}: {answer}"
        )
    denial_recorded(b, run, error["data"].get("request_id"))
    run.log(f"sanity checks passed ({TOOL} on both targets; delete_record denied by Cedar, "
            "its mcp.tool_call record in the audit log)")  # fmt: skip


def denial_recorded(b: Bench, run: ModuleType, request_id: str | None) -> None:
    """The denied call's ``mcp.tool_call`` record, with the Cedar rule, reached the audit log
    (read over the admin API; the bench user is the store's first admin): the audit trail is on.
    Records are written in batches, so the check waits for it a little."""
    url = (f"http://127.0.0.1:{b.gateway_port}/admin/v1/audit/events"
           "?event_type=mcp.tool_call&limit=20")  # fmt: skip
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {b.token}"})
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                rows = json.loads(response.read())["data"]
        except (OSError, ValueError, KeyError) as exc:
            raise run.BenchError(f"sanity check: reading the audit log: {exc}") from None
        for record in (json.loads(r["record"]) for r in rows):
            rules = [(d.get("input") or {}).get("policy_rule") for d in record["decisions"]]
            if record.get("request_id") == request_id and FORBIDDEN_RULE in rules:
                return
        if time.monotonic() > deadline:
            raise run.BenchError(f"sanity check: no mcp.tool_call record of {request_id} "
                                 f"naming {FORBIDDEN_RULE} in the audit log")  # fmt: skip
        time.sleep(0.2)


def saturate(b: Bench, run: ModuleType, target: str, session: McpSessionInfo) -> dict[str, Any]:
    """A warm-up, then the measured wrk run of tools/call on ``session``, with CPU shares."""
    env = {"BENCH_MCP_SESSION": session.session_id, "BENCH_MCP_VERSION": session.version}
    script = run.BENCH / "wrk_mcp.lua"
    run.log(f"MCP tools/call saturation -> {target}: wrk -c{b.connections}, "
            f"{b.warmup}s warm-up + {b.duration}s")  # fmt: skip
    warm = run.run_wrk(b, session.url, CALL_BODY, session.auth, b.warmup, script, env)
    with run.Meter(b) as meter:
        result = run.run_wrk(b, session.url, CALL_BODY, session.auth, b.duration, script, env)
    cpu = dict(meter.result)
    cpu["tool_server_cpu_pct"] = cpu.pop("mock_cpu_pct")
    result["cpu"] = cpu
    # only answers that carry a result count as tool calls served
    served = result["results"] / max(1, result["requests"])
    result["tool_calls_per_s"] = round(served * result["requests_per_s"], 1)
    result["warmup_other"] = warm["other"]
    result["gateway_cpu_us_per_call"] = (
        round(1e4 * cpu["gateway_cpu_pct"] / result["tool_calls_per_s"], 1)
        if target == "gateway" and result["tool_calls_per_s"]
        else None
    )
    bad = result["other"] + warm["other"] + result["non2xx"] + sum(result["socket_errors"].values())
    if bad or not result["results"]:
        b.problems.append(
            f"MCP saturation {target}: {result['results']} results, {result['other']} other "
            f"answers (warm-up {warm['other']}), non-2xx {result['non2xx']}, socket errors "
            f"{result['socket_errors']}"
        )
    if target == "gateway" and cpu["gateway_cpu_pct"] < 95:
        b.warnings.append(
            f"MCP saturation: the gateway used only {cpu['gateway_cpu_pct']:.0f} % of its CPU "
            f"(others on its CPU {cpu['gateway_core_others_pct']:.0f} %; the tool server "
            f"{cpu['tool_server_cpu_pct']:.0f} %, load CPU busy {cpu['load_core_busy_pct']:.0f} %, "
            f"others there {cpu['load_core_others_pct']:.0f} %): the gateway was not the "
            "bottleneck, and the tool calls/s understate it"
        )
    run.log(f"  {result['tool_calls_per_s']:,.0f} tool calls/s, other answers {result['other']}, "
            f"socket errors {sum(result['socket_errors'].values())}, cpu {cpu}")  # fmt: skip
    return result


def start_tool_server(b: Bench, run: ModuleType) -> None:
    """The tool server in the mock provider's place: pinned to the load CPU, metered as it."""
    b.mock_port = run.free_port()
    while b.mock_port == b.gateway_port:
        b.mock_port = run.free_port()
    b.upstream_name, b.upstream_log = "MCP tool server", "tool-server.log"
    run.log(f"work dir {b.tmp}; tool server on 127.0.0.1:{b.mock_port} (CPU {b.load_cpu})")
    b.mock_log = (b.tmp / b.upstream_log).open("wb")
    cmd = [str(run.VENV_BIN / "python"), str(run.BENCH / "mcp_tool_server.py"),
           "--port", str(b.mock_port)]  # fmt: skip
    b.mock = run.spawn(cmd, b.load_cpu, stdout=b.mock_log, stderr=subprocess.STDOUT)
    b.gateway_env["BENCH_MCP_URL"] = f"http://127.0.0.1:{b.mock_port}/mcp"
    b.state_files["bench-tools.cedar"] = POLICY


def measure(b: Bench, run: ModuleType) -> dict[str, Any]:
    b.preflight()
    b.idle_before = b.idle_check()
    b.speed = {"start": {f"cpu{c}": run.cpu_speed(c) for c in (b.gateway_cpu, b.load_cpu)}}
    start_tool_server(b, run)
    b.start_gateway()
    sessions = {
        "direct": open_session(run, f"http://127.0.0.1:{b.mock_port}/mcp", ""),
        "gateway": open_session(run, f"http://127.0.0.1:{b.gateway_port}/mcp/{SERVER}", b.token),
    }
    sanity(b, run, sessions)
    results: dict[str, Any] = {}
    for target in ("direct", "gateway"):
        results[target] = saturate(b, run, target, sessions[target])
        b.check_alive(f"the MCP saturation run ({target})")
    direct = results["direct"]["tool_calls_per_s"]
    results["ratio"] = round(results["gateway"]["tool_calls_per_s"] / direct, 3) if direct else None
    b.speed["end"] = {f"cpu{c}": run.cpu_speed(c) for c in (b.gateway_cpu, b.load_cpu)}
    return results


def summary(b: Bench, report: dict[str, Any]) -> str:
    r = report["results"]
    g, d = r["gateway"], r["direct"]
    speed = report["cpu_speed_mloops_per_s"]
    lines = [
        "=" * 96,
        f"custos bench --mcp  {report['date']}  commit {report['commit']}  config "
        f"{report['config']}  store {report['store']}",
        f"{report['host']['cpus']} CPUs ({report['host']['cpu_model']}); gateway pinned to CPU "
        f"{b.gateway_cpu}, tool server + wrk to CPU {b.load_cpu}; tools/call {TOOL}, "
        f"wrk -c{b.connections} on one session, {b.warmup} s warm-up + {b.duration} s",
        "CPU speed probe (M loops/s): "
        + ", ".join(f"{c} {speed['start'][c]} -> {speed['end'][c]}" for c in speed["start"]),
        "=" * 96,
        f"{'':44}{'gateway':>12}{'direct':>12}",
        f"{'tool calls/s (200 with a result)':44}{g['tool_calls_per_s']:>12,.0f}"
        f"{d['tool_calls_per_s']:>12,.0f}   gateway / direct {r['ratio']}",
        f"{'other answers / socket errors':44}"
        f"{g['other']:>7} / {sum(g['socket_errors'].values()):<4}"
        f"{d['other']:>7} / {sum(d['socket_errors'].values()):<4}",
        f"{'latency p50 / p99 (ms)':44}{g['latency_p50_ms']:>6.1f} /{g['latency_p99_ms']:>5.1f}"
        f"{d['latency_p50_ms']:>6.1f} /{d['latency_p99_ms']:>5.1f}",
        f"{'gateway CPU % / others on its core %':44}{g['cpu']['gateway_cpu_pct']:>7.0f} / "
        f"{g['cpu']['gateway_core_others_pct']:.0f}",
        f"{'gateway CPU per tool call (us)':44}{g['gateway_cpu_us_per_call'] or 0:>12,.0f}",
        f"{'tool server CPU % / wrk CPU %':44}"
        f"{g['cpu']['tool_server_cpu_pct']:>7.0f} / {g['cpu']['load_tool_cpu_pct']:<4.0f}"
        f"{d['cpu']['tool_server_cpu_pct']:>7.0f} / {d['cpu']['load_tool_cpu_pct']:<4.0f}",
        "-" * 96,
    ]
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    lines += [f"PROBLEM: {p}" for p in report["problems"]]
    lines.append(f"written to {report['out']}")
    return "\n".join(lines)


def main_mcp(b: Bench, run: ModuleType) -> int:
    """``--mcp``: measure, print the table, write mcp.json (or ``--out``)."""
    config = Path(os.environ.get("BENCH_MCP_CONFIG", "bench/bench-mcp.yaml"))
    b.config = config.resolve() if config.is_absolute() or config.exists() else run.ROOT / config
    if b.out.name in ("latest.json", "quick.json"):
        b.out = b.out.with_name("mcp.json")
    try:
        results = measure(b, run)
    except run.BenchError as exc:
        print(f"\nbench: FAILED: {exc}\nbench: logs kept in {b.tmp}")
        return 1
    finally:
        run.cleanup()
    report = {
        **run.report_header(b, "mcp"),
        "connections": b.connections,
        "tool_call": {"server": SERVER, "tool": TOOL, "policy": POLICY},
        "results": results,
        "problems": b.problems,
        "warnings": b.warnings,
        "out": os.path.relpath(b.out, run.ROOT),
    }
    b.out.parent.mkdir(parents=True, exist_ok=True)
    b.out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(b, report))
    if b.problems:  # the gateway's and the tool server's logs may say why
        print(f"bench: logs kept in {b.tmp}")
        return 1
    shutil.rmtree(b.tmp, ignore_errors=True)
    return 0
