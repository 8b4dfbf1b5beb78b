"""History that survives a restart: the room's messages in a SQLite file (``--history-file``).

The room hands every ``msg`` it broadcasts to ``add``, under its lock, so
``add`` only appends to a queue. One thread, ``history-file``, owns the
database connection: every ``BATCH_SECONDS`` (counted from the start of the
last batch, so a slow write does not push the next one back) it writes what
queued up in one transaction and commits. So a server killed with SIGKILL
loses at most the last ``MAX_LOSS_SECONDS`` of messages, and the
broadcasting thread never waits for the disk.

A batch is one ``INSERT`` of one JSON array, then the forgetting of rows
past ``keep``, in one transaction. Python's ``sqlite3`` gives the GIL back
around every step of a statement, and in a server whose reader threads all
want it, taking it back can wait; one step per row made a batch of
thousands take 5 to 500 ms under load, one step per batch takes a few. The
journal is WAL with ``synchronous=NORMAL``: a commit is an append to the
log file without an fsync (what the process wrote survives its SIGKILL;
only a power cut can take the last commits back), and a reader (another
process looking at the file) never blocks the writer.

One server owns the file: it holds an exclusive ``flock`` on it while it
runs, and a second server given the same file refuses to start, saying so
in one line (two writers would number their rows over each other's).

The file holds messages only, one row each, keyed by ``pos``: their ``id``
in the room. At start the last ``keep`` rows are loaded (``earlier``); rows
older than ``keep`` are deleted as new ones come, so the file stays the
size of the history.

Resume (protocol 1.2) needs more than the messages, so that a restart
resumes: the history's ``epoch`` (table ``meta``, made once with the file)
and the ids. The room counts ids on from the last one it gave, so every
id it gives is noted, as it is given, in a page of a small file mapped into
memory beside the database (``PATH-ids``: the last id given, the last id
given to a ``msg``). Writing there is a store to memory, no system call,
and the kernel keeps the page when the process is killed, so at start the
file knows how far the killed process counted even if its last batch of
messages never reached the database: those messages are lost, and
``floor`` says so (a resume from before them gets ``resumed: false``).
``floor`` is also the newest message deleted past ``keep`` (``meta``). A
file whose ids cannot be trusted (the page is missing, or the database
comes from before resume) starts a new epoch: no resume into it can
pretend to be whole.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import sqlite3
import struct
import threading
import time
from collections import deque
from pathlib import Path

from common.protocol.codec import Msg
from common.room.room import new_epoch
from common.room.starterror import StartError

log = logging.getLogger("common.room.historyfile")

BATCH_SECONDS = 0.05
MAX_LOSS_SECONDS = 0.1
"""What a SIGKILL may lose: the batch being gathered, and the one being written."""
INSERT_BATCH = """
INSERT OR REPLACE INTO msg (pos, sender, text, ts)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
    json_extract(value, '$[3]')
FROM json_each(?)
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS msg (
    pos INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
IDS = struct.Struct("<QQ")
"""The page of ids beside the database: the last id given, the last given to a ``msg``."""


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
            self._db.executescript(SCHEMA)
            rows = self._db.execute(
                "SELECT pos, sender, text, ts FROM msg ORDER BY pos DESC LIMIT ?", (keep,)
            ).fetchall()
            top = self._db.execute("SELECT max(pos) FROM msg").fetchone()[0] or 0
            unread = self._db.execute(  # kept by a run with a larger --history, not loaded
                "SELECT pos FROM msg ORDER BY pos DESC LIMIT 1 OFFSET ?", (keep,)
            ).fetchone()
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            self._ids, given = self._map_ids(f"{path}-ids")
        except (sqlite3.Error, OSError) as exc:
            raise StartError(f"cannot use {Path(path)} as --history-file: {exc}") from None
        self.earlier = [
            Msg(sender=s, text=t, ts=ts, id=str(pos)) for pos, s, t, ts in reversed(rows)
        ]
        if unread is not None:
            meta["floor"] = str(max(int(meta.get("floor", "0")), unread[0]))
        self._resume_from(meta, top, given)
        self._pos = top  # the last row's pos (the writer thread's own)
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

    @staticmethod
    def _map_ids(path: str) -> tuple[mmap.mmap, tuple[int, int] | None]:
        """The page of ids, mapped; what it held (None: it is new, or not one of ours)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size != IDS.size:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, IDS.size)
            page = mmap.mmap(fd, IDS.size)
        finally:
            os.close(fd)
        return page, (IDS.unpack_from(page) if size == IDS.size else None)

    def _resume_from(self, meta: dict[str, str], top: int, given: tuple[int, int] | None) -> None:
        """The epoch, the last id and the floor, from what the last process left."""
        epoch = meta.get("epoch")
        if epoch is None or given is None:
            epoch = new_epoch()  # nothing says how far the last process counted
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (epoch,))
            self._db.execute("DELETE FROM meta WHERE key = 'floor'")
            given = (top, top)
        assert given is not None
        self.epoch = epoch
        self.last_id = max(given[0], top)
        self._last_msg = max(given[1], top)
        floor = int(meta.get("floor", "0"))
        if given[1] > top:  # messages given after the last batch written: lost with it
            floor = max(floor, given[1])
            # Kept, so that the next start still knows them lost once new ones are written.
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('floor', ?)", (floor,))
        self.floor = str(floor) if floor else None
        self._floor = floor  # the writer thread's own from now on: it only rises
        IDS.pack_into(self._ids, 0, self.last_id, self._last_msg)

    def add(self, msg: Msg) -> None:
        """Queue ``msg`` for the next batch (O(1); ``deque.append`` is thread-safe)."""
        self._queue.append(msg)

    def given(self, entry_id: int, *, msg: bool) -> None:
        """Note ``entry_id`` in the mapped page: two stores to memory."""
        if msg:
            self._last_msg = entry_id
        IDS.pack_into(self._ids, 0, entry_id, self._last_msg)

    def close(self) -> None:
        """Write the last batch and close the database. The page of ids stays mapped: a
        reader thread may still give an id while the server stops, and the page is freed
        with the process (or this object)."""
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
        """Everything queued until now, in one transaction: one insert, then what it pushes
        out of the last ``keep`` goes, and the newest of those raises the floor (never lowers it:
        messages lost with a killed process may be newer)."""
        batch: list[Msg] = []
        while self._queue:
            batch.append(self._queue.popleft())
        if not batch:
            return
        rows = []
        for m in batch:  # ids of a room shared through Redis are the stream's: then count here
            self._pos = int(m.id) if m.id.isdigit() else self._pos + 1
            rows.append((self._pos, m.sender, m.text, m.ts))
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(INSERT_BATCH, (json.dumps(rows, ensure_ascii=False),))
                cut = self._db.execute(
                    "SELECT pos FROM msg ORDER BY pos DESC LIMIT 1 OFFSET ?", (self._keep,)
                ).fetchone()
                if cut is not None:  # the newest message forgotten: the floor, if newer
                    self._db.execute("DELETE FROM msg WHERE pos <= ?", cut)
                    self._floor = max(self._floor, cut[0])
                    self._db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('floor', ?)", (self._floor,)
                    )
            self._failed = False
        except sqlite3.Error as exc:
            if not self._failed:
                log.error("cannot write the history file, messages are not kept: %s", exc)
            self._failed = True
