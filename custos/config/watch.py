"""Hot reload: the config file is re-read when it or a file it references changes, and on SIGHUP.
(The files it references: its ``${file:…}`` secrets and its ``cedar``/``opa`` guardrails' policy
files, whose contents are part of the revision.)

A file that fails validation is refused with every reason logged, and the running revision keeps
serving. A file whose revision is unchanged (an editor's touch, a reformat) is a no-op, unless a
file it references (``${file:…}``) changed: the same revision is then served with the new
secret.

What counts as a change. The directories of the config file and of its referenced files are
watched (not the files: editors and Kubernetes replace files by rename, which a watch on the old
inode would miss), but only events naming one of those files, or a Kubernetes ``..data`` swap,
are looked at; a file reached through symbolic links (``/etc/custos.yaml`` linking into a
mounted ConfigMap) has the directory of each link watched too, so a swap behind the link is
seen. The SQLite store beside the config (``./custos.db``, its WAL and key files) is
written many times a second and is no reason to re-read anything. An event then re-reads only
the bytes of those files; parsing and validating happen only when the bytes differ from the last
ones read, and in a worker thread, so the event loop keeps serving meanwhile. SIGHUP always
re-reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchfiles import Change, awatch

from custos.config.loader import MAX_CONFIG_BYTES, ConfigError, LoadedConfig, load_config
from custos.config.refs import MAX_SECRET_FILE_BYTES, UnreadableFile, read_bounded

log = logging.getLogger("custos.config")

ReloadOutcome = Literal["applied", "unchanged", "refused"]

#: Symbolic links followed from a watched file before giving up (a loop, or a very long chain).
MAX_LINK_HOPS = 8


def links_of(path: Path) -> list[Path]:
    """``path`` and each symbolic link it leads through, as named (not resolved), but not those
    inside a ``..`` directory: Kubernetes' timestamped versions, replaced whole on each update
    (their swap is seen as the ``..data`` event in the directory above)."""
    hops = [path]
    for _ in range(MAX_LINK_HOPS):
        try:
            target = os.readlink(hops[-1])
        except OSError:  # not a link (or gone): the chain ends here
            break
        hops.append(Path(os.path.normpath(hops[-1].parent / target)))
    return [hop for hop in hops if not hop.parent.name.startswith("..")]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    outcome: ReloadOutcome
    revision: str
    message: str


class ConfigWatcher:
    def __init__(
        self,
        path: str | Path,
        apply: Callable[[LoadedConfig], None],
        serving: Callable[[], LoadedConfig],
    ) -> None:
        # Not resolved: a Kubernetes ConfigMap's file is a symlink into a directory that each
        # update replaces; the link's own directory is the one that stays.
        self.path = Path(os.path.abspath(path))
        self._apply = apply
        self._serving = serving
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self._files: tuple[Path, ...] = serving().files
        self._fingerprint = self._read_fingerprint()

    async def reload(self, *, force: bool = True) -> ReloadResult | None:
        """Re-read the file and apply it if it changed. Without ``force``, nothing is parsed
        (and ``None`` returned) when no watched file's bytes changed since the last read."""
        async with self._lock:
            loaded = await asyncio.to_thread(self._load, force)
            if loaded is None:
                return None
            return self._settle(loaded)

    def _load(self, force: bool) -> LoadedConfig | ConfigError | Exception | None:
        """In a worker thread: the new file, why it cannot be loaded, or None if unchanged."""
        fingerprint = self._read_fingerprint()
        if not force and fingerprint == self._fingerprint:
            return None
        self._fingerprint = fingerprint
        try:
            loaded = load_config(self.path)
        except Exception as exc:  # ConfigError, or a loader bug that must not end the watch
            return exc
        if loaded.files != self._files:
            self._files = loaded.files
            self._fingerprint = self._read_fingerprint()
        return loaded

    def _settle(self, loaded: LoadedConfig | Exception) -> ReloadResult:
        serving = self._serving()
        current = serving.revision
        if isinstance(loaded, ConfigError):
            log.warning(
                "config reload refused; revision %s keeps serving: %s", current[:12], loaded
            )
            return ReloadResult("refused", current, str(loaded))
        if isinstance(loaded, Exception):
            log.error("config reload refused; revision %s keeps serving", current[:12],
                      exc_info=loaded)  # fmt: skip
            return ReloadResult("refused", current, f"cannot load: {type(loaded).__name__}")
        if loaded.revision == current and loaded.config == serving.config:
            return ReloadResult("unchanged", current, "revision unchanged")
        try:
            self._apply(loaded)
        except Exception as exc:  # a revision that validates but cannot be compiled
            log.exception("config reload refused; revision %s keeps serving", current[:12])
            return ReloadResult("refused", current, f"cannot apply: {type(exc).__name__}")
        if loaded.revision == current:
            log.info("config revision %s applied again: a referenced file changed", current[:12])
        else:
            log.info("config revision %s applied (was %s)", loaded.revision[:12], current[:12])
        return ReloadResult("applied", loaded.revision, "applied")

    def _read_fingerprint(self) -> bytes:
        """A digest of the bytes of the config file and of every file it references."""
        digest = hashlib.sha256()
        for path, limit in [(self.path, MAX_CONFIG_BYTES),
                            *((f, MAX_SECRET_FILE_BYTES) for f in self._files)]:  # fmt: skip
            try:
                data = read_bounded(path, limit)
            except UnreadableFile as exc:
                data = f"unreadable: {exc}".encode()
            digest.update(len(data).to_bytes(8, "big") + data)
        return digest.digest()

    def _watched(self) -> frozenset[Path]:
        return frozenset(hop for file in (self.path, *self._files) for hop in links_of(file))

    def _relevant(self, _change: Change, path: str) -> bool:
        # ``..data`` and its timestamped siblings: Kubernetes' atomic swap of a mounted volume.
        return Path(path) in self._watched() or os.path.basename(path).startswith("..")

    async def watch(self, on_change: Callable[[], Awaitable[object]] | None = None) -> None:
        """Call ``on_change`` (default: ``reload(force=False)``) when a watched file changes."""
        react = on_change or (lambda: self.reload(force=False))
        while not self._stop.is_set():
            directories = sorted({p.parent for p in self._watched() if p.parent.is_dir()})
            # Not recursive: a subdirectory beside the file (the audit spool) is never read.
            async for _changes in awatch(
                *directories,
                watch_filter=self._relevant,
                stop_event=self._stop,
                debounce=200,
                step=50,
                recursive=False,
            ):
                await react()
                if sorted({p.parent for p in self._watched()}) != directories:
                    break  # the references moved: watch their directories instead

    def stop(self) -> None:
        self._stop.set()
