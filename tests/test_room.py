"""The chat's rules, driven through a fake server that records what it would send."""

from __future__ import annotations

import pytest

from common.codec import (
    Dm,
    Msg,
    Nick,
    NoSuchUser,
    Ping,
    Pong,
    Renamed,
    Say,
    SendDm,
    ServerMessage,
    TextInvalid,
    Users,
    Who,
)
from common.registry import Registry
from common.room import act


class Member:
    pass


class FakeRoom:
    def __init__(self) -> None:
        self.registry: Registry[Member] = Registry(max_users=10)
        self.sent: list[tuple[Member | None, ServerMessage]] = []

    def broadcast(self, message: ServerMessage, exclude: Member | None = None) -> None:
        self.sent.append((None, message))

    def send_to(self, member: Member, message: ServerMessage) -> None:
        self.sent.append((member, message))


@pytest.fixture
def room() -> FakeRoom:
    return FakeRoom()


def test_say_is_broadcast_with_a_timestamp(room: FakeRoom) -> None:
    alice = Member()
    room.registry.join("alice", alice)
    act(room, alice, "alice", Say(text="hi"))
    [(to, message)] = room.sent
    assert to is None and isinstance(message, Msg)
    assert (message.sender, message.text) == ("alice", "hi")
    assert message.ts > 1_700_000_000_000


def test_dm_reaches_both_ends_by_the_registered_name(room: FakeRoom) -> None:
    alice, bob = Member(), Member()
    room.registry.join("alice", alice)
    room.registry.join("Bob", bob)
    act(room, alice, "alice", SendDm(to="BOB", text="psst"))
    assert [to for to, _ in room.sent] == [bob, alice]
    assert all(isinstance(m, Dm) and m.to == "Bob" for _, m in room.sent)
    room.sent.clear()
    act(room, alice, "alice", SendDm(to="alice", text="note to self"))
    assert [to for to, _ in room.sent] == [alice]


def test_refusals_send_nothing(room: FakeRoom) -> None:
    alice, bob = Member(), Member()
    room.registry.join("alice", alice)
    room.registry.join("𠀁" * 24, bob)
    with pytest.raises(NoSuchUser):
        act(room, alice, "alice", SendDm(to="nobody", text="hi"))
    with pytest.raises(TextInvalid):
        act(room, alice, "𠀀" * 24, SendDm(to="𠀁" * 24, text="😀" * 2000))
    assert room.sent == []


def test_who_nick_ping(room: FakeRoom) -> None:
    alice = Member()
    room.registry.join("alice", alice)
    act(room, alice, "alice", Who())
    act(room, alice, "alice", Nick(name="Alicia"))
    act(room, alice, "Alicia", Ping())
    assert room.sent[0] == (alice, Users(names=("alice",), count=1))
    renamed = room.sent[1][1]
    assert isinstance(renamed, Renamed) and (renamed.old, renamed.new) == ("alice", "Alicia")
    assert room.sent[2] == (alice, Pong())
    assert room.registry.names() == ["Alicia"]
