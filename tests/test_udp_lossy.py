"""The UDP chat over a bad network: injected faults (FaultyRelay) and real loss (nftables)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from common.protocol.codec import Error, Hello, Msg, Ping, Pong, Say, ServerMessage, Welcome
from common.terminal.render import Line
from netsim.faults import FaultyRelay
from netsim.lossy import LossyNamespace, lossy_link_unavailable
from tests.conftest import ServerProcess, wait_until
from udp.client import UdpTransport

Start = Callable[..., ServerProcess]
DEADLINE = 20.0
BATCH = 25
"""Datagrams sent in a burst: few enough for the relay's own socket buffers even when
the machine is busy, since a datagram lost there is lost outside the relay's counts."""
SYNC_WAIT = 0.5
"""Longer than a ping and its pong can both be held back by the relay (0.2 s each)."""


@dataclass
class Collector:
    """Runs a transport's receive loop in a thread and keeps what arrives."""

    transport: UdpTransport
    messages: list[ServerMessage | Line] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="test-collector", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (message := self.transport.receive()) is not None:
            with self.changed:
                self.messages.append(message)
                self.changed.notify_all()

    def wait(self, condition: Callable[[list[ServerMessage | Line]], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: condition(self.messages), timeout)

    def wait_for_text(self, text: str, timeout: float = DEADLINE) -> bool:
        return self.wait(lambda messages: text in texts_of(messages), timeout)

    def texts(self, sender: str | None = None) -> list[str]:
        """The texts of the chat messages so far, of everyone or of one sender."""
        with self.changed:
            return [
                m.text
                for m in self.messages
                if isinstance(m, Msg) and (sender is None or m.sender == sender)
            ]

    def count(self, kind: type) -> int:
        with self.changed:
            return sum(isinstance(m, kind) for m in self.messages)


@pytest.fixture
def join() -> Iterator[Callable[..., Collector]]:
    """Join a chat (``join(address, "bob", reliable=True)``); every session is closed at the end."""
    collectors: list[Collector] = []

    def open_session(address: tuple[str, int], name: str, reliable: bool = False) -> Collector:
        collector = Collector(UdpTransport.connect(*address, reliable=reliable))
        collectors.append(collector)
        collector.transport.send(Hello(name=name))
        assert collector.wait(lambda ms: any(isinstance(m, Welcome) for m in ms), DEADLINE)
        return collector

    yield open_session
    for collector in collectors:
        collector.transport.close()


Join = Callable[..., Collector]


def sync(peer: Collector, relay: FaultyRelay) -> None:
    """Ping until a pong answers, then wait until every datagram the relay let through to
    ``peer`` (held back ones and copies included) has arrived: the link is quiet again."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        pongs = peer.count(Pong)

        def answered(messages: list[ServerMessage | Line], seen: int = pongs) -> bool:
            return sum(isinstance(m, Pong) for m in messages) > seen

        def arrived() -> bool:
            link, seen = relay.stats().to_client, peer.transport.stats()
            return seen.received + seen.repeated == link.passed + link.duplicated

        peer.transport.send(Ping())
        if peer.wait(answered, SYNC_WAIT):
            assert wait_until(arrived, DEADLINE), "the relay let through more than arrived"
            return
    raise AssertionError("no pong came back")


def texts_of(messages: list[ServerMessage | Line]) -> list[str]:
    return [m.text for m in messages if isinstance(m, Msg)]


def delta(after: Any, before: Any) -> dict[str, int]:
    """Field by field, how much two snapshots of counters differ."""
    return {k: v - getattr(before, k) for k, v in asdict(after).items()}


# ---- injected faults --------------------------------------------------------


def test_seq_accounting_under_drop_duplicate_reorder(start_server: Start, join: Join) -> None:
    server = start_server("udp.server", "--rate-limit", "0", "-v")
    with FaultyRelay(server.address, drop=0.1, duplicate=0.1, reorder=0.1, seed=7) as relay:
        bob = join(relay.address, "bob")
        alice = join(server.address, "alice")
        sync(bob, relay)
        link_before, bob_before = relay.stats().to_client, bob.transport.stats()
        for first in range(0, 300, BATCH):
            for i in range(first, first + BATCH):
                alice.transport.send(Say(text=f"m{i}"))
            assert alice.wait_for_text(f"m{first + BATCH - 1}")
        sync(bob, relay)
        link = delta(relay.stats().to_client, link_before)
        seen = delta(bob.transport.stats(), bob_before)

        for first in range(0, 300, BATCH):
            for i in range(first, first + BATCH):
                bob.transport.send(Say(text=f"b{i}"))
            assert wait_until(
                lambda: relay.stats().to_server.received == bob.transport.stats().sent, DEADLINE
            )
        sync(bob, relay)
        to_server = relay.stats().to_server
        bob_sent = bob.transport.stats().sent

    assert link["dropped"] > 10 and link["duplicated"] > 10 and link["reordered"] > 10
    assert seen["lost"] == link["dropped"]
    assert seen["repeated"] == link["duplicated"]
    assert link["reordered"] - 2 <= seen["reordered"] <= link["reordered"]
    texts = bob.texts("alice")
    assert len(texts) == len(set(texts)), "a repeated datagram was shown twice"
    notices = [m.text for m in bob.messages if isinstance(m, Line)]
    assert any(text.startswith("lost ") for text in notices)
    assert any("came again" in text for text in notices)
    assert any("came late" in text for text in notices)

    assert server.stop() == 0
    match = server.wait_for_log(
        r"bob left \(shutdown\); from client: (\d+) received, (\d+) lost, (\d+) repeated"
    )
    received, lost, repeated = (int(group) for group in match.groups())
    # The server counts the frames with a seq, all but the (at most 5) hellos.
    assert 0 <= to_server.dropped - lost <= 5
    assert 0 <= to_server.duplicated - repeated <= 5
    assert received + lost > bob_sent - 5


def test_reliable_delivers_everything_once_in_order_at_20_percent_loss(
    start_server: Start, join: Join
) -> None:
    server = start_server("udp.server", "--rate-limit", "0")
    with FaultyRelay(server.address, drop=0.2, duplicate=0.05, reorder=0.05, seed=3) as relay:
        bob = join(relay.address, "bob", reliable=True)
        alice = join(server.address, "alice", reliable=True)
        sent = {"alice": [f"a{i}" for i in range(10)], "bob": [f"b{i}" for i in range(10)]}
        for a, b in zip(sent["alice"], sent["bob"], strict=True):
            alice.transport.send(Say(text=a))
            bob.transport.send(Say(text=b))
        everything = sent["alice"] + sent["bob"]
        for peer in (alice, bob):
            assert peer.wait(lambda ms: len([m for m in ms if isinstance(m, Msg)]) >= 20, DEADLINE)
        stats = relay.stats()

    assert stats.to_server.dropped + stats.to_client.dropped > 5
    for peer in (alice, bob):
        assert sorted(peer.texts()) == sorted(everything), "lost or repeated"
        for name, texts in sent.items():
            assert peer.texts(name) == texts, "out of order"
        assert not [m for m in peer.messages if isinstance(m, Error)]
    assert bob.transport.stats().retransmitted > 0


# ---- a real lossy link ------------------------------------------------------


@pytest.fixture
def lossy_link() -> None:
    reason = lossy_link_unavailable()
    if reason is not None:
        pytest.skip(reason)


def load_in_namespace(namespace: LossyNamespace, *args: str) -> dict[str, Any]:
    """Run benchmarks.udp_load inside the namespace: server and clients on its lossy loopback."""
    command = [sys.executable, "-m", "benchmarks.udp_load", "--json", "--warmup", "0.5", *args]
    process = namespace.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.usefixtures("lossy_link")
def test_raw_mode_loses_what_the_link_loses() -> None:
    with LossyNamespace(10) as namespace:
        result = load_in_namespace(
            namespace, "--clients", "10", "--rate", "10", "--duration", "3", "--drain", "1"
        )
        counters = namespace.counters()

    link_loss = counters.dropped / counters.udp_packets
    assert 0.07 < link_loss < 0.13
    # A delivery crosses the link twice: from its sender to the server, then to its reader.
    expected = 1 - (1 - link_loss) ** 2
    says = result["sent"]
    spread = 4 * math.sqrt(link_loss * (1 - link_loss) / says) + 0.02
    assert abs(result["lost"] / result["expected"] - expected) < spread, result
    assert result["duplicates"] == 0
    assert result["server_clean_exit"]


@pytest.mark.usefixtures("lossy_link")
def test_reliable_mode_loses_nothing_at_10_percent_loss() -> None:
    with LossyNamespace(10) as namespace:
        result = load_in_namespace(
            namespace,
            *("--clients", "5", "--rate", "5", "--duration", "3", "--drain", "10", "--reliable"),
        )
        counters = namespace.counters()

    assert counters.dropped > 50
    assert (result["lost"], result["duplicates"], result["reorders"]) == (0, 0, 0), result
    assert result["retransmitted"] > 0
    assert result["server_clean_exit"]
