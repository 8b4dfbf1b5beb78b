"""Packet sessions (v1.2) end to end: the UDP server as a real process, real clients."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common.protocol.codec import Bye, Error, Hello, Msg, Say, Welcome
from common.protocol.packets import MAX_PACKET_BYTES, header, parse
from netsim.faults import FaultyRelay
from tests.conftest import WAIT, ServerProcess
from tests.test_udp_lossy import DEADLINE, Collector, load_in_namespace
from tests.test_udp_lossy import lossy_link as lossy_link  # the fixture, for usefixtures
from udp.client import UdpTransport
from udp.sockets import enlarge_buffers

Start = Callable[..., ServerProcess]
QUIET = 0.3


@pytest.fixture
def join() -> Iterator[Callable[..., Collector]]:
    """Join with a packet session (``join(address, "bob", reliable=True)``)."""
    collectors: list[Collector] = []

    def open_session(address: tuple[str, int], name: str, reliable: bool = False) -> Collector:
        transport = UdpTransport.connect(*address, reliable=reliable, packets=True)
        collector = Collector(transport)
        collectors.append(collector)
        transport.send(Hello(name=name))
        assert collector.wait(lambda ms: any(isinstance(m, Welcome) for m in ms), DEADLINE)
        return collector

    yield open_session
    for collector in collectors:
        collector.transport.close()


Join = Callable[..., Collector]


@pytest.mark.parametrize("reliable", [False, True], ids=["raw", "reliable"])
def test_a_packet_session_chats(start_server: Start, join: Join, reliable: bool) -> None:
    server = start_server("udp.server", "--rate-limit", "0", "-v")
    bob = join(server.address, "bob", reliable)
    alice = join(server.address, "alice", reliable)
    for i in range(50):
        alice.transport.send(Say(text=f"m{i}"))
    assert bob.wait(lambda ms: len([m for m in ms if isinstance(m, Msg)]) >= 50, DEADLINE)
    assert bob.texts("alice") == [f"m{i}" for i in range(50)]
    bob.transport.send(Bye())
    assert alice.wait_for_text("m49")
    assert server.stop() == 0
    match = server.wait_for_log(r"alice left \(shutdown\); .* in (\d+) packets")
    assert int(match.group(1)) < 50 + 10, "frames were not packed"


def test_reliable_packets_deliver_everything_once_in_order_at_20_percent_loss(
    start_server: Start, join: Join
) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    with FaultyRelay(server.address, drop=0.2, duplicate=0.05, reorder=0.05, seed=3) as relay:
        bob = join(relay.address, "bob", reliable=True)
        alice = join(server.address, "alice", reliable=True)
        sent = {"alice": [f"a{i}" for i in range(30)], "bob": [f"b{i}" for i in range(30)]}
        for a, b in zip(sent["alice"], sent["bob"], strict=True):
            alice.transport.send(Say(text=a))
            bob.transport.send(Say(text=b))
        for peer in (alice, bob):
            assert peer.wait(lambda ms: len([m for m in ms if isinstance(m, Msg)]) >= 60, DEADLINE)
        stats = relay.stats()

    assert stats.to_server.dropped + stats.to_client.dropped > 5
    for peer in (alice, bob):
        for name, texts in sent.items():
            assert peer.texts(name) == texts, "lost, repeated or out of order"
        assert not [m for m in peer.messages if isinstance(m, Error)]
    assert bob.transport.stats().retransmitted > 0


# ---- a bare peer, for what a real client never sends --------------------------


class PacketPeer:
    """A bare packet-session peer on its own socket."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        enlarge_buffers(self.sock)
        self.sock.bind(("127.0.0.1", 0))
        self.token = ""
        self.pn = 0
        self.seq = 0

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def hello(self, name: str, reliable: bool = True, pad: str = "") -> dict[str, Any]:
        hello: dict[str, Any] = {"type": "hello", "name": name, "packets": True}
        if reliable:
            hello["reliable"] = True
        if pad:
            hello["pad"] = pad
        self.send_raw(json.dumps(hello).encode())
        welcome: dict[str, Any] = json.loads(self.datagram() or b"{}")
        assert welcome["type"] == "welcome", welcome
        self.token = welcome["session"]
        return welcome

    def packet(self, *frames: dict[str, Any] | bytes, token: str | None = None) -> int:
        """Send one packet of ``frames`` (a dict gets the next seq unless it is an ack)."""
        lines = []
        for frame in frames:
            if isinstance(frame, bytes):
                lines.append(frame)
                continue
            if frame["type"] != "ack" and "seq" not in frame:
                self.seq += 1
                frame = {**frame, "seq": self.seq}
            lines.append(json.dumps(frame).encode())
        data = header(self.pn, self.token if token is None else token) + b"\n".join(lines)
        self.pn += 1
        self.send_raw(data + b"\n")
        return self.pn - 1

    def datagram(self, timeout: float = WAIT) -> bytes | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None

    def frames(self, timeout: float = WAIT) -> list[dict[str, Any]]:
        """The frames of the next packet, or [] if none comes in time."""
        data = self.datagram(timeout)
        if data is None:
            return []
        return [json.loads(line) for line in parse(data).frames]

    def until(self, kind: str, timeout: float = WAIT) -> list[dict[str, Any]]:
        """Frames of packets until one of type ``kind`` arrives; all of them."""
        seen: list[dict[str, Any]] = []
        while not any(f["type"] == kind for f in seen):
            got = self.frames(timeout)
            assert got, f"no {kind} came; got {seen}"
            seen += got
        return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers() -> Iterator[Callable[[tuple[str, int]], PacketPeer]]:
    made: list[PacketPeer] = []

    def make(server: tuple[str, int]) -> PacketPeer:
        made.append(PacketPeer(server))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


Peers = Callable[[tuple[str, int]], PacketPeer]


def test_nothing_but_the_welcome_before_the_address_is_proven(
    start_server: Start, peers: Peers
) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    spoofed, talker = peers(server.address), peers(server.address)
    spoofed.hello("victim", reliable=False)
    talker.hello("talker", reliable=False)
    talker.packet({"type": "ping"})
    for i in range(20):
        talker.packet({"type": "say", "text": f"x{i}" * 50})
    talker.until("msg")
    assert spoofed.datagram(QUIET) is None, "room traffic went to an unproven address"
    spoofed.packet({"type": "ping"})
    frames = spoofed.until("pong")
    assert [f["text"] for f in frames if f["type"] == "msg"] == [f"x{i}" * 50 for i in range(20)]


def test_a_1_0_session_among_packet_sessions_is_caught_up_as_before(
    start_server: Start, peers: Peers
) -> None:
    """A 1.0 session among packet sessions gets each frame in a datagram of its own, and once
    it has gone the packet sessions go on being caught up (the registry counts the 1.0
    sessions: with none, a flush before the catch-up is due asks the room nothing)."""
    server = start_server("udp.server", "--rate-limit", "0")
    talker, old = peers(server.address), peers(server.address)
    talker.hello("talker", reliable=False)
    talker.packet({"type": "ping"})
    talker.until("pong")
    old.send_raw(b'{"type":"hello","name":"old"}')
    welcome = json.loads(old.datagram() or b"{}")
    assert welcome["type"] == "welcome" and "packets" not in welcome
    talker.packet({"type": "say", "text": "to both"})
    heard = [json.loads(old.datagram() or b"{}") for _ in range(2)]
    assert [f.get("text") for f in heard if f.get("type") == "msg"] == ["to both"], heard
    assert "to both" in [f.get("text") for f in talker.until("msg")]
    old.send_raw(b'{"type":"bye","session":"%s"}' % welcome["session"].encode())
    talker.until("left")
    talker.packet({"type": "say", "text": "alone"})
    assert "alone" in [f.get("text") for f in talker.until("msg")]


def test_packets_pack_frames_and_stay_within_size(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    reader, talker = peers(server.address), peers(server.address)
    reader.hello("reader", reliable=False)
    reader.packet({"type": "ping"})
    reader.until("pong")
    talker.hello("talker", reliable=False)
    talker.packet({"type": "ping"}, *({"type": "say", "text": f"t{i}" * 40} for i in range(30)))
    sizes: list[int] = []
    texts: list[str] = []
    while len(texts) < 30:
        data = reader.datagram()
        assert data is not None
        sizes.append(len(data))
        texts += [json.loads(x)["text"] for x in parse(data).frames if b'"msg"' in x]
    assert max(sizes) <= MAX_PACKET_BYTES
    assert len(sizes) < 30, "one packet per frame"
    assert texts == [f"t{i}" * 40 for i in range(30)]


def test_sessions_given_the_same_frames_get_the_same_packets_each_numbered_its_own(
    start_server: Start, peers: Peers
) -> None:
    """Readers at different seqs and packet numbers, caught up in the same pass: the same
    frames for each, ``%`` and all, under their own consecutive seqs and pns."""
    server = start_server("udp.server", "--rate-limit", "0", "--coalesce-ms", "200")
    readers = [peers(server.address) for _ in range(3)]
    for n, reader in enumerate(readers):
        reader.hello(f"reader{n}", reliable=False)
        for _ in range(n + 1):  # every reader at its own pn and seq (digits: 1 and 2)
            reader.packet(*[{"type": "ping"}] * (4 * n + 1))
            pongs = 0
            while pongs < 4 * n + 1:
                pongs += len([f for f in reader.until("pong") if f["type"] == "pong"])
    talker = peers(server.address)
    talker.hello("talker", reliable=False)
    talker.packet({"type": "ping"})
    said = [f"%d %s 100% {i}" + "t" * (i * 7) for i in range(40)]
    for start in range(0, 40, 10):
        talker.packet(*({"type": "say", "text": text} for text in said[start : start + 10]))
    streams: list[bytes] = []
    firsts: list[tuple[int, int]] = []
    for reader in readers:
        pns: list[int] = []
        frames: list[dict[str, Any]] = []
        while len([f for f in frames if f["type"] == "msg"]) < 40:
            data = reader.datagram()
            assert data is not None and len(data) <= MAX_PACKET_BYTES
            packet = parse(data)
            pns.append(packet.pn)
            frames += [json.loads(line) for line in packet.frames]
        msgs = [f for f in frames if f["type"] == "msg" and f["from"] == "talker"]
        assert [m["text"] for m in msgs] == said
        seqs = [f["seq"] for f in frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert pns == list(range(pns[0], pns[0] + len(pns)))
        streams.append(json.dumps([{**m, "seq": 0} for m in msgs]).encode())
        firsts.append((msgs[0]["seq"], pns[0]))
    assert len(set(firsts)) == 3, firsts
    assert streams[0] == streams[1] == streams[2]


def test_frames_said_apart_gather_in_one_packet_within_the_coalescing_rest(
    start_server: Start, peers: Peers
) -> None:
    server = start_server("udp.server", "--rate-limit", "0", "--coalesce-ms", "3000")
    reader, talker = peers(server.address), peers(server.address)
    reader.hello("reader", reliable=False)
    reader.packet({"type": "ping"})
    reader.until("pong")  # the pong is a catch-up: the next one rests 3 s after it
    talker.hello("talker", reliable=False)
    talker.packet({"type": "ping"})
    for i in range(5):  # five packets, each read on its own, well within the rest
        talker.packet({"type": "say", "text": f"s{i}"})
        time.sleep(0.05)
    batches: list[list[str]] = []
    while sum(map(len, batches)) < 5:
        frames = reader.frames()
        assert frames, f"the rest never ended; got {batches}"
        if texts := [f["text"] for f in frames if f["type"] == "msg"]:
            batches.append(texts)
    assert [t for batch in batches for t in batch] == [f"s{i}" for i in range(5)]
    assert len(batches) <= 2, f"said apart, sent apart: {batches}"


def test_a_bad_token_or_header_drops_the_packet_whole(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "0", "-v")
    peer = peers(server.address)
    peer.hello("carol", reliable=False)
    peer.packet({"type": "say", "text": "forged"}, token="0" * 32)
    peer.send_raw(
        b'{"pn":"x","session":"%s"}\n{"type":"say","text":"bad header","seq":9}\n'
        % (peer.token.encode())
    )
    peer.send_raw(b'{"type":"say","text":"not a packet","seq":10}')
    peer.packet(b'{"type":"ack","ranges":[[0,0]],"delay":0}', token="0" * 32)  # acks alone
    peer.packet({"type": "ping"})
    frames = peer.until("pong")
    assert not [f for f in frames if f["type"] == "msg"]
    assert server.stop() == 0
    assert "wrong_token 2" in server.log and "bad_packet 2" in server.log


def test_a_bad_frame_costs_only_itself(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    peer = peers(server.address)
    peer.hello("dave")
    peer.packet(
        {"type": "say", "text": "before"},
        b"not json",
        {"type": "nosuch"},
        {"type": "say", "text": "after"},
    )
    frames = peer.until("error")
    frames += peer.until("msg") if len([f for f in frames if f["type"] == "msg"]) < 2 else []
    while len([f for f in frames if f["type"] in ("msg", "error")]) < 4:
        frames += peer.frames()
    assert [f["text"] for f in frames if f["type"] == "msg"] == ["before", "after"]
    codes = sorted(f["code"] for f in frames if f["type"] == "error")
    assert codes == ["bad_frame", "unknown_type"]


def test_an_ack_of_unsent_packets_changes_nothing(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    peer = peers(server.address)
    peer.hello("erin")
    peer.packet({"type": "ping"})
    peer.until("pong")
    peer.packet({"type": "ack", "ranges": [[0, 0]], "delay": 0})
    assert peer.datagram(QUIET) is None, "all was acknowledged, yet something came"
    peer.packet({"type": "ack", "ranges": [[10**6, 0]], "delay": 0})
    assert peer.datagram(QUIET) is None, "an ack of unsent packets was answered"
    peer.packet({"type": "ping"})
    frames = peer.until("pong")
    # Had the bogus ack counted, the pong's packet would be taken as acked: it comes again.
    assert peer.until("pong", timeout=WAIT), frames


def test_an_ack_lists_a_bounded_number_of_ranges(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    peer = peers(server.address)
    peer.hello("gina")
    peer.packet({"type": "ack", "ranges": [[i * 3, i * 3] for i in range(40, 0, -1)], "delay": 0})
    frames = peer.until("error")
    assert [f["code"] for f in frames if f["type"] == "error"] == ["bad_frame"]


def test_a_far_packet_number_costs_nothing(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    peer = peers(server.address)
    peer.hello("frank", reliable=False)
    peer.packet({"type": "ping"})
    peer.until("pong")
    peer.pn = 10**15
    peer.packet({"type": "say", "text": "far"})
    assert peer.datagram(QUIET) is None
    peer.pn = 2
    peer.packet({"type": "say", "text": "near"})
    frames = peer.until("msg")
    assert [f["text"] for f in frames if f["type"] == "msg"] == ["near"]


def test_a_silent_reliable_packet_session_ends(start_server: Start, peers: Peers) -> None:
    server = start_server("udp.server", "--rate-limit", "0", "--session-timeout", "60", "-v")
    peer, watcher = peers(server.address), peers(server.address)
    watcher.hello("watcher", reliable=False)
    watcher.packet({"type": "ping"})
    watcher.until("pong")
    peer.hello("ghost")
    peer.packet({"type": "ping"})
    peer.until("pong")
    peer.packet({"type": "ack", "ranges": [[0, 0]], "delay": 0})  # an RTT sample: about 1 ms
    peer.packet({"type": "ping"})
    # Then it never acks again: six probe timeouts (about 30 ms, doubling) end it.
    frames = watcher.until("left", timeout=WAIT)
    assert [f["reason"] for f in frames if f["type"] == "left"] == ["timeout"]


def test_a_session_far_behind_on_the_room_may_not_talk_till_it_catches_up(
    start_server: Start, peers: Peers
) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    slow, talker = peers(server.address), peers(server.address)
    slow.hello("slow")
    slow.packet({"type": "ping"})  # proven, then it reads nothing for a while
    talker.hello("talker", reliable=False)
    talker.packet({"type": "ping"})
    talker.until("pong")
    for burst in range(40):  # far more than the slow one's congestion window lets out
        talker.packet(*({"type": "say", "text": f"{burst}-{i}" + "x" * 90} for i in range(10)))
    texts: list[str] = []
    while "39-9" + "x" * 90 not in texts:
        frames = talker.frames()
        assert frames, "the talker's own messages stopped coming"
        texts += [f["text"] for f in frames if f["type"] == "msg"]
    slow.packet({"type": "say", "text": "late"})
    assert talker.datagram(QUIET) is None, "a session far behind added to the room"
    pns: list[int] = []
    while (data := slow.datagram(QUIET)) is not None:  # it catches up, acking as it reads
        pns.append(parse(data).pn)
        slow.packet({"type": "ack", "ranges": [[max(pns), 0]], "delay": 0})
    slow.packet({"type": "say", "text": "late", "seq": slow.seq})  # the same frame again
    frames = talker.until("msg")
    assert [(f["from"], f["text"]) for f in frames if f["type"] == "msg"] == [("slow", "late")]
    assert server.stop() == 0
    server.wait_for_log(r"datagrams dropped: .*behind 1\b")


@pytest.mark.usefixtures("lossy_link")
@pytest.mark.parametrize("sessions", [[], ["--no-packets"]], ids=["packets", "1.0"])
def test_reliable_loses_nothing_at_10_percent_loss(sessions: list[str]) -> None:
    """udp_load speaks packets unless told otherwise; 1.0 stays covered on the lossy link."""
    from netsim.lossy import LossyNamespace

    with LossyNamespace(10) as namespace:
        result = load_in_namespace(
            namespace,
            *("--clients", "5", "--rate", "5", "--duration", "3", "--drain", "10", "--reliable"),
            *sessions,
        )
        counters = namespace.counters()

    assert counters.dropped > 20
    assert result["protocol"] == "udp-reliable" + ("" if sessions else "-packets")
    assert (result["lost"], result["duplicates"], result["reorders"]) == (0, 0, 0), result
    assert result["retransmitted"] > 0
    assert result["server_clean_exit"]


def test_a_hello_again_gets_the_same_welcome(start_server: Start, peers: Peers) -> None:
    """The welcome of a packet session is not retransmitted: its client says hello again."""
    server = start_server("udp.server")
    peer = peers(server.address)
    first = peer.hello("hana")
    assert first["packets"] is True and first["seq"] == 1
    again = peer.hello("hana")
    assert again == first
    peer.packet({"type": "ping"})
    assert peer.until("pong")
