"""The C load generator (benchmarks/cgen): real short runs against the TCP servers and UDP
sessions (raw 1.0, raw and reliable packets, the reliable ones over a lossy relay too), and the
same counts as the Python generator on the same schedule, down to duplicates, reorders and
markers never sent (a scripted server makes them)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from benchmarks import cgen, cluster
from benchmarks.measure import LoadResult, LoadSpec, format_results, run_clients, run_load
from netsim.lossy import lossy_link_unavailable

needs_cc = pytest.mark.skipif(
    not cgen.available(), reason="no C compiler (cc/gcc) to build benchmarks/cgen/loadgen.c"
)

SMALL = LoadSpec(clients=5, rate=20, duration=1.0, warmup=0.2, drain=5.0)


def _assert_complete(result: LoadResult, recipients: int) -> None:
    assert result.generator == "c"
    assert result.offered_msgs_per_s == pytest.approx(100)
    assert result.sent == 100 and result.unsent == 0
    assert result.expected == recipients * 100
    assert result.received == result.expected
    assert result.lost == 0
    assert (result.duplicates, result.reorders, result.unexpected) == (0, 0, 0)
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms < 5000
    assert len(result.percentiles_ms) == 7
    assert math.isfinite(result.send_lag_p99_ms)
    assert result.deliveries_per_s > 0
    assert 0 <= result.harness_cpu_pct < 100
    assert result.server_peak_rss_mb > 1
    assert result.connect_s > 0


@needs_cc
def test_c_generator_against_the_tcp_server_accounts_for_every_message() -> None:
    result = run_load(dataclasses.replace(SMALL, generator="c"))

    _assert_complete(result, recipients=5)
    assert result.server_threads >= 1 + 5
    assert result.server_clean_exit
    assert " c " in format_results([result])


@needs_cc
def test_c_generator_against_the_assignments_server_accounts_for_every_message() -> None:
    result = run_load(dataclasses.replace(SMALL, server="assignment", generator="c", pad=10))

    # The assignment's server does not echo a message to its sender.
    _assert_complete(result, recipients=4)


@needs_cc
@pytest.mark.parametrize("packets", [False, True], ids=["1.0", "packets"])
def test_c_generator_against_raw_udp_sessions_accounts_for_every_message(packets: bool) -> None:
    result = run_load(dataclasses.replace(SMALL, server="udp", packets=packets, generator="c"))

    assert result.protocol == ("udp-raw-packets" if packets else "udp-raw")
    assert result.send_errors == 0
    _assert_complete(result, recipients=5)
    if packets:
        assert result.acks_per_packet == 0  # raw packet sessions send no acks


@needs_cc
def test_c_generator_against_reliable_udp_packet_sessions_accounts_for_every_message() -> None:
    spec = dataclasses.replace(SMALL, server="udp", reliable=True, packets=True, generator="c")
    result = run_load(spec)

    assert result.protocol == "udp-reliable-packets"
    _assert_complete(result, recipients=5)
    # The server's packets are acked, one ack per two packets or fewer (acks ride with says).
    assert 0 < result.acks_per_packet <= 1


@needs_cc
def test_c_generator_sends_reliable_packets_again_over_a_lossy_relay() -> None:
    """A relay dropping a fifth of the datagrams each way: the generator's says are sent
    again until acked, the server's frames are acked and handed on in order, nothing lost."""
    spec = dataclasses.replace(
        SMALL, server="udp", reliable=True, packets=True, generator="c", relay_loss=0.2
    )
    result = run_load(spec)

    assert result.link == "relay 20% loss"
    _assert_complete(result, recipients=5)
    assert result.retransmitted > 0


@needs_cc
def test_c_and_python_generators_count_alike_on_the_tcp_server() -> None:
    spec = dataclasses.replace(SMALL, clients=3)
    c, python = (run_load(dataclasses.replace(spec, generator=g)) for g in ("c", "python"))

    assert (c.generator, python.generator) == ("c", "python")
    for result in (c, python):
        assert (result.sent, result.expected, result.received, result.lost) == (60, 180, 180, 0)


@needs_cc
@pytest.mark.skipif(lossy_link_unavailable() is not None, reason=str(lossy_link_unavailable()))
def test_c_generator_runs_inside_the_lossy_namespace() -> None:
    result = run_load(dataclasses.replace(SMALL, generator="c", netns_loss=0))

    assert result.link == "netns 0% loss"
    _assert_complete(result, recipients=5)


class _ScriptedServer:
    """A one-client JSON server that misbehaves on purpose: say 0 is held back and sent after
    say 1 (a reorder), say 2 comes twice (a duplicate), say 3 with a marker never sent
    (unexpected), says 4 to 6 never come back (lost); the rest are echoed. Three lost against
    two extra markers, so the count of markers never reaches what is owed and both generators
    wait out the whole drain: what each one counts cannot depend on timing."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.thread = threading.Thread(target=self._serve, name="scripted-server", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            lines.readline()  # hello
            conn.sendall(b'{"type":"welcome","name":"c0","users":["c0"],"count":1}\n')
            held = b""
            for index, line in enumerate(lines):
                frame = json.loads(line)
                if frame.get("type") != "say":
                    break
                out = b'{"type":"message","from":"c0","text":"%s"}\n' % frame["text"].encode()
                if index == 0:
                    held = out
                elif index == 1:
                    conn.sendall(out + held)
                elif index == 2:
                    conn.sendall(out + out)
                elif index == 3:
                    conn.sendall(out + b'{"type":"message","from":"x","text":"#9:9:123"}\n')
                elif index > 6:
                    conn.sendall(out)

    def close(self) -> None:
        self.listener.close()


def _scripted_run(generator: str) -> LoadResult:
    server = _ScriptedServer()
    try:
        spec = LoadSpec(
            clients=1, rate=10, duration=1.0, warmup=0.2, drain=1.0, generator=generator
        )
        return run_clients(spec, server.address, os.getpid())
    finally:
        server.close()


@needs_cc
def test_c_and_python_generators_agree_on_duplicates_reorders_and_unexpected() -> None:
    c, python = _scripted_run("c"), _scripted_run("python")

    # Slots 0 and 1 fall in the warmup; the window's 10 (2 to 11) are measured.
    for result in (c, python):
        assert (result.sent, result.expected, result.received, result.lost) == (10, 10, 7, 3)
        assert (result.duplicates, result.reorders, result.unexpected) == (1, 1, 1)
    assert (c.generator, python.generator) == ("c", "python")


@needs_cc
def test_c_generator_is_chosen_only_where_it_can_run() -> None:
    assert LoadSpec(server="udp", reliable=True, packets=True).chosen_generator() == "c"
    assert LoadSpec(server="udp", reliable=True).chosen_generator() == "python"
    assert LoadSpec(slow_readers=2).chosen_generator() == "python"
    assert LoadSpec(generator="python").chosen_generator() == "python"
    with pytest.raises(ValueError, match="C generator"):
        LoadSpec(server="udp", reliable=True, generator="c").validate()
    with pytest.raises(ValueError, match="generator must be"):
        LoadSpec(generator="rust").validate()


def test_without_a_compiler_the_generator_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cgen, "BINARY", tmp_path / "loadgen")
    monkeypatch.setattr(cgen, "_compiler", lambda: None)

    assert not cgen.available()
    assert LoadSpec().chosen_generator() == "python"
    with pytest.raises(cgen.CompilerMissing, match="install gcc"):
        cgen.binary()


@needs_cc
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_the_cluster_benchmark_drives_one_server_on_redis_with_it() -> None:
    """Against one server the cluster benchmark's load is the C generator's, and the chat's CPU
    counts the server and its Redis together: everything delivered, nothing refused."""
    run = cluster.run_load("one server + Redis", 10, 5, 0.5)
    assert run.generator == "c"
    assert run.delivered_pct == 100.0 and run.lost_pct == 0.0 and run.refused_pct == 0.0
    two = cluster.run_load("two servers + Redis", 10, 5, 0.5)  # clients split: Python's
    assert two.generator == "python" and two.delivered_pct == 100.0
