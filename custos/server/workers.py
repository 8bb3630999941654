"""``custos serve --workers N``: N gateway processes, each a full replica, on one listening socket.

Why a supervisor with one shared socket rather than ``SO_REUSEPORT``. The supervisor binds the
port once and hands the socket to every worker (as uvicorn's and gunicorn's own supervisors do):
a bad address fails once, before any worker starts; the port stays bound while a worker is
replaced, so a restart never refuses a connection; and a worker that dies loses only the
connections it had accepted, where with ``SO_REUSEPORT`` the connections the kernel had already
queued on the dead worker's own socket are reset. uvicorn's ``--workers`` supervisor is not used:
it needs the app as an import string, and it turns SIGHUP into a restart of every worker, where
here SIGHUP reloads the config in place (it is passed on to each worker).

Each worker is what ``custos serve`` runs, so the workers share state exactly as replicas on
different machines do: through the PostgreSQL store and Redis counters and invalidation. Hence
``require_shared_state``: in-process counters, in-process invalidation or a SQLite store (whose
locks are held by every process at once) would make N gateways that disagree, and are refused.
Each worker has its own audit spool, ``<audit.spool.path>/worker-<i>``, and its records name
the instance ``<gateway.instance>/worker-<i>``; a replacement worker takes the same number, so
records left in a dead worker's spool are sent by its replacement.

Lifecycle. SIGTERM or SIGINT: every worker is asked to stop (SIGTERM: in-flight requests get
``GRACEFUL_SHUTDOWN_S``), then waited for. SIGHUP: passed on (each worker reloads its config).
A worker that exits before it is ready (a store that cannot be reached, a port refused), or is
not ready within ``START_TIMEOUT_S``, stops the whole with exit status 1: the orchestrator sees
a failed start. A worker that dies after it was ready is replaced; more than ``MAX_RESTARTS``
deaths within ``RESTART_WINDOW_S`` stop the whole with exit status 1 (a crash loop is not
hidden). Workers are in a process group of their own (a terminal's Ctrl-C reaches only the
supervisor, which stops them once, gracefully) and receive SIGTERM if the supervisor itself is
killed (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType

import uvicorn

from custos.config.schema import Config
from custos.gateway import Gateway
from custos.server import GRACEFUL_SHUTDOWN_S, uvicorn_config

log = logging.getLogger("custos.server")

#: How long a worker has to become ready (open the store, migrate, seed counters).
START_TIMEOUT_S = 60
#: Deaths of ready workers tolerated within ``RESTART_WINDOW_S`` before the whole stops.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60
#: Beyond the graceful period, how long a stopping worker may take before it is killed.
STOP_MARGIN_S = 10
_TICK_S = 0.1
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s"


class SharedStateRequired(Exception):
    """``--workers N`` on a config whose state one process holds; the message says what."""


def require_shared_state(config: Config, workers: int) -> None:
    """Raise ``SharedStateRequired`` unless every worker would see the state every other does."""
    if workers <= 1:
        return
    reasons = []
    if not config.state.store.startswith(("postgresql://", "postgres://")):
        reasons.append(
            "state.store must be PostgreSQL: on SQLite every process holds the store's locks "
            "at once (audit sequencing, retention), which is a single-process design"
        )
    if not config.state.counters.startswith(("redis://", "rediss://")):
        reasons.append(
            "state.counters must be a redis://… URL: in-process counters would give each "
            f"worker budgets and rate limits of its own ({workers} times each limit)"
        )
    if config.identity.invalidation == "memory":
        reasons.append(
            "identity.invalidation must not be memory: a token revoked through one worker "
            "would still be accepted by the others (use auto, postgresql or redis://…)"
        )
    if reasons:
        raise SharedStateRequired(f"--workers {workers} needs state shared between processes: "
                                  + "; ".join(reasons))  # fmt: skip


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (uvicorn's own binding, IPv6 included)."""
    return uvicorn.Config("custos", host=host, port=port, log_level="warning").bind_socket()


class _Worker(uvicorn.Server):
    """uvicorn's server, telling the supervisor once it serves."""

    def __init__(self, config: uvicorn.Config, ready: Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._ready.set()


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux), rather than serve orphaned."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != parent:  # the supervisor died before the line above
        sys.exit(1)


def worker_main(
    index: int, config_path: str, listener: socket.socket, watch: bool, log_level: str,
    parent: int, ready: Event,
) -> None:  # fmt: skip
    """One worker: ``custos serve`` on the supervisor's socket, with its own audit spool."""
    os.setpgrp()
    _die_with_parent(parent)
    logging.basicConfig(level=log_level.upper(), format=_LOG_FORMAT.format(index=index))
    gateway = Gateway.from_file(config_path, watch=watch)
    gateway.worker = index
    server = _Worker(uvicorn_config(gateway, None, None), ready)
    server.run(sockets=[listener])
    sys.exit(0 if server.started else 1)


@dataclass
class _Slot:
    index: int
    process: SpawnProcess
    ready: Event
    was_ready: bool = False
    started_at: float = field(default_factory=time.monotonic)


@dataclass
class Supervisor:
    """Starts ``workers`` processes on ``listener``, replaces the ones that die, stops them all."""

    config_path: str
    listener: socket.socket
    workers: int
    watch: bool = True
    log_level: str = "info"
    _slots: list[_Slot] = field(default_factory=list)
    _deaths: deque[float] = field(default_factory=deque)
    _stopping: bool = False
    _hups: int = 0

    def _spawn(self, index: int) -> _Slot:
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        args = (index, self.config_path, self.listener, self.watch, self.log_level,
                os.getpid(), ready)  # fmt: skip
        process = context.Process(target=worker_main, args=args, name=f"custos-worker-{index}")
        process.start()
        return _Slot(index, process, ready)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hups += 1
        else:
            self._stopping = True

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (1 when the workers could not serve)."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self._slots = [self._spawn(i) for i in range(self.workers)]
        status = self._watch()
        self._stop_all()
        return status

    def _watch(self) -> int:
        while not self._stopping:
            if self._hups:
                self._hups = 0
                self._signal_all(signal.SIGHUP, ready_only=True)  # SIGHUP kills a starting one
            for position, slot in enumerate(self._slots):
                if slot.ready.is_set() and not slot.was_ready:
                    slot.was_ready = True
                    log.info("worker %d (pid %s) is serving", slot.index, slot.process.pid)
                if slot.process.is_alive():
                    if not slot.was_ready and time.monotonic() - slot.started_at > START_TIMEOUT_S:
                        log.error("worker %d did not become ready within %ds; stopping",
                                  slot.index, START_TIMEOUT_S)  # fmt: skip
                        return 1
                    continue
                if self._stopping:
                    break
                if not slot.was_ready:
                    log.error("worker %d exited with %s before it could serve; stopping",
                              slot.index, slot.process.exitcode)  # fmt: skip
                    return 1
                if not self._may_restart():
                    log.error("workers died %d times within %ds; stopping", len(self._deaths),
                              RESTART_WINDOW_S)  # fmt: skip
                    return 1
                log.warning("worker %d (pid %s) died with %s; starting a replacement",
                            slot.index, slot.process.pid, slot.process.exitcode)  # fmt: skip
                self._slots[position] = self._spawn(slot.index)
            time.sleep(_TICK_S)
        return 0

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > RESTART_WINDOW_S:
            self._deaths.popleft()
        return len(self._deaths) <= MAX_RESTARTS

    def _signal_all(self, signum: int, *, ready_only: bool = False) -> None:
        for slot in self._slots:
            if ready_only and not slot.was_ready:
                continue
            if slot.process.is_alive() and slot.process.pid is not None:
                os.kill(slot.process.pid, signum)

    def _stop_all(self) -> None:
        """SIGTERM every worker, wait for their graceful shutdown, kill what is left."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SHUTDOWN_S + STOP_MARGIN_S
        for slot in self._slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.error("worker %d did not stop in time; killing it", slot.index)
                slot.process.kill()
                slot.process.join()
        self.listener.close()


def serve_workers(
    config_path: str | Path,
    *,
    workers: int,
    host: str | None,
    port: int | None,
    watch: bool = True,
    log_level: str = "info",
) -> int:
    """``custos serve --workers N`` (N > 1). Raises ``ConfigError`` for a config that does not
    load, ``SharedStateRequired`` for one whose state several processes cannot share."""
    from custos.config.loader import load_config

    config = load_config(config_path).config
    require_shared_state(config, workers)
    settings = config.gateway
    listener = bind(host or settings.host, settings.port if port is None else port)
    address = listener.getsockname()
    log.info("serving on %s:%s with %d workers", address[0], address[1], workers)
    supervisor = Supervisor(os.path.abspath(config_path), listener, workers, watch, log_level)
    return supervisor.run()
