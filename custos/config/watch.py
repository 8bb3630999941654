"""Hot reload: the config file is re-read when it changes on disk and on SIGHUP.

A file that fails validation is refused with every reason logged, and the running revision keeps
serving. A file whose revision is unchanged (an editor's touch, a reformat) is a no-op. The
directory is watched rather than the file, because editors and Kubernetes ConfigMaps replace files
by rename, which a watch on the old inode would miss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchfiles import awatch

from custos.config.loader import ConfigError, LoadedConfig, load_config

log = logging.getLogger("custos.config")

ReloadOutcome = Literal["applied", "unchanged", "refused"]


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
        current_revision: Callable[[], str],
    ) -> None:
        self.path = Path(path).resolve()
        self._apply = apply
        self._current_revision = current_revision
        self._stop = asyncio.Event()

    def reload(self) -> ReloadResult:
        current = self._current_revision()
        try:
            loaded = load_config(self.path)
        except ConfigError as exc:
            log.error("config reload refused; revision %s keeps serving: %s", current[:12], exc)
            return ReloadResult("refused", current, str(exc))
        except Exception as exc:  # a loader bug must not end the watch (and all later reloads)
            log.exception("config reload refused; revision %s keeps serving", current[:12])
            return ReloadResult("refused", current, f"cannot load: {type(exc).__name__}")
        if loaded.revision == current:
            return ReloadResult("unchanged", current, "revision unchanged")
        try:
            self._apply(loaded)
        except Exception as exc:  # a revision that validates but cannot be compiled
            log.exception("config reload refused; revision %s keeps serving", current[:12])
            return ReloadResult("refused", current, f"cannot apply: {type(exc).__name__}")
        log.warning("config revision %s applied (was %s)", loaded.revision[:12], current[:12])
        return ReloadResult("applied", loaded.revision, "applied")

    async def watch(self, on_change: Callable[[], object] | None = None) -> None:
        """Call ``on_change`` (default: ``reload``) whenever the file's directory changes."""
        react = on_change or self.reload
        # Not recursive: a subdirectory beside the file (the audit spool, written many times a
        # second) is no reason to re-read it; a ConfigMap's ``..data`` swap is a direct child.
        async for _changes in awatch(
            self.path.parent, stop_event=self._stop, debounce=200, step=50, recursive=False
        ):
            react()

    def stop(self) -> None:
        self._stop.set()
