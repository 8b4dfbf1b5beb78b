"""The room beyond one process, measured: one TCP server against two sharing a room through Redis.

    python -m benchmarks.cluster [--duration 5] [--json PATH]   (`make bench-cluster`)
    python -m benchmarks.cluster --one redis [--clients 200 --rate 5 --duration 3]

``--one alone|redis`` is one short run of one set-up, its figures as one JSON line: enough to
compare two versions, or a server alone and on Redis, in turn, several times over.

Three questions, each answered on this machine (its cores are shared by the servers, Redis and
the load, so a number here is what they manage together, not what each would alone):

1. Throughput past saturation and CPU per delivery: the same open-loop load against one server
   alone, one server on Redis, and two servers on Redis with the clients split between them.
   CPU is every process of the chat (servers and Redis) over the measured window, per delivery.
2. The latency Redis adds at 200 clients x 5 msg/s: the same three set-ups, p50/p99/max,
   each the median of REPEATS runs, with the range.
3. The delivery target at 200 clients x 25 msg/s (1 M deliveries/s offered): one server alone
   and one on Redis, median of REPEATS runs with the range; one on Redis is to deliver at least
   99 % with nothing refused. A run whose load generator may have set the pace (it used most of
   a core, or its sends left late: ``benchmarks.measure.is_harness_bound``) says so: it is
   then the harness's figure, not the server's.
4. What one Redis stream carries: events appended per second through the servers' own publish
   script, pipelined like the servers do, and Redis's CPU per event, from which the ceiling of
   one stream (one Redis core) follows.

It reuses the load clients of `benchmarks.clients` (the same open-loop schedule and markers as
the rest of the suite) and `benchmarks.servers`; the analysis here is the few numbers it needs.
The JSON file also records what it was measured on (`meta`, as the suite's results do), since
the report quotes it: how many cores the servers, Redis and the load had between them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import redis
from tabulate import tabulate

from benchmarks import cgen, procstat
from benchmarks.clients import Plan, TcpClient, Worker, connect_tcp, markers
from benchmarks.harness import machine_meta
from benchmarks.measure import LoadSpec, is_harness_bound, run_c_clients
from benchmarks.servers import ServerProcess, free_port, server_command, start_redis
from common.cli.serverargs import raise_open_file_limit
from common.room.redisroom import PUBLISH

LEAD_NS = 300_000_000
WARMUP_S = 1.0
DRAIN_S = 5.0
POLL_S = 0.01
SATURATION = ((100, 20.0), (100, 40.0), (100, 80.0), (100, 160.0))
"""(clients, msg/s each) of the throughput runs: 200k to 1.6M deliveries/s offered."""
LATENCY = (200, 5.0)
TARGET = (200, 25.0)
TARGET_SETUPS = ("one server", "one server + Redis")
TARGET_DELIVERED_PCT = 99.0
REPEATS = 3
SETUPS = ("one server", "one server + Redis", "two servers + Redis")
ONE = {"alone": SETUPS[0], "redis": SETUPS[1], "two": SETUPS[2]}
"""The set-ups ``--one`` names."""
REFUSED = b'"code":"rate_limited"'
"""How a refused message is told to its sender: a server past what it can carry on Redis
refuses new messages rather than queue them (``common.room.redisroom.MAX_IN_FLIGHT``)."""


@dataclass(frozen=True)
class Run:
    setup: str
    clients: int
    rate: float
    offered_deliveries_per_s: float
    deliveries_per_s: float
    lost_pct: float
    refused_pct: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    chat_cpu_pct: float
    cpu_us_per_delivery: float
    delivered_pct: float
    harness_cpu_pct: float
    send_lag_p99_ms: float
    harness_bound: bool
    generator: str  # the load's clients: "c" (benchmarks.cgen) or "python"

    @classmethod
    def of(
        cls,
        setup: str,
        clients: int,
        rate: float,
        *,
        sent: int,
        expected: int,
        received: int,
        refused: int,
        deliveries_per_s: float,
        latency_ms: tuple[float, float, float],
        chat_cpu_pct: float,
        cpu_us_per_delivery: float,
        harness_cpu_pct: float,
        send_lag_p99_ms: float,
        generator: str,
    ) -> Run:
        """A run from what either load generator measured: of the ``sent`` messages in the
        window (``refused`` of them), ``received`` of the ``expected`` deliveries came;
        ``latency_ms``: their p50, p99 and max."""
        delivered_pct = 100 * received / max(1, expected)
        p50_ms, p99_ms, max_ms = latency_ms
        return cls(
            setup=setup,
            clients=clients,
            rate=rate,
            offered_deliveries_per_s=clients * clients * rate,
            deliveries_per_s=deliveries_per_s,
            lost_pct=100 - delivered_pct,
            refused_pct=100 * refused / max(1, sent),
            p50_ms=p50_ms,
            p99_ms=p99_ms,
            max_ms=max_ms,
            chat_cpu_pct=chat_cpu_pct,
            cpu_us_per_delivery=cpu_us_per_delivery,
            delivered_pct=delivered_pct,
            harness_cpu_pct=harness_cpu_pct,
            send_lag_p99_ms=send_lag_p99_ms,
            harness_bound=is_harness_bound(harness_cpu_pct, send_lag_p99_ms),
            generator=generator,
        )


@dataclass(frozen=True)
class Repeated:
    """REPEATS runs of one set-up at one load: each figure's median, and its range."""

    median: Run
    low: Run
    high: Run
    runs: list[Run]

    @classmethod
    def of(cls, runs: list[Run]) -> Repeated:
        def pick(choose: Any) -> Run:
            fields: dict[str, Any] = {}
            for name, value in asdict(runs[0]).items():
                values = [getattr(run, name) for run in runs]
                if isinstance(value, bool):
                    fields[name] = any(values)  # one harness-bound run marks them all
                elif isinstance(value, float):
                    fields[name] = choose(values)
                else:
                    fields[name] = value
            return Run(**fields)

        return cls(pick(statistics.median), pick(min), pick(max), runs)

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.median),
            "range": {
                name: [getattr(self.low, name), getattr(self.high, name)]
                for name, value in asdict(self.median).items()
                if isinstance(value, float)
            },
            "runs": [asdict(run) for run in self.runs],
        }


def repeated(setup: str, clients: int, rate: float, duration: float) -> Repeated:
    return Repeated.of([run_load(setup, clients, rate, duration) for _ in range(REPEATS)])


@dataclass(frozen=True)
class StreamRun:
    publishers: int
    events_per_s: float
    redis_cpu_pct: float
    redis_cpu_us_per_event: float
    ceiling_events_per_s: float


class Redis:
    """A redis-server of this run's own on a free port, its data in memory only."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("benchmarks.cluster needs redis-server: apt-get install redis-server")
        self.port = free_port()
        self.proc = start_redis(binary, self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.stop()


def percentile_ms(ordered: Sequence[int], fraction: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1] / 1e6


def run_load(setup: str, clients: int, rate: float, duration: float) -> Run:
    """Start the set-up's servers (and Redis), run the load, stop them all."""
    store = Redis() if "Redis" in setup else None
    count = 2 if setup.startswith("two") else 1
    argv = server_command("tcp") + (["--redis", store.url] if store else [])
    servers = [ServerProcess(argv) for _ in range(count)]
    try:
        addresses = [server.wait_ready() for server in servers]
        pids = [server.pid for server in servers] + ([store.proc.pid] if store else [])
        return measure(setup, clients, rate, duration, addresses, pids)
    finally:
        for server in servers:
            server.stop()
        if store:
            store.stop()


def measure(
    setup: str,
    n: int,
    rate: float,
    duration: float,
    addresses: Sequence[tuple[str, int]],
    pids: Sequence[int],
) -> Run:
    """Clients split evenly between ``addresses``; one schedule, one worker, one clock. Against
    one server the C load generator (benchmarks.cgen) runs them where it can: it costs a small
    share of a core, so the servers, not the load, set the pace."""
    if len(addresses) == 1 and cgen.available():
        return measure_c(setup, n, rate, duration, addresses[0], pids)
    clients: list[TcpClient] = [
        connect_tcp(i, addresses[i * len(addresses) // n]) for i in range(n)
    ]
    stop = threading.Event()
    t0 = time.monotonic_ns() + LEAD_NS
    start_ns = t0 + round(WARMUP_S * 1e9)
    plan = Plan(n, round(1e9 / rate), t0, start_ns, start_ns + round(duration * 1e9))
    worker = Worker(clients, plan, stop, "load-0")
    worker.start()
    try:
        time.sleep(max(0.0, (plan.start_ns - time.monotonic_ns()) / 1e9))
        cpu_start = sum(procstat.cpu_seconds(pid) for pid in pids)
        own_start = own_cpu_seconds()
        time.sleep(max(0.0, (plan.end_ns - time.monotonic_ns()) / 1e9))
        cpu_s = sum(procstat.cpu_seconds(pid) for pid in pids) - cpu_start
        own_s = own_cpu_seconds() - own_start
        worker.scheduled.wait(DRAIN_S)
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            if sum(c.received for c in clients) >= sum(len(c.sent) for c in clients) * n:
                break
            time.sleep(POLL_S)
    finally:
        stop.set()
        worker.join(DRAIN_S)
        for client in clients:
            client.close()
    if worker.error is not None:
        raise RuntimeError(f"the load worker failed: {worker.error!r}")
    latencies: list[int] = []
    in_window = refused = 0
    for client in clients:
        for now, data in zip(client.chunk_times, client.chunks, strict=True):
            batch = markers(data)
            if plan.measured(now):
                in_window += len(batch)
                refused += data.count(REFUSED)
            latencies += [now - s for s in batch if plan.measured(s)]
    sent = sum(1 for c in clients for s in c.sent if plan.measured(s))
    latencies.sort()
    lags = sorted(worker.lags)
    return Run.of(
        setup,
        n,
        rate,
        sent=sent,
        expected=sent * n,
        received=len(latencies),
        refused=refused,
        deliveries_per_s=in_window / duration,
        latency_ms=(
            percentile_ms(latencies, 0.50),
            percentile_ms(latencies, 0.99),
            percentile_ms(latencies, 1.0),
        ),
        chat_cpu_pct=100 * cpu_s / duration,
        cpu_us_per_delivery=1e6 * cpu_s / max(1, in_window),
        harness_cpu_pct=100 * own_s / duration,
        send_lag_p99_ms=percentile_ms(lags, 0.99) if lags else 0.0,
        generator="python",
    )


def measure_c(
    setup: str, n: int, rate: float, duration: float, address: tuple[str, int], pids: Sequence[int]
) -> Run:
    """``measure`` by the C load generator, the chat's CPU over every process of ``pids``."""
    spec = LoadSpec(
        clients=n, rate=rate, duration=duration, warmup=WARMUP_S, drain=DRAIN_S, generator="c"
    )
    result, raw = run_c_clients(spec, address, pids)
    return Run.of(
        setup,
        n,
        rate,
        sent=result.sent,
        expected=result.expected,
        received=result.received,
        refused=raw["refused"],
        deliveries_per_s=result.deliveries_per_s,
        latency_ms=(result.p50_ms, result.p99_ms, result.max_ms),
        chat_cpu_pct=result.server_cpu_pct,
        cpu_us_per_delivery=result.server_cpu_us_per_delivery,
        harness_cpu_pct=result.harness_cpu_pct,
        send_lag_p99_ms=result.send_lag_p99_ms,
        generator="c",
    )


def own_cpu_seconds() -> float:
    """CPU of this process (the load generator): user and system."""
    times = os.times()
    return times.user + times.system


def run_stream(publishers: int, duration: float) -> StreamRun:
    """Publishers append through the servers' publish script as fast as they can, in batches
    of 500 events a call, as a server's publisher does."""
    store = Redis()
    try:
        frame = b'{"type":"msg","from":"c1","text":"b1:1:1234567890123456789","ts":1764000000000}'
        counts = [0] * publishers
        stop = threading.Event()

        def publish(n: int) -> None:
            client = redis.Redis.from_url(store.url, protocol=2)
            script = client.register_script(PUBLISH)
            number = 0
            while not stop.is_set():
                batch: list[int | bytes | str] = []
                for _ in range(500):
                    number += 1
                    batch += [number, frame, "", ""]
                script(
                    keys=["chat:{bench}:log", "chat:{bench}:seen", "chat:{bench}:names"],
                    args=[f"s{n}", 1000, *batch],
                )
                counts[n] = number

        threads = [
            threading.Thread(target=publish, args=(n,), name=f"publisher-{n}")
            for n in range(publishers)
        ]
        for thread in threads:
            thread.start()
        time.sleep(WARMUP_S)
        first, cpu_start, started = sum(counts), procstat.cpu_seconds(store.proc.pid), time.time()
        time.sleep(duration)
        events = sum(counts) - first
        cpu_s = procstat.cpu_seconds(store.proc.pid) - cpu_start
        elapsed = time.time() - started
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        store.stop()
    per_event_s = cpu_s / max(1, events)
    return StreamRun(
        publishers=publishers,
        events_per_s=events / elapsed,
        redis_cpu_pct=100 * cpu_s / elapsed,
        redis_cpu_us_per_event=1e6 * per_event_s,
        ceiling_events_per_s=1 / per_event_s if per_event_s else math.inf,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--one", choices=sorted(ONE), help="only one run of one set-up, printed as a JSON line"
    )
    parser.add_argument("--clients", type=int, default=LATENCY[0], help="with --one")
    parser.add_argument("--rate", type=float, default=LATENCY[1], help="with --one: msg/s each")
    args = parser.parse_args(argv)
    raise_open_file_limit()
    if args.one:
        print(json.dumps(asdict(run_load(ONE[args.one], args.clients, args.rate, args.duration))))
        return
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": args.duration,
        **machine_meta(),
    }
    saturation = [
        run_load(setup, clients, rate, args.duration)
        for clients, rate in SATURATION
        for setup in SETUPS
    ]
    latency = [repeated(setup, *LATENCY, args.duration) for setup in SETUPS]
    target = [repeated(setup, *TARGET, args.duration) for setup in TARGET_SETUPS]
    stream = [run_stream(publishers, args.duration) for publishers in (1, 2)]
    print("Throughput past saturation, CPU of servers and Redis together per delivery:")
    print(tabulate([asdict(r) for r in saturation], headers="keys", floatfmt=",.2f"))
    print(f"\nLatency at 200 clients x 5 msg/s, median of {REPEATS} (range):")
    print(ranged(latency, ("p50_ms", "p99_ms", "max_ms", "cpu_us_per_delivery")))
    print(
        f"\nThe target at 200 clients x 25 msg/s, median of {REPEATS} (range): one server on "
        f"Redis delivers at least {TARGET_DELIVERED_PCT:g} % with nothing refused"
    )
    print(ranged(target, ("delivered_pct", "refused_pct", "p99_ms", "cpu_us_per_delivery")))
    for result in target:
        if result.median.setup != "one server + Redis":
            continue
        met = result.low.delivered_pct >= TARGET_DELIVERED_PCT and result.high.refused_pct == 0
        verdict = "met" if met else "missed"
        if result.median.harness_bound:
            verdict += " (harness-bound: the load generator may have set the pace)"
        print(f"target: {verdict}")
    print("\nOne Redis stream, appended through the publish script:")
    print(tabulate([asdict(r) for r in stream], headers="keys", floatfmt=",.2f"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(
                {
                    "meta": meta,
                    "saturation": [asdict(r) for r in saturation],
                    "latency": [r.as_dict() for r in latency],
                    "target": [r.as_dict() for r in target],
                    "stream": [asdict(r) for r in stream],
                },
                out,
                indent=2,
            )


def ranged(results: Sequence[Repeated], fields: Sequence[str]) -> str:
    """A table of each set-up's medians, each with its range, and whether it was
    harness-bound."""
    rows = [
        [result.median.setup]
        + [
            f"{getattr(result.median, f):,.2f} ({getattr(result.low, f):,.2f}-"
            f"{getattr(result.high, f):,.2f})"
            for f in fields
        ]
        + ["HARNESS-BOUND" if result.median.harness_bound else ""]
        for result in results
    ]
    return str(tabulate(rows, headers=["setup", *fields, "harness"]))


if __name__ == "__main__":
    main()
