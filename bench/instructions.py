"""``bench/run.sh --instructions``: what each governance stage costs, in instructions per request.

The saturation figures of ``--compare`` are wall-clock figures, and on a shared virtual machine
those move by several per cent from one run to the next (other tenants, frequency changes):
as much as the differences they are meant to show. Instruction counts do not. Callgrind
(valgrind) counts every instruction the gateway process executes, in all its threads, and for
the same code, config and requests the count per request repeats to well under one per cent.
It is blind to cache misses and to the kernel's share of a system call, so it complements the
saturation figures rather than replacing them: a stage that adds 10 % to the instructions costs
roughly 10 % of throughput, give or take its memory behaviour.

For each variant (``bench/variant.py``): start the gateway under ``valgrind --tool=callgrind``
(some 50 times slower), send ``BENCH_INSTR_WARMUP`` requests with hey (16 connections), zero
the counts (``callgrind_control --zero``), send ``BENCH_INSTR_REQUESTS`` requests, dump the
counts (``callgrind_control --dump``) and divide the dump's total by the requests (both numbers
are rounded to a multiple of the 16 connections: hey sends the same number on each). Every
measured request must be answered 200. A variant takes about a minute.

The counts are kept per thread (``--separate-threads=yes``): the event loop's thread, where
every request stage runs, and the others (the audit writer, the log sequencer, the store's
threads). The loop's count repeats from run to run; the others' does not on a busy machine,
because their work per request depends on how many records each batch gathers, which depends on
timing (measured: from one run to the next, the same variant's background threads moved by up to
200,000 instructions per request while the loop's moved by under 1 %). The verdicts are on the
total; the loop's change is printed beside it, and where the two disagree the loop's is the one
a stage that runs on the loop (authentication, limits, guardrails) is responsible for.

Knobs: BENCH_INSTR_REQUESTS (2000), BENCH_INSTR_WARMUP (600), BENCH_INSTR_CONNECTIONS (16; 1
sends one request at a time, the moderate rate's regime), BENCH_INSTR_KEEP (a directory:
each variant's dump is copied there as ``callgrind.VARIANT``, for ``callgrind_annotate`` to show
which C functions, regular expression matching or hashing or the interpreter, a difference comes
from), and those of ``bench/run.py`` that apply (BENCH_CONFIG, BENCH_STORE, BENCH_REDIS,
BENCH_*_CPU, BENCH_MODEL).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import Bench

#: Requests hey sends at once; more only queue up inside the (slow) gateway. 1 measures each
#: request alone, as a moderate rate sees it (no batch shares a Redis call or a wake-up).
CONNECTIONS = int(os.environ.get("BENCH_INSTR_CONNECTIONS", "16"))
#: Callgrind's number for the process's main thread, where the event loop runs.
LOOP_THREAD = "01"


def count_instructions(b: Bench, variants: list[str], run: ModuleType) -> dict[str, dict[str, Any]]:
    """Instructions per request of each variant, measured as the module docstring says."""
    # hey sends n // c requests on each of its c connections: ask for a multiple of c.
    requests = _whole_rounds(int(os.environ.get("BENCH_INSTR_REQUESTS", "2000")))
    warmup = _whole_rounds(int(os.environ.get("BENCH_INSTR_WARMUP", "600")))
    redis_url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
    b.preflight()
    b.idle_before = b.idle_check()
    b.speed = {}  # not measured: instruction counts do not depend on the processor's speed
    b.start_mock()
    figures: dict[str, dict[str, Any]] = {}
    for variant in variants:
        name, counters = ("limits", redis_url) if variant == "limits-redis" else (variant, "memory")
        dump = b.tmp / f"callgrind.{variant}"
        b.gateway_prefix = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}.%p", "--dump-instr=no",
            "--separate-threads=yes",
        ]  # fmt: skip
        b.ready_timeout_s = 600.0
        b.start_gateway(name, counters)
        pid = b.gateway.pid
        _send(b, run, warmup, want_all_ok=False)
        _callgrind_control(run, "--zero", pid)
        started = time.monotonic()
        _send(b, run, requests, want_all_ok=True)
        elapsed = time.monotonic() - started
        _callgrind_control(run, "--dump", pid)
        threads = _dumped_totals(run, dump, pid)
        keep = os.environ.get("BENCH_INSTR_KEEP")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for thread in threads:
                kept = Path(keep) / f"callgrind.{variant}-{thread}"
                shutil.copy(f"{dump}.{pid}.1-{thread}", kept)
        b.check_alive(f"the instruction count of {variant}")
        b.stop_gateway()
        total, loop = sum(threads.values()), threads[LOOP_THREAD]
        figures[variant] = {
            "instructions_per_request": round(total / requests),
            "loop_thread_per_request": round(loop / requests),
            "other_threads_per_request": round((total - loop) / requests),
            "requests": requests,
            "seconds_under_valgrind": round(elapsed, 1),
        }
        run.log(f"  {variant}: {total / requests:,.0f} instructions per request")
    b.gateway_prefix = []
    return figures


def _whole_rounds(n: int) -> int:
    """``n`` rounded to a whole number of requests per connection (at least one each)."""
    return max(1, round(n / CONNECTIONS)) * CONNECTIONS


def _send(b: Bench, run: ModuleType, n: int, *, want_all_ok: bool) -> None:
    url, body, auth = b.target("gateway", False)
    cmd = [
        "hey", "-n", str(n), "-c", str(CONNECTIONS), "-t", "300", "-m", "POST",
        "-T", "application/json", "-H", f"Authorization: Bearer {auth}", "-d", body, url,
    ]  # fmt: skip
    done = subprocess.run(
        ["taskset", "-c", str(b.load_cpu), *cmd], capture_output=True, text=True, check=False
    )
    answered = {int(code): int(count) for code, count in
                re.findall(r"\[(\d+)\]\s+(\d+) responses", done.stdout)}  # fmt: skip
    if want_all_ok and answered != {200: n}:
        raise run.BenchError(f"hey: wanted {n} answers 200, got {answered or done.stdout[-500:]}")


def _callgrind_control(run: ModuleType, action: str, pid: int) -> None:
    done = subprocess.run(
        ["callgrind_control", action, str(pid)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise run.BenchError(f"callgrind_control {action} {pid}: {done.stdout}{done.stderr}")


def _dumped_totals(
    run: ModuleType, dump: Path, pid: int, timeout_s: float = 60.0
) -> dict[str, int]:
    """The instruction total of each thread in the first dump the gateway wrote
    (``FILE.PID.1-NN``, thread ``01`` the main one, the event loop's): their ``summary:`` lines
    (callgrind writes it last, so a file that has one is complete), once every thread's file
    is complete and no new one appeared for a second."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, int] = {}
    settled_at = None
    while time.monotonic() < deadline:
        totals = {}
        for path in Path(dump.parent).glob(f"{dump.name}.{pid}.1-*"):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    totals[path.name.rsplit("-", 1)[1]] = int(line.split()[1])
        if LOOP_THREAD in totals and totals == seen:
            if settled_at is not None and time.monotonic() - settled_at >= 1.0:
                return totals
            settled_at = settled_at or time.monotonic()
        else:
            seen, settled_at = totals, None
        time.sleep(0.2)
    raise run.BenchError(
        f"callgrind wrote no complete dump to {dump}.{pid}.1-* in {timeout_s:.0f} s"
    )


def verdicts(figures: dict[str, dict[str, Any]], run: ModuleType) -> list[dict[str, Any]]:
    """Each comparison of ``run.COMPARISONS`` as a change in instructions per request."""
    found = []
    for variant, base, allowed, what in run.COMPARISONS:
        if variant not in figures or base not in figures:
            continue
        mine = figures[variant]["instructions_per_request"]
        theirs = figures[base]["instructions_per_request"]
        change = 100 * (mine / theirs - 1)
        loop_change = 100 * (figures[variant]["loop_thread_per_request"] / theirs
                             - figures[base]["loop_thread_per_request"] / theirs)  # fmt: skip
        found.append(
            {
                "variant": variant,
                "against": base,
                "instructions_change_pct": round(change, 1),
                "loop_thread_change_pct": round(loop_change, 1),
                "allowed_pct": allowed,
                "within": None if allowed is None else change <= allowed,
                "what": what,
            }
        )
    return found


def main_instructions(b: Bench, variants: list[str], run: ModuleType) -> int:
    """``--instructions``: count, print a table, write bench/results/instructions.json.
    ``run`` is the module that made ``b`` (``bench/run.py`` runs as ``__main__``, so importing
    it by name here would give a second copy, with its own list of processes to clean up)."""
    missing = [t for t in ("valgrind", "callgrind_control") if shutil.which(t) is None]
    if missing:
        print(f"bench: {', '.join(missing)} not installed (bench/run.sh installs valgrind)")
        return 1
    if b.out.name in ("latest.json", "quick.json"):
        b.out = b.out.with_name("instructions.json")
    try:
        figures = count_instructions(b, variants, run)
    except run.BenchError as exc:
        print(f"\nbench: FAILED: {exc}\nbench: logs kept in {b.tmp}")
        return 1
    finally:
        run.cleanup()
    report = {
        **run.report_header(b, "instructions"),
        "figures": figures,
        "verdicts": verdicts(figures, run),
        "out": os.path.relpath(b.out, run.ROOT),
    }
    b.out.parent.mkdir(parents=True, exist_ok=True)
    b.out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    shutil.rmtree(b.tmp, ignore_errors=True)
    return 0


def summary(report: dict[str, Any]) -> str:
    rule = "=" * 96
    lines = [
        rule,
        f"custos bench --instructions  {report['date']}  commit {report['commit']}  "
        f"config {report['config']}  store {report['store']}",
        "instructions per non-streaming request, every thread of the gateway process, counted "
        "by callgrind",
        rule,
        f"{'variant':<14}{'instructions/request':>22}{'event loop thread':>20}"
        f"{'other threads':>16}",
    ]
    for variant, fig in report["figures"].items():
        lines.append(
            f"{variant:<14}{fig['instructions_per_request']:>22,}"
            f"{fig['loop_thread_per_request']:>20,}{fig['other_threads_per_request']:>16,}"
        )
    lines.append("-" * 96)
    for v in report["verdicts"]:
        verdict = "" if v["within"] is None else (
            f"  within {v['allowed_pct']:.0f} %: {'ok' if v['within'] else 'MISSED'}"
        )  # fmt: skip
        lines.append(
            f"{v['variant']} vs {v['against']}: instructions {v['instructions_change_pct']:+.1f} %"
            f"{verdict}  (event loop thread {v['loop_thread_change_pct']:+.1f} %; {v['what']})"
        )
    lines += ["-" * 96, f"written to {report['out']}"]
    return "\n".join(lines)
