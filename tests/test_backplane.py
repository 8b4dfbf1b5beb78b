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
    Users,
    Welcome,
    Who,
    name_key,
)
from common.room.room import Entry, Room
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

    def publish(self, entry: Entry) -> None:
        with self.order.changed:
            self.order.events.append((entry, self))
            self.order.changed.notify_all()

    def close(self) -> None:
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
    backplane.busy = True  # too much on its way: new messages wait for nothing, they are refused
    for message in (Say(text="x"), SendDm(to="bob", text="x")):
        with pytest.raises(RateLimited, match="busy"):
            first.handle(alice, message)
    assert first.handle(alice, Nick(name="al")) and first.handle(alice, Who())
    first.close()
