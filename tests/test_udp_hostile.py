"""The UDP server against floods, forgeries and peers that never ack: real server, loopback."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from common.protocol import reliable
from common.protocol.limits import Limits
from common.protocol.reliable import MAX_BACKLOG, WINDOW
from common.server import core
from common.server.core import DEFAULT_MAX_WAITING_PER_ADDRESS
from tests.conftest import WAIT, ServerProcess
from tests.test_udp_server import QUIET, Peers, UdpPeer, peers, server, stop_and_log
from udp.server import UdpChatServer

Start = Callable[..., ServerProcess]

__all__ = ["peers", "server"]


def frames_in(peer: UdpPeer, timeout: float = QUIET) -> list[dict[str, Any]]:
    """The frames that reach ``peer`` within ``timeout``."""
    return [json.loads(data) for data in peer.silence(timeout)]


def hello_flood(server: tuple[str, int], count: int, sockets_at_once: int = 500) -> None:
    """``count`` hellos, each from a source port of its own, as fast as they go out."""
    for start in range(0, count, sockets_at_once):
        socks = [
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(min(sockets_at_once, count - start))
        ]
        try:
            for i, sock in enumerate(socks, start):
                sock.sendto(b'{"type":"hello","name":"flood%d"}' % i, server)
        finally:
            for sock in socks:
                sock.close()


# ---- a flood of hellos ------------------------------------------------------


def test_a_hello_flood_does_not_knock_established_sessions_off(
    start_server: Start, peers: Peers
) -> None:
    server = start_server("udp.server", "--session-timeout", "1.5", "--rate-limit", "0")
    alice, bob = peers(server), peers(server)
    alice.hello("alice")
    bob.hello("bob")
    alice.expect("joined", name="bob")

    started = time.monotonic()
    hello_flood(server.address, 4000)
    assert time.monotonic() - started < 1.0, "the flood took too long to be one"
    seen: list[dict[str, Any]] = []
    while time.monotonic() - started < 2.0:  # longer than the session timeout
        for peer in (alice, bob):
            peer.send({"type": "ping"})
            seen += frames_in(peer, 0.1)
    said = time.monotonic()
    alice.send({"type": "say", "text": "still here"})
    bob.expect("msg", timeout=1.0, text="still here")
    assert time.monotonic() - said < 1.0
    left = [f for f in seen if f["type"] == "left" and f["name"] in ("alice", "bob")]
    assert left == [], "an established session was ended during the flood"

    carol = peers(server)
    for _ in range(5):  # as a client does: hello again each second, five times
        carol.send({"type": "hello", "name": "carol"}, envelope=False)
        if any(f["type"] == "welcome" for f in frames_in(carol, 1.0)):
            break
    else:
        raise AssertionError("a newcomer was not admitted after the flood")


def test_hellos_being_acted_on_hold_strangers_places_with_no_share_per_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A UDP stranger is a hello the room has yet to act on. Past ``MAX_WAITING`` of them a
    new one is dropped unanswered (its client says hello again), and once one is acted on its
    place is free; an address that is not proven has no share (``--max-waiting-per-address``
    is TCP's). The server runs in this process and its ``udp-hello`` threads are not
    started, so the hellos stay under way till the test acts."""
    bound = DEFAULT_MAX_WAITING_PER_ADDRESS + 2
    monkeypatch.setattr(core, "MAX_WAITING", bound)
    server = UdpChatServer(Limits(rate_limit=0), port=0)
    peers = [UdpPeer(server.address) for _ in range(bound + 1)]  # all from 127.0.0.1

    def hello(peer: UdpPeer, name: str) -> None:
        data = json.dumps({"type": "hello", "name": name}).encode()
        with server._lock:
            server.inbox.on_datagram(data, peer.address, time.monotonic())

    try:
        for n, peer in enumerate(peers):
            hello(peer, f"p{n}")
        assert len(server.registry.by_address) == bound
        assert server.registry.dropped["admission"] == 1
        filed = server.inbox.hellos.get()
        assert filed is not None
        server._act_on_hello(*filed)  # as a udp-hello thread does
        with server._lock:
            server.registry.flush(time.monotonic())
        assert peers[0].expect("welcome")["name"] == "p0"
        assert peers[-1].silence() == [], "the hello past the bound was answered"
        hello(peers[-1], "late")  # its client's hello again, a second later
        assert server.registry.by_address.get(peers[-1].address) is not None
        assert server.registry.dropped["admission"] == 1
    finally:
        server.sock.close()
        for peer in peers:
            peer.close()


# ---- datagrams without the token ----------------------------------------------


def test_datagrams_without_the_token_get_few_answers_and_end_no_session(
    start_server: Start, peers: Peers
) -> None:
    server = start_server("udp.server", "-v")  # the default rate limit: 20 a second, 50 at once
    alice, bob, carol = peers(server), peers(server), peers(server)
    carol.hello("carol")
    welcomes = {alice: alice.hello("alice"), bob: bob.hello("bob", reliable=True)}
    bob.ack(welcomes[bob]["seq"])
    alice.expect("joined", name="bob")

    hostile = [
        b"x",
        b'{"type":"hello","name":"bob"}',
        b'{"type":"hello","name":"mallory"}',
        b'{"type":"say","text":"forged"}',
        b'{"type":"say","text":"forged","session":"%s"}' % (b"0" * 32),
    ]
    for peer in (alice, bob):  # what anyone may send with a session's source address
        for i in range(2000):
            peer.send_raw(hostile[i % len(hostile)])
    for peer in (alice, bob):
        answers = frames_in(peer)
        assert 1 <= len(answers) <= 12, f"{len(answers)} answers to 2000 datagrams"
        for answer in answers:  # the welcome again is the first one; the rest have no seq
            assert answer == welcomes[peer] if answer["type"] == "welcome" else "seq" not in answer
        assert frames_in(peer) == [], "an answer was retransmitted"

    for peer in (alice, bob):  # their own frames are not rate limited: the flood was not theirs
        for i in range(10):
            seq = peer.send({"type": "say", "text": f"{peer.address[1]} {i}"})
            if peer is bob:
                bob.expect("ack", seq=seq)
    texts = [carol.expect("msg")["text"] for _ in range(20)]
    assert len(set(texts)) == 20
    for frame in [*bob.received, *frames_in(bob, 0.1)]:  # so that shutdown need not wait
        if frame["type"] != "ack" and "seq" in frame:
            bob.ack(frame["seq"])
    assert not re.search(r"left \((?!shutdown)", stop_and_log(server)), "a session was ended"


def test_a_forged_ack_clears_nothing(server: ServerProcess, peers: Peers) -> None:
    alice, mallory = peers(server), peers(server)
    welcome = alice.hello("alice", reliable=True)
    alice.ack(welcome["seq"])
    alice.send({"type": "ping"})
    pong = alice.expect("pong")
    for forged in (
        {"type": "ack", "seq": pong["seq"]},
        {"type": "ack", "seq": pong["seq"], "session": "0" * 32},
    ):
        alice.send_raw(json.dumps(forged).encode())
    stolen = {"type": "ack", "seq": pong["seq"], "session": alice.token}
    mallory.send_raw(json.dumps(stolen).encode())
    again = alice.expect("pong", timeout=0.5)
    assert again == pong, "a forged ack stopped the retransmission"
    alice.ack(pong["seq"])
    assert frames_in(alice, 0.5) == []


# ---- seqs far off -------------------------------------------------------------


def test_a_far_future_seq_does_not_mute_a_raw_session(server: ServerProcess, peers: Peers) -> None:
    alice, bob = peers(server), peers(server)
    alice.hello("alice")
    bob.hello("bob")
    for text in ("one", "two"):
        alice.send({"type": "say", "text": text})
        bob.expect("msg", timeout=1.0, text=text)
    wild = {"type": "say", "text": "wild", "session": alice.token, "seq": 10**18}
    alice.send_raw(json.dumps(wild).encode())
    bob.expect("msg", timeout=1.0, text="wild")
    for text in ("three", "four"):  # the numbering goes on from 3
        alice.send({"type": "say", "text": text})
        bob.expect("msg", timeout=1.0, text=text)
    alice.seq -= 1
    alice.send({"type": "say", "text": "four"})  # a repeat is still one
    alice.send({"type": "hello", "name": "alice"}, envelope=False)  # a client starting over
    alice.expect("welcome")
    alice.seq = 0
    alice.send({"type": "say", "text": "five"})
    bob.expect("msg", timeout=1.0, text="five")
    assert [f["text"] for f in frames_in(bob) if f["type"] == "msg"] == []
    assert "6 received, 0 lost, 1 repeated, 0 reordered, 3 restarted" in stop_and_log(server)


# ---- reliable sessions that never ack -----------------------------------------


def memory_kib(server: ServerProcess, field: str) -> int:
    """A line of the server's /proc status: VmRSS (now) or VmHWM (the peak), in KiB."""
    with open(f"/proc/{server.proc.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise KeyError(field)


def test_reliable_sessions_that_never_ack_hold_bounded_memory(
    start_server: Start, peers: Peers
) -> None:
    # History's frames are shared by every answer (each held once, plus its cost per holder):
    # 40 sessions holding ten answers each pass 4 MB between them.
    server = start_server(
        "udp.server",
        "--rate-limit",
        "0",
        "--history",
        "100",
        "--max-held-bytes",
        str(4 << 20),
        "-v",
    )
    alice = peers(server)
    alice.hello("alice")
    for i in range(100):  # 100 messages of about 6 KB for history to answer with
        alice.send({"type": "say", "text": f"{i:04d}" + "字" * 1996})
    alice.expect("msg", text=f"{99:04d}" + "字" * 1996)
    before = memory_kib(server, "VmRSS")

    silent = [peers(server) for _ in range(40)]
    for i, peer in enumerate(silent):  # never acks: every frame is held for it
        peer.send({"type": "hello", "name": f"silent{i}", "reliable": True}, envelope=False)
        peer.token = peer.expect("welcome")["session"]
        for _ in range(10):  # ten answers of 101 frames: 6 MB each session, under its backlog
            peer.send({"type": "history", "limit": 100})
    alice.send({"type": "ping"})
    alice.expect("pong")  # everything before it was handled
    grown = memory_kib(server, "VmHWM") - before
    assert grown < 80 << 10, f"the server grew by {grown >> 10} MiB"
    server.wait_for_log(r"silent\d+ left \(too_slow\)")
    alice.send({"type": "say", "text": "still served"})
    alice.expect("msg", text="still served")


def test_reliable_sessions_that_never_fill_a_gap_hold_bounded_memory(
    start_server: Start, peers: Peers
) -> None:
    """Each session sends its window but its first frame, 8 KB a frame, and keeps itself
    alive with pings: what they hold ahead of the gap counts in --max-held-bytes, and past
    it the session holding most ends as too_slow."""
    server = start_server("udp.server", "--rate-limit", "0", "--max-held-bytes", str(2 << 20))
    alice = peers(server)
    alice.hello("alice")
    text = "x" * 7900
    holders = [peers(server) for _ in range(6)]  # 6 x 63 x 8 KB: 3 MB ahead of their gaps
    for i, peer in enumerate(holders):
        peer.hello(f"gap{i}", reliable=True)
        peer.seq = 1  # seq 1 never comes
        for _ in range(WINDOW - 1):
            peer.send({"type": "say", "text": text})
        peer.send_raw(json.dumps({"type": "ping", "session": peer.token}).encode())
    gone = {alice.expect("left", reason="too_slow")["name"] for _ in range(2)}
    assert gone <= {f"gap{i}" for i in range(6)}
    alice.send({"type": "say", "text": "still served"})
    alice.expect("msg", text="still served")
    assert "Traceback" not in server.log


def test_a_reliable_session_whose_backlog_overflows_ends_too_slow(
    server: ServerProcess, peers: Peers
) -> None:
    alice, slow = peers(server), peers(server)
    alice.hello("alice")
    slow.hello("slow", reliable=True)  # and never acks
    alice.expect("joined", name="slow")
    for i in range(WINDOW + MAX_BACKLOG):
        alice.send({"type": "say", "text": f"m{i}"})
    left = alice.expect("left", name="slow")
    assert left["reason"] == "too_slow"


def test_a_repeated_frame_gets_two_acks(server: ServerProcess, peers: Peers) -> None:
    alice = peers(server)
    welcome = alice.hello("alice", reliable=True)
    alice.ack(welcome["seq"])
    ping = json.dumps({"type": "ping", "seq": 1, "session": alice.token}).encode()
    alice.send_raw(ping)
    assert alice.recv() == {"type": "ack", "seq": 1}
    alice.ack(alice.expect("pong")["seq"])
    assert frames_in(alice) == [], "a frame's first arrival gets one ack"
    alice.send_raw(ping)
    assert frames_in(alice) == [{"type": "ack", "seq": 1}] * 2, "a repeat gets two, and no pong"


def test_a_reliable_session_whose_frames_go_unacked_ends_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one test that needs the retransmission clock faster than the protocol's 200 ms:
    the server runs in this process, on loopback, with its first timeout at 10 ms."""
    monkeypatch.setattr(reliable, "INITIAL_RTO", 0.01)
    server = UdpChatServer(Limits(rate_limit=0), port=0)
    thread = threading.Thread(target=server.serve_forever, name="test-udp-server")
    thread.start()
    bob, alice = UdpPeer(server.address), UdpPeer(server.address)
    try:
        welcome = bob.hello("bob", reliable=True)
        bob.ack(welcome["seq"])
        alice.hello("alice")  # bob never acks its joined: given up after 6 tries, 0.63 s
        started = time.monotonic()
        while time.monotonic() - started < WAIT:
            bob.send({"type": "ping"})  # bob is not silent: only its acks are missing
            for frame in frames_in(alice, 0.1):
                if frame["type"] == "left":
                    assert (frame["name"], frame["reason"]) == ("bob", "timeout")
                    assert time.monotonic() - started > 0.5
                    return
        raise AssertionError("bob was never given up")
    finally:
        server.stop()
        thread.join(WAIT)
        bob.close()
        alice.close()


def test_reliable_sessions_have_no_more_than_the_budget_in_flight_and_take_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three 1.0 reliable sessions that ack only when told, each owed 20 frames and more, on a
    server in this process whose first timeout is a minute away: whatever is not acked is
    in flight. Between them they get exactly ``--max-in-flight`` frames, then as many more
    as they ack, round robin."""
    monkeypatch.setattr(reliable, "INITIAL_RTO", 60.0)
    budget = 10
    server = UdpChatServer(Limits(rate_limit=0), port=0, max_in_flight=budget)
    thread = threading.Thread(target=server.serve_forever, name="test-udp-server")
    thread.start()
    alice = UdpPeer(server.address)
    slow = [UdpPeer(server.address) for _ in range(3)]
    try:
        alice.hello("alice")
        for i, peer in enumerate(slow):
            peer.ack(peer.hello(f"slow{i}", reliable=True)["seq"])
        for i in range(20):
            alice.send({"type": "say", "text": f"m{i}"})
        got = _frames_out(alice, slow)
        assert sum(len(seqs) for seqs in got) == budget
        for peer, seqs in zip(slow, got, strict=True):
            for seq in sorted(seqs):
                peer.ack(seq)
        more = _frames_out(alice, slow)
        assert not any(seqs & again for seqs, again in zip(got, more, strict=True))
        counts = [len(seqs) for seqs in more]
        assert sum(counts) == budget, "as many as were acked"
        assert max(counts) - min(counts) <= 1, f"in turn: {counts}"
    finally:
        server.stop()
        thread.join(WAIT)
        for peer in [alice, *slow]:
            peer.close()


def _frames_out(alice: UdpPeer, peers: list[UdpPeer]) -> list[set[int]]:
    """The seqs of the frames sent to each of ``peers`` since the last call, once ``alice``
    had two round trips: all that was read before them was handled and what it gave sent,
    so it waits in their sockets."""
    for _ in range(2):
        alice.send({"type": "ping"})
        alice.expect("pong")
    got: list[set[int]] = []
    for peer in peers:
        seqs: set[int] = set()
        while (data := peer.datagram(0.001)) is not None:
            seqs.add(json.loads(data)["seq"])
        got.append(seqs)
    return got


def test_a_dm_to_nobody_is_no_such_user(server: ServerProcess, peers: Peers) -> None:
    alice = peers(server)
    alice.hello("alice")
    seq = alice.send({"type": "dm", "to": "nobody", "text": "psst"})
    error = alice.expect("error")
    assert error["code"] == "no_such_user" and "nobody" in error["text"]
    assert error["seq"] == seq + 1, "it comes in the session, after the welcome"


# ---- shutdown -----------------------------------------------------------------


def test_shutdown_waits_for_reliable_sessions_to_ack_bye(
    server: ServerProcess, peers: Peers
) -> None:
    careful = peers(server)
    welcome = careful.hello("careful", reliable=True)
    careful.ack(welcome["seq"])
    server.proc.send_signal(signal.SIGTERM)
    bye = careful.expect("bye")
    assert careful.expect("bye", timeout=1.0) == bye, "bye is sent again until acked"
    acked = time.monotonic()
    careful.ack(bye["seq"])
    assert server.proc.wait(WAIT) == 0
    assert time.monotonic() - acked < 0.5, "the ack of bye did not end the wait"
