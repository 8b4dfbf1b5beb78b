"""The benchmark suite: which runs make up `make bench` and `make bench-full`, and their files.

Contract:
    build_suite("bench" | "full" | "tiny", threads=DEFAULT_THREADS) -> [Scenario]
    run_suite(scenarios, out_dir, suite=..., progress=Reporter(...)) -> dict   (the results)
    write_results(results, out_dir)   latest.json and latest.csv in out_dir
    read_results(path) -> dict

A Scenario is one run: a LoadSpec for a load run, a client count for the capacity run
(`benchmarks.capacity`), or a case and a client count for an overload run
(`benchmarks.overload`). A Config is one configuration of the matrix: a server and the options
that set it apart, `packets` (UDP packet sessions, protocol v1.2, named in the protocol:
`udp-raw-packets`) among them. A run's `variant` names an option its LoadResult does not show
(`nodelay`: the assignment's server with TCP_NODELAY), so that it is never taken for the
default's run.
Groups, each answering one question of the report:

- `targets`: the runs the targets are judged on (benchmarks.targets), with the ablations that
  set the transport apart from the design: TCP and the assignment's server at 200 clients x
  5 msg/s, TCP there again with coalescing off (`--coalesce-ms 0`), the assignment's server
  with TCP_NODELAY, UDP raw at 100 x 10 in protocol 1.0 (a datagram per frame, no packing) and
  with packet sessions; UDP packet sessions (v1.2) on loopback: raw at 200 x 5 (against TCP
  there), raw and reliable at 100 x 5, reliable at 200 x 5. Their runs over a lossy link are
  the `lossy` group's.
- `peak`: TCP and the assignment's server at 200 clients x 50 msg/s, past saturation: the most
  deliveries per second each gets through (a short drain: the backlog of an overload never
  drains, and only the throughput is asked of these runs).
  Both groups are repeated (`repeats`, at least 3), one round of every scenario after another,
  so that a slow minute of a shared machine falls on every server alike; every figure taken
  from them is a median with its range.
- `clients`: TCP, the assignment's server, UDP raw and UDP reliable at 10 to 100 clients
  x 5 msg/s (the 200-client point is in `targets`).
- `rate`: TCP and the assignment's server at 200 clients x 5 to 20 msg/s: where each stops
  keeping up (targets.knee); the 50 msg/s point is in `peak`.
- `lossy`: one network for every transport: LINK_MATRIX (TCP, the assignment's server, UDP raw
  and reliable, each in 1.0 and with packet sessions) over a LossyNamespace dropping 0/1/5/10 %
  of UDP datagrams and TCP segments each way, the same clients and load for all; the first
  screen's losses (0 and 5 %) are repeated like `targets` for the configurations the report's
  first screen and the targets compare (`Config.repeated`). Skipped with the reason when this
  machine cannot make one (no root, no nftables).
- `slow-reader`: TCP with and without one client that never reads, and the assignment's server
  with it; texts padded to about 2 KB, so that the slow reader's buffers fill within seconds.
- `nagle`: the TCP server with Nagle's algorithm on (`--nagle`) and off (TCP_NODELAY).
- `coalesce`: the TCP writer's rest between passes (`--coalesce-ms`) against what it buys: CPU
  per delivery and p99 at 200 x 5 and 200 x 50 (the default's runs are in `targets`/`peak`).
- `threads` (full suite): the same TCP load driven by grouped worker threads and by a thread
  per client.
- `capacity`: how many idle clients one TCP server holds, and the memory each costs.
- `saturation`: TCP at 200 clients from well below what it keeps up with to twice that
  (`_SATURATION`): deliveries/s and p99 against offered, readers dropped (none), and how much
  the talkers were slowed (their own sockets held what the server did not read yet: `unsent`,
  `sent_msgs_per_s` against `offered_msgs_per_s`). The two highest points are repeated.
- `packet-saturation`: reliable UDP packet sessions the same way (`_PACKET_SATURATION`), at
  100 clients from under what the server keeps up with (100 x 5 on this machine's two cores;
  at 200 clients it falls behind below 200 x 1.25) to twice that: deliveries/s and p99 against
  offered; past saturation, does it degrade or collapse? The two highest points are repeated.
- `overload`: the TCP server under overload that is not load (`benchmarks.overload`): 3,000
  clients closing at once (sockets closed, a newcomer's welcome meanwhile, memory), 5,000 that
  never read beside 10 talkers (observers' p99, who was dropped, memory once they are gone),
  100 that never read asking `history` 50 times each (memory, an observer's p99).

The results dict: `meta` (suite, date, git commit, Python, machine, load average before and
after, `floor`: the CPU one loopback `send` and `sendto` cost here, from `benchmarks.floor`);
`runs`: group, name, `repeat` (1, 2, ...), `variant` ("" or `nodelay`), `load_1min` (the
1-minute load average as it started), spec and result of each load run; `capacity`; `overload`
(group, name, load_1min and the fields of an OverloadResult, each); `skipped`
(group, reason); `failed` (group, name, error: a run that raised; the suite goes on without it).
The CSV has one row per load run, with the meta columns repeated on every row.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from benchmarks import capacity, overload
from benchmarks.floor import measure_floor
from benchmarks.measure import (
    DEFAULT_THREADS,
    LoadResult,
    LoadSpec,
    format_results,
    label_of,
    result_from_dict,
    result_to_dict,
    run_load,
)
from benchmarks.servers import REPO_ROOT
from netsim.lossy import lossy_link_unavailable

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
SUITES = ("bench", "full", "tiny")
GROUPS = (
    "targets", "peak", "clients", "rate", "lossy", "slow-reader", "nagle", "coalesce", "threads",
    "capacity", "saturation", "packet-saturation", "overload",
)  # fmt: skip
REPEATED = ("targets", "peak", "lossy", "saturation", "packet-saturation")


@dataclass(frozen=True)
class Config:
    """One configuration of the matrix; `key` names it in tables and plots (its protocol)."""

    key: str
    server: str
    reliable: bool = False
    packets: bool = False
    repeated: bool = True  # whether the first screen's losses are repeated for it


LINK_MATRIX = (
    Config("tcp", "tcp"),
    Config("assignment", "assignment", repeated=False),
    Config("udp-raw", "udp", repeated=False),
    Config("udp-raw-packets", "udp", packets=True),
    Config("udp-reliable", "udp", reliable=True),
    Config("udp-reliable-packets", "udp", reliable=True, packets=True),
)
"""Every configuration that meets the lossy link, each at every loss. The first screen and the
targets compare TCP, UDP with packet sessions and reliable UDP 1.0 (udp-reliable-5pct) at 0
and 5 %: those are repeated; the others run once at each loss."""
FIRST_SCREEN_LOSSES = (0, 5)
"""The losses of the report's first table, repeated like the targets."""


def configured(spec: LoadSpec, config: Config) -> LoadSpec:
    """`spec` for one configuration."""
    return dataclasses.replace(
        spec, server=config.server, reliable=config.reliable, packets=config.packets
    )


@dataclass(frozen=True)
class Scenario:
    """One run of the suite: a load run (spec), a capacity run (capacity_clients) or an
    overload run (overload_case, with overload_clients)."""

    group: str
    name: str
    spec: LoadSpec | None = None
    capacity_clients: int = 0
    overload_case: str = ""
    overload_clients: int = 0
    repeat: int = 1
    variant: str = ""


@dataclass(frozen=True)
class _Sizes:
    """What differs between the suites."""

    duration: float
    warmup: float
    drain: float
    reliable_drain: float
    repeats: int
    client_counts: tuple[int, ...]
    sweep_clients: int
    sweep_rates: tuple[float, ...]
    peak_rate: float
    peak_drain: float
    lossy_clients: int
    lossy_drain: float  # outlasts a few backed-off retransmissions, TCP's and reliable UDP's
    losses: tuple[int, ...]
    slow_clients: int
    slow_duration: float
    nagle_clients: tuple[int, ...]
    coalesce: tuple[tuple[float, float], ...]  # (msg/s per client, ms) at 200 clients
    thread_counts: tuple[int, ...]
    capacity_clients: int
    overload: tuple[tuple[str, int], ...]  # (case, clients)


_OVERLOAD = (("closing", 3000), ("non-readers", 5000), ("history", 100))
"""The overload group's cases at the size the targets name."""

_OVERLOAD_NAMES = {
    "closing": "tcp {} closing at once",
    "non-readers": "tcp {} non-readers + 10 talkers",
    "history": "tcp {} non-readers x 50 history",
}

_SIZES = {
    "bench": _Sizes(
        duration=2.0,
        warmup=0.5,
        drain=2.0,
        reliable_drain=3.0,
        repeats=3,
        client_counts=(10, 50, 100),
        sweep_clients=200,
        sweep_rates=(5, 10, 20),
        peak_rate=50,
        peak_drain=0.5,
        lossy_clients=40,
        lossy_drain=5.0,
        losses=(0, 1, 5, 10),
        slow_clients=20,
        slow_duration=3.0,
        nagle_clients=(100,),
        coalesce=((5, 5), (50, 0)),
        thread_counts=(),
        capacity_clients=500,
        overload=_OVERLOAD,
    ),
    "full": _Sizes(
        duration=10.0,
        warmup=1.0,
        drain=10.0,
        reliable_drain=15.0,
        repeats=5,
        client_counts=(2, 10, 50, 100),
        sweep_clients=200,
        sweep_rates=(1, 2, 5, 10, 20),
        peak_rate=50,
        peak_drain=5.0,
        lossy_clients=40,
        lossy_drain=15.0,
        losses=(0, 1, 5, 10),
        slow_clients=20,
        slow_duration=10.0,
        nagle_clients=(10, 100, 200),
        coalesce=((5, 1), (5, 5), (5, 10), (50, 0), (50, 5)),
        thread_counts=(1, 2, 4, 8),
        capacity_clients=5000,
        overload=_OVERLOAD,
    ),
    "tiny": _Sizes(
        duration=0.5,
        warmup=0.1,
        drain=2.0,
        reliable_drain=3.0,
        repeats=1,
        client_counts=(3,),
        sweep_clients=3,
        sweep_rates=(10,),
        peak_rate=20,
        peak_drain=1.0,
        lossy_clients=3,
        lossy_drain=3.0,
        losses=(5,),
        slow_clients=3,
        slow_duration=0.5,
        nagle_clients=(3,),
        coalesce=((10, 0),),
        thread_counts=(1,),
        capacity_clients=20,
        overload=(("closing", 30), ("non-readers", 30), ("history", 5)),
    ),
}

_CLIENTS_RATE = 5.0
_TARGET_CLIENTS = 200
_UDP_TARGET = (100, 10.0)
_SLOW_RATE = 40.0
_SLOW_PAD = 1900
_LOSSY_RATE = 5.0
_NAGLE_RATE = 5.0
_THREADS_RATE = 5.0


def build_suite(suite: str, threads: int = DEFAULT_THREADS) -> list[Scenario]:
    """Every scenario of a suite, in the order they run."""
    if suite not in _SIZES:
        raise ValueError(f"suite must be one of {SUITES}")
    z = _SIZES[suite]
    base = LoadSpec(duration=z.duration, warmup=z.warmup, drain=z.drain, threads=threads)
    kinds = {
        "tcp": base,
        "assignment": dataclasses.replace(base, server="assignment"),
        "udp-raw": dataclasses.replace(base, server="udp"),
        "udp-reliable": dataclasses.replace(
            base, server="udp", reliable=True, drain=z.reliable_drain
        ),
        "udp-raw-packets": dataclasses.replace(base, server="udp", packets=True),
        "udp-reliable-packets": dataclasses.replace(
            base, server="udp", reliable=True, packets=True, drain=z.reliable_drain
        ),
    }
    return [
        *_repeated(z, kinds),
        *_sweeps(z, kinds),
        *_lossy(z, kinds),
        *_ablations(z, base, threads),
        *_saturation(suite, z, base),
        *_packet_saturation(suite, z, kinds["udp-reliable-packets"]),
        Scenario(
            "capacity",
            f"tcp {z.capacity_clients} idle clients",
            capacity_clients=z.capacity_clients,
        ),
        *(
            Scenario(
                "overload",
                _OVERLOAD_NAMES[case].format(clients),
                overload_case=case,
                overload_clients=clients,
                repeat=n,
            )
            for n in range(1, z.repeats + 1)
            for case, clients in z.overload
        ),
    ]


_SATURATION = {"bench": (5, 25, 50, 100), "full": (5, 10, 25, 50, 75, 100), "tiny": (10, 20)}
"""The saturation sweep's rates (msg/s per client), up to twice what the TCP server keeps up
with; its two highest are repeated like `peak`."""


_SATURATION_DRAIN = 5.0
"""Seconds a saturation run waits for what was sent: past the knee the talkers' own socket
buffers hold seconds of messages that the server has not read yet, all owed."""


def _saturation(suite: str, z: _Sizes, base: LoadSpec) -> list[Scenario]:
    """`saturation`: the lower rates once, then rounds of the two highest."""
    n, rates = _small(z), _SATURATION[suite]
    spec = dataclasses.replace(base, drain=max(z.drain, _SATURATION_DRAIN))
    once = [(rate, 1) for rate in rates[:-2]]
    rounds = [(rate, repeat) for repeat in range(1, z.repeats + 1) for rate in rates[-2:]]
    return [
        Scenario("saturation", f"tcp {n}x{rate:g}", _at(spec, n, rate), repeat=repeat)
        for rate, repeat in once + rounds
    ]


_PACKET_SATURATION = {"bench": (2.5, 5, 10), "full": (1, 2.5, 5, 10), "tiny": (10, 20)}
"""The reliable packet sessions' saturation sweep (msg/s per client): its last rate is twice
the one before, what the server keeps up with; those two are repeated."""


def _packet_saturation(suite: str, z: _Sizes, spec: LoadSpec) -> list[Scenario]:
    """`packet-saturation`: the lower rates once, then rounds of the two highest."""
    n, rates = min(z.sweep_clients, _UDP_TARGET[0]), _PACKET_SATURATION[suite]
    once = [(rate, 1) for rate in rates[:-2]]
    rounds = [(rate, repeat) for repeat in range(1, z.repeats + 1) for rate in rates[-2:]]
    return [
        Scenario(
            "packet-saturation",
            f"udp-reliable-packets {n}x{rate:g}",
            _at(spec, n, rate),
            repeat=repeat,
        )
        for rate, repeat in once + rounds
    ]


def _small(z: _Sizes) -> int:
    """The fixed loads' client count: small suites shrink them to their own."""
    return min(z.sweep_clients, _TARGET_CLIENTS)


def _repeated(z: _Sizes, kinds: dict[str, LoadSpec]) -> list[Scenario]:
    """`targets`, `peak` and the first screen's losses of `lossy`, one round of every scenario
    after another."""
    small = _small(z)
    udp_clients = min(z.sweep_clients, _UDP_TARGET[0])
    tcp5 = _at(kinds["tcp"], small, _CLIENTS_RATE)
    raw10 = _at(kinds["udp-raw"], udp_clients, _UDP_TARGET[1])
    rounds: dict[str, list[tuple[str, LoadSpec, str]]] = {
        "targets": [
            (f"tcp {small}x{_CLIENTS_RATE:g}", tcp5, ""),
            (
                f"tcp {small}x{_CLIENTS_RATE:g} coalesce 0 ms",
                dataclasses.replace(tcp5, coalesce_ms=0.0),
                "",
            ),
            (
                f"assignment {small}x{_CLIENTS_RATE:g}",
                _at(kinds["assignment"], small, _CLIENTS_RATE),
                "",
            ),
            (
                f"assignment {small}x{_CLIENTS_RATE:g} nodelay",
                dataclasses.replace(_at(kinds["assignment"], small, _CLIENTS_RATE), nodelay=True),
                "nodelay",
            ),
            (f"udp-raw {udp_clients}x{_UDP_TARGET[1]:g}", raw10, ""),
            (
                f"udp-raw-packets {udp_clients}x{_UDP_TARGET[1]:g}",
                dataclasses.replace(raw10, packets=True),
                "",
            ),
            *_packet_targets(z, kinds),
        ],
        "peak": [
            (
                f"{p} {small}x{z.peak_rate:g}",
                dataclasses.replace(_at(kinds[p], small, z.peak_rate), drain=z.peak_drain),
                "",
            )
            for p in ("tcp", "assignment")
        ],
        "lossy": _link_runs(
            z, kinds["tcp"], FIRST_SCREEN_LOSSES if z.repeats > 1 else (), repeated=True
        ),
    }
    return [
        Scenario(group, name, spec, repeat=repeat, variant=variant)
        for group, scenarios in rounds.items()
        for repeat in range(1, z.repeats + 1)
        for name, spec, variant in scenarios
    ]


def _packet_targets(z: _Sizes, kinds: dict[str, LoadSpec]) -> list[tuple[str, LoadSpec, str]]:
    """The loopback `targets` runs of UDP packet sessions (benchmarks.targets judges them)."""
    small = _small(z)
    udp_clients = min(z.sweep_clients, _UDP_TARGET[0])
    rate = _CLIENTS_RATE
    return [
        (f"{kind} {n}x{rate:g}", _at(kinds[kind], n, rate), "")
        for kind, n in (
            ("udp-raw-packets", small),
            ("udp-raw-packets", udp_clients),
            ("udp-reliable-packets", udp_clients),
            ("udp-reliable-packets", small),
        )
    ]


def _sweeps(z: _Sizes, kinds: dict[str, LoadSpec]) -> list[Scenario]:
    """`clients` (every server) and `rate` (the two TCP servers)."""
    out = [
        Scenario("clients", f"{protocol} {n}x{_CLIENTS_RATE:g}", _at(spec, n, _CLIENTS_RATE))
        for protocol, spec in kinds.items()
        for n in z.client_counts
    ]
    n = z.sweep_clients
    out += [
        Scenario("rate", f"{protocol} {n}x{rate:g}", _at(kinds[protocol], n, rate))
        for protocol in ("tcp", "assignment")
        for rate in z.sweep_rates
    ]
    return out


def _link_runs(
    z: _Sizes, tcp: LoadSpec, losses: Sequence[int], repeated: bool | None = None
) -> list[tuple[str, LoadSpec, str]]:
    """LINK_MATRIX at each loss (only its `repeated` configurations, or only the others, when
    `repeated` says so): the same clients, load and drain for every configuration (a drain that
    outlasts a few backed-off retransmissions; a run whose deliveries are all in ends it early)."""
    link = dataclasses.replace(_at(tcp, z.lossy_clients, _LOSSY_RATE), drain=z.lossy_drain)
    return [
        (
            f"{config.key} {loss}% loss",
            configured(dataclasses.replace(link, netns_loss=loss), config),
            "",
        )
        for loss in losses
        for config in LINK_MATRIX
        if repeated is None or config.repeated == repeated
    ]


def _lossy(z: _Sizes, kinds: dict[str, LoadSpec]) -> list[Scenario]:
    """`lossy` at the losses that are not repeated (all of them in a suite of one repeat), and
    the configurations that are not repeated at those that are."""
    if z.repeats == 1:
        runs = _link_runs(z, kinds["tcp"], z.losses)
    else:
        once = [loss for loss in z.losses if loss not in FIRST_SCREEN_LOSSES]
        runs = _link_runs(z, kinds["tcp"], FIRST_SCREEN_LOSSES, repeated=False)
        runs += _link_runs(z, kinds["tcp"], once)
    return [Scenario("lossy", name, spec, variant=variant) for name, spec, variant in runs]


def _ablations(z: _Sizes, base: LoadSpec, threads: int) -> list[Scenario]:
    """`slow-reader`, `nagle`, `coalesce` and `threads`: one TCP setting changed at a time."""
    slow = dataclasses.replace(
        _at(base, z.slow_clients, _SLOW_RATE), duration=z.slow_duration, pad=_SLOW_PAD
    )
    out = [
        Scenario("slow-reader", "tcp, no slow reader", slow),
        Scenario("slow-reader", "tcp + 1 slow reader", dataclasses.replace(slow, slow_readers=1)),
        Scenario(
            "slow-reader",
            "assignment + 1 slow reader",
            dataclasses.replace(slow, server="assignment", slow_readers=1),
        ),
    ]
    for n in z.nagle_clients:
        nodelay = _at(base, n, _NAGLE_RATE)
        out.append(Scenario("nagle", f"tcp nodelay {n}x{_NAGLE_RATE:g}", nodelay))
        out.append(
            Scenario(
                "nagle", f"tcp nagle {n}x{_NAGLE_RATE:g}", dataclasses.replace(nodelay, nagle=True)
            )
        )
    small = _small(z)
    out += [
        Scenario(
            "coalesce",
            f"tcp {small}x{rate:g} coalesce {rest:g} ms",
            dataclasses.replace(_at(base, small, rate), coalesce_ms=rest, drain=z.peak_drain),
        )
        for rate, rest in z.coalesce
    ]
    n = z.sweep_clients
    for count in sorted({threads, *z.thread_counts, n}) if z.thread_counts else ():
        label = "a thread per client" if count == n else f"{count} thread{'s' if count > 1 else ''}"
        out.append(
            Scenario(
                "threads",
                f"tcp {n}x{_THREADS_RATE:g}, {label}",
                # The Python generator's threads are what this group compares.
                dataclasses.replace(_at(base, n, _THREADS_RATE), threads=count, generator="python"),
            )
        )
    return out


def _at(spec: LoadSpec, clients: int, rate: float) -> LoadSpec:
    return dataclasses.replace(spec, clients=clients, rate=rate)


class Reporter:
    """The progress line: rewritten in place on a terminal, one line per scenario otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._prefix = ""

    def begin(self, position: int, total: int, scenario: Scenario) -> None:
        again = f" (run {scenario.repeat})" if scenario.group in REPEATED else ""
        self._prefix = f"[{position:>2}/{total}] {scenario.group}: {scenario.name}{again}"
        self.update("starting")

    def update(self, text: str) -> None:
        if self._tty:
            self._stream.write(f"\r\x1b[K{self._prefix}: {text}")
            self._stream.flush()

    def end(self, text: str) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K")
        self._stream.write(f"{self._prefix}: {text}\n")
        self._stream.flush()

    def note(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()


def _summary_line(result: LoadResult) -> str:
    return (
        f"{result.deliveries_per_s:,.0f} deliveries/s, p99 {result.p99_ms:.2f} ms, "
        f"loss {result.loss_pct:.2f} %, server {result.server_cpu_us_per_delivery:.2f} µs/delivery"
        f", harness {result.harness_cpu_pct:.0f} % of a core"
        + (" (HARNESS-BOUND)" if result.harness_bound else "")
    )


def git_output(*args: str) -> str:
    """What ``git ARGS`` prints in the repository, stripped; empty when git cannot say."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def machine_meta() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": {
            "system": f"{platform.system()} {platform.release()}",
            "arch": platform.machine(),
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": round(_memory_gib(), 1),
        },
        "git_commit": git_output("rev-parse", "HEAD"),
        "git_dirty": bool(git_output("status", "--porcelain", "--untracked-files=no")),
    }


def run_suite(
    scenarios: Sequence[Scenario],
    suite: str,
    reporter: Reporter | None = None,
    threads: int = DEFAULT_THREADS,
) -> dict[str, Any]:
    """Run the scenarios one after another; the results dict (see the module docstring)."""
    reporter = reporter or Reporter()
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "suite": suite,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "default_threads": threads,
            "load_average_before": list(os.getloadavg()),
            **machine_meta(),
            "floor": dataclasses.asdict(measure_floor()),
        },
        "runs": [],
        "capacity": [],
        "overload": [],
        "skipped": [],
        "failed": [],
    }
    lossy_reason = lossy_link_unavailable() if any(s.group == "lossy" for s in scenarios) else None
    if lossy_reason is not None:
        reporter.note(f"lossy link runs skipped: {lossy_reason}")
        results["skipped"].append({"group": "lossy", "reason": lossy_reason})
    todo = [s for s in scenarios if not (s.group == "lossy" and lossy_reason is not None)]
    for position, scenario in enumerate(todo, 1):
        reporter.begin(position, len(todo), scenario)
        try:
            reporter.end(_run_one(scenario, results, reporter))
        except Exception as error:
            # One broken run must not cost the others: it is recorded and reported instead.
            results["failed"].append(
                {"group": scenario.group, "name": scenario.name, "error": repr(error)}
            )
            reporter.end(f"FAILED: {error!r}")
    results["meta"]["load_average_after"] = list(os.getloadavg())
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


def _run_one(scenario: Scenario, results: dict[str, Any], reporter: Reporter) -> str:
    """Run one scenario, add its result to `results`; its one-line summary."""
    load = os.getloadavg()[0]
    if scenario.overload_case:
        case = asdict(overload.measure(scenario.overload_case, scenario.overload_clients))
        results["overload"].append(
            {
                "group": scenario.group,
                "name": scenario.name,
                "repeat": scenario.repeat,
                "load_1min": load,
                **case,
            }
        )
        return overload.summary(case)
    if scenario.spec is None:
        measured = capacity.measure(scenario.capacity_clients)
        results["capacity"].append(
            {"group": scenario.group, "name": scenario.name, "load_1min": load, **asdict(measured)}
        )
        return f"{measured.online} online, {measured.bytes_per_client / 1024:.1f} KiB each"
    result = run_load(scenario.spec, progress=reporter.update)
    results["runs"].append(
        {
            "group": scenario.group,
            "name": scenario.name,
            "repeat": scenario.repeat,
            "variant": scenario.variant,
            "load_1min": load,
            "spec": asdict(scenario.spec),
            "result": result_to_dict(result),
        }
    )
    return _summary_line(result)


def load_results(results: dict[str, Any], group: str | None = None) -> list[tuple[str, LoadResult]]:
    """(name, LoadResult) of the load runs, of one group or all; a repeated run's name says
    which run it was."""
    return [
        (_label(run), result_from_dict(run["result"]))
        for run in results["runs"]
        if group is None or run["group"] == group
    ]


def config_runs(results: dict[str, Any], group: str) -> list[tuple[str, int, LoadResult]]:
    """(configuration, repeat, LoadResult) of a group's load runs: the configuration is the
    protocol (packet sessions are in it: `udp-raw-packets`), the TCP flags that differ from the
    default (`tcp coalesce 0 ms`) and a variant the protocol does not name (`assignment
    nodelay`), so that no series mixes two of them."""
    out = []
    for run in results["runs"]:
        if run["group"] != group:
            continue
        result = result_from_dict(run["result"])
        variant = run.get("variant", "")
        key = label_of(result)
        key += f" {variant}" if variant and variant not in key else ""
        out.append((key, run.get("repeat", 1), result))
    return out


def _label(run: dict[str, Any]) -> str:
    return f"{run['name']}, run {run['repeat']}" if run["group"] in REPEATED else run["name"]


def format_tables(results: dict[str, Any]) -> str:
    """One table per group, as printed at the end of a run."""
    parts: list[str] = []
    for group in GROUPS:
        runs = load_results(results, group)
        if runs:
            names = [name for name, _ in runs]
            parts.append(f"== {group}\n{format_results([r for _, r in runs], names)}")
    for entry in results["capacity"]:
        parts.append(
            f"== capacity\n{entry['online']} of {entry['clients']} clients online, "
            f"{entry['bytes_per_client'] / 1024:.1f} KiB of server memory each, "
            f"{entry['threads_after']} server threads, joined in {entry['connect_seconds']:.1f} s"
        )
    for entry in results.get("overload", []):
        parts.append(f"== overload: {entry['name']}\n{overload.summary(entry)}")
    for failed in results.get("failed", []):
        parts.append(f"== {failed['group']}: {failed['name']} FAILED ({failed['error']})")
    for skipped in results["skipped"]:
        parts.append(f"== {skipped['group']}: skipped ({skipped['reason']})")
    return "\n\n".join(parts)


_META_COLUMNS = ("date", "suite", "git_commit", "python")


def _csv_rows(results: dict[str, Any]) -> Iterable[dict[str, Any]]:
    meta = results["meta"]
    machine = meta["machine"]
    for run in results["runs"]:
        yield {
            "group": run["group"],
            "name": run["name"],
            **run["result"],
            **{key: meta[key] for key in _META_COLUMNS},
            "machine": f"{machine['cpu']} x{machine['cores']}, {machine['system']}",
        }


def write_results(results: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """latest.json and latest.csv in out_dir (created if missing); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "latest.json", out_dir / "latest.csv"
    json_path.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    rows = list(_csv_rows(results))
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        fields = [
            "group",
            "name",
            *(f.name for f in dataclasses.fields(LoadResult)),
            *_META_COLUMNS,
            "machine",
        ]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def read_results(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
