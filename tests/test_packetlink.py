"""Packet sessions without I/O: ranges, the packet codec, RFC 9002 recovery, NewReno, the link.

Time is driven by hand: every ``now`` below is a number of seconds the test chose.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.protocol.codec import (
    MAX_ACK_RANGES,
    AckRanges,
    BadFrame,
    Hello,
    ProtocolError,
    decode_client,
    decode_server,
    encode,
)
from common.protocol.congestion import INITIAL_WINDOW, MINIMUM_WINDOW, NewReno
from common.protocol.packetlink import (
    ACK_TIMER_SLACK,
    BEHIND_FRAMES,
    PACKET_WINDOW,
    PN_WINDOW,
    PacketLink,
)
from common.protocol.packets import (
    MAX_PACKET_BYTES,
    BadPacket,
    SharedPacking,
    ack_only,
    header,
    parse,
)
from common.protocol.rangeset import RangeSet
from common.protocol.recovery import (
    GRANULARITY,
    INITIAL_RTT,
    MAX_ACK_DELAY,
    MAX_PROBE_TIMEOUTS,
    LossRecovery,
    RttEstimator,
    SentPacket,
)
from common.protocol.reliable import MAX_BACKLOG, SharedFrames

RTT = 0.040

# ---- ranges ---------------------------------------------------------------


def test_ranges_merge_and_list_largest_first() -> None:
    ranges = RangeSet(limit=8)
    for pn in [0, 1, 2, 5, 4, 9, 3]:
        assert ranges.add(pn)
    assert not ranges.add(4)
    assert list(ranges.descending()) == [(9, 9), (5, 0)]
    assert 3 in ranges and 7 not in ranges
    assert (ranges.largest, ranges.smallest) == (9, 0)


def test_ranges_are_bounded_by_forgetting_the_lowest() -> None:
    ranges = RangeSet(limit=3)
    for pn in range(0, 20, 2):
        ranges.add(pn)
    assert list(ranges.descending()) == [(18, 18), (16, 16), (14, 14)]


# ---- the packet codec --------------------------------------------------------


def test_a_packet_is_a_header_and_frame_lines() -> None:
    data = header(7, "ab12") + b'{"type":"ping","seq":1}\r\n\n{"type":"who","seq":2}'
    packet = parse(data)
    assert (packet.pn, packet.session) == (7, "ab12")
    assert packet.frames == [b'{"type":"ping","seq":1}', b'{"type":"who","seq":2}']
    spelled_otherwise = parse(b'{ "session": "ab12", "pn": 8 }\n{"type":"ping"}\n')
    assert (spelled_otherwise.pn, spelled_otherwise.session) == (8, "ab12")


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"ping","seq":1}',
        b'{"pn":-1}\n{"type":"ping"}',
        b'{"pn":true}\n{"type":"ping"}',
        b'{"pn":1,"session":5}\n{"type":"ping"}',
        b'{"pn":1}\n\n',
        b"[1]\n{}",
        b'{"pn":1}\n' + b"x" * 9000,
    ],
)
def test_a_bad_header_refuses_the_packet_whole(data: bytes) -> None:
    with pytest.raises(BadPacket):
        parse(data)


def test_acks_of_packets_are_decoded_and_checked() -> None:
    ack = decode_client(b'{"type":"ack","ranges":[[9,7],[3,0]],"delay":4}').message
    assert ack == AckRanges(ranges=((9, 7), (3, 0)), delay=4)
    assert decode_server(encode(ack)).message == ack
    too_many = [[i * 3, i * 3] for i in range(MAX_ACK_RANGES + 1, 0, -1)]
    for ranges in ([], too_many, [[1, 2]], [[3, 0], [5, 4]], [[3, 3], [3, 0]], [["a", 0]]):
        with pytest.raises(BadFrame):
            decode_client(json.dumps({"type": "ack", "ranges": ranges}).encode())
    with pytest.raises(BadFrame):
        decode_client(b'{"type":"ack","ranges":[[1,0]],"delay":-1}')


def test_an_ack_of_one_range_as_we_write_it_reads_as_the_parser_reads_it() -> None:
    for ranges, delay in (((41, 30),), 3), (((0, 0),), 0), (((7, 7),), 12):
        line = encode(AckRanges(ranges=ranges, delay=delay))
        fast = decode_client(line)
        assert fast.message == AckRanges(ranges=ranges, delay=delay)
        assert (fast.seq, fast.session) == (None, None)
    for bad in (
        b'{"type":"ack","ranges":[[1,2]],"delay":0}',
        b'{"type":"ack","ranges":[[01,0]],"delay":0}',
    ):
        with pytest.raises(BadFrame):
            decode_client(bad)


def _as_codec_reads(frame: bytes) -> tuple[tuple[tuple[int, int], ...], int] | None:
    try:
        message = decode_client(frame).message
    except ProtocolError:
        return None
    return (message.ranges, message.delay) if isinstance(message, AckRanges) else None


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=MAX_ACK_RANGES + 2),
    st.integers(0, 99),
)
def test_a_packet_of_acks_alone_reads_as_the_codec_reads_each_ack(
    ranges: list[tuple[int, int]], delay: int
) -> None:
    """What ``ack_only`` takes, the codec takes alike; what the codec refuses, it leaves."""
    frame = b'{"type":"ack","ranges":[%s],"delay":%d}' % (
        b",".join(b"[%d,%d]" % pair for pair in ranges),
        delay,
    )
    assert ack_only([frame]) == ([codec] if (codec := _as_codec_reads(frame)) else None)


def test_a_packet_with_anything_but_acks_is_left_to_the_codec() -> None:
    ack = b'{"type":"ack","ranges":[[9,7],[3,0]],"delay":4}'
    assert ack_only([ack, ack]) == [(((9, 7), (3, 0)), 4)] * 2
    for other in (
        b'{"type":"ping","seq":3}',
        b'{"type": "ack", "ranges": [[9, 7]], "delay": 4}',  # not as we write it: the codec's
        b'{"type":"ack","ranges":[[09,7]],"delay":4}',
        b'{"type":"ack","ranges":[[9,7]]}',
        b'{"type":"ack","seq":4}',
    ):
        assert ack_only([ack, other]) is None


def test_hello_asks_for_packets() -> None:
    assert decode_client(b'{"type":"hello","name":"a","packets":true}').message.packets
    assert encode(Hello(name="a")) == b'{"type":"hello","name":"a"}'


# ---- RTT and loss recovery -----------------------------------------------------


def sent(recovery: LossRecovery, now: float, size: int = 1000, seqs: tuple[int, ...] = ()) -> int:
    pn = recovery.next_pn
    recovery.on_packet_sent(SentPacket(pn, now, size, seqs), now)
    return pn


def test_rtt_starts_at_the_initial_estimate_and_takes_the_ack_delay_off() -> None:
    rtt = RttEstimator()
    assert rtt.smoothed == INITIAL_RTT
    assert rtt.probe_timeout() == pytest.approx(INITIAL_RTT + 4 * INITIAL_RTT / 2 + MAX_ACK_DELAY)
    rtt.on_sample(0.040, ack_delay=0.010)  # the first sample is taken whole
    assert (rtt.min, rtt.smoothed, rtt.variance) == (0.040, 0.040, 0.020)
    rtt.on_sample(0.060, ack_delay=0.020)  # 60 ms, of which the peer held 20: 40
    assert rtt.smoothed == pytest.approx(0.040)
    rtt.on_sample(0.045, ack_delay=0.020)  # taking 20 off would go below min: taken whole
    assert rtt.smoothed == pytest.approx(0.875 * 0.040 + 0.125 * 0.045)
    rtt.on_sample(0.100, ack_delay=0.500)  # a delay is at most MAX_ACK_DELAY
    assert rtt.latest == 0.100
    assert rtt.min == 0.040


def test_one_lost_packet_in_a_steady_flow_is_found_within_9_8_rtt_after_the_next_ack() -> None:
    recovery = LossRecovery()
    now = 0.0
    for _ in range(5):  # a steady flow, every packet acked one RTT later
        pn = sent(recovery, now)
        assert recovery.on_ack([(pn, 0)], 0, now + RTT) is not None
        now += 0.010
    lost = sent(recovery, now)
    following = sent(recovery, now + 0.001)
    # The next ack names the following packet, not the lost one: under the packet threshold.
    outcome = recovery.on_ack([(following, following), (lost - 1, 0)], 0, now + 0.001 + RTT)
    assert outcome is not None and outcome.lost == []
    deadline = recovery.deadline()
    assert deadline is not None
    assert deadline - (now + 0.001 + RTT) <= 9 / 8 * RTT
    outcome = recovery.on_timeout(deadline)
    assert outcome is not None and [p.pn for p in outcome.lost] == [lost]


def test_a_packet_three_behind_an_acked_one_is_lost_at_once() -> None:
    recovery = LossRecovery()
    pns = [sent(recovery, 0.0) for _ in range(5)]
    outcome = recovery.on_ack([(pns[4], pns[3])], 0, 0.001)
    assert outcome is not None
    assert [p.pn for p in outcome.lost] == [pns[0], pns[1]]  # 3 or more before pns[4]
    assert recovery.in_flight == 1  # pns[2] waits for the time threshold


def test_a_lost_last_packet_is_probed_within_one_probe_timeout() -> None:
    recovery = LossRecovery()
    first = sent(recovery, 0.0)
    recovery.on_ack([(first, first)], 0, RTT)
    last = sent(recovery, 1.0)
    deadline = recovery.deadline()
    assert deadline is not None
    assert deadline == pytest.approx(1.0 + recovery.rtt.probe_timeout())
    assert recovery.on_timeout(deadline) is None  # a probe timeout: send a probe
    assert recovery.probe_timeouts == 1
    probe = sent(recovery, deadline, seqs=(1,))
    outcome = recovery.on_ack([(probe, probe)], 0, deadline + RTT)
    assert outcome is not None
    assert [p.pn for p in outcome.lost] == [last]  # sent more than 9/8 RTT before the probe


def test_probe_timeouts_double_and_six_in_a_row_end_the_session() -> None:
    recovery = LossRecovery()
    sent(recovery, 0.0)
    pto = recovery.rtt.probe_timeout()
    now, gaps = 0.0, []
    for _ in range(MAX_PROBE_TIMEOUTS):
        deadline = recovery.deadline()
        assert deadline is not None and not recovery.failed
        gaps.append(deadline - now)
        now = deadline
        recovery.on_timeout(now)
    assert gaps == pytest.approx([pto * 2**i for i in range(MAX_PROBE_TIMEOUTS)])
    assert recovery.failed and recovery.deadline() is None


def test_an_ack_resets_the_probe_backoff() -> None:
    recovery = LossRecovery()
    sent(recovery, 0.0)
    recovery.on_timeout(recovery.deadline() or 0.0)
    recovery.on_timeout(recovery.deadline() or 0.0)
    probe = sent(recovery, 1.0)
    recovery.on_ack([(probe, probe)], 0, 1.0 + RTT)
    assert recovery.probe_timeouts == 0


def test_an_ack_of_unsent_packets_changes_nothing() -> None:
    recovery = LossRecovery()
    pn = sent(recovery, 0.0)
    assert recovery.on_ack([(pn + 1, 0)], 0, 0.05) is None
    assert recovery.in_flight == 1 and recovery.rtt.samples == 0
    assert recovery.on_ack([(pn, pn)], 0, 0.05) is not None
    assert recovery.on_ack([(pn, pn)], 0, 0.06) == recovery.on_ack([(pn, pn)], 0, 0.07)


def test_the_time_threshold_is_at_least_one_millisecond() -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.0001, 0)
    assert rtt.loss_delay() == GRANULARITY


def test_losses_over_three_probe_timeouts_are_persistent_congestion() -> None:
    recovery = LossRecovery()
    first = sent(recovery, 0.0)
    recovery.on_ack([(first, first)], 0, RTT)  # an RTT sample: PTO about 0.1 s
    span = 3 * recovery.rtt.probe_timeout()
    lost = [sent(recovery, 1.0), sent(recovery, 1.0 + span + 0.01)]
    last = sent(recovery, 1.0 + span + 0.02)
    outcome = recovery.on_ack([(last, last)], 0, 1.0 + span + 0.02 + RTT)
    assert outcome is not None and [p.pn for p in outcome.lost] == lost
    assert recovery.congestion.window == MINIMUM_WINDOW


# ---- NewReno ----------------------------------------------------------------------


def test_new_reno_slow_start_then_halves_once_per_recovery() -> None:
    reno = NewReno()
    for _ in range(10):
        reno.on_sent(1200)
    for _ in range(10):  # a sender the window limits: every ack lets another packet go
        reno.on_acked(1200, time_sent=0.0)
        reno.on_sent(1200)
    assert reno.window == INITIAL_WINDOW + 10 * 1200
    reno.on_lost(1200)
    reno.on_congestion(newest_lost_sent=1.0, now=2.0)
    halved = reno.window
    assert halved == (INITIAL_WINDOW + 10 * 1200) // 2
    reno.on_lost(1200)
    reno.on_congestion(newest_lost_sent=1.5, now=2.1)  # sent before the recovery began
    assert reno.window == halved
    reno.on_persistent_congestion()
    assert reno.window == MINIMUM_WINDOW


def test_new_reno_does_not_grow_a_window_it_does_not_use() -> None:
    reno = NewReno()
    reno.on_sent(1200)
    reno.on_acked(1200, time_sent=0.0)
    assert reno.window == INITIAL_WINDOW


def test_new_reno_grows_by_a_packet_per_window_in_congestion_avoidance() -> None:
    reno = NewReno()
    reno.on_sent(1200)
    reno.on_lost(1200)
    reno.on_congestion(0.0, 0.0)
    window = reno.window
    for _ in range(window // 1200):
        reno.on_sent(1200)
    for _ in range(window // 1200):
        reno.on_acked(1200, time_sent=1.0)
        reno.on_sent(1200)
    assert window + 1000 < reno.window <= window + 1200


# ---- the link: packing, acks, recovery end to end ----------------------------------


def frame(seq: int, text: str = "x") -> bytes:
    return b'{"type":"msg","from":"a","text":"%s","ts":0,"seq":%d}' % (text.encode(), seq)


class Pair:
    """A client link and a server link, with a hand-driven clock and what each one sent."""

    def __init__(self, reliable: bool = True) -> None:
        self.server = PacketLink(reliable=reliable, proven=False)
        self.client = PacketLink(reliable=reliable, session="t0")
        self.delivered: list[bytes] = []

    def take(self, receiver: PacketLink, data: bytes, now: float) -> bool:
        packet = parse(data)
        decoded = [json.loads(line) for line in packet.frames]
        eliciting = any(d["type"] != "ack" for d in decoded)
        if not receiver.on_packet(packet.pn, eliciting, now):
            return False
        for line, d in zip(packet.frames, decoded, strict=True):
            if d["type"] == "ack":
                receiver.on_ack([tuple(r) for r in d["ranges"]], d["delay"], now)
            elif receiver is self.client:
                self.delivered += receiver.on_frame(d["seq"], line) or ()
        return True


def test_frames_are_packed_into_packets_of_at_most_1200_bytes() -> None:
    link = PacketLink(reliable=False)
    for seq in range(1, 41):
        link.queue(seq, frame(seq, "y" * 80))
    datagrams = link.datagrams(0.0)
    assert len(datagrams) < 10
    assert all(len(d) <= MAX_PACKET_BYTES for d in datagrams)
    assert [parse(d).pn for d in datagrams] == list(range(len(datagrams)))
    seqs = [json.loads(f)["seq"] for d in datagrams for f in parse(d).frames]
    assert seqs == list(range(1, 41))
    link.queue(41, frame(41, "z" * 3000))
    (big,) = link.datagrams(0.0)
    assert len(big) > MAX_PACKET_BYTES  # one frame alone may be larger


def test_a_server_link_sends_nothing_until_the_first_packet_proves_the_address() -> None:
    pair = Pair()
    pair.server.queue(1, frame(1))
    assert pair.server.datagrams(0.0) == [] and pair.server.next_deadline() is None
    pair.client.queue(1, b'{"type":"ping","seq":1}')
    (ping,) = pair.client.datagrams(0.0)
    assert pair.take(pair.server, ping, 0.001)
    assert len(pair.server.datagrams(0.001)) == 1


def test_an_ack_is_due_after_two_packets_or_after_the_delay_and_rides_with_frames() -> None:
    pair = Pair()
    pair.server.proven = True
    pair.server.queue(1, frame(1))
    (one,) = pair.server.datagrams(0.0)
    pair.take(pair.client, one, 0.001)
    assert pair.client.datagrams(0.002) == []  # one packet: not yet
    due = pair.client.next_deadline()
    assert due is not None
    assert due == pytest.approx(0.001 + MAX_ACK_DELAY - ACK_TIMER_SLACK)
    (ack,) = pair.client.datagrams(due)
    assert parse(ack).frames == [b'{"type":"ack","ranges":[[0,0]],"delay":15}']
    for seq in (2, 3):
        pair.server.queue(seq, frame(seq))
        (packet,) = pair.server.datagrams(0.1)
        pair.take(pair.client, packet, 0.1)
    assert len(pair.client.datagrams(0.1)) == 1  # two packets: at once
    pair.server.queue(4, frame(4))
    (packet,) = pair.server.datagrams(0.2)
    pair.take(pair.client, packet, 0.2)
    pair.client.queue(1, b'{"type":"say","text":"hi","seq":1}')
    (riding,) = pair.client.datagrams(0.2)
    assert [json.loads(f)["type"] for f in parse(riding).frames] == ["ack", "say"]


def test_an_ack_not_due_rides_only_when_the_peer_sends_seldom() -> None:
    pair = Pair()
    pair.server.proven = True

    def arrives(seq: int, at: float) -> None:
        pair.server.queue(seq, frame(seq))
        (packet,) = pair.server.datagrams(at)
        pair.take(pair.client, packet, at)

    def say(seq: int, at: float) -> list[str]:
        pair.client.queue(seq, b'{"type":"say","text":"hi","seq":%d}' % seq)
        (packet,) = pair.client.datagrams(at)
        return [json.loads(f)["type"] for f in parse(packet).frames]

    arrives(1, 0.000)  # a busy room: a packet every 7 ms
    arrives(2, 0.007)
    assert len(pair.client.datagrams(0.007)) == 1 and pair.client.acks_sent == 1
    arrives(3, 0.014)
    assert say(1, 0.014) == ["say"]  # one owed, not due: the next packet makes it due
    arrives(4, 0.021)
    assert len(pair.client.datagrams(0.021)) == 1 and pair.client.acks_sent == 2
    arrives(5, 0.300)  # a quiet room: the ack would go alone later, so it rides now
    assert say(2, 0.300) == ["ack", "say"]
    assert pair.client.acks_sent == 3


def test_a_packet_of_acks_alone_needs_no_ack() -> None:
    pair = Pair()
    pair.server.proven = True
    pair.server.queue(1, frame(1))
    (one,) = pair.server.datagrams(0.0)
    pair.take(pair.client, one, 0.0)
    (ack,) = pair.client.datagrams(1.0)
    pair.take(pair.server, ack, 1.0)
    assert pair.server.datagrams(2.0) == [] and pair.server.next_deadline() is None


def test_frames_of_a_lost_packet_go_again_in_a_new_packet() -> None:
    pair = Pair()
    pair.server.proven = True
    sent_pns = []
    for seq in range(1, 6):
        pair.server.queue(seq, frame(seq))
        (packet,) = pair.server.datagrams(seq * 0.01)
        sent_pns.append(parse(packet).pn)
        if seq != 2:
            pair.take(pair.client, packet, seq * 0.01 + RTT / 2)
    for ack in pair.client.datagrams(1.0):
        pair.take(pair.server, ack, 1.0)
    (again,) = pair.server.datagrams(1.0)
    assert parse(again).pn == 5 and json.loads(parse(again).frames[0])["seq"] == 2
    pair.take(pair.client, again, 1.0)
    assert [json.loads(f)["seq"] for f in pair.delivered] == [1, 2, 3, 4, 5]


def test_the_congestion_window_bounds_what_is_in_flight() -> None:
    link = PacketLink(reliable=True)
    for seq in range(1, 501):
        link.queue(seq, frame(seq, "w" * 100))
    sent_bytes = sum(map(len, link.datagrams(0.0)))
    assert INITIAL_WINDOW <= sent_bytes <= INITIAL_WINDOW + MAX_PACKET_BYTES
    assert link.datagrams(0.01) == []  # nothing acked: nothing more goes out
    assert link.next_deadline() == pytest.approx(link.recovery.deadline())


def test_a_link_is_behind_once_many_frames_wait_for_its_window() -> None:
    pair = Pair()
    pair.server.proven = True
    for seq in range(1, BEHIND_FRAMES + 201):
        pair.server.queue(seq, frame(seq, "y" * 100))
    sent = pair.server.datagrams(0.0)  # the initial window's worth: about 100 frames
    assert pair.server.recovery.congestion.bytes_in_flight >= INITIAL_WINDOW
    assert pair.server.behind
    for data in sent:
        pair.take(pair.client, data, 0.01)
    (ack,) = pair.client.datagrams(0.01)
    pair.take(pair.server, ack, 0.02)
    pair.server.datagrams(0.02)  # the window opened (and grew): more went out
    assert not pair.server.behind
    assert not PacketLink(reliable=False).behind


def test_a_far_packet_number_costs_nothing() -> None:
    pair = Pair(reliable=False)
    pair.server.on_packet(0, True, 0.0)
    assert not pair.server.on_packet(PN_WINDOW + 5, True, 0.0)
    assert pair.server.on_packet(1, True, 0.0)
    assert pair.server.far_packets == 1


def test_a_link_overflows_past_its_backlog() -> None:
    link = PacketLink(reliable=True, proven=False)
    for seq in range(1, link.window + MAX_BACKLOG + 1):
        link.queue(seq, frame(seq))
    assert not link.overflowed
    link.queue(link.next_seq, frame(0))
    assert link.overflowed


def test_shared_frames_are_held_once_and_let_go() -> None:
    shared = SharedFrames(lambda prefix, seq: b"%s%d}" % (prefix, seq))
    links = [PacketLink(reliable=True, shared=shared) for _ in range(3)]
    prefix = b'{"type":"msg","from":"a","text":"x","ts":0,"seq":'
    for link in links:
        link.queue(1, prefix)
    assert shared.held_bytes == len(prefix) + 3 * 160
    (packet,) = links[0].datagrams(0.0)
    assert parse(packet).frames == [prefix + b"1}"]
    for link in links:
        link.close()
    assert shared.held_bytes == 0


@pytest.mark.parametrize("reliable", [False, True], ids=["raw", "reliable"])
def test_frames_queued_at_once_are_what_they_are_queued_one_by_one(reliable: bool) -> None:
    shared = [SharedFrames(lambda prefix, seq: b"%s%d}" % (prefix, seq)) for _ in range(2)]
    one, many = (PacketLink(reliable=reliable, shared=s, first_seq=2) for s in shared)
    prefixes = [b'{"type":"msg","from":"a","text":"%d","ts":0,"seq":' % i for i in range(30)]
    for prefix in prefixes[:10]:
        one.queue(one.next_seq, prefix)
    many.queue_all(prefixes[:10])
    assert one.datagrams(0.0) == many.datagrams(0.0)
    for prefix in prefixes[10:]:
        one.queue(one.next_seq, prefix)
    many.queue_all(prefixes[10:])
    assert (one.next_seq, one.held_bytes, one.pending) == (
        many.next_seq,
        many.held_bytes,
        many.pending,
    )
    assert shared[0].held_bytes == shared[1].held_bytes
    assert one.datagrams(0.1) == many.datagrams(0.1)
    if reliable:
        ack = [(many.recovery.next_pn - 1, 0)]
        for link in (one, many):
            link.on_packet(0, True, 0.2)
            link.on_ack(ack, 0, 0.2)
        assert one.held_bytes == many.held_bytes == 0
        assert shared[0].held_bytes == shared[1].held_bytes == 0


@settings(max_examples=80, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="ab%d ", max_size=1300), max_size=40),
    first_pn=st.sampled_from([0, 7, 95, 99, 990, 9_999, 123_456]),
    first_seq=st.sampled_from([2, 9, 97, 998, 99_999]),
    sessions=st.integers(1, 6),
)
def test_a_shared_packing_is_what_each_raw_link_would_pack_itself(
    texts: list[str], first_pn: int, first_seq: int, sessions: int
) -> None:
    """The same packets, byte for byte, whatever the digits of the numbers, and a ``%`` in a
    frame's text is only text; every session that shares it gets its own numbers."""
    prefixes = [
        json.dumps({"type": "msg", "text": text}).encode()[:-1] + b',"seq":' for text in texts
    ]
    packing = SharedPacking(prefixes)
    for n in range(sessions):
        pn, seq = first_pn + 3 * n, first_seq + n
        shared, alone = (SharedFrames(lambda prefix, s: b"%s%d}" % (prefix, s)) for _ in "ab")
        sharing = PacketLink(reliable=False, shared=shared, first_seq=seq)
        itself = PacketLink(reliable=False, shared=alone, first_seq=seq)
        for link in (sharing, itself):
            link.recovery.next_pn = pn
        itself.queue_all(prefixes)
        expected = itself.datagrams(0.0)
        assert sharing.send_shared(packing, 0.0) == expected
        assert (sharing.next_seq, sharing.recovery.next_pn, sharing.packets_sent) == (
            itself.next_seq,
            itself.recovery.next_pn,
            itself.packets_sent,
        )
        assert all(len(packet) <= MAX_PACKET_BYTES for packet in expected)


def test_sessions_numbered_on_either_side_of_a_digit_boundary_share_a_packing_right() -> None:
    """One packing, sessions in turn whose pns or seqs gain a digit within its packets or
    just after: each gets what its own link would pack (a layout is kept per count of digits)."""
    # Three lines and a header of one-digit numbers fill a packet: one more digit splits it.
    prefixes = [b'{"type":"msg","text":"%s","seq":' % (b"x" * 364) for _ in range(6)]
    packing = SharedPacking(prefixes)
    numbers = [n for edge in (10, 100, 1000) for n in range(edge - 10, edge + 3)]
    for pn, seq in [(n, 1) for n in numbers] + [(1, max(n, 1)) for n in numbers]:
        shared, alone = (SharedFrames(lambda prefix, s: b"%s%d}" % (prefix, s)) for _ in "ab")
        sharing = PacketLink(reliable=False, shared=shared, first_seq=seq)
        itself = PacketLink(reliable=False, shared=alone, first_seq=seq)
        sharing.recovery.next_pn = itself.recovery.next_pn = pn
        itself.queue_all(prefixes)
        assert sharing.send_shared(packing, 0.0) == itself.datagrams(0.0), (pn, seq)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 2**16)), max_size=40))
def test_the_window_starts_at_the_oldest_frame_not_acknowledged(
    steps: list[tuple[int, int]],
) -> None:
    """Whatever order packets are acked in, the window counts from the oldest frame held."""
    link = PacketLink(reliable=True, window=8)
    now = 0.0
    for count, pick in steps:
        link.queue_all([frame(seq) for seq in range(link.next_seq, link.next_seq + count)])
        now += 0.001
        link.datagrams(now)
        in_flight = [p.pn for p in link.recovery.packets()]
        if in_flight:
            pn = in_flight[pick % len(in_flight)]
            link.on_ack([(pn, pn)], 0, now)
        held = [seq for seq in range(1, link.next_seq) if not link.acked(seq)]
        assert link._window_end() == min(held, default=link.next_seq) + link.window


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    window=st.sampled_from([4, 64, PACKET_WINDOW]),
    first_pn=st.sampled_from([0, 95, 9_990]),
)
def test_a_reliable_link_sends_a_shared_packing_as_it_sends_its_own_frames(
    seed: int, window: int, first_pn: int
) -> None:
    """Whatever is lost, acked, owed or timed out meanwhile, a reliable link given a shared
    packing sends the packets, byte for byte, and keeps the state it would with its frames
    queued one pass at a time."""
    rnd = random.Random(seed)

    def stamp(prefix: bytes, seq: int) -> bytes:
        return b"%s%d}" % (prefix, seq)

    sharing, itself = (
        PacketLink(reliable=True, shared=SharedFrames(stamp), first_seq=2, window=window)
        for _ in "ab"
    )
    for link in (sharing, itself):
        link.recovery.next_pn = first_pn
    now = 0.0
    for _ in range(150):
        now += rnd.random() * 0.03
        step = rnd.random()
        if step < 0.5:
            texts = [rnd.choice(["hi", "%d%%", "x" * rnd.randint(0, 1300)]) for _ in range(7)]
            prefixes = [b'{"type":"msg","text":"%s","seq":' % t.encode() for t in texts]
            prefixes = prefixes[: rnd.randint(0, 7)]
            itself.queue_all(prefixes)
            assert sharing.send_shared(SharedPacking(prefixes), now) == itself.datagrams(now)
        elif step < 0.6:
            assert sharing.datagrams(now) == itself.datagrams(now)
        elif step < 0.8:
            in_flight = [p.pn for p in itself.recovery.packets()]
            if in_flight:
                hi = rnd.choice(in_flight)
                lo = rnd.choice([pn for pn in in_flight if pn <= hi])
                delay = rnd.randint(0, 30)
                for link in (sharing, itself):
                    link.on_ack([(hi, lo)], delay, now)
        else:
            pn = rnd.randint(0, 40)
            for link in (sharing, itself):
                link.on_packet(pn, True, now)
        assert (sharing.next_seq, sharing.pending, sharing.held_bytes, sharing.packets_sent) == (
            itself.next_seq,
            itself.pending,
            itself.held_bytes,
            itself.packets_sent,
        )
        assert sharing.next_deadline() == itself.next_deadline()
        assert (
            sharing.recovery.congestion.bytes_in_flight
            == itself.recovery.congestion.bytes_in_flight
        )


def test_a_link_that_cannot_take_a_shared_packing_now_queues_its_frames() -> None:
    """Frames still waiting (an unproven address) go first; a reliable link holds them."""
    prefixes = [b'{"type":"msg","text":"%d","seq":' % i for i in range(3)]

    def stamp(prefix: bytes, seq: int) -> bytes:
        return b"%s%d}" % (prefix, seq)

    waiting = PacketLink(reliable=False, proven=False, shared=SharedFrames(stamp), first_seq=2)
    assert waiting.send_shared(SharedPacking(prefixes[:1]), 0.0) == []
    waiting.on_packet(0, True, 0.0)
    packets = waiting.send_shared(SharedPacking(prefixes[1:]), 0.0)
    assert [parse(p).frames for p in packets] == [[stamp(f, s) for s, f in enumerate(prefixes, 2)]]
    reliable = PacketLink(reliable=True, shared=SharedFrames(stamp), first_seq=2)
    assert len(reliable.send_shared(SharedPacking(prefixes), 0.0)) == 1
    assert reliable.pending == 3


def test_frames_queued_at_once_past_the_backlog_overflow_as_one_by_one() -> None:
    link = PacketLink(reliable=True, proven=False)
    link.queue_all([frame(seq) for seq in range(1, link.window + MAX_BACKLOG + 1)])
    assert not link.overflowed
    link.queue_all([frame(0), frame(0)])
    assert link.overflowed and link.next_seq == link.window + MAX_BACKLOG + 3


# ---- the property: whatever the network does ------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.5),
    duplicate=st.floats(0.0, 0.3),
    reorder=st.floats(0.0, 0.5),
    frames=st.integers(1, 300),
)
def test_each_seq_is_handed_on_once_and_in_order_and_memory_stays_bounded(
    seed: int, loss: float, duplicate: float, reorder: float, frames: int
) -> None:
    rng = random.Random(seed)
    pair = Pair()
    pair.server.proven = True
    # (arrival time, order, receiver, datagram)
    wire: list[tuple[float, int, PacketLink, bytes]] = []
    now, order, queued = 0.0, 0, 0

    def send(sender: PacketLink, receiver: PacketLink) -> None:
        nonlocal order
        for data in sender.datagrams(now):
            copies = 0 if rng.random() < loss else 2 if rng.random() < duplicate else 1
            for _ in range(copies):
                delay = RTT / 2 * (1 + (rng.random() * 4 if rng.random() < reorder else 0))
                order += 1
                wire.append((now + delay, order, receiver, data))

    while now < 120 and len(pair.delivered) < frames and not pair.server.failed:
        if queued < frames and rng.random() < 0.5:
            for _ in range(rng.randint(1, 20)):
                if queued < frames:
                    queued += 1
                    pair.server.queue(queued, frame(queued, "m" * rng.randint(1, 300)))
        send(pair.server, pair.client)
        send(pair.client, pair.server)
        assert pair.server.recovery.in_flight <= pair.server.pending + 2 * pair.server.window
        assert pair.server.pending <= pair.server.window + MAX_BACKLOG
        assert pair.client.receiver.held <= pair.client.window
        wire.sort()
        due = [w for w in wire if w[0] <= now]
        del wire[: len(due)]
        for _, _, receiver, data in due:
            pair.take(receiver, data, now)
        now += 0.005
    seqs = [json.loads(f)["seq"] for f in pair.delivered]
    assert seqs == list(range(1, len(seqs) + 1)), "a seq handed on twice or out of order"
    if not pair.server.failed:
        assert len(seqs) == frames
