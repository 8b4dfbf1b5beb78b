"""History that survives a restart: the room's messages in a SQLite file (``--history-file``).

The room hands every ``msg`` it broadcasts to ``add``, under its lock, so
``add`` only appends to a queue. One thread, ``history-file``, owns the
database connection: every ``BATCH_SECONDS`` (counted from the start of the
last batch, so a slow write does not push the next one back) it writes what
queued up in one transaction and commits. So a server killed with SIGKILL
loses at most the last ``MAX_LOSS_SECONDS`` of messages, and the
broadcasting thread never waits for the disk.

A batch is one ``INSERT`` of one JSON array: one statement, so one
transaction, in which a trigger forgets the rows past ``keep``. Python's
``sqlite3`` gives the GIL back around every step of a statement, and in a
server whose reader threads all want it, taking it back can wait; one step
per row made a batch of thousands take 5 to 500 ms under load, one step per
batch takes a few. The journal is WAL with ``synchronous=NORMAL``: a commit
is an append to the log file without an fsync (what the process wrote
survives its SIGKILL; only a power cut can take the last commits back), and
a reader (another process looking at the file) never blocks the writer.

One server owns the file: it holds an exclusive ``flock`` on it while it
runs, and a second server given the same file refuses to start, saying so
in one line (two writers would number their rows over each other's).

The file holds messages only, one row each, keyed by ``pos``: their order
in the room, counted on from the last row at every start. At start the
last ``keep`` rows are loaded (``earlier``); rows older than ``keep`` are
deleted as new ones come, so the file stays the size of the history.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

from common.protocol.codec import Msg
from common.room.sharing import StartError

log = logging.getLogger("common.room.historyfile")

BATCH_SECONDS = 0.05
MAX_LOSS_SECONDS = 0.1
"""What a SIGKILL may lose: the batch being gathered, and the one being written."""
INSERT_BATCH = """
INSERT INTO msg (pos, sender, text, ts)
SELECT ? + key, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
    json_extract(value, '$[2]')
FROM json_each(?)
"""
FORGET = """
CREATE TEMP TRIGGER forget AFTER INSERT ON msg
BEGIN DELETE FROM msg WHERE pos <= NEW.pos - {keep}; END
"""
"""Rows older than the last ``keep`` go as new ones come, within the batch's one statement."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS msg (
    pos INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    ts INTEGER NOT NULL
)
"""


class HistoryFile:
    """One SQLite file, its writer thread and the queue between the room and it."""

    def __init__(self, path: str, keep: int) -> None:
        """Open (or create) the file and load its last ``keep`` messages.

        Anything wrong with it (not a database, a directory, a place where
        nothing may be written) is a ``StartError`` of one line.
        """
        self._keep = keep
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"its journal cannot be put in WAL mode ({mode})")
            self._lock = self._own(path)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
            self._db.execute(FORGET.format(keep=int(keep)))
            rows = self._db.execute(
                "SELECT pos, sender, text, ts FROM msg ORDER BY pos DESC LIMIT ?", (keep,)
            ).fetchall()
            last = self._db.execute("SELECT max(pos) FROM msg").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise StartError(f"cannot use {Path(path)} as --history-file: {exc}") from None
        self.earlier = [Msg(sender=s, text=t, ts=ts) for _, s, t, ts in reversed(rows)]
        self._next = (last or 0) + 1
        self._queue: deque[Msg] = deque()
        self._stop = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="history-file", daemon=True)
        self._thread.start()

    @staticmethod
    def _own(path: str) -> int:
        """An exclusive ``flock`` on the file, held until ``close``; OSError if another has it.

        ``flock`` and the POSIX locks SQLite takes are independent on Linux. This
        descriptor stays open until after the database is closed, since closing
        any descriptor of a file drops the POSIX locks its process holds on it.
        """
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError("another server is using it (it is locked)") from None
        return fd

    def add(self, msg: Msg) -> None:
        """Queue ``msg`` for the next batch (O(1); ``deque.append`` is thread-safe)."""
        self._queue.append(msg)

    def close(self) -> None:
        """Write the last batch and close the file."""
        self._stop.set()
        self._thread.join()
        self._db.close()
        os.close(self._lock)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(max(0.0, started + BATCH_SECONDS - time.monotonic())):
            started = time.monotonic()
            self._write()
        self._write()

    def _write(self) -> None:
        """Everything queued until now, in one statement: one transaction."""
        batch: list[Msg] = []
        while self._queue:
            batch.append(self._queue.popleft())
        if not batch:
            return
        first = self._next
        self._next += len(batch)
        rows = json.dumps([(m.sender, m.text, m.ts) for m in batch], ensure_ascii=False)
        try:
            self._db.execute(INSERT_BATCH, (first, rows))
            self._failed = False
        except sqlite3.Error as exc:
            if not self._failed:
                log.error("cannot write the history file, messages are not kept: %s", exc)
            self._failed = True
