"""A packet session's packets of acks alone, in the UDP server's inbox: a server in this
process on a loopback socket, its clock driven by hand, the codec's path beside for
comparison."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

import udp.inbox
from common.protocol.limits import Limits
from common.protocol.packets import header
from udp.server import UdpChatServer
from udp.session import Session

FRAME = b'{"type":"msg","from":"bob","text":"hello","ts":1,"id":"x","seq":'
T0 = 1000.0


@pytest.fixture
def server() -> Iterator[UdpChatServer]:
    made = UdpChatServer(Limits(), port=0)
    yield made
    made.sock.close()


@pytest.fixture
def readers() -> Iterator[list[socket.socket]]:
    """Where the server's packets go, unread: one socket per session."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    yield socks
    for sock in socks:
        sock.close()


def _session(server: UdpChatServer, address: tuple[str, int]) -> Session:
    """A reliable packet session, proven, that sent packets 0 to 5 at T0 (three frames each)."""
    registry = server.registry
    session = Session(address, True, server.limits, T0, 1000, registry.held, packets=True)
    registry.add(session)
    link = session.link
    assert link is not None
    link.proven = True
    for _ in range(6):
        link.queue_all([FRAME] * 3)
        registry.send_link(session, T0)
    assert link.recovery.in_flight == 6
    return session


def _acks(session: Session, pn: int, *ranges: tuple[int, int], token: str = "") -> bytes:
    spans = b",".join(b"[%d,%d]" % pair for pair in ranges)
    ack = b'{"type":"ack","ranges":[%s],"delay":3}\n' % spans
    return header(pn, token or session.token) + ack + ack


def _state(session: Session) -> tuple[object, ...]:
    link = session.link
    assert link is not None
    recovery = link.recovery
    return (
        [packet.pn for packet in recovery.packets()],
        recovery.rtt.smoothed,
        recovery.rtt.variance,
        recovery.congestion.window,
        recovery.congestion.bytes_in_flight,
        recovery.deadline(),
        link.pending,
        link.held_bytes,
        link.packets_received,
        link.next_deadline(),
        session.last_heard,
    )


def _not_decoded(_: bytes) -> None:
    raise AssertionError("a frame of a packet of acks alone was decoded")


def test_a_packet_of_acks_alone_changes_what_the_codec_path_would_without_decoding_a_frame(
    server: UdpChatServer, readers: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow = (_session(server, sock.getsockname()) for sock in readers)
    before = _state(fast)
    assert before == _state(slow)
    packets = [
        ((T0 + 0.02, 0), ((1, 0),)),
        ((T0 + 0.03, 1), ((5, 4), (1, 0))),  # 2 and 3 are lost: 3 or more later were acked
        ((T0 + 0.04, 2), ((10**6, 0),)),  # names packets never sent: changes nothing
    ]
    for (now, pn), ranges in packets:
        with monkeypatch.context() as patch:
            patch.setattr(udp.inbox, "read_datagram", _not_decoded)
            server.inbox.on_datagram(_acks(fast, pn, *ranges), fast.address, now)
        with monkeypatch.context() as patch:
            patch.setattr(udp.inbox, "ack_only", lambda _: None)  # the codec's path
            server.inbox.on_datagram(_acks(slow, pn, *ranges), slow.address, now)
        assert _state(fast) == _state(slow)
    assert _state(fast) != before
    assert fast.link is not None and fast.link.recovery.lost_packets == 2


def test_a_packet_of_acks_alone_with_a_wrong_token_is_dropped_whole(
    server: UdpChatServer, readers: list[socket.socket]
) -> None:
    session = _session(server, readers[0].getsockname())
    before = _state(session)
    ack = _acks(session, 0, (5, 0), token="0" * 32)
    server.inbox.on_datagram(ack, session.address, T0 + 0.02)
    assert _state(session) == before
    assert server.registry.dropped["wrong_token"] == 1
    server.inbox.on_datagram(header(1) + ack.split(b"\n", 1)[1], session.address, T0 + 0.02)
    assert _state(session) == before
    assert server.registry.dropped["no_token"] == 1
