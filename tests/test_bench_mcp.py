"""``bench/run.py --mcp``: a smoke run with two-second measurements gives positive tool calls/s
on both targets, every answer a 200 carrying a result; and the wrk script counts an answer that
is not a result (a JSON-RPC error, an HTTP error) apart, with a fresh id on every request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import mcp_bench  # noqa: E402
import run  # noqa: E402

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not (shutil.which("wrk") and shutil.which("taskset")), reason="wrk and taskset needed"
    ),
]


def cpus() -> tuple[int, int]:
    """The gateway's and the load's CPU: two different ones where the machine has them."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[-1]


def test_a_smoke_run_reports_tool_calls_per_second_on_both_targets(tmp_path: Path) -> None:
    out = tmp_path / "mcp.json"
    gateway_cpu, load_cpu = cpus()
    # Few connections: on a busy machine a call through the gateway can take seconds under 64,
    # and a short run would then see no answer at all.
    env = {**os.environ, "BENCH_DURATION": "2", "BENCH_WARMUP": "1", "BENCH_CONNECTIONS": "8",
           "BENCH_GATEWAY_CPU": str(gateway_cpu), "BENCH_LOAD_CPU": str(load_cpu)}  # fmt: skip
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "bench" / "run.py"), "--mcp",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tool calls/s" in done.stdout and "delete_record denied by Cedar" in done.stdout
    report = json.loads(out.read_text())
    assert report["mode"] == "mcp" and report["config"] == "bench/bench-mcp.yaml"
    assert report["problems"] == []
    results = report["results"]
    for target in ("direct", "gateway"):
        figures = results[target]
        assert figures["tool_calls_per_s"] > 0
        assert figures["results"] == figures["requests"] > 0  # every answer a result
        assert figures["other"] == figures["warmup_other"] == figures["non2xx"] == 0
        assert sum(figures["socket_errors"].values()) == 0
    assert results["gateway"]["cpu"]["gateway_cpu_pct"] > 0
    assert results["gateway"]["gateway_cpu_us_per_call"] > 0
    assert results["direct"]["cpu"]["tool_server_cpu_pct"] > 0
    ratio = results["gateway"]["tool_calls_per_s"] / results["direct"]["tool_calls_per_s"]
    assert results["ratio"] == pytest.approx(ratio, abs=0.001)


class Stub(BaseHTTPRequestHandler):
    """Answers a tools/call by its id: a result, a JSON-RPC error, or HTTP 500, in turn."""

    protocol_version = "HTTP/1.1"
    ids: list[int] = []
    sessions: set[str] = set()

    def do_POST(self) -> None:
        message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.ids.append(message["id"])
        self.sessions.add(self.headers["Mcp-Session-Id"])
        status, answer = 200, {"jsonrpc": "2.0", "id": message["id"]}
        if message["id"] % 3 == 0:
            answer["result"] = {"content": [{"type": "text", "text": "ok"}], "isError": False}
        elif message["id"] % 3 == 1:
            answer["error"] = {"code": -32003, "message": "denied"}
        else:
            status = 500
        body = json.dumps(answer, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_wrk_script_counts_only_results_and_numbers_each_request() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bench = SimpleNamespace(connections=2, load_cpu=cpus()[1])
    env = {"BENCH_MCP_SESSION": "session-1", "BENCH_MCP_VERSION": "2025-06-18"}
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mcp"
        got = run.run_wrk(bench, url, mcp_bench.CALL_BODY, "", 1, run.BENCH / "wrk_mcp.lua", env)
    finally:
        server.shutdown()
        run.cleanup()
    assert got["requests"] > 10
    assert got["results"] + got["other"] == got["requests"]
    # a third are results, two thirds a JSON-RPC error or an HTTP 500 (wrk counts only those)
    assert got["results"] == pytest.approx(got["requests"] / 3, abs=3)
    assert got["non2xx"] == pytest.approx(got["requests"] / 3, abs=3)
    assert len(set(Stub.ids)) == len(Stub.ids) and Stub.sessions == {"session-1"}
    assert sum(got["socket_errors"].values()) == 0
