"""The history file in process: its lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from common.protocol.codec import Msg
from common.room.historyfile import HistoryFile
from common.room.sharing import StartError


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
