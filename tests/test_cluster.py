"""Several servers, one room: two TCP servers and one UDP server on a real Redis.

Each test starts what it needs on free loopback ports: a ``redis-server``
of its own (without one on this machine the tests skip and say why), and
servers with a short lease so that a dead server's users leave quickly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest
import redis

from benchmarks.servers import free_port
from common.protocol.codec import Hello, Msg, Say, Unavailable
from common.room import redisroom
from common.room.redisroom import RedisBackplane
from common.room.room import Entry, Member, Room
from tests.conftest import ROOT, WAIT, JsonClient, RedisServer, ServerProcess, wait_until
from tests.test_udp_server import UdpPeer

Start = Callable[..., ServerProcess]
Connect = Callable[..., JsonClient]
LEASE = "1"
"""Seconds of lease in these tests: a killed server's users leave within about two."""
GONE_WITHIN = 15.0
IN_FLIGHT = 1000
"""Events a server may have on their way through Redis before it holds (TCP) or refuses (UDP)
messages, as the README and docs/PROTOCOL.md say (pinned here, not read from the code that it
checks)."""


Cluster = Callable[..., ServerProcess]


@pytest.fixture
def cluster(start_server: Start, redis_server: RedisServer) -> Cluster:
    """Start a server on the test's Redis (``cluster("tcp.server")``), rate limit off."""

    def start(module: str, *args: str) -> ServerProcess:
        return start_server(
            module, "--rate-limit", "0", "--redis", redis_server.url, "--lease", LEASE, *args
        )

    return start


def udp_join(server: ServerProcess, name: str) -> UdpPeer:
    peer = UdpPeer(server.address)
    peer.hello(name)
    return peer


def texts_until(read: Callable[[], dict[str, Any]], count: int) -> list[str]:
    """The texts of the next ``count`` ``msg`` frames, other frames skipped."""
    texts: list[str] = []
    while len(texts) < count:
        frame = read()
        if frame["type"] == "msg":
            texts.append(frame["text"])
    return texts


def test_a_name_asked_on_two_servers_at_once_is_won_once(cluster: Cluster) -> None:
    first, second = cluster("tcp.server"), cluster("tcp.server")
    for round_ in range(50):
        name = f"race{round_}"
        clients = [JsonClient(first.address), JsonClient(second.address)]
        start = threading.Barrier(2)

        def ask(client: JsonClient, name: str = name, start: threading.Barrier = start) -> None:
            start.wait()
            client.send({"type": "hello", "name": name})

        threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answers = sorted(c.recv()["type"] for c in clients)
        assert answers == ["error", "welcome"], f"round {round_}"
        for client in clients:
            client.close()


def test_names_that_differ_only_in_case_are_one_user_across_servers(
    cluster: Cluster, connect: Connect
) -> None:
    first, second = cluster("tcp.server"), cluster("tcp.server")
    for name, other in (("\u0390", "\u03aa\u0301"), ("\u03ab\u0301", "\u03b0")):  # ΐ Ϊ́, Ϋ́ ΰ
        connect(first.address, name)
        newcomer = connect(second.address)
        newcomer.send({"type": "hello", "name": other})
        assert newcomer.expect("error")["code"] == "name_taken"


def test_one_order_for_every_client_on_every_server(cluster: Cluster, connect: Connect) -> None:
    """12 senders, 4 on each of two TCP servers and one UDP server, all talking at once."""
    tcp_a, tcp_b, udp = cluster("tcp.server"), cluster("tcp.server"), cluster("udp.server")
    tcp_clients = [connect((tcp_a if n % 2 else tcp_b).address, f"t{n}") for n in range(8)]
    udp_peers = [udp_join(udp, f"u{n}") for n in range(4)]
    per_sender = 20
    total = per_sender * 12
    go = threading.Barrier(12)

    def talk(send: Callable[[dict[str, Any]], object], who: str) -> None:
        go.wait()
        for i in range(per_sender):
            send({"type": "say", "text": f"{who}:{i}"})

    senders = [threading.Thread(target=talk, args=(c.send, c.name)) for c in tcp_clients]
    senders += [
        threading.Thread(target=talk, args=(p.send, f"u{n}")) for n, p in enumerate(udp_peers)
    ]
    for thread in senders:
        thread.start()
    orders = [texts_until(client.recv, total) for client in tcp_clients]
    orders += [texts_until(peer.recv, total) for peer in udp_peers]
    for thread in senders:
        thread.join()
    assert all(order == orders[0] for order in orders)
    assert len(set(orders[0])) == total
    for who in [c.name for c in tcp_clients] + [f"u{n}" for n in range(4)]:
        mine = [text for text in orders[0] if text.split(":")[0] == who]
        assert mine == [f"{who}:{i}" for i in range(per_sender)]
    for peer in udp_peers:
        peer.close()


def test_history_who_and_dm_across_servers(cluster: Cluster, connect: Connect) -> None:
    tcp_a, udp = cluster("tcp.server"), cluster("udp.server")
    alice = connect(tcp_a.address, "alice")
    for i in range(10):
        alice.send({"type": "say", "text": f"m{i}"})
    assert texts_until(alice.recv, 10) == [f"m{i}" for i in range(10)]
    bob = udp_join(udp, "bob")
    bob.send({"type": "history", "limit": 5})
    earlier = [bob.expect("msg", history=True)["text"] for _ in range(5)]
    assert earlier == [f"m{i}" for i in range(5, 10)]
    assert bob.expect("history_end")["count"] == 5
    assert alice.expect("joined")["name"] == "bob"
    bob.send({"type": "who"})
    assert bob.expect("users")["names"] == ["alice", "bob"]
    alice.send({"type": "dm", "to": "BOB", "text": "psst"})
    assert bob.expect("dm")["text"] == alice.expect("dm")["text"] == "psst"
    bob.send({"type": "dm", "to": "alice", "text": "hi alice"})
    assert alice.expect("dm")["from"] == "bob"
    bob.send({"type": "dm", "to": "nobody", "text": "x"})
    assert bob.expect("error")["code"] == "no_such_user"
    bob.close()


def test_a_killed_server_s_users_leave_and_free_their_names(
    cluster: Cluster, connect: Connect
) -> None:
    survivor, doomed = cluster("tcp.server"), cluster("tcp.server")
    alice = connect(survivor.address, "alice")
    connect(doomed.address, "bob")
    connect(doomed.address, "carol")
    assert alice.expect("joined", name="carol")
    killed = time.monotonic()
    doomed.stop(signal.SIGKILL)
    gone = {alice.expect("left", GONE_WITHIN, reason="disconnected")["name"] for _ in range(2)}
    assert gone == {"bob", "carol"}
    assert time.monotonic() - killed < GONE_WITHIN
    assert connect(survivor.address, "Bob").name == "Bob"


def test_a_clean_stop_says_shutdown(cluster: Cluster, connect: Connect) -> None:
    staying, stopping = cluster("tcp.server"), cluster("udp.server")
    alice = connect(staying.address, "alice")
    udp_join(stopping, "bob").close()
    assert alice.expect("joined")["name"] == "bob"
    assert stopping.stop() == 0
    assert alice.expect("left", name="bob")["reason"] == "shutdown"


def test_redis_away_and_back(
    start_server: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """Stopped, every user hears it once and messages are refused; started again, all goes on."""
    args = ("--rate-limit", "0", "--redis", redis_server.url, "--lease", "3")
    one, two = start_server("tcp.server", *args), start_server("tcp.server", *args)
    alice, bob = connect(one.address, "alice"), connect(two.address, "bob")
    assert alice.expect("joined")["name"] == "bob"
    said = [f"before{i}" for i in range(20)]
    for text in said:
        alice.send({"type": "say", "text": text})
    assert texts_until(bob.recv, 20) == said
    redis_server.stop()
    for client in (alice, bob):
        assert "cannot be reached" in client.expect("error", code="rate_limited")["text"]
    for server in (one, two):
        server.wait_for_log("lost Redis")
    alice.send({"type": "say", "text": "while away"})
    assert "not sent" in alice.expect("error", code="rate_limited")["text"]
    redis_server.start()
    for server in (one, two):
        server.wait_for_log("Redis is back")
    after = [f"after{i}" for i in range(20)]
    for n, text in enumerate(after):
        (alice if n % 2 else bob).send({"type": "say", "text": text})
    orders = [texts_until(client.recv, 20) for client in (alice, bob)]
    assert orders[0] == orders[1] and sorted(orders[0]) == sorted(after)
    for client in (alice, bob):
        client.send({"type": "ping"})
        frames = []
        while (frame := client.recv())["type"] != "pong":
            frames.append(frame)
        assert not [f for f in frames if f["type"] in ("msg", "error")]
    assert "Traceback" not in one.log + two.log


def test_a_reader_that_lost_its_connection_goes_on_from_where_it_was(
    cluster: Cluster, redis_server: RedisServer, connect: Connect
) -> None:
    """Only one server's stream reader is cut off: what another server published while it
    reconnected still reaches that server's users, all of it, in order."""
    store = redis.Redis.from_url(redis_server.url)

    def readers() -> list[int]:
        return [int(c["id"]) for c in store.client_list() if c["cmd"] == "xread"]

    one = cluster("tcp.server")
    assert wait_until(lambda: bool(readers())), "the server never read the stream"
    [reader] = readers()
    two = cluster("tcp.server")
    alice, bob = connect(one.address, "alice"), connect(two.address, "bob")
    assert alice.expect("joined")["name"] == "bob"
    store.client_kill_filter(_id=str(reader))
    said = [f"b{i}" for i in range(40)]
    for text in said:
        bob.send({"type": "say", "text": text})
        time.sleep(0.01)
    assert texts_until(alice.recv, len(said)) == said


def test_a_server_started_later_answers_history_oldest_first(
    cluster: Cluster, connect: Connect
) -> None:
    first = cluster("tcp.server")
    alice = connect(first.address, "alice")
    for i in range(5):
        alice.send({"type": "say", "text": f"m{i}"})
    assert texts_until(alice.recv, 5) == [f"m{i}" for i in range(5)]
    later = cluster("tcp.server")
    assert earlier_texts(connect(later.address, "bob")) == [f"m{i}" for i in range(5)]


def test_a_message_from_another_server_reaches_udp_users_at_once(
    cluster: Cluster, connect: Connect
) -> None:
    """The UDP server is woken by what Redis brings, not left to find it at its next sweep
    (up to half a second later): the median delay is a few milliseconds."""
    tcp, udp = cluster("tcp.server"), cluster("udp.server")
    alice = connect(tcp.address, "alice")
    bob = udp_join(udp, "bob")
    assert alice.expect("joined")["name"] == "bob"
    delays = []
    for i in range(9):
        time.sleep(0.05 + 0.03 * i)  # at every phase of the sweep
        sent = time.monotonic()
        alice.send({"type": "say", "text": f"m{i}"})
        assert bob.expect("msg")["text"] == f"m{i}"
        delays.append(time.monotonic() - sent)
    assert sorted(delays)[len(delays) // 2] < 0.1, delays
    bob.close()


def test_a_tcp_talker_is_slowed_not_refused_while_redis_is_behind(
    start_server: Start, redis_server: RedisServer, connect: Connect
) -> None:
    """Redis takes no writes for a while: past IN_FLIGHT events on their way, the TCP server
    stops reading the talker (TCP's flow control slows it) instead of refusing; once Redis
    takes them, every message arrives, in order, and none was refused."""
    server = start_server(
        "tcp.server", "--rate-limit", "0", "--redis", redis_server.url, "--lease", "10"
    )
    alice = connect(server.address, "alice")
    redis.Redis.from_url(redis_server.url).client_pause(1500, all=False)
    said = [f"m{i}" for i in range(IN_FLIGHT + 50)]
    alice.send_raw(b"".join(b'{"type":"say","text":"%s"}\n' % text.encode() for text in said))
    delivered: list[str] = []
    while len(delivered) < len(said):
        frame = alice.recv()
        assert frame["type"] != "error", frame
        if frame["type"] == "msg":
            delivered.append(frame["text"])
    assert delivered == said
    assert "Traceback" not in server.log


def test_a_udp_server_that_cannot_keep_up_refuses_instead_of_queueing(
    start_server: Start, redis_server: RedisServer
) -> None:
    """UDP has no flow control to slow a talker with: past IN_FLIGHT events on their way
    through a Redis that takes no writes, messages are refused (``rate_limited``), and the ones
    accepted all arrive, in order, once it takes them."""
    server = start_server(
        "udp.server", "--rate-limit", "0", "--redis", redis_server.url, "--lease", "10"
    )
    bob = udp_join(server, "bob")
    redis.Redis.from_url(redis_server.url).client_pause(1500, all=False)
    said = [f"m{i}" for i in range(IN_FLIGHT + 50)]
    for text in said:
        bob.send({"type": "say", "text": text})
    delivered: list[str] = []
    refused = 0
    while len(delivered) + refused < len(said):
        frame = bob.recv()
        if frame["type"] == "error":
            assert frame["code"] == "rate_limited" and "busy" in frame["text"]
            refused += 1
        elif frame["type"] == "msg":
            delivered.append(frame["text"])
    assert delivered == said[: len(delivered)]
    assert IN_FLIGHT - 10 <= len(delivered) <= IN_FLIGHT + 1
    bob.send({"type": "say", "text": "later"})
    bob.expect("msg", text="later")
    bob.close()
    assert "Traceback" not in server.log


class HeldRoom:
    """A room with flow control (as the TCP server's) on a Redis that is stopped (SIGSTOP)
    with IN_FLIGHT + 1 of its events on their way: ``busy``. ``talk`` says one more on a
    thread of its own, held in ``wait_while_busy``. Redis must not stay stopped for long:
    past the backplane's socket timeout the link is lost."""

    def __init__(self, redis_server: RedisServer, room: str) -> None:
        self.redis_server = redis_server
        self.backplane = RedisBackplane(redis_server.url, room, history=10, lease=10)
        self.room: Room[Member] = Room(max_users=10, backplane=self.backplane, max_backlog=1 << 20)
        self.alice = Member()
        self.room.handle(self.alice, Hello(name="alice"))
        self.held = threading.Event()
        self.answer: bool | Exception | None = None
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        for i in range(IN_FLIGHT + 1):
            self.room.handle(self.alice, Say(text=f"m{i}"))
        assert self.backplane.busy

    def talk(self) -> threading.Thread:
        wait = self.backplane.wait_while_busy

        def watched() -> None:
            self.held.set()
            wait()

        self.backplane.wait_while_busy = watched  # type: ignore[method-assign]

        def say() -> None:
            try:
                self.answer = self.room.handle(self.alice, Say(text="held"))
            except Exception as exc:
                self.answer = exc

        talker = threading.Thread(target=say, name="talker", daemon=True)
        talker.start()
        assert self.held.wait(WAIT), "the say was not held"
        return talker

    def resume_redis(self) -> None:
        assert self.redis_server.proc is not None
        os.kill(self.redis_server.proc.pid, signal.SIGCONT)

    def texts(self) -> list[str]:
        entries = self.room.take(self.alice)
        return [e.message.text for e in entries if isinstance(e.message, Msg)]


def test_a_held_message_goes_on_once_redis_catches_up(redis_server: RedisServer) -> None:
    """Redis stopped with the room busy: a say waits in its reader's thread; Redis going on,
    the events come back, and the say is handled and arrives after them, in order."""
    held = HeldRoom(redis_server, "held")
    try:
        talker = held.talk()
        assert talker.is_alive() and held.answer is None
        held.resume_redis()
        talker.join(WAIT)
        assert held.answer is True
        said: list[str] = []

        def all_back() -> bool:
            said.extend(held.texts())
            return len(said) >= IN_FLIGHT + 2

        assert wait_until(all_back), "the messages never came back"
        assert said == [f"m{i}" for i in range(IN_FLIGHT + 1)] + ["held"]
    finally:
        held.resume_redis()
        held.room.close()


def test_a_held_message_is_refused_once_redis_is_lost(redis_server: RedisServer) -> None:
    """Redis stays stopped past the backplane's socket timeout: the link is lost, and the held
    reader wakes to refuse its message (``Unavailable``), it does not hang."""
    held = HeldRoom(redis_server, "lost")
    try:
        talker = held.talk()
        talker.join(redisroom.SOCKET_TIMEOUT + WAIT)
        assert isinstance(held.answer, Unavailable) and "cannot be reached" in str(held.answer)
    finally:
        held.resume_redis()
        held.room.close()


def test_a_held_message_is_refused_when_the_server_stops(redis_server: RedisServer) -> None:
    """The room closes while a reader is held: it wakes at once and refuses its message, so
    the server's shutdown never waits for it."""
    held = HeldRoom(redis_server, "stopping")
    closer = threading.Thread(target=held.room.close, name="closer", daemon=True)
    try:
        talker = held.talk()
        closer.start()
        talker.join(redisroom.SOCKET_TIMEOUT / 2)  # before the link could be lost instead
        assert isinstance(held.answer, Unavailable) and "stopping" in str(held.answer)
    finally:
        held.resume_redis()
        closer.join(WAIT)


def test_redis_back_without_its_data(start_server: Start, tmp_path: Path, connect: Connect) -> None:
    """A Redis that lost everything: each server finds its lease gone and claims its names again."""
    store = RedisServer(tmp_path, persist=False)
    try:
        args = ("--rate-limit", "0", "--redis", store.url, "--lease", LEASE)
        one = start_server("tcp.server", *args)
        alice = connect(one.address, "alice")
        store.stop()
        one.wait_for_log("lost Redis")
        store.start()
        one.wait_for_log("claimed 1 name")
        two = start_server("tcp.server", *args)  # it knows the room from Redis alone
        newcomer = connect(two.address)
        newcomer.send({"type": "hello", "name": "alice"})
        assert newcomer.expect("error")["code"] == "name_taken"
        bob = connect(two.address, "bob")
        alice.send({"type": "say", "text": "still here"})
        assert bob.expect("msg")["text"] == "still here"
    finally:
        store.kill()


def test_after_a_redis_restart_no_name_is_held_twice_and_nobody_joins_again(
    start_server: Start, tmp_path: Path, connect: Connect
) -> None:
    """Redis comes back empty and a server starts at once: the names of the users who never
    left are theirs again before it may give them out, and whoever knew them sees no joined.
    (A long lease: a server renews it only every quarter lease unless woken.)"""
    store = RedisServer(tmp_path, persist=False)
    try:
        args = ("--rate-limit", "0", "--redis", store.url, "--lease", "40")
        one, three = start_server("tcp.server", *args), start_server("tcp.server", *args)
        alice, bob = connect(one.address, "alice"), connect(three.address, "bob")
        assert alice.expect("joined")["name"] == "bob"
        store.stop()
        for server in (one, three):
            server.wait_for_log("lost Redis")
        store.start()
        two = start_server("tcp.server", *args)
        newcomer = connect(two.address)
        newcomer.send({"type": "hello", "name": "alice"})
        assert newcomer.expect("error")["code"] == "name_taken"
        for server in (one, three):
            server.wait_for_log("claimed 1 name")
        carol = connect(two.address, "carol")
        carol.send({"type": "who"})
        assert carol.expect("users")["names"] == ["alice", "bob", "carol"]
        for client in (alice, bob):
            assert client.expect("joined")["name"] == "carol"
            client.send({"type": "ping"})
            frames = []
            while (frame := client.recv())["type"] != "pong":
                frames.append(frame)
            assert [f for f in frames if f["type"] in ("joined", "left")] == [], frames
    finally:
        store.kill()


def test_ctrl_c_on_run_cluster_says_bye_before_redis_stops(connect: Connect) -> None:
    """Ctrl+C in the terminal reaches the servers, not Redis (stopped after them): a user gets
    the server's bye and no word that the room cannot be reached."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    base = free_port(4)  # two TCP servers, a UDP one and Redis
    child = pexpect.spawn(
        sys.executable,
        ["-m", "benchmarks.runcluster", "--port", str(base)],
        cwd=str(ROOT),
        encoding="utf-8",
        timeout=3 * WAIT,
    )
    try:
        child.expect("Ctrl\\+C stops them all")
        alice = connect(("127.0.0.1", base), "alice")
        child.sendintr()
        frames = []
        while (frame := alice.recv())["type"] != "bye":
            frames.append(frame)
        assert [f for f in frames if f["type"] == "error"] == []
        child.expect(pexpect.EOF)
        assert "Redis" not in child.before and "redis" not in child.before.lower()
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_a_server_s_own_events_come_back_as_the_entries_it_made(
    redis_server: RedisServer,
) -> None:
    """What a server published is read back from the stream in order, but not decoded again:
    the room gets the line it made with the stream's id spliced in (another server's events
    are decoded)."""
    backplane = RedisBackplane(redis_server.url, "reuse", history=10, lease=10)
    room: Room[Member] = Room(max_users=10, backplane=backplane)
    try:
        made = [Entry.checked(Msg(sender="alice", text=f"m{i}", ts=i)) for i in range(50)]
        with room.lock:
            for entry in made:
                backplane.publish(entry)
        other = redis.Redis.from_url(redis_server.url)
        assert wait_until(lambda: room.log_size() >= len(made)), "the events never came back"
        with room.lock:
            back = room._slice(0, len(made))
        ids = [str(entry_id, "ascii") for entry_id, _ in other.xrange("chat:{reuse}:log")]  # type: ignore[union-attr, arg-type]
        assert len(ids) == len(made)
        assert [e.message for e in back] == [e.message for e in made]
        assert (
            [e.line for e in back]
            == [  # the line made here, its id spliced in
                m.line[:-2] + f',"id":"{i}"}}\n'.encode() for m, i in zip(made, ids, strict=True)
            ]
        )
    finally:
        room.close()


def test_the_link_is_lost_and_regained_in_one_life_cycle(redis_server: RedisServer) -> None:
    """Redis stopped: the link is LOST, the room refuses what needs it and no name is given
    out. Started again: the link is READY (through REGAINING or not, whichever thread reaches
    Redis first), names are given out again once the hold after Redis's start is over, and a
    clean close ends it STOPPED."""
    Link = redisroom.Link
    backplane = RedisBackplane(redis_server.url, "link", history=10, lease=1)

    def link() -> redisroom.Link:  # read afresh each time: the threads move it
        return backplane.link

    assert link() is Link.CONNECTING and not backplane.ready
    room: Room[Member] = Room(max_users=10, backplane=backplane)
    try:
        assert link() is Link.READY and backplane.ready
        assert backplane.claim("alice", None)
        redis_server.stop()
        assert wait_until(lambda: link() is Link.LOST, WAIT)
        assert not backplane.ready
        with pytest.raises(Unavailable):
            backplane.claim("bob", None)
        redis_server.start()
        assert wait_until(lambda: link() is Link.READY, WAIT)
        assert backplane.ready

        def claimed() -> bool:
            try:
                return backplane.claim("bob", None)
            except Unavailable:  # the hold after Redis started, or the lease not renewed yet
                return False

        assert wait_until(claimed, WAIT)
    finally:
        room.close()
    assert link() is Link.STOPPED


def test_a_trickle_of_messages_costs_a_call_per_rest_not_a_call_per_message(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages published one at a time, closer together than the publisher's and the reader's
    rests, go to Redis and come back in shared calls: the publisher's calls begin at least
    PUBLISH_REST apart and the reader's reads end at least READ_REST apart, however the
    machine is loaded; all arrive, in order."""
    backplane = RedisBackplane(redis_server.url, "trickle", history=10, lease=10)
    room: Room[Member] = Room(max_users=10, backplane=backplane)
    calls: list[int] = []
    reads: list[int] = []
    send_batch, receive = backplane._send_batch, room.receive

    def counted_send(wire: Any, batch: list[Any]) -> None:
        calls.append(len(batch))
        send_batch(wire, batch)

    def counted_receive(entries: list[Any]) -> None:
        reads.append(len(entries))
        receive(entries)

    monkeypatch.setattr(backplane, "_send_batch", counted_send)
    monkeypatch.setattr(room, "receive", counted_receive)
    try:
        made = [Entry.checked(Msg(sender="alice", text=f"m{i}", ts=i)) for i in range(60)]
        began = time.monotonic()
        for entry in made:
            with room.lock:
                backplane.publish(entry)
            time.sleep(0.0005)
        deadline = time.monotonic() + WAIT
        while room.log_size() < len(made):
            assert time.monotonic() < deadline, "the events never came back"
            time.sleep(0.005)
        took = time.monotonic() - began
        with room.lock:
            back = room._slice(0, len(made))
        assert [e.message.text for e in back] == [f"m{i}" for i in range(60)]  # type: ignore[union-attr]
        assert sum(calls) == len(made) and sum(reads) == len(made)
        assert len(calls) <= took / redisroom.PUBLISH_REST + 1, (calls, took)
        assert len([n for n in reads if n]) <= took / redisroom.READ_REST + 1, (reads, took)
    finally:
        room.close()


def test_one_short_run_of_the_cluster_benchmark_prints_its_figures() -> None:
    """``python -m benchmarks.cluster --one redis``: one run of one set-up, one JSON line."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    argv = ["--one", "redis", "--clients", "4", "--rate", "2", "--duration", "0.5"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=12 * WAIT,
        check=True,
    )
    figures = json.loads(done.stdout.splitlines()[-1])
    assert (figures["setup"], figures["clients"], figures["rate"]) == ("one server + Redis", 4, 2)
    assert {"delivered_pct", "refused_pct", "p99_ms", "cpu_us_per_delivery"} <= figures.keys()


# ---- --history-file -----------------------------------------------------------


def kept_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM msg").fetchone()[0]
        return count


def wait_for_rows(path: Path, count: int) -> None:
    assert wait_until(lambda: kept_rows(path) >= count), f"the file never held {count} messages"


def earlier_texts(client: JsonClient) -> list[str]:
    client.send({"type": "history", "limit": 100})
    texts = []
    while (frame := client.recv())["type"] != "history_end":
        if frame.get("history"):
            texts.append(frame["text"])
    return texts


@pytest.mark.parametrize("module", ["tcp.server", "udp.server"])
def test_history_file_survives_a_restart_and_a_kill(
    start_server: Start, connect: Connect, tmp_path: Path, module: str
) -> None:
    path = tmp_path / "history.db"
    first = start_server("tcp.server", "--rate-limit", "0", "--history-file", str(path))
    alice = connect(first.address, "alice")
    for i in range(10):
        alice.send({"type": "say", "text": f"m{i}"})
    texts_until(alice.recv, 10)
    assert first.stop() == 0
    assert kept_rows(path) == 10

    second = start_server(module, "--rate-limit", "0", "--history-file", str(path))
    if module == "udp.server":
        peer = udp_join(second, "bob")
        peer.send({"type": "history", "limit": 100})
        assert [peer.expect("msg", history=True)["text"] for _ in range(10)] == [
            f"m{i}" for i in range(10)
        ]
        peer.close()
        return
    bob = connect(second.address, "bob")
    assert earlier_texts(bob) == [f"m{i}" for i in range(10)]
    for i in range(10, 20):
        bob.send({"type": "say", "text": f"m{i}"})
    texts_until(bob.recv, 10)
    wait_for_rows(path, 20)
    for i in range(20, 30):
        bob.send({"type": "say", "text": f"m{i}"})
    texts_until(bob.recv, 10)
    second.stop(signal.SIGKILL)

    third = start_server("tcp.server", "--history-file", str(path))
    kept = earlier_texts(connect(third.address, "carol"))
    assert kept == [f"m{i}" for i in range(len(kept))] and len(kept) >= 20


@pytest.mark.parametrize("bad", ["garbage", "directory", "missing/dir"])
def test_history_file_refuses_a_file_it_cannot_use(tmp_path: Path, bad: str) -> None:
    path = tmp_path / bad
    if bad == "garbage":
        path.write_bytes(b"this is not a database, it only says so at length\n" * 100)
    elif bad == "directory":
        path.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "tcp.server", "--port", "0", "--history-file", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    assert re.fullmatch(r"cannot use \S+ as --history-file: .+\n", done.stderr), done.stderr


@pytest.mark.parametrize("second", ["tcp.server", "udp.server"])
def test_a_second_server_on_the_same_history_file_refuses_to_start(
    start_server: Start, connect: Connect, tmp_path: Path, second: str
) -> None:
    path = tmp_path / "history.db"
    first = start_server("tcp.server", "--rate-limit", "0", "--history-file", str(path))
    done = subprocess.run(
        [sys.executable, "-m", second, "--port", "0", "--history-file", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    assert re.fullmatch(
        r"cannot use \S+ as --history-file: another server is using it .*\n", done.stderr
    ), done.stderr
    alice = connect(first.address, "alice")
    for i in range(60):
        alice.send({"type": "say", "text": f"m{i}"})
    texts_until(alice.recv, 60)
    assert first.stop() == 0
    assert kept_rows(path) == 60


def test_without_the_redis_package_redis_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n"
    )
    for module in ("tcp.server", "udp.server"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--port", "0", "--redis", "redis://127.0.0.1:1/0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
        )
        assert done.returncode == 1
        assert (
            done.stderr.startswith("--redis needs the redis package")
            and done.stderr.count("\n") == 1
        )


def test_unreachable_redis_is_one_line() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tcp.server",
            "--port",
            "0",
            "--redis",
            f"redis://127.0.0.1:{free_port()}/0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("cannot use Redis at") and done.stderr.count("\n") == 1


def test_the_chat_alone_imports_only_the_standard_library() -> None:
    code = (
        "import sys, tcp.server, udp.server, common.room.sharing\n"
        "assert 'redis' not in sys.modules and 'sqlite3' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=WAIT)


@pytest.mark.parametrize("module", ["udp.server", "tcp.server"])
def test_a_hello_waiting_for_redis_stalls_nobody_else(
    cluster: Cluster, connect: Connect, redis_server: RedisServer, module: str
) -> None:
    """Redis paused (SIGSTOP), a newcomer's hello waits for its claim's answer; meanwhile a
    user already in answers pings at once: the claim waits outside every transport's lock
    (and outside the one thread that receives every UDP datagram)."""
    server = cluster(module)
    bob: UdpPeer | JsonClient
    if module == "udp.server":
        bob = udp_join(server, "bob")
        newcomer: UdpPeer | JsonClient = UdpPeer(server.address)
    else:
        bob, newcomer = connect(server.address, "bob"), connect(server.address)
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        if isinstance(newcomer, UdpPeer):
            newcomer.send({"type": "hello", "name": "carol"}, envelope=False)
        else:
            newcomer.send({"type": "hello", "name": "carol"})
        time.sleep(0.2)  # the hello is on its way to Redis by now (it only delays the pings)
        for _ in range(3):
            bob.send({"type": "ping"})
            bob.expect("pong", timeout=WAIT)
        if isinstance(newcomer, UdpPeer):
            assert newcomer.datagram(0.001) is None, "the hello was answered before the pings"
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    answer = newcomer.recv()
    assert answer["type"] in ("welcome", "error"), answer
    assert "Traceback" not in server.log


def test_a_server_back_after_the_hold_never_shares_a_name(
    start_server: Start, tmp_path: Path, connect: Connect
) -> None:
    """Redis comes back empty while a server is frozen for longer than the restart hold: a
    server started meanwhile may give the frozen server's user's name to a newcomer. When the
    frozen server comes back, its user is told the name is gone and its session ends: the room
    never has two users of one name."""
    store = RedisServer(tmp_path, persist=False)
    try:
        args = ("--rate-limit", "0", "--redis", store.url, "--lease", "40")
        one, two = start_server("tcp.server", *args), start_server("tcp.server", *args)
        alice, bob = connect(one.address, "alice"), connect(two.address, "bob")
        assert alice.expect("joined")["name"] == "bob"
        store.stop()
        for client in (alice, bob):  # written: the writers are at rest
            assert "cannot be reached" in client.expect("error", code="rate_limited")["text"]
        assert one.proc is not None
        os.kill(one.proc.pid, signal.SIGSTOP)
        try:
            store.start()
            two.wait_for_log("claimed 1 name")
            three = start_server("tcp.server", *args)  # it waits out the hold before it listens
            newcomer = connect(three.address, "alice")  # welcomed
        finally:
            os.kill(one.proc.pid, signal.SIGCONT)
        assert alice.expect("error", code="name_taken")
        assert alice.expect("bye")
        carol = connect(one.address)
        deadline = time.monotonic() + WAIT
        while True:  # refused until the server has seen Redis again for itself
            carol.send({"type": "hello", "name": "carol"})
            answer = carol.recv()
            if answer["type"] == "welcome" or time.monotonic() > deadline:
                break
            assert answer["code"] == "rate_limited", answer
            time.sleep(0.1)
        assert answer["type"] == "welcome", answer
        carol.send({"type": "who"})
        assert carol.expect("users")["names"] == ["alice", "bob", "carol"]
        newcomer.send({"type": "say", "text": "still here"})
        assert carol.expect("msg", text="still here")["from"] == "alice"
        assert "Traceback" not in one.log + two.log + three.log
    finally:
        store.kill()


def test_an_outage_longer_than_the_lease_loses_no_name(
    cluster: Cluster, connect: Connect, redis_server: RedisServer
) -> None:
    """Redis away for three leases, then back with its data: every lease ended meanwhile by
    Redis's clock, yet nobody is taken out (each server renews before any may reap), every
    name is still its user's, and nobody is seen to leave or join again."""
    one, two = cluster("tcp.server"), cluster("tcp.server")
    alice, bob = connect(one.address, "alice"), connect(two.address, "bob")
    assert alice.expect("joined")["name"] == "bob"
    redis_server.stop()
    for client in (alice, bob):
        assert "cannot be reached" in client.expect("error", code="rate_limited")["text"]
    time.sleep(3 * float(LEASE))  # the outage: longer than the lease
    redis_server.start()
    for server in (one, two):
        server.wait_for_log("Redis is back")
    three = cluster("tcp.server")
    for name in ("alice", "bob"):
        newcomer = connect(three.address)
        deadline = time.monotonic() + WAIT
        while True:
            newcomer.send({"type": "hello", "name": name})
            answer = newcomer.recv()
            if answer.get("code") != "rate_limited" or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the restart hold
        assert answer.get("code") == "name_taken", answer
    time.sleep(2 * float(LEASE))  # past the grace in which nobody is reaped
    for client in (alice, bob):
        client.send({"type": "ping"})
        frames = []
        while (frame := client.recv())["type"] != "pong":
            frames.append(frame)
        assert [f for f in frames if f["type"] in ("joined", "left")] == [], frames
