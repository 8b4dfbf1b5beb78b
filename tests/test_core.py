"""The server core's rules, the same for both transports: in memory, time driven by hand."""

from __future__ import annotations

import logging

import pytest

from common.protocol.codec import (
    AlreadyRegistered,
    BadFrame,
    Hello,
    ProtocolError,
    Say,
    decode_client,
)
from common.protocol.limits import Limits
from common.room.room import Stage
from common.room.sharing import Sharing
from common.server.core import (
    BUSY,
    JOIN_BURST,
    JOIN_RATE,
    MAX_WAITING,
    Admission,
    Again,
    Client,
    Core,
)

LIMITS = Limits(rate_limit=1, burst=1)


@pytest.fixture
def core() -> Core[Client]:
    return Core(LIMITS, 10, Sharing(), logging.getLogger("test-core"))


def joined(core: Core[Client], name: str) -> Client:
    client = Client(name, LIMITS, 0.0)
    assert core.act(client, lambda: Hello(name=name), 0.0)
    assert core.in_room(client)
    client.bucket.allow(1.0)  # its burst refilled, then spent: the next frame waits a second
    return client


def errors(core: Core[Client], client: Client) -> list[str]:
    return [e.line.decode() for e in core.room.take(client) if b'"error"' in e.line]


# ---- frames -----------------------------------------------------------------


def test_a_frame_from_a_client_whose_hello_is_under_way_is_not_acted_on(
    core: Core[Client],
) -> None:
    """UDP acts on a hello on a thread of its own: what its session sends meanwhile is
    neither acted on nor counted against its rate limit."""
    client = Client("x", LIMITS, 0.0)
    client.stage = Stage.CLAIMING  # as the room sets it while the name is claimed

    def read() -> Say:
        raise AssertionError("read while the hello is under way")

    assert core.act(client, read, 0.0)
    assert client.bucket.allow(0.0), "the rate limit was charged"


@pytest.mark.parametrize("stage", [Stage.TAKEN, Stage.AWAY])
def test_a_frame_from_a_session_that_went_on_elsewhere_is_not_acted_on(
    core: Core[Client], stage: Stage
) -> None:
    client = joined(core, "alice")
    core.room.take(client)
    client.stage = stage  # as the room sets it (a takeover, a broken connection)
    assert core.act(client, lambda: Say(text="late"), 2.0)
    assert client.refused == 0 and core.room.take(client) == []


def test_a_frame_from_a_session_that_is_over_ends_it_here(core: Core[Client]) -> None:
    client = joined(core, "alice")
    core.room.leave(client, "quit")
    assert not core.act(client, lambda: Say(text="late"), 2.0)


def test_a_frame_past_the_rate_limit_or_refused_by_the_codec_is_answered(
    core: Core[Client],
) -> None:
    client = joined(core, "alice")
    core.room.take(client)
    assert core.act(client, lambda: Say(text="too soon"), 1.0)
    assert core.act(client, lambda: decode_client(b"{").message, 2.0)
    assert [e.split('"code":"')[1].split('"')[0] for e in errors(core, client)] == [
        "rate_limited",
        BadFrame.code,
    ]
    assert client.refused == 2


# ---- a hello again ------------------------------------------------------------


def test_a_hello_again_while_the_first_is_under_way_waits_for_its_answer(
    core: Core[Client],
) -> None:
    client = Client("x", LIMITS, 0.0)
    assert core.hello_again(client, Hello(name="x"), None) is Again.UNDER_WAY
    client.stage = Stage.CLAIMING
    assert core.hello_again(client, Hello(name="x"), None) is Again.UNDER_WAY


def test_a_hello_again_with_the_same_name_gets_its_welcome_again(core: Core[Client]) -> None:
    client = joined(core, "Alice")
    assert core.hello_again(client, Hello(name="ALICE"), None) is Again.WELCOME


def test_a_hello_again_with_another_name_is_refused_as_the_room_refuses_it(
    core: Core[Client],
) -> None:
    client = joined(core, "alice")
    core.room.take(client)
    refusal = core.hello_again(client, Hello(name="bob"), None)
    assert isinstance(refusal, AlreadyRegistered)
    with pytest.raises(AlreadyRegistered) as raised:  # the room's own refusal, the same text
        core.room.handle(client, Hello(name="bob"))
    assert str(raised.value) == str(refusal) == "you are already registered as alice"
    problem: ProtocolError = BadFrame("not a hello")
    assert core.hello_again(client, None, problem) is problem


# ---- admission ----------------------------------------------------------------


def test_strangers_hold_places_per_address_and_in_all_until_they_settle() -> None:
    admission = Admission(0.0, max_per_address=2)
    assert admission.arrive("10.0.0.1") is None
    assert admission.arrive("10.0.0.1") is None
    assert admission.arrive("10.0.0.1") == (
        "too many connections from your address have yet to say hello"
    )
    admission.settle("10.0.0.1")
    assert admission.arrive("10.0.0.1") is None
    hosts = [f"10.0.1.{n}" for n in range(MAX_WAITING)]
    refused = [host for host in hosts if admission.arrive(host) is not None]
    assert len(refused) == 2 and admission.arrive("10.0.2.1") == BUSY
    admission.settle(hosts[0])
    assert admission.arrive("10.0.2.1") is None


def test_joins_are_paced_by_the_sends_they_cost() -> None:
    admission = Admission(0.0)
    assert admission.may_join(0.0, JOIN_BURST)
    assert not admission.may_join(0.0, 1)
    assert admission.may_join(1 / JOIN_RATE, 1), "one send's worth came back"
    assert not admission.may_join(0.5, int(JOIN_RATE))
    assert admission.may_join(1.0, int(JOIN_RATE) // 2)


def test_a_stranger_whose_address_is_not_proven_counts_in_all_only() -> None:
    """UDP's: a hello being acted on has no share of an address (anyone could forge it)."""
    admission = Admission(0.0, max_per_address=1)
    assert [admission.arrive(None) for _ in range(MAX_WAITING)] == [None] * MAX_WAITING
    assert admission.arrive(None) == BUSY
    admission.settle(None)
    assert admission.arrive("10.0.0.1") is None
    assert admission.arrive(None) == BUSY
