"""Resume after a lost connection (protocol 1.2), in memory: the room's rules, no socket.

Every failure that resuming is known for in other systems is a case here:
resuming with nothing said since the welcome, twice in a row, at once after
connecting, while the old connection is still open, from beyond what is kept
or another epoch (``resumed`` false, never a silent gap), and never a message
twice; and nobody else sees ``left`` or ``joined`` for a resumed session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.protocol.codec import (
    Bye,
    Hello,
    HistoryEnd,
    Joined,
    Left,
    Msg,
    NameTaken,
    Nick,
    Renamed,
    Resume,
    Say,
    ServerMessage,
    Welcome,
)
from common.room.historyfile import HistoryFile
from common.room.room import Room, Stage, id_key
from tests.test_room import Peer

GRACE = 10.0


class Clock:
    """The room's clock, moved by hand (milliseconds)."""

    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def taken() -> list[Peer]:
    return []


@pytest.fixture
def room(clock: Clock, taken: list[Peer]) -> Room[Peer]:
    return Room(max_users=10, history=5, clock=clock, resume_grace=GRACE, on_taken=taken.append)


def join(room: Room[Peer], name: str, **hello: object) -> tuple[Peer, Welcome]:
    peer = Peer(room)
    assert room.handle(peer, Hello(name=name, resumable=True, **hello))  # type: ignore[arg-type]
    welcome = peer.read()[0]
    assert isinstance(welcome, Welcome)
    return peer, welcome


def resume(
    room: Room[Peer], name: str, welcome: Welcome, after: str | None
) -> tuple[Peer, list[ServerMessage]]:
    """A new connection resuming ``welcome``'s session after ``after``; what it got."""
    peer = Peer(room)
    ask = Resume(session=welcome.session, epoch=welcome.epoch, after=after)
    assert room.handle(peer, Hello(name=name, resumable=True, resume=ask))
    return peer, peer.read()


def last_id(frames: list[ServerMessage], welcome: Welcome) -> str | None:
    """What a client sends back: the last id it saw, else its welcome's ``last``."""
    ids = [f.id for f in frames if isinstance(f, (Msg, Joined, Left, Renamed)) and f.id]
    return ids[-1] if ids else welcome.last


def texts(frames: list[ServerMessage]) -> list[str]:
    return [f.text for f in frames if isinstance(f, Msg)]


def say(room: Room[Peer], peer: Peer, *lines: str) -> None:
    for line in lines:
        room.handle(peer, Say(text=line))


def test_every_welcome_carries_session_epoch_and_last(room: Room[Peer]) -> None:
    alice, welcome = join(room, "alice")
    assert (welcome.session, welcome.epoch) == (alice.token, room.epoch)
    assert len(welcome.session) == 32
    assert welcome.last is None  # the first in a new room: nothing came before it
    plain = Peer(room)
    room.handle(plain, Hello(name="bob"))
    first = plain.read()[0]
    assert isinstance(first, Welcome)
    assert (first.epoch, first.session) == (room.epoch, plain.token)
    assert first.session != alice.token
    (joined,) = alice.read()
    assert isinstance(joined, Joined)
    assert first.last is not None
    before, after = id_key(first.last), id_key(joined.id)
    assert before is not None and after is not None and before < after  # then alice's joined


def test_every_room_frame_has_an_id_increasing_in_the_room_order(room: Room[Peer]) -> None:
    alice, _ = join(room, "alice")
    bob, _ = join(room, "bob")
    say(room, bob, "one", "two")
    room.handle(bob, Nick(name="robert"))
    room.handle(bob, Bye())
    frames = alice.read()
    assert [type(f) for f in frames] == [Joined, Msg, Msg, Renamed, Left]
    keys = [id_key(f.id) for f in frames]  # type: ignore[union-attr]
    assert all(k is not None for k in keys)
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert len(set(keys)) == len(keys)


def test_a_broken_connection_keeps_its_place_unannounced_for_the_grace(
    room: Room[Peer], clock: Clock
) -> None:
    alice, _ = join(room, "alice")
    bob, _ = join(room, "bob")
    alice.read()
    assert room.leave(bob, "disconnected") is None
    assert bob.stage is Stage.AWAY
    with pytest.raises(NameTaken):
        room.handle(Peer(room), Hello(name="BOB"))
    clock.now += int(GRACE * 1000) - 1
    room.expire()
    assert alice.read() == []
    assert room.names() == ["alice", "bob"]
    clock.now += 1
    room.expire()
    assert alice.read() == [Left(name="bob", reason="disconnected", ts=clock.now)]
    assert bob.stage.value == "gone"  # moved by expire, which mypy cannot see
    join(room, "bob")


def test_without_resumable_or_after_bye_or_as_too_slow_a_member_leaves_at_once(
    room: Room[Peer],
) -> None:
    alice, _ = join(room, "alice")
    plain = Peer(room)
    room.handle(plain, Hello(name="plain"))
    quitter, _ = join(room, "quitter")
    slow, _ = join(room, "slow")
    alice.read()
    room.leave(plain, "disconnected")
    room.handle(quitter, Bye())
    room.leave(slow, "too_slow")
    assert [(f.name, f.reason) for f in alice.read() if isinstance(f, Left)] == [
        ("plain", "disconnected"),
        ("quitter", "quit"),
        ("slow", "too_slow"),
    ]


def test_resume_within_the_grace_gets_what_was_missed_and_nobody_sees_a_thing(
    room: Room[Peer], taken: list[Peer]
) -> None:
    alice, _ = join(room, "alice")
    bob, welcome = join(room, "bob")
    say(room, alice, "before")
    seen = bob.read()
    room.leave(bob, "disconnected")
    say(room, alice, "missed 1", "missed 2")
    alice.read()
    again, frames = resume(room, "Bob", welcome, last_id(seen, welcome))
    assert isinstance(frames[0], Welcome)
    assert (frames[0].name, frames[0].session, frames[0].epoch) == ("bob", bob.token, room.epoch)
    assert texts(frames) == ["missed 1", "missed 2"]
    assert all(f.history for f in frames if isinstance(f, Msg))
    assert frames[-1] == HistoryEnd(count=2, resumed=True)
    assert taken == [bob]
    assert bob.stage is Stage.TAKEN
    assert alice.read() == []
    say(room, alice, "live")
    assert texts(again.read()) == ["live"]
    assert room.names() == ["alice", "bob"]


def test_resume_while_the_old_connection_is_still_open_takes_it_over_at_once(
    room: Room[Peer], taken: list[Peer]
) -> None:
    alice, _ = join(room, "alice")
    bob, welcome = join(room, "bob")
    alice.read()
    say(room, alice, "one")  # bob's half-open connection never reads it
    _, frames = resume(room, "bob", welcome, welcome.last)
    assert texts(frames) == ["one"]
    assert taken == [bob]
    assert not room.handle(bob, Say(text="from the dead connection"))
    assert room.leave(bob, "disconnected") is None
    assert texts(alice.read()) == ["one"]  # and no left, no joined


def test_resume_with_nothing_said_since_the_welcome(room: Room[Peer]) -> None:
    bob, welcome = join(room, "bob")
    room.leave(bob, "disconnected")
    _, frames = resume(room, "bob", welcome, welcome.last)
    assert frames[1:] == [HistoryEnd(count=0, resumed=True)]


def test_resume_at_once_in_a_room_that_never_said_anything(clock: Clock) -> None:
    room: Room[Peer] = Room(max_users=10, clock=clock, resume_grace=GRACE)
    first = Peer(room)
    room.handle(first, Hello(name="first", resumable=True))
    welcome = first.read()[0]
    assert isinstance(welcome, Welcome)
    # ``last`` is its own joined; a client that kept nothing sends null: every msg of the epoch
    _, frames = resume(room, "first", welcome, None)
    assert frames[1:] == [HistoryEnd(count=0, resumed=True)]


def test_resume_twice_in_a_row_with_the_same_session(room: Room[Peer], taken: list[Peer]) -> None:
    alice, _ = join(room, "alice")
    bob, welcome = join(room, "bob")
    alice.read()
    say(room, alice, "a")
    after = last_id(bob.read(), welcome)
    room.leave(bob, "disconnected")
    say(room, alice, "b")
    second, frames = resume(room, "bob", welcome, after)
    assert texts(frames) == ["b"]
    second_welcome = frames[0]
    assert isinstance(second_welcome, Welcome)
    assert second_welcome.session == welcome.session
    after = last_id(frames, second_welcome)
    room.leave(second, "disconnected")
    say(room, alice, "c")
    _, frames = resume(room, "bob", second_welcome, after)
    assert texts(frames) == ["c"]
    assert taken == [bob, second]
    assert not any(isinstance(f, (Joined, Left)) for f in alice.read())


def test_a_gap_beyond_what_is_kept_is_resumed_false_never_silent(room: Room[Peer]) -> None:
    alice, _ = join(room, "alice")
    bob, welcome = join(room, "bob")
    room.leave(bob, "disconnected")
    say(room, alice, *[f"m{i}" for i in range(6)])  # history keeps 5
    _, frames = resume(room, "bob", welcome, welcome.last)
    assert frames[1:] == [HistoryEnd(count=0, resumed=False)]
    assert room.names() == ["alice", "bob"]  # the session itself was resumed


def test_another_epoch_or_a_foreign_id_is_resumed_false(room: Room[Peer]) -> None:
    bob, welcome = join(room, "bob")
    cases = (("0123456789abcdef", welcome.last), ("", welcome.last), (welcome.epoch, "not-an-id"))
    for epoch, after in cases:  # an empty epoch is no wildcard: it matches no history
        room.leave(bob, "disconnected")
        bob, frames = resume(
            room, "bob", Welcome(name="", users=(), count=0, session=bob.token, epoch=epoch), after
        )
        assert frames[1:] == [HistoryEnd(count=0, resumed=False)]


def test_a_wrong_session_is_an_ordinary_join(room: Room[Peer], clock: Clock) -> None:
    alice, _ = join(room, "alice")
    bob, welcome = join(room, "bob")
    room.leave(bob, "disconnected")
    forged = Welcome(name="", users=(), count=0, session="f" * 32, epoch=welcome.epoch)
    with pytest.raises(NameTaken):
        resume(room, "bob", forged, welcome.last)
    clock.now += int(GRACE * 1000)
    room.expire()
    say(room, alice, "while gone")
    # Past the grace the name is free: an ordinary join, still with what it missed.
    _, frames = resume(room, "bob", welcome, welcome.last)
    assert texts(frames) == ["while gone"]
    assert frames[-1] == HistoryEnd(count=1, resumed=True)
    assert [type(f) for f in alice.read()] == [Joined, Left, Msg, Joined]


def test_never_a_message_twice_nor_a_gap_across_many_resumes(room: Room[Peer]) -> None:
    alice, _ = join(room, "alice")
    bob, welcome = join(room, "bob")
    got: list[str] = []
    sent: list[str] = []
    after = welcome.last
    for round_ in range(20):
        line = f"r{round_}"
        say(room, alice, line)
        sent.append(line)
        if round_ % 3 == 0:
            frames = bob.read()
            got += texts(frames)
            after = last_id(frames, welcome) or after
            room.leave(bob, "disconnected")
            say(room, alice, line + "'")
            sent.append(line + "'")
            bob, frames = resume(room, "bob", welcome, after)
            assert isinstance(frames[0], Welcome)
            welcome = frames[0]
            got += texts(frames)
            after = last_id(frames, welcome) or after
    got += texts(bob.read())
    assert got == sent


def test_a_history_file_keeps_epoch_and_ids_across_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "h.db")
    first = HistoryFile(path, 100)
    room: Room[Peer] = Room(max_users=10, archive=first, resume_grace=GRACE)
    bob = Peer(room)
    room.handle(bob, Hello(name="bob", resumable=True))
    welcome = bob.read()[0]
    assert isinstance(welcome, Welcome)
    say(room, bob, "one", "two")
    after = last_id(bob.read(), welcome)
    room.close()

    second = HistoryFile(path, 100)
    again: Room[Peer] = Room(max_users=10, archive=second, resume_grace=GRACE)
    assert again.epoch == room.epoch
    alice = Peer(again)
    again.handle(alice, Hello(name="alice"))
    say(again, alice, "three")
    _, frames = resume(again, "bob", welcome, after)
    assert texts(frames) == ["three"]
    assert frames[-1] == HistoryEnd(count=1, resumed=True)
    _, frames = resume(again, "carol", welcome, welcome.last)
    assert texts(frames) == ["one", "two", "three"]
    again.close()


def test_messages_a_killed_server_never_wrote_make_resume_false(tmp_path: Path) -> None:
    path = str(tmp_path / "h.db")
    first = HistoryFile(path, 100)
    epoch = first.epoch
    first.given(7, msg=True)  # given out, never written: what a kill leaves
    first.close()
    second = HistoryFile(path, 100)
    assert (second.epoch, second.last_id, second.floor) == (epoch, 7, "7")
    second.close()
    (tmp_path / "h.db-ids").unlink()
    third = HistoryFile(path, 100)
    assert third.epoch != epoch  # nothing says how far it counted: a new life
    third.close()


def test_more_missed_than_a_resume_may_carry_is_resumed_false(clock: Clock) -> None:
    room: Room[Peer] = Room(max_users=10, clock=clock, resume_grace=GRACE, resume_bytes=500)
    alice, _ = join(room, "alice")
    bob, welcome = join(room, "bob")
    room.leave(bob, "disconnected")
    say(room, alice, "x" * 200)
    second, frames = resume(room, "bob", welcome, welcome.last)
    assert frames[-1] == HistoryEnd(count=1, resumed=True)
    room.leave(second, "disconnected")
    say(room, alice, "y" * 200, "z" * 200)
    _, frames = resume(room, "bob", welcome, welcome.last)
    assert frames[1:] == [HistoryEnd(count=0, resumed=False)]


def test_messages_a_smaller_history_does_not_load_set_the_floor(tmp_path: Path) -> None:
    path = str(tmp_path / "h.db")
    room: Room[Peer] = Room(max_users=10, archive=HistoryFile(path, 100), history=100)
    bob = Peer(room)
    room.handle(bob, Hello(name="bob", resumable=True))
    welcome = bob.read()[0]
    assert isinstance(welcome, Welcome)
    say(room, bob, "one", "two", "three")
    room.close()
    again: Room[Peer] = Room(max_users=10, archive=HistoryFile(path, 2), history=2)
    _, frames = resume(again, "bob", welcome, welcome.last)  # "one" is in the file, not here
    assert frames[1:] == [HistoryEnd(count=0, resumed=False)]
    again.close()


def test_messages_lost_with_a_killed_server_stay_a_gap_once_new_ones_push_old_ones_out(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "h.db")
    archive = HistoryFile(path, 2)
    room: Room[Peer] = Room(max_users=10, archive=archive, history=2)
    bob = Peer(room)
    room.handle(bob, Hello(name="bob", resumable=True))
    welcome = bob.read()[0]
    assert isinstance(welcome, Welcome)
    say(room, bob, "one", "two")
    after = last_id(bob.read(), welcome)
    assert after is not None
    lost = int(after) + 1
    archive.given(lost, msg=True)  # "three", given out and never written: what a kill leaves
    room.close()
    again: Room[Peer] = Room(max_users=10, archive=HistoryFile(path, 2), history=2)
    alice = Peer(again)
    again.handle(alice, Hello(name="alice"))
    say(again, alice, "four", "five")  # the history is full: these push "one" and "two" out
    _, frames = resume(again, "bob", welcome, after)
    assert frames[1:] == [HistoryEnd(count=0, resumed=False)]
    again.close()
    third: Room[Peer] = Room(max_users=10, archive=HistoryFile(path, 2), history=2)
    _, frames = resume(third, "bob", welcome, after)  # the next start knows it lost too
    assert frames[1:] == [HistoryEnd(count=0, resumed=False)]
    third.close()
