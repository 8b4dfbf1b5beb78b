"""Tests for common.protocol.reliable, driving time by hand with a float ``now``."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.protocol.reliable import (
    ACK_COPIES,
    HOLD_COST,
    INITIAL_RTO,
    MAX_BACKLOG,
    MAX_TRIES,
    SEQ_HISTORY,
    WINDOW,
    Flight,
    ReliableReceiver,
    ReliableSender,
    SeqCounter,
    SeqEvent,
    SeqKind,
    SharedFrames,
)


def frame_for(seq: int) -> bytes:
    return b"frame %d" % seq


def seq_of(frame: bytes) -> int:
    return int(frame.split()[1])


def queue_frames(sender: ReliableSender, count: int) -> None:
    for _ in range(count):
        seq = sender.next_seq
        sender.queue(seq, frame_for(seq))


# SeqCounter


def test_seq_counter_scripted_drop_duplicate_reorder() -> None:
    counter = SeqCounter()
    script = [
        (1, SeqEvent(SeqKind.NEW)),
        (2, SeqEvent(SeqKind.NEW)),
        (4, SeqEvent(SeqKind.GAP, missing=1)),
        (5, SeqEvent(SeqKind.NEW)),
        (3, SeqEvent(SeqKind.LATE)),
        (5, SeqEvent(SeqKind.DUPLICATE)),
        (8, SeqEvent(SeqKind.GAP, missing=2)),
        (6, SeqEvent(SeqKind.LATE)),
        (6, SeqEvent(SeqKind.DUPLICATE)),
        (1, SeqEvent(SeqKind.DUPLICATE)),
        (12, SeqEvent(SeqKind.GAP, missing=3)),
    ]
    for seq, expected in script:
        assert counter.on_seq(seq) == expected, seq
    assert counter.highest == 12
    assert counter.received == 8
    assert counter.lost == 4  # 7, 9, 10, 11
    assert counter.repeated == 3
    assert counter.reordered == 2


def test_seq_counter_first_seq_after_one_counts_the_ones_before_as_lost() -> None:
    counter = SeqCounter()
    assert counter.on_seq(3) == SeqEvent(SeqKind.GAP, missing=2)
    assert counter.on_seq(1) == SeqEvent(SeqKind.LATE)
    assert (counter.lost, counter.reordered) == (1, 1)


def test_seq_counter_window_edges() -> None:
    counter = SeqCounter()
    counter.on_seq(1)
    assert counter.on_seq(SEQ_HISTORY) == SeqEvent(SeqKind.GAP, missing=SEQ_HISTORY - 2)
    assert counter.on_seq(1) == SeqEvent(SeqKind.DUPLICATE)  # the oldest seq remembered
    assert counter.on_seq(2) == SeqEvent(SeqKind.LATE)
    assert counter.on_seq(2 * SEQ_HISTORY - 1) == SeqEvent(SeqKind.GAP, missing=SEQ_HISTORY - 2)
    assert counter.on_seq(SEQ_HISTORY - 1) == SeqEvent(SeqKind.RESTART)  # one too far back
    assert counter.on_seq(2 * SEQ_HISTORY - 1) == SeqEvent(SeqKind.RESTART)  # one too far ahead
    assert (counter.received, counter.repeated, counter.restarts) == (6, 1, 2)


def test_seq_counter_one_far_off_seq_mutes_nothing() -> None:
    counter = SeqCounter()
    for seq in range(1, 6):
        counter.on_seq(seq)
    assert counter.on_seq(10**18) == SeqEvent(SeqKind.RESTART)
    assert counter.on_seq(6) == SeqEvent(SeqKind.RESTART), "the old numbering goes on"
    assert counter.on_seq(7) == SeqEvent(SeqKind.NEW)
    assert counter.on_seq(5) == SeqEvent(SeqKind.DUPLICATE), "what came before a restart is seen"
    assert counter.on_seq(1) == SeqEvent(SeqKind.DUPLICATE)
    assert (counter.received, counter.lost, counter.repeated, counter.restarts) == (8, 0, 2, 2)


def test_seq_counter_restart_takes_one_as_new() -> None:
    counter = SeqCounter()
    for seq in range(1, 501):
        counter.on_seq(seq)
    counter.restart()
    assert counter.on_seq(1) == SeqEvent(SeqKind.NEW)
    assert counter.on_seq(3) == SeqEvent(SeqKind.GAP, missing=1)
    assert (counter.received, counter.lost, counter.restarts) == (502, 1, 1)


def test_seq_counter_far_jump_allocates_nothing_in_proportion() -> None:
    counter = SeqCounter()
    for seq in range(1, 100):
        counter.on_seq(seq)
    jump = 10**9
    tracemalloc.start()
    try:
        event = counter.on_seq(99 + jump)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert event == SeqEvent(SeqKind.RESTART)
    assert peak < 10_000
    assert counter.on_seq(100 + jump) == SeqEvent(SeqKind.NEW)
    assert counter.on_seq(98 + jump) == SeqEvent(SeqKind.DUPLICATE)


def test_seq_counter_rejects_seq_below_one() -> None:
    with pytest.raises(ValueError):
        SeqCounter().on_seq(0)


# ReliableSender


def test_retransmission_schedule_and_give_up() -> None:
    sender = ReliableSender()
    sender.queue(1, b"one")
    assert sender.next_deadline() == -math.inf
    now = 0.0
    sent_at: list[float] = []
    while True:
        frames = sender.due(now)
        if sender.failed:
            break
        assert frames == [b"one"]
        sent_at.append(now)
        deadline = sender.next_deadline()
        assert deadline is not None
        assert sender.due(deadline - 1e-9) == []
        now = deadline
    assert sent_at == pytest.approx([0.0, 0.2, 0.6, 1.4, 3.0, 6.2])
    assert len(sent_at) == MAX_TRIES
    assert now == pytest.approx(12.6)
    assert sender.retransmissions == MAX_TRIES - 1
    assert sender.next_deadline() is None
    assert sender.due(now + 100) == []


def test_ack_before_last_timeout_expires_keeps_session_alive() -> None:
    sender = ReliableSender()
    sender.queue(1, b"one")
    now = 0.0
    for _ in range(MAX_TRIES):
        assert sender.due(now) == [b"one"]
        deadline = sender.next_deadline()
        assert deadline is not None
        now = deadline
    assert sender.on_ack(1, now) == []
    assert sender.due(now) == []
    assert not sender.failed
    assert sender.next_deadline() is None
    assert sender.pending == 0


def test_each_frame_keeps_its_own_timer() -> None:
    sender = ReliableSender()
    sender.queue(1, b"one")
    assert sender.due(0.0) == [b"one"]
    sender.queue(2, b"two")
    assert sender.due(0.1) == [b"two"]
    assert sender.next_deadline() == pytest.approx(INITIAL_RTO)
    assert sender.due(0.25) == [b"one"]
    assert sender.due(0.31) == [b"two"]
    assert sender.next_deadline() == pytest.approx(0.25 + 2 * INITIAL_RTO)


def test_ack_of_unknown_duplicate_or_untransmitted_seq_changes_nothing() -> None:
    sender = ReliableSender()
    assert sender.on_ack(1, 0.0) == []
    sender.queue(1, b"one")
    assert sender.on_ack(1, 0.0) == []  # queued but never transmitted
    assert sender.pending == 1
    sender.due(0.0)
    assert sender.on_ack(2, 0.0) == []
    assert sender.pending == 1
    assert sender.on_ack(1, 0.0) == []
    assert sender.pending == 0
    assert sender.on_ack(1, 0.0) == []


def test_three_later_acks_resend_a_lost_frame_at_once_and_only_once() -> None:
    sender = ReliableSender()
    queue_frames(sender, 6)
    assert sender.due(0.0) == [frame_for(seq) for seq in range(1, 7)]
    # Frame 1 was lost: 2, 3 and 4 arrive and are acked long before its timeout.
    assert sender.on_ack(2, 0.01) == []
    assert sender.on_ack(3, 0.02) == []
    assert sender.on_ack(4, 0.03) == [frame_for(1)]
    assert sender.retransmissions == 1
    assert sender.on_ack(5, 0.04) == []  # once only
    assert sender.due(0.05) == []
    # Its timeout is left as it was: the protocol's schedule still holds.
    assert sender.next_deadline() == pytest.approx(INITIAL_RTO)
    assert sender.due(INITIAL_RTO) == [frame_for(1), frame_for(6)]
    assert sender.next_deadline() == pytest.approx(3 * INITIAL_RTO)


def test_fast_retransmission_counts_only_acks_of_later_frames() -> None:
    sender = ReliableSender()
    queue_frames(sender, 4)
    sender.due(0.0)
    assert sender.on_ack(1, 0.01) == []
    assert sender.on_ack(2, 0.02) == []
    assert sender.on_ack(3, 0.03) == []  # three acks, but none of a frame after 4
    assert sender.retransmissions == 0
    assert sender.next_deadline() == pytest.approx(INITIAL_RTO)


def test_frame_due_by_both_its_timeout_and_later_acks_goes_out_once() -> None:
    sender = ReliableSender()
    queue_frames(sender, 4)
    sender.due(0.0)
    assert sender.on_ack(2, 0.05) == []
    assert sender.on_ack(3, 0.1) == []
    assert sender.on_ack(4, INITIAL_RTO) == [frame_for(1)]
    assert sender.due(INITIAL_RTO + 0.01) == []
    assert sender.retransmissions == 1
    assert sender.next_deadline() == pytest.approx(3 * INITIAL_RTO)


def test_queue_requires_consecutive_seqs() -> None:
    sender = ReliableSender()
    with pytest.raises(ValueError):
        sender.queue(2, b"two")
    sender.queue(1, b"one")
    with pytest.raises(ValueError):
        sender.queue(1, b"one again")


def test_window_full_frames_wait_until_the_oldest_is_acked() -> None:
    sender = ReliableSender()
    queue_frames(sender, WINDOW)
    assert not sender.can_send
    assert sender.due(0.0) == [frame_for(seq) for seq in range(1, WINDOW + 1)]
    queue_frames(sender, 3)
    assert sender.due(0.0) == []
    assert sender.pending == WINDOW + 3

    assert sender.on_ack(1, 0.01) == [frame_for(WINDOW + 1)]
    assert sender.on_ack(3, 0.02) == []  # the oldest unacked is still 2: the window stays put
    assert sender.on_ack(2, 0.03) == [frame_for(WINDOW + 2), frame_for(WINDOW + 3)]
    assert not sender.can_send
    assert sender.on_ack(4, 0.04) == []
    assert sender.can_send
    assert sender.pending == WINDOW - 1


def test_backlog_overflow_is_reported() -> None:
    sender = ReliableSender()
    queue_frames(sender, WINDOW + MAX_BACKLOG)
    assert not sender.overflowed
    queue_frames(sender, 1)
    assert sender.overflowed
    assert sender.pending == WINDOW + MAX_BACKLOG
    assert sender.next_seq == WINDOW + MAX_BACKLOG + 2


# Flight: what senders sharing it have out at once


def senders_on(flight: Flight, count: int, frames: int) -> list[ReliableSender]:
    senders = [ReliableSender(flight=flight) for _ in range(count)]
    for sender in senders:
        queue_frames(sender, frames)
    return senders


def take_turns(flight: Flight, senders: list[ReliableSender], now: float) -> list[tuple[int, int]]:
    """Whose turn it was (by index) and how many frames its ``due`` started, turn by turn."""
    return [(senders.index(sender), len(sender.due(now))) for sender in flight.turns()]


def test_senders_sharing_a_flight_start_no_more_than_its_limit_between_them() -> None:
    flight = Flight(5)
    senders = senders_on(flight, 3, 10)
    assert [len(sender.due(0.0)) for sender in senders] == [5, 0, 0]
    assert flight.frames == 5
    # Held back by the flight, not the window: no timer spins for them, nothing is due.
    assert [sender.waiting for sender in senders] == [True, True, True]
    assert [sender.next_deadline() for sender in senders] == [INITIAL_RTO, None, None]
    assert take_turns(flight, senders, 0.0) == []


def test_room_a_flight_frees_goes_to_the_senders_in_line_in_turn() -> None:
    flight = Flight(5)
    senders = senders_on(flight, 3, 10)
    for sender in senders:
        sender.due(0.0)
    # An ack frees room, but its sender waits its turn in line, as the others do.
    assert senders[0].on_ack(1, 0.1) == []
    assert senders[0].on_ack(2, 0.1) == []
    assert flight.frames == 3
    assert take_turns(flight, senders, 0.1) == [(0, 1), (1, 1)]
    assert flight.frames == 5
    for seq in (3, 4, 5):
        senders[0].on_ack(seq, 0.15)
    senders[1].on_ack(1, 0.15)
    assert take_turns(flight, senders, 0.15) == [(2, 1), (0, 1), (1, 1), (2, 1)]
    assert flight.frames == 5


def test_a_frame_leaves_the_flight_at_its_first_timeout_and_holds_its_sender_back() -> None:
    flight = Flight(4)
    senders = senders_on(flight, 2, 10)
    assert [len(sender.due(0.0)) for sender in senders] == [4, 0]
    # Nothing acked: at the first timeout the four are sent again whatever the flight and
    # taken as lost; their room goes to the line, but not to their sender till it hears.
    assert senders[0].due(INITIAL_RTO) == [frame_for(seq) for seq in range(1, 5)]
    assert flight.frames == 0
    assert take_turns(flight, senders, INITIAL_RTO) == [(0, 0), (1, 4)]
    assert senders[0].next_deadline() == pytest.approx(3 * INITIAL_RTO), "no timer spins"
    for seq in (1, 2, 3):
        assert senders[0].on_ack(seq, INITIAL_RTO) == []
    assert flight.frames == 4, "an ack of a frame sent again frees no room"
    assert senders[0].on_ack(4, INITIAL_RTO) == []
    assert senders[0].waiting, "heard again: it waits its turn"


def test_a_closed_sender_leaves_the_flight_and_the_line() -> None:
    flight = Flight(4)
    senders = senders_on(flight, 3, 10)
    for sender in senders:
        sender.due(0.0)
    senders[1].close()
    senders[0].close()
    assert flight.frames == 0
    assert take_turns(flight, senders, 0.0) == [(2, 4)]  # nobody else in line: all it may
    assert flight.frames == 4


def test_a_sender_alone_on_a_flight_with_room_keeps_its_window() -> None:
    flight = Flight(10 * WINDOW)
    (sender,) = senders_on(flight, 1, WINDOW + 3)
    assert sender.due(0.0) == [frame_for(seq) for seq in range(1, WINDOW + 1)]
    assert sender.on_ack(1, 0.01) == [frame_for(WINDOW + 1)]
    assert flight.frames == WINDOW


# ReliableReceiver


def test_shared_frames_are_held_once_and_stamped_with_each_senders_seq() -> None:
    shared = SharedFrames(lambda frame, seq: b"%s %d" % (frame, seq))
    senders = [ReliableSender(shared) for _ in range(3)]
    senders[0].queue(1, b"private")
    frame = b"x" * 1000
    for sender in senders:
        sender.queue(sender.next_seq, frame)
    assert shared.held_bytes == len(b"private") + len(frame) + 4 * HOLD_COST
    assert senders[0].held_bytes == len(b"private") + len(frame) + 2 * HOLD_COST
    assert senders[0].due(0.0) == [b"private 1", frame + b" 2"]
    assert senders[1].due(0.0) == [frame + b" 1"]
    assert senders[0].due(INITIAL_RTO) == [b"private 1", frame + b" 2"], "stamped again"
    senders[0].on_ack(2, INITIAL_RTO)
    senders[1].on_ack(1, INITIAL_RTO)
    assert shared.held_bytes == len(b"private") + len(frame) + 2 * HOLD_COST
    senders[2].close()
    senders[0].close()
    assert shared.held_bytes == 0 and senders[0].held_bytes == 0


def test_in_order_delivery_with_holes_filled_later() -> None:
    receiver = ReliableReceiver()
    assert receiver.on_frame(1, b"1") == [b"1"]
    assert receiver.on_frame(3, b"3") == []
    assert receiver.on_frame(5, b"5") == []
    assert receiver.held == 2
    assert receiver.on_frame(2, b"2") == [b"2", b"3"]
    assert receiver.on_frame(4, b"4") == [b"4", b"5"]
    assert (receiver.next_expected, receiver.delivered, receiver.held) == (6, 5, 0)


def test_a_repeated_frame_gets_more_acks_than_a_new_one() -> None:
    receiver = ReliableReceiver()
    assert receiver.acks_for(1) == 1
    receiver.on_frame(1, frame_for(1))
    assert receiver.acks_for(1) == ACK_COPIES > 1
    assert receiver.acks_for(3) == 1
    receiver.on_frame(3, frame_for(3))  # held early: its repeat is a repeat too
    assert receiver.acks_for(3) == ACK_COPIES
    assert receiver.acks_for(2) == 1


def test_duplicates_are_suppressed_and_counted() -> None:
    receiver = ReliableReceiver()
    assert receiver.on_frame(1, b"1") == [b"1"]
    assert receiver.on_frame(1, b"1") == []  # already delivered
    assert receiver.on_frame(3, b"3") == []
    assert receiver.on_frame(3, b"3") == []  # already held
    assert receiver.on_frame(2, b"2") == [b"2", b"3"]
    assert (receiver.duplicates, receiver.delivered) == (2, 3)


def test_far_future_seq_is_dropped_unacked() -> None:
    receiver = ReliableReceiver()
    assert receiver.on_frame(1 + WINDOW, b"far") is None
    assert receiver.on_frame(10**12, b"farther") is None
    assert receiver.dropped == 2
    assert receiver.on_frame(WINDOW, b"edge") == []
    assert receiver.held == 1
    with pytest.raises(ValueError):
        receiver.on_frame(0, b"zero")


@st.composite
def shuffled_with_duplicates(draw: st.DrawFn) -> tuple[int, list[int]]:
    """Seqs 1..N, shuffled within blocks of WINDOW so each arrives within the
    receiver's window, with copies of arrived seqs inserted later on."""
    count = draw(st.integers(min_value=1, max_value=3 * WINDOW))
    order: list[int] = []
    for start in range(1, count + 1, WINDOW):
        block = list(range(start, min(start + WINDOW, count + 1)))
        order.extend(draw(st.permutations(block)))
    copies = draw(st.lists(st.tuples(st.integers(0), st.integers(0)), max_size=count))
    for source, offset in copies:
        index = source % len(order)
        order.insert(index + 1 + offset % (len(order) - index), order[index])
    return count, order


@settings(max_examples=50)
@given(shuffled_with_duplicates())
def test_receiver_delivers_each_seq_once_in_order(case: tuple[int, list[int]]) -> None:
    count, order = case
    receiver = ReliableReceiver()
    delivered: list[bytes] = []
    for seq in order:
        frames = receiver.on_frame(seq, frame_for(seq))
        assert frames is not None
        delivered.extend(frames)
    assert delivered == [frame_for(seq) for seq in range(1, count + 1)]
    assert receiver.duplicates == len(order) - count
    assert receiver.held == 0


# A simulated lossy link between a sender and a receiver


def run_lossy_link(
    seed: int, count: int, loss: float
) -> tuple[list[bytes], ReliableSender, ReliableReceiver]:
    """Send count frames over a link that loses, delays and reorders both ways.

    Returns what the receiver delivered once the sender has every frame
    acknowledged or gives up.
    """
    rng = random.Random(seed)
    sender = ReliableSender()
    receiver = ReliableReceiver()
    delivered: list[bytes] = []
    # (arrival time, tie-break, is_ack, seq, frame)
    wire: list[tuple[float, int, bool, int, bytes]] = []
    tiebreak = itertools.count()
    now = 0.0

    def transmit(is_ack: bool, seq: int, frame: bytes) -> None:
        if rng.random() >= loss:
            arrival = now + rng.uniform(0.001, 0.08)
            heapq.heappush(wire, (arrival, next(tiebreak), is_ack, seq, frame))

    queue_frames(sender, count)
    while sender.pending and not sender.failed:
        deadline = sender.next_deadline()
        assert deadline is not None
        if wire and wire[0][0] <= deadline:
            now, _, is_ack, seq, frame = heapq.heappop(wire)
            if is_ack:
                for frame in sender.on_ack(seq, now):
                    transmit(False, seq_of(frame), frame)
            else:
                acks = receiver.acks_for(seq)
                frames = receiver.on_frame(seq, frame)
                assert frames is not None
                delivered.extend(frames)
                for _ in range(acks):
                    transmit(True, seq, b"")
        else:
            now = max(now, deadline)
        for frame in sender.due(now):
            transmit(False, seq_of(frame), frame)
    return delivered, sender, receiver


def test_lossy_link_delivers_everything_once_in_order() -> None:
    count = 300
    delivered, sender, receiver = run_lossy_link(seed=7, count=count, loss=0.2)
    assert not sender.failed
    assert delivered == [frame_for(seq) for seq in range(1, count + 1)]
    assert sender.retransmissions > 0
    assert receiver.duplicates > 0


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_lossy_link_delivers_an_in_order_prefix_or_everything(seed: int) -> None:
    count = 100
    delivered, sender, _ = run_lossy_link(seed=seed, count=count, loss=0.2)
    expected = [frame_for(seq) for seq in range(1, count + 1)]
    if sender.failed:
        assert delivered == expected[: len(delivered)]
    else:
        assert delivered == expected


def test_frames_held_early_count_in_the_shared_figure_until_delivered_or_closed() -> None:
    shared = SharedFrames(lambda frame, seq: frame)
    receiver = ReliableReceiver(shared)
    early = [b"frame %d" % seq for seq in range(2, WINDOW + 1)]
    for seq, frame in enumerate(early, start=2):
        assert receiver.on_frame(seq, frame) == []
    held = sum(len(frame) + HOLD_COST for frame in early)
    assert receiver.held_bytes == shared.held_bytes == held
    assert receiver.on_frame(WINDOW + 1, b"too far") is None  # no more than the window
    assert receiver.on_frame(1, b"frame 1") == [b"frame 1", *early]
    assert receiver.held_bytes == shared.held_bytes == 0
    assert receiver.on_frame(WINDOW + 2, b"early again") == []
    assert shared.held_bytes == len(b"early again") + HOLD_COST
    receiver.close()
    assert receiver.held_bytes == shared.held_bytes == 0
