"""The room's rules and its log, in memory: once for both servers, no socket in sight."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from common.protocol.codec import (
    AlreadyRegistered,
    Bye,
    Dm,
    Error,
    Hello,
    History,
    HistoryEnd,
    Joined,
    Left,
    Msg,
    NameTaken,
    Nick,
    NoSuchUser,
    NotRegistered,
    Ping,
    Pong,
    Renamed,
    Say,
    SendDm,
    ServerFull,
    ServerMessage,
    TextInvalid,
    Users,
    Welcome,
    Who,
)
from common.room.room import TRIM_EVERY, Entry, Member, Room, Stage


class Peer(Member):
    """A member as a test sees it: what it took from the room, decoded."""

    def __init__(self, room: Room[Peer]) -> None:
        super().__init__()
        self.room = room

    def read(self) -> list[ServerMessage]:
        entries = self.room.take(self)
        return [entry.message for entry in entries if entry.message is not None]


def ticking_clock() -> Iterator[int]:
    return itertools.count(1000)


@pytest.fixture
def room() -> Room[Peer]:
    clock = ticking_clock()
    return Room(max_users=3, history=5, clock=lambda: next(clock))


def joined(room: Room[Peer], name: str) -> Peer:
    peer = Peer(room)
    assert room.handle(peer, Hello(name=name))
    return peer


def test_hello_welcome_joined_say_and_leave(room: Room[Peer]) -> None:
    alice = joined(room, "alice")
    assert alice.read() == [Welcome(name="alice", users=("alice",), count=1)]
    bob = joined(room, "Bob")
    assert bob.read() == [Welcome(name="Bob", users=("alice", "Bob"), count=2)]
    assert alice.read() == [Joined(name="Bob", ts=1001)]
    room.handle(bob, Say(text="hi"))
    assert alice.read() == bob.read() == [Msg(sender="Bob", text="hi", ts=1002)]
    assert room.handle(bob, Bye()) is False
    assert bob.stage is Stage.GONE
    assert alice.read() == [Left(name="Bob", reason="quit", ts=1003)]
    assert room.names() == ["alice"]


def test_the_welcome_lists_the_room_in_the_order_who_does() -> None:
    room: Room[Peer] = Room(max_users=10)
    for name in ("zed", "Amy", "bob"):
        joined(room, name)
    room.handle(joined(room, "yann"), Nick(name="Al"))
    carol = joined(room, "carol")
    [welcome] = carol.read()
    assert isinstance(welcome, Welcome)
    assert welcome.users == ("Al", "Amy", "bob", "carol", "zed")
    room.handle(carol, Who())
    assert carol.read() == [Users(names=welcome.users, count=5)]


def test_dm_who_nick_ping(room: Room[Peer]) -> None:
    alice, bob = joined(room, "alice"), joined(room, "bob")
    alice.read(), bob.read()
    room.handle(alice, SendDm(to="BOB", text="psst"))
    dm = Dm(sender="alice", to="bob", text="psst", ts=1002)
    assert alice.read() == bob.read() == [dm]
    room.handle(alice, SendDm(to="alice", text="me"))
    assert alice.read() == [Dm(sender="alice", to="alice", text="me", ts=1003)]
    room.handle(bob, Who())
    assert bob.read() == [Users(names=("alice", "bob"), count=2)]
    room.handle(bob, Nick(name="Bobby"))
    assert alice.read() == bob.read() == [Renamed(old="bob", new="Bobby", ts=1004)]
    room.handle(alice, Ping())
    assert alice.read() == [Pong()]


def test_refusals(room: Room[Peer]) -> None:
    stranger = Peer(room)
    with pytest.raises(NotRegistered):
        room.handle(stranger, Say(text="hi"))
    alice = joined(room, "alice")
    with pytest.raises(AlreadyRegistered):
        room.handle(alice, Hello(name="other"))
    with pytest.raises(NameTaken):
        room.handle(Peer(room), Hello(name="ALICE"))
    with pytest.raises(NameTaken):
        room.handle(Peer(room), Hello(name="ａｌｉｃｅ"))
    with pytest.raises(NoSuchUser):
        room.handle(alice, SendDm(to="nobody", text="x"))
    greek = joined(room, "\u0390")  # ΐ; Ϊ́ is the same letter in capitals
    with pytest.raises(NameTaken):
        room.handle(Peer(room), Hello(name="\u03aa\u0301"))
    room.leave(greek, "quit")
    wide = joined(room, "𠀁" * 24)  # a dm carries two names: this one's frame would pass 8192
    with pytest.raises(TextInvalid):
        room.handle(wide, SendDm(to=wide.name, text="𠀁" * 2000))
    room.leave(wide, "quit")
    bob = joined(room, "bob")
    with pytest.raises(NameTaken):
        room.handle(bob, Nick(name="Alice"))
    room.handle(bob, Nick(name="BOB"))  # a change of case only is the member's own name
    joined(room, "carol")
    with pytest.raises(ServerFull):
        room.handle(Peer(room), Hello(name="dave"))
    assert room.names() == ["alice", "BOB", "carol"]


def test_a_member_that_left_acts_no_more_and_its_name_is_free(room: Room[Peer]) -> None:
    alice, ghost = joined(room, "alice"), joined(room, "ghost")
    assert room.leave(ghost, "too_slow") == "ghost"
    assert room.leave(ghost, "too_slow") is None
    assert room.handle(ghost, Say(text="boo")) is False
    assert room.handle(ghost, Nick(name="other")) is False
    newcomer = joined(room, "ghost")
    alice.read()
    room.handle(newcomer, Say(text="me"))
    assert [m for m in alice.read() if isinstance(m, Msg)] == [
        Msg(sender="ghost", text="me", ts=1004)
    ]


def test_a_member_that_leaves_still_gets_what_came_before_its_leave(room: Room[Peer]) -> None:
    alice, bob = joined(room, "alice"), joined(room, "bob")
    room.handle(alice, Say(text="one"))
    room.handle(bob, Bye())
    room.handle(alice, Say(text="two"))
    assert [m.text for m in bob.read() if isinstance(m, Msg)] == ["one"]


def test_private_frames_come_in_their_place_among_broadcasts(room: Room[Peer]) -> None:
    alice, bob = joined(room, "alice"), joined(room, "bob")
    bob.read()
    room.handle(alice, Say(text="before"))
    room.handle(bob, Who())
    room.handle(alice, SendDm(to="bob", text="psst"))
    room.handle(alice, Say(text="after"))
    room.post_entry(bob, Entry(None, b"a line of text mode\n"))
    room.handle(alice, Say(text="last"))
    kinds = [e.message.type if e.message else e.line.decode() for e in room.take(bob)]
    assert kinds == ["msg", "users", "dm", "msg", "a line of text mode\n", "msg"]


def test_take_lines_is_take_as_bytes_and_shared_by_members_at_the_same_place() -> None:
    room: Room[Peer] = Room(max_users=10, history=0)
    alice, bob, carol = joined(room, "alice"), joined(room, "bob"), joined(room, "carol")
    for peer in (alice, bob, carol):
        peer.read()
    room.handle(alice, Say(text="one"))
    room.handle(alice, Say(text="two"))
    room.handle(carol, Who())  # carol's answer comes in its place: her lines are her own
    room.handle(alice, Say(text="three"))
    expected = [e.line for e in room.take(alice)]
    assert len(expected) == 3
    bobs, carols = room.take_lines(bob), room.take_lines(carol)
    assert bobs == b"".join(expected)
    assert carols is not None and carols.count(b"\n") == 4 and b'"users"' in carols
    room.handle(alice, Say(text="four"))
    assert room.take_lines(bob) == room.take_lines(carol) == (room.take(alice))[0].line
    assert room.take_lines(bob) == b""


def test_take_shared_is_take_and_one_list_for_members_at_the_same_place() -> None:
    room: Room[Peer] = Room(max_users=10, history=0)
    alice, bob, carol, dave = (joined(room, name) for name in ("alice", "bob", "carol", "dave"))
    for peer in (alice, bob, carol, dave):
        peer.read()
    room.handle(alice, Say(text="one"))
    room.handle(carol, Who())  # carol's answer comes in its place: her entries are her own
    room.handle(alice, Say(text="two"))
    expected = room.take(alice)
    assert len(expected) == 2
    room.pending()  # a writer's pass begins
    bobs, carols, daves = room.take_shared(bob), room.take_shared(carol), room.take_shared(dave)
    assert bobs == expected and bobs is daves
    assert len(carols) == 3 and b'"users"' in carols[1].line
    room.handle(alice, Say(text="three"))
    bobs = room.take_shared(bob)
    assert bobs == room.take(alice) and len(bobs) == 1
    assert room.take_shared(dave) is bobs and room.take_shared(carol) == bobs
    assert room.take_shared(bob) == []


@pytest.mark.parametrize("method", ["take", "take_lines", "take_shared", "lag", "pending", "trim"])
def test_what_a_writer_calls_waits_for_the_room_s_lock(method: str) -> None:
    """Deterministic where a race is not: while the lock is held, the call does not return."""
    room: Room[Peer] = Room(max_users=3)
    alice = joined(room, "alice")
    call = getattr(room, method)
    args = () if method in ("pending", "trim") else (alice,)
    done = threading.Event()

    def run() -> None:
        call(*args)
        done.set()

    with room.lock:
        caller = threading.Thread(target=run)
        caller.start()
        assert not done.wait(0.2), f"{method} ran without the room's lock"
    caller.join(5.0)
    assert done.is_set()


@pytest.mark.parametrize("take", ["take", "take_lines", "take_shared"])
def test_one_order_for_everyone_with_a_dozen_threads_and_members_coming_and_going(
    take: str,
) -> None:
    """Threads switch every microsecond, so any step of the room outside its lock would show.

    The steady members read with ``take`` (the UDP server, text mode) or with ``take_lines``
    (the TCP writer, which shares one join among members at the same place).

    A dozen senders talk and post lines of their own to the steady members
    while visitors come and go, two rivals race for the same fifty names, and
    a writer asks what is pending and trims the log: everyone sees one order
    with nothing lost or repeated, each private line arrives in order, each
    name is had once, and the history a latecomer asks for is the end of that
    same order.
    """
    room: Room[Peer] = Room(max_users=200)
    steady = [joined(room, f"steady{i}") for i in range(4)]
    seen: dict[Peer, list[str]] = {peer: [] for peer in steady}
    private: dict[Peer, list[str]] = {peer: [] for peer in steady}
    failures: list[BaseException] = []
    rivals_done = threading.Barrier(2)
    winners: list[str] = []
    go, talked, read_all = threading.Event(), threading.Event(), threading.Event()

    def sender(n: int) -> None:
        me = joined(room, f"sender{n}")
        go.wait()
        for i in range(200):
            room.handle(me, Say(text=f"{n}:{i}"))
            if i % 10 == 0:
                room.post_entry(steady[n % 4], Entry(None, f"{n}:{i}\n".encode()))

    def churn() -> None:
        go.wait()
        for i in range(50):
            visitor = joined(room, f"visitor{i}")
            room.handle(visitor, Say(text=f"visitor{i}"))
            seen[visitor] = [m.text for m in visitor.read() if isinstance(m, Msg)]
            room.leave(visitor, "quit")

    def rival() -> None:
        mine = [Peer(room) for _ in range(50)]
        go.wait()
        for i, peer in enumerate(mine):
            with contextlib.suppress(NameTaken):
                room.handle(peer, Hello(name=f"rival{i}"))
                winners.append(peer.name)
        rivals_done.wait()
        for peer in mine:
            room.leave(peer, "quit")

    def lines(peer: Peer) -> list[bytes]:
        if take == "take_lines":
            return (room.take_lines(peer) or b"").splitlines()
        taken = room.take_shared(peer) if take == "take_shared" else room.take(peer)
        return [entry.line.rstrip(b"\n") for entry in taken]

    def reader(peer: Peer) -> None:
        go.wait()
        while True:
            last = talked.is_set()
            if last:  # as the writer does: a pass that begins after the last word holds it all
                room.pending()
            for line in lines(peer):
                if not line.startswith(b"{"):
                    private[peer].append(line.decode())
                elif (frame := json.loads(line))["type"] == "msg":
                    seen[peer].append(frame["text"])
            if last:
                return

    def writer() -> None:
        go.wait()
        while not read_all.is_set():
            room.pending()
            room.trim()

    def recorded(body: Callable[..., None], *args: Peer | int) -> threading.Thread:
        def run() -> None:
            try:
                body(*args)
            except BaseException as exc:
                failures.append(exc)
                raise

        return threading.Thread(target=run)

    talkers = [recorded(sender, n) for n in range(12)]
    talkers += [recorded(body) for body in (churn, rival, rival)]
    readers = [recorded(reader, peer) for peer in steady]
    trimming = recorded(writer)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in [*talkers, *readers, trimming]:
            thread.start()
        go.set()
        for group, done in ((talkers, talked), (readers, read_all), ([trimming], None)):
            for thread in group:
                thread.join(timeout=60)
            if done is not None:
                done.set()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
    assert sorted(winners) == sorted(f"rival{i}" for i in range(50))
    order = seen[steady[0]]
    assert len(order) == len(set(order)) == 12 * 200 + 50
    for peer in steady[1:]:
        assert seen[peer] == order
    for n in range(12):
        mine = [text for text in order if text.startswith(f"{n}:")]
        assert mine == [f"{n}:{i}" for i in range(200)]
    position = {text: i for i, text in enumerate(order)}
    for peer, texts in seen.items():
        places = [position[text] for text in texts]
        assert places == sorted(places), peer.name
    for k, peer in enumerate(steady):
        assert sorted(private[peer]) == sorted(
            f"{n}:{i}" for n in range(k, 12, 4) for i in range(0, 200, 10)
        )
        for n in range(k, 12, 4):
            mine = [line for line in private[peer] if line.startswith(f"{n}:")]
            assert mine == [f"{n}:{i}" for i in range(0, 200, 10)]
    late = joined(room, "late")
    room.handle(late, History(limit=100))
    assert [m.text for m in late.read() if isinstance(m, Msg)] == order[-100:]


def test_the_log_is_trimmed_behind_the_slowest_and_a_laggard_is_measured_in_bytes() -> None:
    room: Room[Peer] = Room(max_users=10, history=0)
    fast, slow = joined(room, "fast"), joined(room, "slow")
    sizes = []
    for i in range(20 * TRIM_EVERY):
        room.handle(fast, Say(text="x" * 50))
        fast.read()
        if i % 3000 == 0:
            slow.read()
        room.trim()
        sizes.append(room.log_size())
    assert max(sizes) <= 3000 + 2 * TRIM_EVERY
    behind = room.lag(slow)
    assert behind > 1000 * 50
    slow.read()
    assert room.lag(slow) == 0
    room.trim()
    assert room.log_size() == 0


def test_history_is_what_came_before_the_welcome_and_only_messages(room: Room[Peer]) -> None:
    alice, bob = joined(room, "alice"), joined(room, "bob")
    for i in range(7):
        room.handle(alice, Say(text=f"m{i}"))
    room.handle(alice, SendDm(to="bob", text="private"))
    room.handle(bob, Nick(name="robert"))
    carol = joined(room, "carol")
    room.handle(alice, Say(text="live"))
    carol.read()
    room.handle(carol, History(limit=3))
    answer = carol.read()
    assert [(m.text, m.history) for m in answer if isinstance(m, Msg)] == [
        ("m4", True),
        ("m5", True),
        ("m6", True),
    ]
    assert answer[-1] == HistoryEnd(count=3)
    room.handle(carol, History(limit=100))  # the room keeps 5; asked again, from the same point
    answer = carol.read()
    # "live" came after carol's welcome but pushed m2 out: answers go as far back as is kept
    assert [m.text for m in answer if isinstance(m, Msg)] == ["m3", "m4", "m5", "m6"]
    assert answer[-1] == HistoryEnd(count=4)
    first = next(m for m in answer if isinstance(m, Msg))
    assert first.sender == "alice" and first.ts == 1005  # exactly as it was sent then


def test_history_off_answers_empty() -> None:
    room: Room[Peer] = Room(max_users=10, history=0)
    alice = joined(room, "alice")
    room.handle(alice, Say(text="gone"))
    late = joined(room, "late")
    late.read()
    room.handle(late, History(limit=20))
    assert late.read() == [HistoryEnd(count=0)]


# ---- overload: the writer's backlog, history answers, many leaving at once ----------------


def test_past_the_backlog_bound_a_say_waits_for_the_writers_pass_and_loses_nothing() -> None:
    room: Room[Peer] = Room(max_users=10, max_backlog=200)
    alice, bob = joined(room, "alice"), joined(room, "bob")
    room.pending()
    room.caught_up()
    assert room.backlog() == 0
    said = 0
    while room.backlog() <= 200:  # about 70 bytes each: past the bound after a few
        room.handle(alice, Say(text=f"m{said}"))
        said += 1
    assert said > 1
    held = threading.Thread(target=room.handle, args=(alice, Say(text="held")))
    held.start()
    held.join(0.2)
    assert held.is_alive()  # waits: nothing is appended meanwhile
    room.pending()  # a pass begins: what was said so far is what it catches up on
    for peer in (alice, bob):
        peer.read()
    assert held.is_alive()
    room.caught_up()  # the pass ends: the say goes on
    held.join(5)
    assert not held.is_alive()
    assert [m.text for m in bob.read() if isinstance(m, Msg)] == ["held"]


def test_a_member_that_leaves_lets_a_held_say_go() -> None:
    room: Room[Peer] = Room(max_users=10, max_backlog=0)
    alice = joined(room, "alice")
    held = threading.Thread(target=room.handle, args=(alice, Say(text="held")))
    held.start()
    held.join(0.1)
    assert held.is_alive()
    room.leave(alice, "too_slow")
    room.pending()
    room.caught_up()
    held.join(5)
    assert not held.is_alive()


def test_history_answers_wait_unbuilt_and_are_built_one_per_take() -> None:
    room: Room[Peer] = Room(max_users=10, history=100)
    alice = joined(room, "alice")
    for i in range(100):
        room.handle(alice, Say(text=f"{i} " + "h" * 100))
    late = joined(room, "late")
    late.read()
    for _ in range(50):
        room.handle(late, History(limit=100))
    waiting = room.lag(late)
    assert 50 * 100 * 100 < waiting < 50 * 100 * 200  # counted at about its size
    for left in range(49, -1, -1):
        answer = late.read()
        assert answer[-1] == HistoryEnd(count=100) and len(answer) == 101
        assert waiting * left // 50 - 100 <= room.lag(late) <= waiting * left // 50 + 100
    assert late.read() == []


def test_a_kept_message_is_encoded_for_history_once_and_shared_by_every_answer() -> None:
    """Answers to many ``history`` requests (and a resume) reuse the same encoded copies: an
    answer costs its join, not an encoding per message."""
    room: Room[Peer] = Room(max_users=10, history=10)
    alice = joined(room, "alice")
    for i in range(3):
        room.handle(alice, Say(text=f"said {i}"))
    bob, carol = joined(room, "bob"), joined(room, "carol")
    bob.read()
    carol.read()
    room.handle(bob, History(limit=10))
    room.handle(bob, History(limit=2))
    room.handle(carol, History(limit=10))
    first, second, third = room.take(bob), room.take(bob), room.take(carol)
    assert [e.message.text for e in first[:-1] if isinstance(e.message, Msg)] == [
        "said 0",
        "said 1",
        "said 2",
    ]
    assert all(isinstance(e.message, Msg) and e.message.history for e in first[:-1])
    assert all(a is b for a, b in zip(second[:-1], first[1:-1], strict=True))
    assert all(a is b for a, b in zip(third[:-1], first[:-1], strict=True))
    assert first[0].line.startswith(b'{"type":"msg"') and b'"history":true' in first[0].line


def test_a_second_answer_is_on_the_writers_next_list_in_a_quiet_room() -> None:
    """Two ``history`` requests: the writer takes one answer per pass, and the member is on
    its next list for the other although nothing else was said."""
    room: Room[Peer] = Room(max_users=10, history=10)
    alice = joined(room, "alice")
    room.handle(alice, Say(text="said"))
    bob = joined(room, "bob")
    room.pending()
    alice.read()
    bob.read()
    room.handle(bob, History(limit=1))
    room.handle(bob, History(limit=1))
    assert room.pending() == [bob]
    assert [type(m) for m in bob.read()] == [Msg, HistoryEnd]
    room.caught_up()
    assert room.pending() == [bob]
    assert [type(m) for m in bob.read()] == [Msg, HistoryEnd]
    assert room.pending() == []


def test_a_member_whose_connection_ended_keeps_only_its_own_frames() -> None:
    """Many leave at once: none of them is kept the others' ``left`` it will never read."""
    room: Room[Peer] = Room(max_users=1000)
    watcher = joined(room, "watcher")
    leavers = [joined(room, f"u{i}") for i in range(300)]
    for peer in leavers:
        peer.read()
    room.refuse(leavers[0], NoSuchUser("nobody"))
    for peer in leavers:
        room.leave(peer, "disconnected")
    assert [room.lag(peer) for peer in leavers[1:]] == [0] * 299
    assert [type(m) for m in leavers[0].read()] == [Error]
    kinds = [type(m) for m in watcher.read()]
    assert kinds.count(Left) == 300


def test_a_member_that_quits_still_gets_what_was_said_before() -> None:
    room: Room[Peer] = Room(max_users=10, history=10)
    alice, bob = joined(room, "alice"), joined(room, "bob")
    bob.read()
    room.handle(alice, Say(text="before"))
    room.handle(bob, History(limit=1))
    room.handle(bob, History(limit=1))
    room.handle(bob, Bye())
    got = bob.read()
    assert [type(m) for m in got] == [Msg, HistoryEnd, HistoryEnd]
