"""The journal's durable spool: records the store could not take, kept on this host's disk until it can.

No database is involved, so a database server that holds both the main and the journal database can
restart without losing a record. The spool is one directory (JOURNAL_SPOOL_DIR, a local persistent disk
per host). Each process appends records as JSON lines to segment files of its own, named
`<host>-<pid>-<token>.<sequence>.jsonl`; an append is written and fsync'ed before it returns, so a record
is on disk before the code that made it moves on.

Draining ships segments to the store in order (a writer's segments by sequence, a segment's lines in
order), one segment per store write, then deletes the segment. A drainer holds an exclusive
`fcntl.flock` on the segment it ships, and a writer holds one while it appends, so two drainers never
ship the same segment and a drainer never reads half a line of a live writer; a writer that finds its
segment taken by a drainer (or already drained and deleted) starts its next one. A last line without its
newline is what a process that died while writing leaves: it was never acknowledged, and is dropped
with a warning. Delivery is at least once: a drainer that dies after the store took a segment but
before deleting it leaves that segment to be shipped again (the store skips the records it holds already, by
their record ids: see journal.services).
"""

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
# A segment is one store write when drained: it is closed after this many records or bytes.
SEGMENT_MAX_RECORDS = 1000
SEGMENT_MAX_BYTES = 4 * 1024 * 1024
# A process's drainer retries a store that refuses after 1 s, doubling up to this.
DRAIN_MAX_BACKOFF_SECONDS = 30.0
# How often a process that journals looks for segments left by others (a worker that died).
LEFTOVER_SCAN_SECONDS = 60.0
# A segment the store refused this many times while it took other segments is set aside in QUARANTINE
# (logged at ERROR) so that it no longer holds back its writer's later records.
QUARANTINE_AFTER_FAILURES = 10
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Segment:
    path: Path
    writer: str
    sequence: int


def _segment(path: Path) -> Segment | None:
    writer, _, sequence = path.name.removesuffix(SUFFIX).rpartition(".")
    if not path.name.endswith(SUFFIX) or not writer or not sequence.isdigit():
        return None
    return Segment(path, writer, int(sequence))


class _Locked(Exception):
    """Someone else holds the segment's lock."""


@contextlib.contextmanager
def _flock(fd: int) -> Any:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _Locked from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class Spool:
    """The spool in one directory, as this process sees it: its own open segment and its drainer thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()  # this process's writer state (threads share its file descriptor)
        self._pid = -1
        self._writer = ""
        self._sequence = 0
        self._fd = -1
        self._records = 0
        self._size = 0
        self._own: list[Path] = []  # segments this process wrote that were not seen drained yet
        self._drainer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_scan = -LEFTOVER_SCAN_SECONDS
        self._failures: dict[str, int] = {}  # segment name -> times the store refused it while taking others

    # --- writing -------------------------------------------------------------------------------

    def _reset_after_fork(self) -> None:
        """A forked child (a gunicorn worker of a preloaded app) writes segments of its own."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._writer = f"{socket.gethostname().replace('.', '_')}-{self._pid}-{uuid.uuid4().hex[:8]}"
            self._sequence = 0
            if self._fd >= 0:  # the parent's segment: this process's copy of its descriptor only
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = -1
            self._own = []
            self._drainer = None

    def _close_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def _open_segment(self) -> None:
        """A new segment, locked: under a name drainers ignore until it is locked, so that none takes it
        before its first record is in."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        path = self.directory / f"{self._writer}.{self._sequence:09d}{SUFFIX}"
        making = path.with_name(path.name + ".new")
        self._fd = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        os.rename(making, path)
        self._records = self._size = 0
        self._own.append(path)
        # The name must survive a crash too, not only the bytes written under it.
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _lock_segment(self) -> None:
        """This process's segment, locked: its current one if no drainer holds or has deleted it, else a new one."""
        if self._fd >= 0:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a drainer is shipping it: what follows goes to the next segment
                self._close_segment()
            else:
                if os.fstat(self._fd).st_nlink > 0:
                    return
                self._close_segment()  # shipped and deleted since the last append
        self._open_segment()

    def holds_own_records(self) -> bool:
        """Whether records this process spooled still wait: until they are drained, its new records are
        spooled behind them rather than overtaking them in the store."""
        with self._lock:
            self._reset_after_fork()
            self._own = [path for path in self._own if path.exists()]
            return bool(self._own)

    def append(self, documents: Sequence[Mapping[str, Any]]) -> None:
        """Append to this process's segment, durably (fsync) before returning."""
        data = b"".join(json.dumps(document, separators=(",", ":")).encode() + b"\n" for document in documents)
        with self._lock:
            self._reset_after_fork()
            self._lock_segment()
            try:
                self._write(data)
            except OSError:
                self._close_segment()
                raise
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._records += len(documents)
            self._size += len(data)
            if self._records >= SEGMENT_MAX_RECORDS or self._size >= SEGMENT_MAX_BYTES:
                self._close_segment()

    def _write(self, data: bytes) -> None:
        size = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            # A disk full or failing: leave no partial line behind, and let the caller know.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise

    # --- reading and draining ---------------------------------------------------------------------

    def segments(self) -> list[Segment]:
        """Every segment in the directory, each writer's in order."""
        try:
            names = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        found = [segment for segment in map(_segment, names) if segment is not None]
        return sorted(found, key=lambda segment: (segment.writer, segment.sequence))

    def depth(self, *, cap: int) -> int:
        """How many records wait in the directory (counted up to `cap`)."""
        count = 0
        for segment in self.segments():
            with contextlib.suppress(FileNotFoundError):
                count += segment.path.read_bytes().count(b"\n")
            if count >= cap:
                return cap
        return count

    def drain(self, ship: Callable[[list[dict[str, Any]]], None]) -> int:
        """Ship every segment no one else holds, in order, with `ship` (one call per segment, which raises if
        the store did not take it); returns how many records were shipped.

        A segment that fails holds back only its own writer's later segments; the others are shipped, and the
        first failure is raised at the end. One the store keeps refusing while it takes the others (a document
        it cannot hold, a file this process may not read) is set aside after QUARANTINE_AFTER_FAILURES."""
        shipped = 0
        skipped: set[str] = set()
        failed: list[tuple[Segment, Exception]] = []
        for segment in self.segments():
            if segment.writer in skipped:
                continue  # an earlier segment of its writer is held or failed: this one must not overtake it
            try:
                shipped += self._drain_segment(segment, ship)
            except _Locked:
                skipped.add(segment.writer)
            except Exception as exc:
                skipped.add(segment.writer)
                failed.append((segment, exc))
        for segment, error in failed:
            if shipped:  # the store took other segments: the fault is this one's
                self._count_failure(segment, error)
        if failed:
            raise failed[0][1]
        return shipped

    def _count_failure(self, segment: Segment, exc: Exception) -> None:
        name = segment.path.name
        self._failures[name] = self._failures.get(name, 0) + 1
        if self._failures[name] < QUARANTINE_AFTER_FAILURES:
            return
        del self._failures[name]
        aside = self.directory / QUARANTINE
        aside.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            segment.path.rename(aside / name)
            logger.error(
                "journal spool: the store refused %s %d times while it took other records (%s); set aside in %s "
                "for an operator (see docs/journal.md)",
                name,
                QUARANTINE_AFTER_FAILURES,
                exc,
                aside,
            )

    def _drain_segment(self, segment: Segment, ship: Callable[[list[dict[str, Any]]], None]) -> int:
        try:
            fd = os.open(segment.path, os.O_RDWR)
        except FileNotFoundError:  # drained by another process meanwhile
            return 0
        try:
            with _flock(fd):
                if os.fstat(fd).st_nlink == 0:
                    return 0
                with os.fdopen(os.dup(fd), "rb") as file:
                    data = file.read()
                documents = self._documents(segment, data)
                if documents:
                    ship(documents)
                segment.path.unlink()
                return len(documents)
        finally:
            os.close(fd)

    def _documents(self, segment: Segment, data: bytes) -> list[dict[str, Any]]:
        *lines, torn = data.split(b"\n")
        if torn:
            logger.warning(
                "journal spool: %s ends in a line cut short (its process died while writing it, before the "
                "record was acknowledged); dropped: %r",
                segment.path.name,
                torn[:2000],
            )
        documents = []
        for line in lines:
            try:
                documents.append(json.loads(line))
            except ValueError:
                logger.error("journal spool: %s holds a line that is not JSON; skipped: %r", segment.path.name, line)
        return documents

    # --- the drainer thread -------------------------------------------------------------------------

    def drain_in_background(self, ship: Callable[[list[dict[str, Any]]], None]) -> None:
        """Start this process's drainer thread unless it runs: it drains the directory until it is empty,
        retrying a refusing store with backoff, then ends."""
        with self._lock:
            self._reset_after_fork()
            if self._drainer is not None and self._drainer.is_alive():
                return
            self._stopping.clear()
            self._drainer = threading.Thread(
                target=self._drain_until_empty, args=(ship,), name="journal-spool-drainer", daemon=True
            )
            self._drainer.start()

    def drain_leftovers_in_background(self, ship: Callable[[list[dict[str, Any]]], None]) -> None:
        """Now and then (LEFTOVER_SCAN_SECONDS), look for segments other processes left (a worker that died
        before its own were drained) and start draining them."""
        now = time.monotonic()
        if now - self._last_scan < LEFTOVER_SCAN_SECONDS:
            return
        self._last_scan = now
        if self.segments():
            self.drain_in_background(ship)

    def _drain_until_empty(self, ship: Callable[[list[dict[str, Any]]], None]) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                self.drain(ship)
            except Exception as exc:
                logger.warning("journal spool: the store refused the spooled records (%s); retrying", exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, DRAIN_MAX_BACKOFF_SECONDS)
                continue
            with self._lock:  # an append now starts a drainer of its own once this one is gone
                if not self.segments():
                    self._drainer = None
                    return
            # What is left is held by another drainer, or by a writer appending right now.
            self._stopping.wait(1.0)

    def stop_drainer(self, *, timeout: float) -> None:
        self._stopping.set()
        drainer = self._drainer
        if drainer is not None and drainer is not threading.current_thread():
            drainer.join(timeout)


_spools: dict[Path, Spool] = {}
_spools_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child (a Celery prefork worker) writes segments of its own, with locks no thread of its parent
    may hold."""
    global _spools_lock
    _spools_lock = threading.Lock()
    _spools.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def spool_at(directory: Path) -> Spool:
    """The one Spool of this process for `directory`."""
    with _spools_lock:
        return _spools.setdefault(directory, Spool(directory))


def stop_drainers(*, timeout: float) -> None:
    """Stop every drainer thread of this process (what is left stays on disk for the next one)."""
    for spool in list(_spools.values()):
        spool.stop_drainer(timeout=timeout)
