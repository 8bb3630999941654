"""The local spool: append-only segment files of canonical records, one record per line.

The spool is what makes a record durable before the store has it. A directory holds numbered
segment files (``000000000001.spool``, …); one, the *current* segment, is appended to; the
others are *sealed*. Records are appended in batches (one ``write``) and made durable with
``sync`` (``fdatasync``, plus the directory's ``fsync`` when a segment was created). A segment
file is deleted once every record in it is known to be in the store.

Contracts:

- Only one process uses a spool directory: ``open`` takes an exclusive ``flock`` on
  ``LOCK`` and refuses (``SpoolError``) when another process holds it.
- ``append`` refuses (``SpoolFull``) a batch that would take the spool past ``max_bytes``:
  records are never dropped to make room.
- ``read_segment`` returns the complete, canonical records of a segment; a torn last line
  (a crash in the middle of a write) or a corrupt line is skipped and counted, never guessed at.
- A line that starts with ``+`` is not a record but an *attachment* of the record before it
  (its encrypted content, ``custos.audit.storage.content_store``); ``read_segment`` returns those
  lines' bytes (without the ``+``) beside the records.
- ``append``, ``rotate``, ``mark_shipped`` and ``close`` run on the event loop; ``sync``, which
  writes what ``append`` queued and makes it durable, may run in a worker thread, but never at
  the same time as ``append``, ``rotate`` or ``close`` (the writer's one flush task does all of
  them in turn).
- ``keep_refused`` writes records the store refused for what they hold (not for being down)
  to a segment file of their own in ``refused/`` and syncs it, so they are kept without holding
  up the records behind them. Nothing replays that directory: once the cause is fixed, moving
  the file into the spool directory gets it replayed at the next start.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from custos import private
from custos.audit.records.record import NotCanonical, SealedRecord, unseal

log = logging.getLogger("custos.audit")

#: The first byte of an attachment line (a record's line starts with ``{``).
ATTACHMENT_MARK = b"+"
#: A segment is sealed once it is this large, so fully shipped data is deleted in steps.
SEGMENT_BYTES = 4 << 20
_SUFFIX = ".spool"
#: The subdirectory of records the store refused (``keep_refused``).
REFUSED_DIR = "refused"


class SpoolError(Exception):
    """The spool cannot be used (locked by another process, not writable)."""


class SpoolFull(SpoolError):
    """Appending would take the spool past its bound."""


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int = 0
    written: int = 0
    shipped: int = 0
    sealed: bool = False


class Spool:
    def __init__(self, path: str | Path, *, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        #: Smaller segments for a small bound, so shipped space is freed well before it is full.
        self.segment_bytes = min(SEGMENT_BYTES, max(64 << 10, max_bytes // 8))
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._dir_dirty = False
        #: Bytes appended and not yet written (``sync`` writes them on a worker thread).
        self._unwritten: list[bytes] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> list[Path]:
        """Lock the directory and start a new current segment; returns the segment files left
        by an earlier process (to replay), oldest first."""
        private.make_dir(self.path)
        lock_fd = private.open_fd(self.path / "LOCK", os.O_RDWR)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise SpoolError(
                f"the audit spool {self.path} is in use by another gateway process; give each "
                "process its own audit.spool.path"
            ) from None
        self._lock_fd = lock_fd
        leftovers = sorted(self.path.glob(f"*{_SUFFIX}"), key=_segment_id)
        for found in leftovers:
            self._segments[_segment_id(found)] = _Segment(
                _segment_id(found), found, size=found.stat().st_size, sealed=True
            )
        self._start_segment(max((_segment_id(p) for p in leftovers), default=0) + 1)
        return leftovers

    def close(self) -> None:
        """Close the current segment (deleting it if everything in it was shipped) and unlock."""
        if self._current is not None:
            current, self._current = self._current, None
            current.sealed = True
            if self._write_unwritten() and self._fd is not None:
                os.fsync(self._fd)
            self._close_fd()
            self._maybe_delete(current)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writing -------------------------------------------------------------------------------

    def append(self, data: bytes, count: int) -> int:
        """Append ``count`` records (``data``: their bytes, each followed by a newline) to the
        current segment; returns its id. They are written by the next ``sync``, on a worker
        thread: after a burst the kernel may hold a ``write`` up for tens of milliseconds
        (throttling dirty pages), which on the event loop stalled every request."""
        if self.total_bytes + len(data) > self.max_bytes:
            raise SpoolFull(f"the audit spool {self.path} is full ({self.max_bytes} bytes)")
        segment = self._current
        assert segment is not None and self._fd is not None
        self._unwritten.append(data)
        segment.size += len(data)
        segment.written += count
        return segment.id

    def sync(self) -> None:
        """Write what ``append`` queued and make it durable (blocking: call from a worker
        thread, while nothing else appends or rotates).

        ``fdatasync``: the appended bytes and the file's new size, which is what reading them
        back needs, without the modification time's own journal write on every flush."""
        self._write_unwritten()
        if self._fd is not None:
            os.fdatasync(self._fd)
        if self._dir_dirty:
            self._dir_dirty = False
            _fsync_dir(self.path)

    def rotate_if_full(self) -> None:
        """After a ``sync``: start a new segment when the current one reached its size."""
        if self._current is not None and self._current.size >= self.segment_bytes:
            self.rotate()

    def rotate(self) -> int:
        """Seal the current segment and start a new one; returns the sealed segment's id."""
        old = self._current
        assert old is not None
        self._write_unwritten()  # appended but not yet synced
        # The sealed segment's records must be durable before it stops being the one synced.
        if self._fd is not None:
            os.fsync(self._fd)
        self._close_fd()
        old.sealed = True
        self._start_segment(old.id + 1)
        self._maybe_delete(old)
        return old.id

    def mark_shipped(self, segment_id: int, count: int) -> None:
        """``count`` records of segment ``segment_id`` are in the store."""
        segment = self._segments.get(segment_id)
        if segment is None:
            return  # already deleted after a replay from disk
        segment.shipped += count
        self._maybe_delete(segment)

    def delete(self, path: Path) -> None:
        """Delete a sealed segment whose records were all put in the store by a replay."""
        segment = self._segments.pop(_segment_id(path), None)
        if segment is not None and segment is self._current:
            raise SpoolError("the current segment cannot be deleted")
        path.unlink(missing_ok=True)

    def keep_refused(self, data: bytes) -> Path:
        """Write refused records (``data`` as for ``append``) to a new file in ``refused/``,
        durably (blocking: call from a worker thread); returns its path. Its name is a free
        segment id, so the file can be moved back into the spool directory as it is."""
        directory = self.path / REFUSED_DIR
        private.make_dir(directory)
        taken = {_segment_id(p) for p in directory.glob(f"*{_SUFFIX}")}
        segment_id = max(taken | set(self._segments), default=0) + 1
        path = directory / f"{segment_id:012d}{_SUFFIX}"
        fd = private.open_fd(path, os.O_WRONLY | os.O_EXCL)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(directory)
        _fsync_dir(self.path)  # the directory's own entry, when it was just made
        return path

    # -- reading -------------------------------------------------------------------------------

    def sealed_segments(self, up_to: int | None = None) -> list[Path]:
        """Sealed segment files (all, or those with id <= ``up_to``), oldest first."""
        return [
            s.path
            for s in sorted(self._segments.values(), key=lambda s: s.id)
            if s.sealed and (up_to is None or s.id <= up_to)
        ]

    @staticmethod
    def read_segment(path: Path) -> tuple[list[SealedRecord], list[bytes], int]:
        """The records of one segment file, its attachments, and how many lines were skipped
        (torn or corrupt)."""
        data = path.read_bytes()
        lines = data.split(b"\n")
        skipped = 1 if lines[-1] else 0  # no newline after the last line: a torn write
        records: list[SealedRecord] = []
        attachments: list[bytes] = []
        for line in lines[:-1]:
            if not line:
                continue
            if line[:1] == ATTACHMENT_MARK:
                attachments.append(line[1:])
                continue
            try:
                records.append(unseal(line))
            except NotCanonical as exc:
                skipped += 1
                log.error("audit spool %s: skipping a corrupt line (%s)", path.name, exc)
        return records, attachments, skipped

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self._segments.values())

    @property
    def current_size(self) -> int:
        assert self._current is not None
        return self._current.size

    @property
    def current_id(self) -> int:
        assert self._current is not None
        return self._current.id

    # -- inside --------------------------------------------------------------------------------

    def _start_segment(self, segment_id: int) -> None:
        path = self.path / f"{segment_id:012d}{_SUFFIX}"
        self._fd = private.open_fd(path, os.O_WRONLY | os.O_APPEND)
        self._current = _Segment(segment_id, path)
        self._segments[segment_id] = self._current
        self._dir_dirty = True

    def _write_unwritten(self) -> bool:
        """Write what ``append`` queued to the current segment; whether there was any."""
        unwritten, self._unwritten = self._unwritten, []
        if not unwritten or self._fd is None:
            return False
        _write_all(self._fd, b"".join(unwritten))
        return True

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _maybe_delete(self, segment: _Segment) -> None:
        if segment.sealed and segment.shipped >= segment.written and segment is not self._current:
            # A leftover segment (from an earlier process) counts nothing: it is deleted only
            # by ``delete`` after its replay.
            if segment.written == 0 and segment.size > 0:
                return
            self._segments.pop(segment.id, None)
            segment.path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    """Make the directory's entries (files created or removed in it) durable."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _segment_id(path: Path) -> int:
    return int(path.name.removesuffix(_SUFFIX))
