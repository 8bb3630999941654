"""Files and directories that hold audit records or keys: readable by their owner only.

The store, its key files, the spool, the exports and what ``custos audit`` writes are created
0600 (directories the gateway creates for them 0700), whatever the process's umask would
allow: a record names who asked what of which model, and a key forges or unlocks them.
Existing files keep the mode their operator gave them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


def make_dir(path: Path) -> None:
    """Create ``path`` as 0700 if it does not exist (missing parents with the default mode)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def open_fd(path: Path | str, flags: int) -> int:
    """``os.open`` creating the file 0600 (``flags`` gets ``O_CREAT``)."""
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


def create(path: Path | str, data: bytes) -> bool:
    """Write ``data`` to a new 0600 file (and its missing directories, 0700); ``False`` when
    the file already exists (then nothing is written)."""
    make_dir(Path(path).parent)
    try:
        fd = open_fd(path, os.O_WRONLY | os.O_EXCL)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def open_binary(path: Path | str, mode: str) -> Any:
    """A binary file object (``"wb"`` or ``"ab"``), created 0600 when it does not exist."""
    flags = os.O_WRONLY | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    return os.fdopen(open_fd(path, flags), mode)
