"""Secret references (``${env:NAME}``, ``${file:path}``) and reading the files they name.

A file reference is read only if it is a regular file of at most ``MAX_SECRET_FILE_BYTES``: a
device (``/dev/zero``), a FIFO (which would block the reload forever) or a directory is refused,
and a file is never read past its bound. A relative path is taken from the config file's
directory and must stay inside it (``keys/openai.key``, not ``../../etc/shadow``); a secret
kept elsewhere is named by its absolute path (``/run/secrets/openai``), so that where a secret
comes from is always visible in the file. Symbolic links are followed (Kubernetes mounts
secrets through them).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

#: ``${kind:name}``. Only ``env`` and ``file`` exist; any other kind (``${ENV:X}``, ``${evn:X}``)
#: is reported rather than left in place, where it would be taken as the value itself.
REFERENCE = re.compile(r"\$\{([A-Za-z_]+):([^}]*)\}")
MAX_SECRET_FILE_BYTES = 1024 * 1024


class UnreadableFile(Exception):
    """Why a file cannot be used (the message never holds any of its content)."""


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; never blocks on a FIFO."""
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableFile(exc.strerror or type(exc).__name__) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableFile("not a regular file")
    with os.fdopen(fd, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"larger than {_size(limit)}")
    return data


def referenced_file(name: str, base_dir: Path) -> Path:
    """Where ``${file:name}`` points: absolute as written, or inside ``base_dir``."""
    if Path(name).is_absolute():
        return Path(name)
    base = os.path.normpath(base_dir)
    joined = os.path.normpath(os.path.join(base, name))
    if os.path.commonpath([base, joined]) != base:
        raise UnreadableFile(
            "a relative path must stay inside the config file's directory "
            "(name a file elsewhere by its absolute path)"
        )
    return Path(joined)


def read_secret_file(path: Path) -> str:
    data = read_bounded(path, MAX_SECRET_FILE_BYTES)
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UnreadableFile("not UTF-8") from None


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit} bytes"
