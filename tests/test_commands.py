"""What a person types, turned into messages."""

from __future__ import annotations

import pytest

from common.protocol.codec import Bye, History, NameInvalid, Nick, Say, SendDm, TextInvalid, Who
from common.terminal.commands import ShowHelp, Usage, parse_command


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello there", Say(text="hello there")),
        ("/who", Who()),
        ("/WHO", Who()),
        ("/help", ShowHelp()),
        ("/nick bob_2", Nick(name="bob_2")),
        ("/msg alice  see you later ", SendDm(to="alice", text="see you later")),
        ("/quit", Bye()),
        ("выход", Bye()),
        ("  Выход ", Bye()),
        ("//who is there", Say(text="/who is there")),
        ("/history", History(limit=20)),
        ("/history 100", History(limit=100)),
    ],
)
def test_lines_become_messages(line: str, expected: object) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    "line",
    ["/msg", "/msg alice", "/nick", "/dance", "/msg alice   ", "/history 0", "/history 101",
     "/history x", "/history ٣"],
)  # fmt: skip
def test_mistakes_are_usage_hints_not_messages(line: str) -> None:
    with pytest.raises(Usage):
        parse_command(line)


def test_bad_names_and_texts_are_caught_before_sending() -> None:
    with pytest.raises(NameInvalid):
        parse_command("/nick bad name!")
    with pytest.raises(TextInvalid):
        parse_command("x" * 2001)
