"""Resume after a lost connection (protocol 1.2) end to end: real servers, real sockets.

A connection is "lost" the way it is in life: closed under the client without
a ``bye``, or left open and silent (half open: no RST ever comes), or the
server killed and started again on its ``--history-file``.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from common.protocol.limits import Limits
from common.room.room import Stage
from tests.conftest import WAIT, JsonClient, RedisServer, ServerProcess, wait_until
from tests.test_cluster import LEASE
from tests.test_udp_server import Peers, UdpPeer, peers
from udp.server import UdpChatServer

Start = Callable[..., ServerProcess]
Connect = Callable[..., JsonClient]
QUIET = 0.3
"""How long to listen to be sure nothing more comes (a negative check)."""

__all__ = ["peers"]


class Resumer:
    """A TCP client that can resume: it keeps ``session``, ``epoch`` and the last ``id``."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.name = name
        self.session = self.epoch = ""
        self.after: str | None = None
        self.texts: list[str] = []
        self.client = self._hello(address, None)

    def _hello(self, address: tuple[str, int], resume: dict[str, Any] | None) -> JsonClient:
        client = JsonClient(address)
        hello: dict[str, Any] = {"type": "hello", "name": self.name, "resumable": True}
        if resume is not None:
            hello["resume"] = resume
        client.send(hello)
        welcome = client.expect("welcome")
        self.session, self.epoch = welcome["session"], welcome["epoch"]
        if self.after is None or resume is None:
            self.after = welcome["last"]
        return client

    def resume(self, address: tuple[str, int]) -> dict[str, Any]:
        """Connect again, resuming; read the answer up to ``history_end``, which it returns."""
        ask = {"session": self.session, "epoch": self.epoch, "after": self.after}
        self.client = self._hello(address, ask)
        while (frame := self.client.recv())["type"] != "history_end":
            self.see(frame)
        return frame

    def see(self, frame: dict[str, Any]) -> None:
        if "id" in frame:
            self.after = frame["id"]
        if frame["type"] == "msg":
            self.texts.append(frame["text"])

    def read_until(self, text: str) -> None:
        while text not in self.texts:
            self.see(self.client.recv())


def frames_until(client: JsonClient, text: str) -> list[dict[str, Any]]:
    """Every frame up to the ``msg`` saying ``text``."""
    got = []
    while True:
        frame = client.recv()
        got.append(frame)
        if frame["type"] == "msg" and frame["text"] == text:
            return got


def no_left_or_joined(frames: list[dict[str, Any]]) -> bool:
    return not any(f["type"] in ("left", "joined") for f in frames)


@pytest.fixture
def server(start_server: Start) -> ServerProcess:
    return start_server("tcp.server", "--rate-limit", "0")


def test_resume_after_a_closed_connection_misses_nothing_and_nobody_sees_it(
    server: ServerProcess, connect: Connect
) -> None:
    alice = connect(server.address, "alice")
    bob = Resumer(server.address, "bob")
    alice.expect("joined", name="bob")
    alice.send({"type": "say", "text": "before"})
    bob.read_until("before")
    bob.client.close()  # no bye: the connection is lost
    for text in ("missed 1", "missed 2"):
        alice.send({"type": "say", "text": text})
    seen = frames_until(alice, "missed 2")  # said before bob is back
    end = bob.resume(server.address)
    assert end == {"type": "history_end", "count": 2, "resumed": True}
    assert bob.texts == ["before", "missed 1", "missed 2"]
    alice.send({"type": "say", "text": "live"})
    bob.read_until("live")
    assert bob.texts == ["before", "missed 1", "missed 2", "live"]
    assert no_left_or_joined(seen + frames_until(alice, "live"))


def test_resume_while_the_old_connection_is_half_open_does_not_wait_for_keepalive(
    server: ServerProcess, connect: Connect
) -> None:
    alice = connect(server.address, "alice")
    bob = Resumer(server.address, "bob")
    old = bob.client  # stays open and silent: to the server it looks alive
    alice.expect("joined", name="bob")
    alice.send({"type": "say", "text": "one"})
    alice.expect("msg", text="one")
    started = time.monotonic()
    end = bob.resume(server.address)
    assert time.monotonic() - started < WAIT
    assert end["resumed"] is True
    assert bob.texts == ["one"]
    assert old.closed()  # closed by the server, without a word to anyone
    alice.send({"type": "say", "text": "two"})
    assert no_left_or_joined(frames_until(alice, "two"))


def test_resume_at_once_after_connecting_and_twice_in_a_row(
    server: ServerProcess, connect: Connect
) -> None:
    bob = Resumer(server.address, "bob")
    end = bob.resume(server.address)  # nothing said since the welcome: after is its last
    assert end == {"type": "history_end", "count": 0, "resumed": True}
    alice = connect(server.address, "alice")
    alice.send({"type": "say", "text": "x"})
    bob.read_until("x")
    bob.client.close()
    assert bob.resume(server.address)["resumed"] is True
    bob.client.close()
    alice.send({"type": "say", "text": "y"})
    alice.expect("msg", text="y")
    assert bob.resume(server.address)["count"] == 1
    assert bob.texts == ["x", "y"]


def test_past_the_grace_the_others_are_told_only_then(
    start_server: Start, connect: Connect
) -> None:
    server = start_server("tcp.server", "--rate-limit", "0", "--resume-grace", "0.5")
    alice = connect(server.address, "alice")
    bob = Resumer(server.address, "bob")
    alice.expect("joined", name="bob")
    lost = time.time() * 1000
    bob.client.close()
    left = alice.expect("left", name="bob")
    assert left["reason"] == "disconnected"
    assert left["ts"] >= lost + 400
    # Now an ordinary join, still with the messages it missed.
    end = bob.resume(server.address)
    assert end == {"type": "history_end", "count": 0, "resumed": True}
    alice.expect("joined", name="bob")


def test_a_client_that_does_not_ask_to_resume_leaves_at_once_as_in_1_1(
    server: ServerProcess, connect: Connect
) -> None:
    alice = connect(server.address, "alice")
    plain = JsonClient(server.address)
    plain.send({"type": "hello", "name": "plain"})
    welcome = plain.recv()
    assert {k: welcome[k] for k in ("type", "name", "users", "count")} == {
        "type": "welcome",
        "name": "plain",
        "users": ["alice", "plain"],
        "count": 2,
    }
    assert {"session", "epoch", "last"} <= welcome.keys()  # every v1.2 welcome has them
    plain.close()
    assert alice.expect("left", name="plain")["reason"] == "disconnected"


def test_a_restart_on_the_history_file_resumes(
    start_server: Start, connect: Connect, tmp_path: Path
) -> None:
    path = tmp_path / "history.db"
    first = start_server("tcp.server", "--rate-limit", "0", "--history-file", str(path))
    bob = Resumer(first.address, "bob")
    alice = connect(first.address, "alice")
    alice.send({"type": "say", "text": "before"})
    bob.read_until("before")
    wait_for_file(first, path)
    first.stop(signal.SIGKILL)

    second = start_server("tcp.server", "--rate-limit", "0", "--history-file", str(path))
    carol = connect(second.address, "carol")
    carol.send({"type": "say", "text": "after the restart"})
    carol.expect("msg", text="after the restart")
    end = bob.resume(second.address)
    assert end == {"type": "history_end", "count": 1, "resumed": True}
    assert bob.texts == ["before", "after the restart"]


def test_a_restart_in_memory_is_a_new_epoch_resumed_false(start_server: Start) -> None:
    first = start_server("tcp.server")
    bob = Resumer(first.address, "bob")
    first.stop(signal.SIGKILL)
    second = start_server("tcp.server")
    assert bob.resume(second.address) == {"type": "history_end", "count": 0, "resumed": False}


def wait_for_file(server: ServerProcess, path: Path) -> None:
    """The history file has written its batch (it does so at least every tenth of a second)."""

    def written() -> bool:
        with sqlite3.connect(path) as db:
            return bool(db.execute("SELECT count(*) FROM msg").fetchone()[0])

    assert wait_until(written), "the history file was never written"


# ---- UDP ------------------------------------------------------------------------


def udp_resumer(peer: UdpPeer, name: str, **extra: Any) -> dict[str, Any]:
    return peer.hello(name, resumable=True, **extra)


@pytest.mark.parametrize("reliable", [False, True])
def test_udp_resume_from_a_new_address_waits_for_it_to_prove_itself(
    start_server: Start, peers: Peers, reliable: bool
) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    alice = peers(server)
    alice.hello("alice")
    old = peers(server)
    welcome = udp_resumer(old, "bob", reliable=reliable)
    if reliable:
        old.ack(welcome["seq"])
    alice.expect("joined", name="bob")
    mark = len(alice.received)
    alice.send({"type": "say", "text": "missed"})
    alice.expect("msg", text="missed")
    # The NAT rebound: the same client, a new port; its old address hears no more.
    new = peers(server)
    resume = {"session": welcome["session"], "epoch": welcome["epoch"], "after": welcome["last"]}
    new.send(
        {"type": "hello", "name": "bob", "resumable": True, "reliable": reliable, "resume": resume},
        envelope=False,
    )
    again = new.expect("welcome")
    assert again["session"] == welcome["session"]
    # Nothing more (but the welcome again, if reliable) till a frame with the token comes.
    assert all(json.loads(d)["type"] == "welcome" for d in new.silence())
    new.token = again["session"]
    if reliable:
        new.ack(again["seq"])
    else:
        new.send({"type": "ping"})
    missed = new.expect("msg")
    assert (missed["text"], missed["history"]) == ("missed", True)
    if reliable:
        new.ack(missed["seq"])
    end = new.expect("history_end")
    assert (end["count"], end["resumed"]) == (1, True)
    alice.send({"type": "say", "text": "live"})
    assert new.expect("msg")["text"] == "live"
    seen = [json.loads(d) for d in old.silence()]
    assert not any(f.get("text") == "live" for f in seen)
    alice.expect("msg", text="live")
    assert not any(f["type"] in ("left", "joined") for f in alice.received[mark:])


def test_udp_silence_keeps_the_place_for_the_grace(start_server: Start, peers: Peers) -> None:
    server = start_server(
        "udp.server", "--rate-limit", "0", "--session-timeout", "0.5", "--resume-grace", "1"
    )
    alice = peers(server)
    alice.hello("alice")
    bob = peers(server)
    welcome = udp_resumer(bob, "bob")
    alice.expect("joined", name="bob")
    silent_since = time.time() * 1000
    while True:  # alice keeps talking; bob says nothing: its session times out, then its grace
        alice.send({"type": "ping"})
        frame = alice.recv()
        if frame["type"] == "left":
            break
    assert frame["name"] == "bob" and frame["reason"] == "timeout"
    assert frame["ts"] >= silent_since + 1400
    assert welcome["session"]


def test_a_udp_resume_to_a_spoofed_address_sends_nothing_but_the_welcome(
    start_server: Start, peers: Peers
) -> None:
    """Whoever knows the epoch can ask for every message: only the welcome goes out unproven."""
    server = start_server("udp.server", "--rate-limit", "0")
    alice = peers(server)
    welcome = alice.hello("alice")
    for i in range(20):
        alice.send({"type": "say", "text": f"m{i} " + "x" * 200})
    victim = peers(server)
    hello = {
        "type": "hello",
        "name": "mallory",
        "resume": {"session": "0" * 32, "epoch": welcome.get("epoch", ""), "after": None},
    }
    data = json.dumps(hello).encode()
    victim.send_raw(data)
    got = victim.silence()
    assert sum(len(d) for d in got) <= max(3 * len(data), 256)


def _joined(server: UdpChatServer, peer: UdpPeer) -> bool:
    with server._lock:
        session = server.registry.by_address.get(peer.address)
        return session is not None and session.stage is Stage.JOINED


def test_a_udp_resume_proved_mid_batch_is_answered_before_what_was_said_since() -> None:
    """The resume's answer waits for the new address to prove itself; then it goes out first.

    The server runs in this process and its receive loop is driven by hand, so that the
    proof and a message said since the last pass come in one batch, as they do in a busy room.
    """
    server = UdpChatServer(Limits(rate_limit=0), port=0)
    for thread in server._hello_threads:  # hellos are let in by these, as in serve_forever
        thread.start()
    bob, alice, moved = (UdpPeer(server.address) for _ in range(3))

    def feed(peer: UdpPeer, frame: dict[str, Any], session: str | None = None) -> None:
        if session is not None:
            frame = {**frame, "session": session}
        with server._lock:
            server.inbox.on_datagram(json.dumps(frame).encode(), peer.address, time.monotonic())

    def a_pass() -> None:
        with server._lock:
            server.registry.flush(time.monotonic())

    def hello(peer: UdpPeer, frame: dict[str, Any]) -> None:
        """A hello, and a pass once a ``udp-hello`` thread has let it in."""
        feed(peer, frame)
        assert wait_until(lambda: _joined(server, peer), WAIT)
        a_pass()

    try:
        hello(bob, {"type": "hello", "name": "bob"})
        token = bob.expect("welcome")["session"]
        hello(alice, {"type": "hello", "name": "alice", "resumable": True})
        welcome = alice.expect("welcome")
        feed(bob, {"type": "say", "text": "one", "seq": 1}, token)
        a_pass()
        after = alice.expect("msg", text="one")["id"]
        resume = {"session": welcome["session"], "epoch": welcome["epoch"], "after": after}
        hello(moved, {"type": "hello", "name": "alice", "resumable": True, "resume": resume})
        moved_token = moved.expect("welcome")["session"]
        feed(bob, {"type": "say", "text": "two", "seq": 2}, token)
        a_pass()  # held: the new address has not proved itself yet
        feed(bob, {"type": "say", "text": "three", "seq": 3}, token)
        feed(moved, {"type": "ping", "seq": 1}, moved_token)  # the proof, in the same pass
        a_pass()
        got = [moved.recv() for _ in range(4)]
        shown = [f.get("text") or f["type"] for f in got if f["type"] != "pong"]
        assert shown[:3] == ["history_end", "two", "three"]
    finally:
        for _ in server._hello_threads:
            server.inbox.hellos.put(None)
        server.sock.close()
        for peer in (bob, alice, moved):
            peer.close()


# ---- several servers through Redis ----------------------------------------------


def test_a_client_of_a_server_that_died_resumes_on_another(
    start_server: Start, connect: Connect, redis_server: RedisServer
) -> None:
    """Nobody sees it leave: the session is taken over before its server's lease ends."""
    args = ("--rate-limit", "0", "--redis", redis_server.url, "--lease", LEASE)
    doomed, survivor = start_server("tcp.server", *args), start_server("tcp.server", *args)
    alice = connect(survivor.address, "alice")
    bob = Resumer(doomed.address, "bob")
    alice.expect("joined", name="bob")
    alice.send({"type": "say", "text": "seen"})
    bob.read_until("seen")
    seen_id = bob.after
    doomed.stop(signal.SIGKILL)
    alice.send({"type": "say", "text": "missed"})
    missed = alice.expect("msg", text="missed")
    end = bob.resume(survivor.address)
    assert end == {"type": "history_end", "count": 1, "resumed": True}
    assert bob.texts == ["seen", "missed"]
    assert bob.after == missed["id"] and missed["id"] != seen_id  # one id, every server
    servers = redis.Redis.from_url(redis_server.url)
    assert wait_until(lambda: servers.zcard("chat:{lobby}:servers") <= 1, 15)  # its lease ends
    alice.send({"type": "say", "text": "end"})
    assert no_left_or_joined(frames_until(alice, "end"))
    bob.read_until("end")
    assert bob.texts == ["seen", "missed", "end"]
    # A server started now reads the takeover back from the stream with the rest.
    restarted = start_server("tcp.server", *args)
    carol = connect(restarted.address, "carol")
    carol.send({"type": "history", "limit": 3})
    earlier = [carol.expect("msg", history=True)["text"] for _ in range(3)]
    assert earlier == ["seen", "missed", "end"]


def test_a_resume_on_another_server_closes_the_half_open_connection(
    start_server: Start, connect: Connect, redis_server: RedisServer
) -> None:
    args = ("--rate-limit", "0", "--redis", redis_server.url, "--lease", LEASE)
    one, two = start_server("tcp.server", *args), start_server("tcp.server", *args)
    alice = connect(two.address, "alice")
    bob = Resumer(one.address, "bob")
    old = bob.client
    alice.expect("joined", name="bob")
    alice.send({"type": "say", "text": "x"})
    alice.expect("msg", text="x")
    end = bob.resume(two.address)
    assert end["resumed"] is True
    assert bob.texts == ["x"]
    assert old.closed()
    # Forged or stale sessions get nothing of it.
    thief = connect(one.address)
    forged = {"session": "0" * 32, "epoch": bob.epoch, "after": None}
    thief.send({"type": "hello", "name": "bob", "resume": forged})
    assert thief.expect("error")["code"] == "name_taken"
    alice.send({"type": "say", "text": "y"})
    assert no_left_or_joined(frames_until(alice, "y"))
    bob.read_until("y")


def test_a_new_redis_stream_is_a_new_epoch(start_server: Start, redis_server: RedisServer) -> None:
    args = ("--rate-limit", "0", "--redis", redis_server.url)
    one = start_server("tcp.server", *args)
    bob = Resumer(one.address, "bob")
    two = start_server("tcp.server", *args)
    assert Resumer(two.address, "carol").epoch == bob.epoch  # one room, one epoch
    one.stop(signal.SIGKILL)
    two.stop(signal.SIGKILL)
    redis_server.kill()  # nothing saved: the stream is gone
    redis_server.start()
    three = start_server("tcp.server", *args)
    assert bob.resume(three.address) == {"type": "history_end", "count": 0, "resumed": False}
