"""Server messages as readable lines, and nothing from the network left raw."""

from __future__ import annotations

import pytest

from common.protocol.codec import (
    Dm,
    Error,
    HistoryEnd,
    Joined,
    Left,
    Msg,
    Pong,
    Renamed,
    Users,
    Welcome,
)
from common.terminal.render import Line, describe, safe


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("tab\there", "tab    here"),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("c1 \x9b31m", "c1 \\x9b31m"),
        ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
        ("\u2066isolate\u2069 \u200fmark\u061c", "\\u2066isolate\\u2069 \\u200fmark\\u061c"),
        ("zero\u200bwidth\u200d\u2060\ufeff", "zero\\u200bwidth\\u200d\\u2060\\ufeff"),
        ("line\u2028sep", "line\\u2028sep"),
        ("Алиса 😀", "Алиса 😀"),
    ],
)
def test_safe_makes_control_characters_visible_and_inert(text: str, shown: str) -> None:
    assert safe(text) == shown
    assert all(ch.isprintable() for ch in safe(text))


def test_each_message_kind_has_its_line() -> None:
    msg = describe(Msg(sender="bob", text="hi", ts=1_764_000_000_000), me="alice")
    assert msg is not None and msg.kind == "chat" and not msg.own
    assert msg.plain().endswith("<bob> hi")
    own = describe(Msg(sender="alice", text="hi", ts=1), me="alice")
    assert own is not None and own.own
    to = describe(Dm(sender="alice", to="bob", text="psst", ts=1), me="alice")
    assert to is not None and to.plain().endswith("[dm to bob] psst")
    got = describe(Dm(sender="alice", to="bob", text="psst", ts=1), me="bob")
    assert got is not None and got.plain().endswith("[dm from alice] psst")
    lines = [
        describe(Joined(name="carol", ts=1)),
        describe(Left(name="carol", reason="too_slow", ts=1)),
        describe(Left(name="carol", reason="weird", ts=1)),
        describe(Renamed(old="carol", new="caro", ts=1)),
        describe(Users(names=("a", "b"), count=5)),
        describe(Welcome(name="a", users=("a", "b"), count=2)),
    ]
    texts = [line.plain() for line in lines if line is not None]
    assert texts[0].endswith("* carol joined")
    assert "dropped (too slow to read)" in texts[1]
    assert "left (weird)" in texts[2]
    assert texts[3].endswith("* carol is now caro")
    assert texts[4] == "* online (5): a, b and 3 more"
    assert texts[5] == "* welcome, a! online: b (2 in all)"
    assert describe(Error(code="name_taken", text="taken")) == Line("error", "taken")
    assert describe(Pong()) is None


def test_your_own_rename_is_in_the_second_person() -> None:
    """Before the reader knows its new name, and after."""
    for me in ("carol", "caro"):
        line = describe(Renamed(old="carol", new="caro", ts=1), me=me)
        assert line is not None and line.plain().endswith("* you are now caro")
    line = describe(Renamed(old="carol", new="caro", ts=1), me="bob")
    assert line is not None and line.plain().endswith("* carol is now caro")


def test_hostile_names_and_texts_are_sanitised_in_every_line() -> None:
    evil = "\x1b[31mx"
    for message in (
        Msg(sender=evil, text=evil, ts=1),
        Joined(name=evil, ts=1),
        Renamed(old=evil, new=evil, ts=1),
        Users(names=(evil,), count=1),
    ):
        line = describe(message)
        assert line is not None
        assert "\x1b" not in line.plain()


def test_earlier_messages_are_marked_and_their_end_counted() -> None:
    """Never taken for live chat, not even one of the reader's own from an earlier session."""
    earlier = describe(Msg(sender="alice", text="hi", ts=1, history=True), me="alice")
    assert earlier is not None and earlier.earlier and not earlier.own
    assert earlier.plain().endswith(" earlier <alice> hi")
    own = describe(Msg(sender="alice", text="hi", ts=1), me="alice")
    assert own is not None and own.plain().endswith(" <alice (you)> hi")
    ends = [describe(HistoryEnd(count=n)) for n in (0, 1, 3)]
    assert [line.plain() if line else None for line in ends] == [
        None,
        "* 1 earlier message above",
        "* 3 earlier messages above",
    ]
