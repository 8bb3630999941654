"""``bench/run.sh --soak [--requests N]``: the governed gateway's memory over a long mixed load.

One ``custos serve`` with ``bench.yaml`` (every stage on, guardrails included) on its own core
is sent N requests (1,000,000) by wrk (``bench/wrk_soak.lua``) in a fixed, interleaved mix of
kinds (``MIX``): plain requests, plain requests carrying personal data (masked by the pii
guardrail, seen by the data class), 20-chunk streams, a model the token may not call (403), an
answer the secrets guardrail blocks (400), and a request no rate limit window can admit (429).
Beside wrk, ``bench/disconnects.py`` opens ``BENCH_SOAK_DISCONNECTS`` slow streams a second
(10) and leaves each after its first content event; they come on top of the N.

Every ``BENCH_SOAK_SAMPLE_S`` seconds (2) the gateway process's VmRSS, VmHWM, open files and
threads, the audit spool's disk use and the SQLite store's size are sampled against the
requests served so far. At the end: RSS at the start, its maximum and its end, the least-squares
slope of RSS over the second half of the requests in MB per 100,000 requests, and the verdict:
flat when the peak (VmHWM) is at most 150 MB and the slope within ``SLOPE_TOLERANCE_MB``; the
same for the spool. The samples go to ``bench/results/soak.json`` (or ``--out``), the plot of
RSS and spool against requests beside it (``soak.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from custos.audit.storage.spool import SEGMENT_BYTES

if TYPE_CHECKING:
    from run import Bench

DEFAULT_REQUESTS = 1_000_000
#: A leak of one small object per request (a 50-byte entry in a dict that is never emptied)
#: grows RSS by about 5 MB per 100,000 requests; the allocator's own steps (CPython's arenas
#: are 1 MiB, glibc's heap trims in similar steps) move a half's least-squares slope by a few
#: tenths of that at most when one such step falls in it. 0.5 MB per 100,000 (5 bytes a
#: request, 5 MB over the million) lies between the two: above it RSS is growing, below it
#: the curve is flat within what the allocator's granularity lets one see.
SLOPE_TOLERANCE_MB = 0.5
#: The size of those steps; in a shorter soak one of them tilts the line more (see
#: ``slope_tolerance``).
STEP_MB = 1.0
BUDGET_RSS_MB = 150
SEGMENT_MB = SEGMENT_BYTES / 2**20  # one spool segment

#: One cycle of the mix: kind -> requests per 50.
MIX = {"plain": 31, "personal": 4, "stream": 10, "forbidden": 2, "blocked": 2, "limited": 1}
EXPECTED = {
    "plain": (200, None),
    "personal": (200, None),
    "stream": (200, None),
    "forbidden": (403, "model_not_allowed"),
    "blocked": (400, "guardrail_blocked"),
    "limited": (429, "rate_limit_exceeded"),
}
PERSONAL = "Please reply to jane.doe@example.com or call +1 415 555 0100 about order CUST-123456."
#: The answer of the mock repeats the prompt's first words, so this key (AWS's documentation
#: example) comes back in the answer, where the secrets guardrail refuses it.
SECRET = "AKIAIOSFODNN7EXAMPLE is the key to rotate, please confirm."
SLOW_STREAM_MODEL = "bench-openai/gpt-5.5+chunks=20+chunk_delay_ms=20"
SOCKET_ERRORS = ("connect_errors", "read_errors", "write_errors", "timeouts")


def interleave(weights: dict[str, int]) -> list[str]:
    """One cycle of the mix with each kind spread evenly (smooth weighted round robin), so every
    stretch of a few dozen requests has the mix's proportions."""
    total = sum(weights.values())
    current = dict.fromkeys(weights, 0)
    order = []
    for _ in range(total):
        for kind, weight in weights.items():
            current[kind] += weight
        chosen = max(current, key=lambda k: current[k])
        current[chosen] -= total
        order.append(chosen)
    return order


def kinds(b: Bench, run: ModuleType, narrow_token: str) -> dict[str, tuple[str, str]]:
    """Each kind's (bearer token, JSON body)."""

    def body(model: str, content: str, **extra: Any) -> str:
        message = {"role": "user", "content": content}
        return json.dumps({"model": model, "messages": [message], **extra}, separators=(",", ":"))

    prompt = run.prompt_of(b.prompt_words)
    return {
        "plain": (b.token, body(b.model, prompt)),
        "personal": (b.token, body(b.model, PERSONAL)),
        "stream": (b.token, body(b.stream_model, prompt, stream=True)),
        "forbidden": (narrow_token, body(b.model, prompt)),
        "blocked": (b.token, body(b.model, SECRET)),
        # more tokens at once than the per-user limit of a minute: refused at admission
        "limited": (b.token, body(b.model, prompt, max_tokens=200_000_000)),
    }


def call(url: str, token: str, payload: bytes | None, method: str = "POST") -> tuple[int, str]:
    request = urllib.request.Request(
        url,
        payload,
        method=method,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def narrow_token(b: Bench, run: ModuleType) -> str:
    """A second token of the benchmark's user, narrowed to the stream model: asking it for the
    plain model is refused (403) by the token's own narrowing, after authentication."""
    url = f"http://127.0.0.1:{b.gateway_port}/admin/v1/tokens"
    payload = {"name": "soak-narrow", "models": [b.stream_model]}
    status, text = call(url, b.token, json.dumps(payload).encode())
    if status != 201:
        raise run.BenchError(f"creating the narrowed token: HTTP {status}: {text[:300]}")
    return str(json.loads(text)["token"])


def check_kinds(b: Bench, run: ModuleType, table: dict[str, tuple[str, str]]) -> None:
    """Each kind once, its answer checked: wrk only counts statuses."""
    url = f"http://127.0.0.1:{b.gateway_port}/v1/chat/completions"
    for kind, (token, body) in table.items():
        status, text = call(url, token, body.encode())
        want, code = EXPECTED[kind]
        if status != want or (code and f'"code":"{code}"' not in text):
            raise run.BenchError(f"soak request {kind}: HTTP {status} {text[:300]} (want {want})")
    slow = {"model": SLOW_STREAM_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    status, text = call(url, b.token, json.dumps({**slow, "stream": True}).encode())
    if status != 200 or not text.rstrip().endswith("data: [DONE]"):
        raise run.BenchError(f"soak slow stream: HTTP {status} {text[-300:]}")
    run.log("soak: every kind of request answered as expected")


# ---------------------------------------------------------------------------------------------
# Sampling


def disk_use(path: Path) -> int:
    """Bytes of disk the files under ``path`` occupy (allocated blocks, as du counts them)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:  # a segment deleted while we walk
                continue
    return total


def store_bytes(state: Path) -> int | None:
    """The SQLite store's files (database, WAL, shared memory); None for PostgreSQL."""
    files = [state / f"custos.db{suffix}" for suffix in ("", "-wal", "-shm")]
    if not files[0].exists():
        return None
    return sum(f.stat().st_size for f in files if f.exists())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


class Sampler:
    def __init__(self, b: Bench, state: Path, wrk_progress: Path, cut_progress: Path) -> None:
        self.b, self.state = b, state
        self.wrk_progress, self.cut_progress = wrk_progress, cut_progress
        self.start = time.monotonic()
        self.samples: list[dict[str, Any]] = []

    def sample(self, phase: str) -> dict[str, Any]:
        pid = self.b.gateway.pid
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        answered = int(read_json(self.wrk_progress).get("answers", 0))
        left = int(read_json(self.cut_progress).get("started", 0))
        sample = {
            "t_s": round(time.monotonic() - self.start, 1),
            "phase": phase,
            "requests": answered + left,
            "wrk_answers": answered,
            "disconnects": left,
            "rss_kb": int(fields["VmRSS"].split()[0]),
            "hwm_kb": int(fields["VmHWM"].split()[0]),
            "rss_anon_kb": int(fields["RssAnon"].split()[0]),  # the heap: where a leak shows
            "rss_file_kb": int(fields["RssFile"].split()[0]),  # mapped files: code, libraries
            "threads": int(fields["Threads"]),
            "open_files": len(os.listdir(f"/proc/{pid}/fd")),
            "spool_bytes": disk_use(self.state / "custos-audit-spool"),
            "store_bytes": store_bytes(self.state),
            "gateway_cpu_s": round(proc_cpu(pid), 2),
        }
        self.samples.append(sample)
        return sample


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# The run


def soak(b: Bench, run: ModuleType, requests: int) -> dict[str, Any]:
    sample_s = float(os.environ.get("BENCH_SOAK_SAMPLE_S", "2"))
    cut_rate = float(os.environ.get("BENCH_SOAK_DISCONNECTS", "10"))
    b.preflight()
    b.idle_before = b.idle_check()
    b.speed = {"start": {f"cpu{c}": run.cpu_speed(c) for c in (b.gateway_cpu, b.load_cpu)}}
    b.start_mock()
    b.start_gateway(os.environ.get("BENCH_SOAK_VARIANT") or None)
    b.sanity()
    state = b.tmp / f"gateway-{b.gateway_starts}"
    table = kinds(b, run, narrow_token(b, run))
    check_kinds(b, run, table)
    order = interleave(MIX)
    names = list(table)
    kinds_file = b.tmp / "soak-kinds.tsv"
    kinds_file.write_text("".join(f"{k}\t{tok}\t{body}\n" for k, (tok, body) in table.items()))
    wrk_progress, cut_progress = b.tmp / "soak-wrk.json", b.tmp / "soak-disconnects.json"
    sampler = Sampler(b, state, wrk_progress, cut_progress)
    sampler.sample("before load")

    url = f"http://127.0.0.1:{b.gateway_port}/v1/chat/completions"
    slow_body = b.tmp / "soak-slow-stream.json"
    slow_body.write_text(
        json.dumps(
            {
                "model": SLOW_STREAM_MODEL,
                "messages": [{"role": "user", "content": run.prompt_of(b.prompt_words)}],
                "stream": True,
            }
        )
    )
    cutter = None
    if cut_rate > 0:
        cutter = run.spawn(
            [str(run.VENV_BIN / "python"), str(run.BENCH / "disconnects.py"), url,
             "--rate", f"{cut_rate:g}", "--body", str(slow_body), "--token", b.token,
             "--progress", str(cut_progress)],
            b.load_cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    env = {
        **os.environ,
        "BENCH_SOAK_KINDS": str(kinds_file),
        "BENCH_SOAK_ORDER": ",".join(str(names.index(k) + 1) for k in order),
        "BENCH_SOAK_REQUESTS": str(requests),
        "BENCH_SOAK_PROGRESS": str(wrk_progress),
    }
    wrk_cmd = ["wrk", "-t1", f"-c{b.connections}", "-d24h", "--timeout", "10s",
               "-s", str(run.BENCH / "wrk_soak.lua"), url]  # fmt: skip
    run.log(
        f"soak: {requests:,} requests, wrk -c{b.connections} with the mix {MIX} per 50, "
        f"{cut_rate:g} streams/s left half-way; sampling every {sample_s:g} s"
    )
    started = time.monotonic()
    with run.Meter(b) as meter:
        wrk = run.spawn(wrk_cmd, b.load_cpu, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
        last_log = 0.0
        while wrk.poll() is None:
            time.sleep(sample_s)
            b.check_alive("the soak")
            s = sampler.sample("load")
            if s["wrk_answers"] >= requests and wrk.poll() is None:
                # the script stopped its thread at N answers; wrk's main thread sleeps out -d
                # unless interrupted, and SIGINT makes it print its summary and exit
                wrk.send_signal(signal.SIGINT)
            if time.monotonic() - last_log >= 60:
                last_log = time.monotonic()
                run.log(
                    f"  {s['requests']:,} requests, RSS {s['rss_kb'] / 1024:.1f} MB (peak "
                    f"{s['hwm_kb'] / 1024:.1f}), spool {s['spool_bytes'] / 2**20:.1f} MB"
                )
        elapsed = time.monotonic() - started
        cut_counts: dict[str, int] = {}
        if cutter is not None:
            cutter.send_signal(signal.SIGTERM)
            out, err = cutter.communicate(timeout=30)
            if cutter.returncode != 0:
                raise run.BenchError(f"disconnects.py failed: {err.decode()[-2000:]}")
            cut_counts = json.loads(out.decode().strip().splitlines()[-1])
    out_text = wrk.stdout.read() if wrk.stdout else ""
    if wrk.returncode != 0:
        raise run.BenchError(f"wrk failed ({wrk.returncode}):\n{out_text}")
    line = next((ln for ln in out_text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise run.BenchError(f"wrk printed no summary:\n{out_text}")
    wrk_summary = json.loads(line.removeprefix("WRK_JSON "))
    last = sampler.sample("end of load")
    time.sleep(5)  # idle: the writer ships what it holds, the spool's segments go
    sampler.sample("after 5 s idle")
    b.check_alive("the soak")
    b.speed["end"] = {f"cpu{c}": run.cpu_speed(c) for c in (b.gateway_cpu, b.load_cpu)}

    progress = read_json(wrk_progress)
    served = last["requests"]
    return {
        "requests_asked": requests,
        "mix_per_50": MIX,
        "disconnect_rate_per_s": cut_rate,
        "sample_interval_s": sample_s,
        "elapsed_s": round(elapsed, 1),
        "requests_per_s": round(served / elapsed, 1),
        "gateway_cpu_us_per_request": round(
            1e6 * (last["gateway_cpu_s"] - sampler.samples[0]["gateway_cpu_s"]) / max(1, served),
            1,
        ),
        "cpu": meter.result,
        "answers": {
            "total": progress.get("answers", 0),
            "streams": progress.get("streams", 0),
            "statuses": progress.get("statuses", {}),
        },
        "expected_share": expected_shares(),
        "disconnects": cut_counts,
        "wrk": wrk_summary,
        "samples": sampler.samples,
    }


def expected_shares() -> dict[str, float]:
    """The share of each status code the mix should give (streams apart from plain 200s)."""
    total = sum(MIX.values())
    shares: dict[str, float] = {}
    for kind, weight in MIX.items():
        key = "stream" if kind == "stream" else str(EXPECTED[kind][0])
        shares[key] = shares.get(key, 0.0) + weight / total
    shares["200"] = shares.get("200", 0.0) + shares["stream"]  # wrk counts streams among 200s
    return {k: round(v, 4) for k, v in shares.items()}


# ---------------------------------------------------------------------------------------------
# Figures, verdicts, plot


def slope_per_100k(samples: list[dict[str, Any]], key: str, scale: float) -> float:
    """Least-squares slope of ``key`` / ``scale`` (MB) against requests served, in MB per
    100,000 requests."""
    xs = [s["requests"] for s in samples]
    ys = [s[key] / scale for s in samples]
    n = len(xs)
    if n < 3 or max(xs) == min(xs):
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return round(sxy / sxx * 100_000, 3)


def slope_tolerance(half_requests: float) -> float:
    """SLOPE_TOLERANCE_MB, or more for a short soak: one step of STEP_MB in the middle of a half
    of H requests tilts its least-squares line by 1.5 x STEP_MB / H (a 1,000,000-request soak:
    0.3 MB per 100,000, within 0.5; 150,000 requests: 2 MB per 100,000)."""
    return round(max(SLOPE_TOLERANCE_MB, 1.5 * STEP_MB / max(1.0, half_requests / 100_000)), 2)


def figures(result: dict[str, Any]) -> dict[str, Any]:
    samples = result["samples"]
    load = [s for s in samples if s["phase"] in ("load", "end of load")]
    served = load[-1]["requests"] if load else 0
    second_half = [s for s in load if s["requests"] >= served / 2]
    mb = 1024.0  # kB -> MB
    rss = [s["rss_kb"] / mb for s in samples]
    spool = [s["spool_bytes"] / 2**20 for s in samples]
    rss_slope = slope_per_100k(second_half, "rss_kb", mb)
    tolerance = slope_tolerance(served / 2)
    first_half = [s for s in load if s["requests"] < served / 2]
    spool_halves = [
        max((s["spool_bytes"] for s in half), default=0) / 2**20
        for half in (first_half, second_half)
    ]
    anon_slope = slope_per_100k(second_half, "rss_anon_kb", mb)
    peak = max(s["hwm_kb"] for s in samples) / mb
    store = [s["store_bytes"] for s in samples if s["store_bytes"] is not None]
    answers = result["answers"]
    statuses = {str(k): int(v) for k, v in answers["statuses"].items()}
    total = max(1, answers["total"])
    shares = {k: round(n / total, 4) for k, n in statuses.items()}
    shares["stream"] = round(answers["streams"] / total, 4)
    expected = result["expected_share"]
    mix_ok = set(shares) == set(expected) and all(
        abs(shares[k] - expected[k]) <= 0.01 for k in expected
    )
    cuts = result["disconnects"]
    return {
        "requests_served": served,
        "rss_mb": {
            "before_load": round(rss[0], 1),
            "start": round(load[0]["rss_kb"] / mb, 1) if load else None,
            "max": round(max(rss), 1),
            "end": round(load[-1]["rss_kb"] / mb, 1) if load else None,
            "after_idle": round(rss[-1], 1),
            "peak_vmhwm": round(peak, 1),
            "slope_second_half_mb_per_100k": rss_slope,
            "slope_tolerance_mb_per_100k": tolerance,
            "anon_start": round(load[0]["rss_anon_kb"] / mb, 1) if load else None,
            "anon_end": round(load[-1]["rss_anon_kb"] / mb, 1) if load else None,
            "anon_slope_second_half_mb_per_100k": anon_slope,
        },
        "spool_mb": {
            "max": round(max(spool), 2),
            "end": round(spool[-2], 2) if len(spool) > 1 else None,
            "after_idle": round(spool[-1], 2),
            "max_first_half": round(spool_halves[0], 2),
            "max_second_half": round(spool_halves[1], 2),
        },
        "store_mb_end": round(store[-1] / 2**20, 1) if store else None,
        "store_bytes_per_request": round(store[-1] / max(1, served)) if store else None,
        "open_files": {
            "start": load[0]["open_files"] if load else None,
            "max": max(s["open_files"] for s in samples),
            "after_idle": samples[-1]["open_files"],
        },
        "threads_max": max(s["threads"] for s in samples),
        "answer_shares": shares,
        "verdicts": {
            "rss_no_trend": abs(rss_slope) <= tolerance,
            "rss_peak_within_budget": peak <= BUDGET_RSS_MB,
            "rss_flat": peak <= BUDGET_RSS_MB and abs(rss_slope) <= tolerance,
            # the spool holds the segment being written and those whose records the store has
            # not taken yet: bounded when the second half never holds a segment more than the
            # first, and idle leaves at most the one being written
            "spool_bounded": spool_halves[1] <= spool_halves[0] + SEGMENT_MB
            and spool[-1] <= SEGMENT_MB,
            "mix_as_sent": mix_ok,
            "disconnects_mid_stream": cuts.get("left", 0) > 0
            and not any(cuts.get(k, 0) for k in ("other_status", "ended", "errors")),
        },
    }


def plot(result: dict[str, Any], header: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [s for s in result["samples"] if s["phase"] != "before load"]
    xs = [s["requests"] / 1000 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 7))
    top.plot(xs, [s["rss_kb"] / 1024 for s in samples], label="VmRSS")
    top.plot(xs, [s["hwm_kb"] / 1024 for s in samples], label="VmHWM (peak)", linestyle="--")
    top.axhline(BUDGET_RSS_MB, color="red", linewidth=0.8, label=f"budget {BUDGET_RSS_MB} MB")
    top.set_ylabel("gateway memory (MB)")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    bottom.plot(xs, [s["spool_bytes"] / 2**20 for s in samples], label="audit spool (disk use)")
    bottom.set_ylabel("audit spool (MB)")
    bottom.set_xlabel("requests served (thousands)")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    store = [s["store_bytes"] for s in samples]
    if all(v is not None for v in store):
        right = bottom.twinx()
        right.plot(xs, [v / 2**20 for v in store], color="grey", label="SQLite store")
        right.set_ylabel("SQLite store (MB)")
        right.set_ylim(bottom=0)
        lines = bottom.get_lines() + right.get_lines()
        bottom.legend(lines, [ln.get_label() for ln in lines], loc="upper left")
    else:
        bottom.legend(loc="upper left")
    fig.suptitle(
        f"custos soak: {header['date']}, commit {header['commit']}, "
        f"{header['host']['cpu_model']}, gateway on one core"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(b: Bench, report: dict[str, Any]) -> str:
    r, f = report["results"], report["figures"]
    rss, spool, v = f["rss_mb"], f["spool_mb"], f["verdicts"]
    cuts = r["disconnects"]
    speed = report["cpu_speed_mloops_per_s"]
    lines = [
        "=" * 96,
        f"custos bench --soak  {report['date']}  commit {report['commit']}  config "
        f"{report['config']}  store {report['store']}",
        f"{report['host']['cpus']} CPUs ({report['host']['cpu_model']}); gateway (custos serve) "
        f"pinned to CPU {b.gateway_cpu}, mock + wrk + disconnects to CPU {b.load_cpu}",
        "CPU speed probe (M loops/s): "
        + ", ".join(f"{c} {speed['start'][c]} -> {speed['end'][c]}" for c in speed["start"]),
        "=" * 96,
        f"served {f['requests_served']:,} requests in {r['elapsed_s']:,.0f} s "
        f"({r['requests_per_s']:,.0f}/s; gateway {r['cpu']['gateway_cpu_pct']:.0f} % of its core, "
        f"{r['gateway_cpu_us_per_request']:,.0f} us CPU a request)",
        "mix per 50: "
        + ", ".join(f"{k} {n}" for k, n in r["mix_per_50"].items())
        + f"; plus {r['disconnect_rate_per_s']:g} slow streams/s left half-way",
        "answers: "
        + ", ".join(
            f"{k} {f['answer_shares'].get(k, 0) * 100:.1f} % (mix {share * 100:.1f} %)"
            for k, share in r["expected_share"].items()
        )
        + f" of {r['answers']['total']:,}  {'ok' if v['mix_as_sent'] else 'MISMATCH'}",
        f"disconnects: {cuts.get('left', 0):,} left mid-stream, {cuts.get('other_status', 0)} "
        f"other status, {cuts.get('ended', 0)} ended first, {cuts.get('errors', 0)} errors  "
        f"{'ok' if v['disconnects_mid_stream'] else 'PROBLEM'}",
        f"socket errors (wrk): {sum(r['wrk'][k] for k in SOCKET_ERRORS)}",
        "-" * 96,
        f"RSS (MB): before load {rss['before_load']}, start {rss['start']}, max {rss['max']}, "
        f"end {rss['end']}, after 5 s idle {rss['after_idle']}; peak (VmHWM) {rss['peak_vmhwm']}",
        f"RSS slope over the second half: {rss['slope_second_half_mb_per_100k']:+.3f} MB per "
        f"100k requests (tolerance +-{rss['slope_tolerance_mb_per_100k']}): "
        f"{'flat' if v['rss_no_trend'] else 'GROWING'}; peak {rss['peak_vmhwm']} <= "
        f"{BUDGET_RSS_MB} MB: {'ok' if v['rss_peak_within_budget'] else 'MISSED'}  =>  "
        f"RSS flat (<= {BUDGET_RSS_MB} MB, no trend): {'ok' if v['rss_flat'] else 'MISSED'}",
        f"  of which the heap (RssAnon): {rss['anon_start']} -> {rss['anon_end']}, slope "
        f"{rss['anon_slope_second_half_mb_per_100k']:+.3f} MB per 100k",
        f"audit spool (disk use, MB): max {spool['max']} (first half {spool['max_first_half']}, "
        f"second half {spool['max_second_half']}), end of load {spool['end']}, after 5 s idle "
        f"{spool['after_idle']}: {'bounded: ok' if v['spool_bounded'] else 'GROWING'}",
        f"SQLite store: {f['store_mb_end']} MB at the end ({f['store_bytes_per_request']} bytes "
        "a request: records are kept, it grows by design)"
        if f["store_mb_end"] is not None
        else "store: PostgreSQL (not sampled)",
        f"open files: start {f['open_files']['start']}, max {f['open_files']['max']}, after "
        f"idle {f['open_files']['after_idle']}; threads max {f['threads_max']}",
        "-" * 96,
    ]
    lines.extend(f"WARNING: {w}" for w in b.warnings)
    lines.extend(f"PROBLEM: {p}" for p in b.problems)
    lines.append(f"written to {report['out']} and {report['plot']}")
    return "\n".join(lines)


def main_soak(b: Bench, run: ModuleType, requests: int) -> int:
    if b.out.name in ("latest.json", "quick.json"):
        b.out = b.out.with_name("soak.json")
    try:
        result = soak(b, run, requests)
    except (KeyboardInterrupt, SystemExit):
        run.cleanup()
        shutil.rmtree(b.tmp, ignore_errors=True)
        raise
    except run.BenchError as exc:
        print(f"\nbench: FAILED: {exc}", flush=True)
        print(f"bench: logs kept in {b.tmp}", flush=True)
        return 1
    finally:
        run.cleanup()
    fig = figures(result)
    v = fig["verdicts"]
    if not v["mix_as_sent"]:
        b.problems.append(f"answers {fig['answer_shares']} differ from the mix's shares")
    if not v["disconnects_mid_stream"]:
        b.problems.append(f"disconnects: {result['disconnects']}")
    if sum(result["wrk"][k] for k in SOCKET_ERRORS):
        b.problems.append(f"wrk socket errors: {result['wrk']}")
    png = b.out.with_suffix(".png")
    report: dict[str, Any] = {
        **run.report_header(b, "soak"),
        "results": result,
        "figures": fig,
        "problems": b.problems,
        "warnings": b.warnings,
        "out": os.path.relpath(b.out, run.ROOT),
        "plot": os.path.relpath(png, run.ROOT),
    }
    b.out.parent.mkdir(parents=True, exist_ok=True)
    b.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(result, report, png)
    print(summary(b, report))
    shutil.rmtree(b.tmp, ignore_errors=True)
    return 1 if b.problems else 0
