"""The room's backplane seam, in memory: two rooms sharing one order, as two servers would.

``SharedOrder`` plays what Redis does for ``common.room.redisroom``: names claimed
in one place, events put in one sequence, and every room fed that sequence
by a thread of its own, outside anyone's lock. It is only as faithful as the
seam: the real backplane is tested against a real Redis in test_cluster.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from common.protocol.codec import (
    Dm,
    Hello,
    History,
    HistoryEnd,
    Joined,
    Msg,
    NameTaken,
    Nick,
    RateLimited,
    Renamed,
    Say,
    SendDm,
    Unavailable,
    Users,
    Welcome,
    Who,
    name_key,
)
from common.room.room import Entry, Room
from tests.conftest import WAIT
from tests.test_room import Peer


class SharedOrder:
    """One sequence of events and one table of names for every room attached to it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.names: dict[str, SharedBackplane] = {}
        self.events: list[tuple[Entry, SharedBackplane]] = []
        self.changed = threading.Condition(self.lock)
        self.stopping = False


class SharedBackplane:
    """One room's end of a ``SharedOrder``; its feeder thread is its only way in."""

    def __init__(self, order: SharedOrder) -> None:
        self.ready = True
        self.busy = False
        self.calm = threading.Event()  # set unless busy: what a held message waits on
        self.calm.set()
        self.held = threading.Event()  # set once a message waited in ``wait_while_busy``
        self.order = order
        self.room: Room[Any] | None = None
        self.feeder = threading.Thread(target=self._feed, name="feeder", daemon=True)

    def attach(self, room: Room[Any]) -> None:
        self.room = room
        self.feeder.start()

    def claim(self, name: str, old: str | None) -> bool:
        with self.order.lock:
            holder = self.order.names.get(name_key(name))
            if holder is not None and holder is not self:
                return False
            self.order.names[name_key(name)] = self
            if old is not None and name_key(old) != name_key(name):
                del self.order.names[name_key(old)]
            return True

    def set_busy(self, busy: bool) -> None:
        """Behind (True) or caught up: a held message goes on once it is caught up."""
        self.busy = busy
        if busy:
            self.calm.clear()
        else:
            self.calm.set()

    def lose(self) -> None:
        """The order cannot be reached: a held message waits no more."""
        self.ready = False
        self.calm.set()

    def wait_while_busy(self) -> None:
        self.held.set()
        self.calm.wait()

    def publish(self, entry: Entry) -> None:
        with self.order.changed:
            self.order.events.append((entry, self))
            self.order.changed.notify_all()

    def close(self) -> None:
        self.calm.set()  # closing: a held message waits no more
        with self.order.changed:
            self.order.stopping = True
            self.order.changed.notify_all()
        self.feeder.join()

    def _feed(self) -> None:
        assert self.room is not None
        read = 0
        while True:
            with self.order.changed:
                while not self.order.stopping and len(self.order.events) == read:
                    self.order.changed.wait()
                if self.order.stopping:
                    return
                batch = self.order.events[read:]
                read = len(self.order.events)
            self.room.receive([(entry, origin is self) for entry, origin in batch])


@pytest.fixture
def rooms() -> Iterator[tuple[Room[Peer], Room[Peer]]]:
    order = SharedOrder()
    first: Room[Peer] = Room(max_users=10, history=5, backplane=SharedBackplane(order))
    second: Room[Peer] = Room(max_users=10, history=5, backplane=SharedBackplane(order))
    yield first, second
    first.close()
    second.close()


def joined(room: Room[Peer], name: str) -> Peer:
    peer = Peer(room)
    assert room.handle(peer, Hello(name=name))
    return peer


def read_until(peer: Peer, count: int) -> list[Any]:
    """The next ``count`` messages: the feeder threads bring them in their own time."""
    found: list[Any] = []
    while len(found) < count:
        found += peer.read()
    return found


def test_one_room_on_two_rooms_sharing_an_order(rooms: tuple[Room[Peer], Room[Peer]]) -> None:
    first, second = rooms
    alice = joined(first, "alice")
    assert alice.read() == [Welcome(name="alice", users=("alice",), count=1)]
    bob = joined(second, "bob")
    assert bob.read() == [Welcome(name="bob", users=("alice", "bob"), count=2)]
    assert isinstance(read_until(alice, 1)[0], Joined)
    with pytest.raises(NameTaken):
        first.handle(Peer(first), Hello(name="BOB"))
    first.handle(alice, Say(text="hi"))
    [said] = read_until(alice, 1)  # alice's own words come back through the order
    assert isinstance(said, Msg) and read_until(bob, 1) == [said]
    second.handle(bob, SendDm(to="ALICE", text="psst"))
    [dm] = read_until(alice, 1)
    assert dm == Dm(sender="bob", to="alice", text="psst", ts=dm.ts)
    assert read_until(bob, 1) == [dm]
    second.handle(bob, Nick(name="robert"))
    assert isinstance(read_until(alice, 1)[0], Renamed)
    first.handle(alice, Who())
    assert read_until(alice, 1) == [Users(names=("alice", "robert"), count=2)]
    carol = joined(second, "carol")
    carol.read()
    second.handle(carol, History(limit=5))
    answer = read_until(carol, 2)
    assert [(m.text, m.history) for m in answer if isinstance(m, Msg)] == [("hi", True)]
    assert answer[-1] == HistoryEnd(count=1)


def test_a_room_that_cannot_reach_its_order_refuses() -> None:
    backplane = SharedBackplane(SharedOrder())
    first: Room[Peer] = Room(max_users=10, backplane=backplane)
    alice = joined(first, "alice")
    backplane.ready = False
    for message in (Say(text="x"), SendDm(to="alice", text="x"), Nick(name="al")):
        with pytest.raises(RateLimited):
            first.handle(alice, message)
    with pytest.raises(RateLimited):
        first.handle(Peer(first), Hello(name="bob"))
    backplane.ready = True
    assert joined(first, "bob").stage is alice.stage
    backplane.set_busy(True)  # too much on its way: without flow control (UDP), refused
    for message in (Say(text="x"), SendDm(to="bob", text="x")):
        with pytest.raises(RateLimited, match="busy"):
            first.handle(alice, message)
    assert first.handle(alice, Nick(name="al")) and first.handle(alice, Who())
    assert not backplane.held.is_set()
    first.close()


FLOW = 1 << 20
"""A room's ``max_backlog`` in these tests: flow control on (the TCP server's room), and a
writer's backlog that never reaches it."""


class Talker(threading.Thread):
    """One ``handle`` of one message on a thread of its own, as a TCP reader calls it: what
    it returned, or what it raised."""

    def __init__(self, room: Room[Peer], peer: Peer, message: Say | SendDm) -> None:
        super().__init__(name="talker", daemon=True)
        self.room, self.peer, self.message = room, peer, message
        self.alive: bool | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.alive = self.room.handle(self.peer, self.message)
        except Exception as exc:
            self.error = exc


def held_talker(order: SharedOrder) -> tuple[SharedBackplane, Room[Peer], Peer, Talker]:
    """alice in a room with flow control whose order is busy, her ``say`` held."""
    backplane = SharedBackplane(order)
    room: Room[Peer] = Room(max_users=10, backplane=backplane, max_backlog=FLOW)
    alice = joined(room, "alice")
    alice.read()
    backplane.set_busy(True)
    talker = Talker(room, alice, Say(text="held"))
    talker.start()
    assert backplane.held.wait(WAIT), "the say was not held"
    return backplane, room, alice, talker


def test_a_room_with_flow_control_holds_a_message_while_its_order_is_busy() -> None:
    """The TCP server's room: a say waits (its reader does not read, TCP slows the talker)
    until the order is caught up, then goes out; nothing is refused, and what is not a
    message is not held."""
    order = SharedOrder()
    backplane, room, alice, talker = held_talker(order)
    assert talker.is_alive() and len(order.events) == 1  # her joined only
    assert room.handle(alice, Who()) and room.handle(alice, Nick(name="al"))
    backplane.set_busy(False)
    talker.join(WAIT)
    assert talker.alive and talker.error is None
    said = [m for m in read_until(alice, 3) if isinstance(m, Msg)]
    assert [m.text for m in said] == ["held"]
    room.close()


def test_a_held_message_waits_again_if_the_order_is_busy_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Woken with others that took the order past its bound again first, a held message finds
    it busy under the lock: it waits again, it is not refused."""
    order = SharedOrder()
    backplane = SharedBackplane(order)
    room: Room[Peer] = Room(max_users=10, backplane=backplane, max_backlog=FLOW)
    alice = joined(room, "alice")
    backplane.set_busy(True)
    waits: list[None] = []

    def wait_while_busy() -> None:
        waits.append(None)
        if len(waits) > 1:  # the first returns at once: woken, still busy
            SharedBackplane.wait_while_busy(backplane)

    monkeypatch.setattr(backplane, "wait_while_busy", wait_while_busy)
    talker = Talker(room, alice, SendDm(to="alice", text="held"))
    talker.start()
    assert backplane.held.wait(WAIT), "the dm was refused instead of held again"
    assert len(waits) == 2 and not order.events[1:]
    backplane.set_busy(False)
    talker.join(WAIT)
    assert talker.alive and talker.error is None
    assert [type(m) for m in read_until(alice, 2)] == [Welcome, Dm]
    room.close()


def test_a_held_message_is_refused_when_the_order_is_lost_or_the_room_closes() -> None:
    """Its reader never hangs: the wait ends, and the message gets ``Unavailable``."""
    backplane, room, _, talker = held_talker(SharedOrder())
    backplane.lose()
    talker.join(WAIT)
    assert isinstance(talker.error, Unavailable) and "cannot be reached" in str(talker.error)
    room.close()
    backplane, room, _, talker = held_talker(SharedOrder())
    room.close()
    talker.join(WAIT)
    assert isinstance(talker.error, Unavailable) and "stopping" in str(talker.error)
