"""The history file in process: its lock, its batches, and how often they are written."""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from common.protocol.codec import Msg
from common.room import historyfile
from common.room.historyfile import HistoryFile
from common.room.starterror import StartError


def kept(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM msg").fetchone()[0]
        return count


def test_a_second_owner_of_the_file_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    first = HistoryFile(str(path), keep=10)
    with pytest.raises(StartError, match=r"^cannot use \S+ as --history-file: another server"):
        HistoryFile(str(path), keep=10)
    first.add(Msg(sender="alice", text="hi", ts=1))
    first.close()
    second = HistoryFile(str(path), keep=10)
    assert second.earlier == [Msg(sender="alice", text="hi", ts=1)]
    second.close()


def test_a_big_batch_is_written_whole_and_the_oldest_rows_are_forgotten(tmp_path: Path) -> None:
    """4,000 messages in one batch (40,000 a second for 100 ms), with quotes and backslashes:
    one statement writes them, and only the last ``keep`` are still there after it."""
    path = tmp_path / "history.db"
    archive = HistoryFile(str(path), keep=3000)
    texts = [f'm{n} «ü» "q" \\ \t' for n in range(4000)]
    for n, text in enumerate(texts):
        archive.add(Msg(sender="s", text=text, ts=n))
    archive.close()
    assert kept(path) == 3000
    again = HistoryFile(str(path), keep=3000)
    assert again.earlier == [Msg(sender="s", text=texts[n], ts=n) for n in range(1000, 4000)]
    again.add(Msg(sender="s", text="next", ts=4000))
    again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT max(pos), min(pos) FROM msg").fetchone() == (4001, 1002)


def test_batches_start_on_time_however_long_the_last_one_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a disk that takes 40 ms a batch, one still starts every BATCH_SECONDS, not every
    BATCH_SECONDS + 40 ms: so a SIGKILL loses at most a batch being gathered and the one being
    written, MAX_LOSS_SECONDS in all. (The median gap: a busy machine may delay a few.)"""
    slow = 0.04
    assert historyfile.BATCH_SECONDS + slow <= historyfile.MAX_LOSS_SECONDS
    starts: list[float] = []
    write = HistoryFile._write

    def slow_write(self: HistoryFile) -> None:
        starts.append(time.monotonic())
        write(self)
        time.sleep(slow)

    monkeypatch.setattr(HistoryFile, "_write", slow_write)
    archive = HistoryFile(str(tmp_path / "history.db"), keep=10)
    deadline = time.monotonic() + 5.0
    while len(starts) < 12:
        archive.add(Msg(sender="s", text="x", ts=len(starts)))
        assert time.monotonic() < deadline
        time.sleep(0.005)
    archive.close()
    gaps = sorted(b - a for a, b in itertools.pairwise(starts))
    assert gaps[len(gaps) // 2] < historyfile.MAX_LOSS_SECONDS - slow / 2, gaps
