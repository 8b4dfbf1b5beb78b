"""The report generator on a synthetic results file: verdicts, marks, provenance, length, the
first screen, RUNS.md and the figures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import build_suite
from benchmarks.measure import DEFAULT_THREADS, PERCENTILES, LoadResult, LoadSpec, result_to_dict
from benchmarks.targets import evaluate
from report.__main__ import main as report_main
from report.generate import (
    CALIBRATION_FILE,
    CHAOS_FILE,
    CLUSTER_FILE,
    MAX_WORDS,
    Provenance,
    _code,
    coarse,
    code_lines,
    cpu,
    generate,
    render,
    report_words,
)


def fake(spec: LoadSpec, **overrides: Any) -> LoadResult:
    """A plausible result for a spec: everything delivered, latency growing with the load."""
    recipients = spec.clients - 1 if spec.server == "assignment" else spec.clients
    offered = spec.clients * spec.rate
    deliveries = offered * recipients
    sent = round(offered * spec.duration)
    p50 = 0.5 + deliveries / 1e5
    result = LoadResult(
        protocol=spec.protocol, link=spec.link, clients=spec.clients,
        threads=min(spec.threads, spec.clients), rate=spec.rate, duration=spec.duration,
        nagle=spec.nagle,
        coalesce_ms=math.nan if spec.coalesce_ms is None else spec.coalesce_ms,
        slow_readers=spec.slow_readers, connect_s=0.25,
        offered_msgs_per_s=offered, sent_msgs_per_s=offered,
        offered_deliveries_per_s=deliveries, deliveries_per_s=deliveries, sent=sent,
        expected=sent * recipients, received=sent * recipients, lost=0, loss_pct=0.0,
        unsent=0, duplicates=0, reorders=0, unexpected=0, p50_ms=p50,
        p95_ms=p50 * 2, p99_ms=p50 * 3, max_ms=p50 * 5,
        percentiles_ms=[p50 * (1 + i / 2) for i in range(len(PERCENTILES))],
        send_lag_p50_ms=0.1, send_lag_p99_ms=0.4, retransmitted=0, send_errors=0,
        slow_dropped=spec.slow_readers, too_slow_seen=spec.clients if spec.slow_readers else 0,
        too_slow_after_s=2.5 if spec.slow_readers else math.nan, server_cpu_pct=40.0,
        server_cpu_us_per_delivery=4.0, server_peak_rss_mb=30.0, server_threads=spec.clients + 2,
        harness_cpu_pct=30.0, harness_cpu_us_per_delivery=0.25, server_clean_exit=True,
        server_cpu_ticks=400, server_retransmitted=12 if spec.server == "udp" else -1,
        tcp_retransmitted=34 if spec.netns_loss is not None else -1,
    )  # fmt: skip
    return dataclasses.replace(result, **overrides)


# Values per (group, name, repeat) that make each target's verdict come out differently.
SPECIAL: dict[tuple[str, str, int], dict[str, Any]] = {
    ("targets", "tcp 200x5", 1): {"p99_ms": 1.5, "server_cpu_us_per_delivery": 3.1},
    ("targets", "tcp 200x5", 2): {"p99_ms": 1.6, "server_cpu_us_per_delivery": 3.2},
    ("targets", "tcp 200x5", 3): {"p99_ms": 1.7, "server_cpu_us_per_delivery": 3.3},
    ("targets", "tcp 200x5 coalesce 0 ms", 1): {"p99_ms": 1.2},
    ("targets", "tcp 200x5 coalesce 0 ms", 2): {"p99_ms": 1.3},
    ("targets", "tcp 200x5 coalesce 0 ms", 3): {"p99_ms": 1.4},
    ("targets", "udp-raw 100x10", 1): {"p99_ms": 3.33},
    ("targets", "udp-raw 100x10", 2): {"p99_ms": 7.77},
    ("targets", "udp-raw 100x10", 3): {"p99_ms": 4.44},
    ("peak", "tcp 200x50", 1): {"harness_cpu_pct": 95.0},
    ("peak", "tcp 200x50", 2): {"send_lag_p99_ms": 150.0},
    ("peak", "assignment 200x50", 3): {"harness_cpu_pct": 99.0},
    # The first screen: reliable UDP's tail at 5 % shorter than TCP's, raw UDP losing some,
    # TCP's CPU measured over a few clock ticks only.
    **{("lossy", "tcp 5% loss", n): {"p99_ms": 230.0 + n} for n in (1, 2, 3)},
    **{("lossy", "udp-reliable-packets 5% loss", n): {"p99_ms": 210.0 + n} for n in (1, 2, 3)},
    **{("lossy", "udp-raw-packets 5% loss", n): {"loss_pct": 9.5 + n / 10} for n in (1, 2, 3)},
    **{
        ("lossy", "tcp 0% loss", n): {"server_cpu_ticks": 20, "server_cpu_us_per_delivery": 12.345}
        for n in (1, 2, 3)
    },
}


def synthetic_results() -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    capacity = []
    overload = []
    for scenario in build_suite("bench"):
        if scenario.overload_case:
            overload.append(overload_entry(scenario.group, scenario.name, scenario.overload_case,
                                           scenario.overload_clients))  # fmt: skip
            continue
        if scenario.spec is None:
            capacity.append(
                {"group": scenario.group, "name": scenario.name, "clients": 1000, "online": 1000,
                 "connect_seconds": 3.3, "rss_before_bytes": 20 << 20,
                 "rss_after_bytes": (20 << 20) + 1000 * 42 * 1024, "bytes_per_client": 42 * 1024.0,
                 "threads_after": 1002, "server_cpu_seconds": 1.5}
            )  # fmt: skip
            continue
        key = (scenario.group, scenario.name, scenario.repeat)
        result = fake(scenario.spec, **SPECIAL.get(key, {}))
        runs.append(
            {"group": scenario.group, "name": scenario.name, "repeat": scenario.repeat,
             "variant": scenario.variant, "load_1min": 0.25,
             "spec": dataclasses.asdict(scenario.spec), "result": result_to_dict(result)}
        )  # fmt: skip
    meta = {
        "suite": "bench", "date": "2026-01-02T03:04:05+00:00", "default_threads": DEFAULT_THREADS,
        "load_average_before": [0.42, 0.5, 0.6], "load_average_after": [1.23, 0.9, 0.7],
        "python": "3.11.7", "implementation": "CPython",
        "machine": {"system": "Linux 6.1", "arch": "x86_64", "cpu": "Test CPU", "cores": 2,
                    "memory_gib": 24.0},
        "git_commit": "0123456789abcdef", "git_dirty": False, "elapsed_s": 123.4,
        "floor": {"tcp_send_us": 8.5, "udp_sendto_us": 7.3},
    }  # fmt: skip
    return {"meta": meta, "runs": runs, "capacity": capacity, "overload": overload, "skipped": []}


def overload_entry(group: str, name: str, case: str, clients: int) -> dict[str, Any]:
    """A plausible overload run: closes in 0.42 s, a newcomer in 37 ms, readers at 12/48 ms."""
    closing = case == "closing"
    return {"group": group, "name": name, "load_1min": 0.5, "case": case, "clients": clients,
            "seconds": 0.42 if closing else 5.0, "welcome_ms": 37.0 if closing else None,
            "dropped": 0, "p50_ms": None if closing else 12.0, "p99_ms": None if closing else 48.0,
            "rss_start_mb": 150.0, "rss_peak_mb": 180.0, "rss_end_mb": 160.0}  # fmt: skip


def synthetic_cluster() -> dict[str, Any]:
    """benchmarks.cluster's file: one server and two on Redis, past saturation and at 200 x 5."""

    def run(setup: str, clients: int, rate: float, delivered: float, p99: float) -> dict[str, Any]:
        return {"setup": setup, "clients": clients, "rate": rate,
                "offered_deliveries_per_s": clients * clients * rate,
                "deliveries_per_s": delivered, "lost_pct": 0.0, "refused_pct": 0.0,
                "p50_ms": p99 / 4, "p99_ms": p99, "max_ms": p99 * 2, "chat_cpu_pct": 150.0,
                "cpu_us_per_delivery": 1.25}  # fmt: skip

    setups = ("one server", "one server + Redis", "two servers + Redis")
    return {
        "meta": {"date": "2026-01-03T04:05:06+00:00", "duration_s": 5.0,
                 "git_commit": "fedcba987654", "machine": {"cores": 2}},
        "saturation": [run(s, 100, 80.0, 700_000.0 - 100_000 * i, 900.0)
                       for i, s in enumerate(setups)],
        "latency": [run(s, 200, 5.0, 200_000.0, 4.0 + i) for i, s in enumerate(setups)],
        "stream": [{"publishers": n, "events_per_s": 50_000.0 * n, "redis_cpu_pct": 90.0,
                    "redis_cpu_us_per_event": 12.5, "ceiling_events_per_s": 80_000.0}
                   for n in (1, 2)],
    }  # fmt: skip


CLEAN = Provenance("benchmarks/results/latest.json", "abc1234", "def5678", clean=True)

CALIBRATION = {
    "date": "2026-01-04T05:06:07+00:00", "rounds": 3, "verdict": "pass",
    "gaps": [
        {"figure": "cpu_us", "seed": 2.1, "ours": 2.2, "gap": 0.048, "tolerance": 0.15,
         "holds": True},
        {"figure": "p99_ms", "seed": 18.0, "ours": 20.0, "gap": 0.11, "tolerance": 0.5,
         "holds": True},
        {"figure": "peak", "seed": 1.9e6, "ours": 1.7e6, "gap": -0.105, "tolerance": 0.2,
         "holds": True},
    ],
}  # fmt: skip


def synthetic_chaos(**udp_single: Any) -> dict[str, Any]:
    """benchmarks.chaos's file: four scenarios; ``udp_single`` overrides that one's counts."""

    def scenario(transport: str, setup: str, p99: float, **counts: Any) -> dict[str, Any]:
        return {
            "transport": transport, "setup": setup, "clients": 50, "rate": 2.0,
            "duration_s": 300.0, "cuts": 140, "kills": 9, "resumes": 590, "resumes_refused": 3,
            "messages": 30000, "deliveries": 1500000, "missed_without_notice": 0,
            "missed_with_notice": 12, "received_twice": 0, "out_of_order": 0,
            "resume_p50_ms": 120.5, "resume_p99_ms": p99, "resume_max_ms": 1500.0,
            "refused_hellos": 0, "notes": [], **counts,
        }  # fmt: skip

    return {
        "meta": {
            "date": "2026-01-04T05:06:07+00:00", "clients": 50, "rate": 2.0, "duration": 300.0,
            "cut_every": 2.0, "kill_every": 30.0, "seed": 1, "git_commit": "abcdef0123456789",
        },
        "scenarios": [
            scenario("tcp", "single", 640.0),
            scenario("tcp", "redis", 480.0),
            scenario("udp", "single", 870.0, **udp_single),
            scenario("udp", "redis", 910.0),
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    results_path = out / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    (out / CLUSTER_FILE).write_text(json.dumps(synthetic_cluster()), encoding="utf-8")
    (out / CALIBRATION_FILE).write_text(json.dumps(CALIBRATION), encoding="utf-8")
    (out / CHAOS_FILE).write_text(json.dumps(synthetic_chaos()), encoding="utf-8")
    generate(results_path, out, CLEAN)
    return out


@pytest.fixture(scope="module")
def report(out: Path) -> str:
    return (out / "REPORT.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def runs(out: Path) -> str:
    return (out / "RUNS.md").read_text(encoding="utf-8")


def _rows(text: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}


def _flat(text: str) -> str:
    """The text with its line breaks as spaces, as a reader sees it."""
    return " ".join(text.split())


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_every_placeholder_is_filled_and_the_source_is_named(report: str) -> None:
    assert "{{" not in report and "}}" not in report
    assert "n/a" not in report
    assert "`benchmarks/results/latest.json` (committed in abc1234) at commit def5678" in report
    assert "measured at commit 0123456789" in report and "Draft" not in report


def test_the_report_keeps_to_its_length(report: str) -> None:
    assert report_words(report) <= MAX_WORDS
    assert report_words("a <!-- not\ncounted --> b | c |") == 5


def test_the_first_screen_is_the_table_and_the_answer(report: str) -> None:
    head = report.split("## 1.", 1)[0]
    table = [line for line in head.splitlines() if line.startswith("|")]
    rows = [_cells(line) for line in table[2:]]
    assert [(r[0], r[1]) for r in rows] == [
        ("TCP", "clean"), ("TCP", "5 % loss"), ("raw UDP (packets)", "clean"),
        ("raw UDP (packets)", "5 % loss"), ("reliable UDP (packets)", "clean"),
        ("reliable UDP (packets)", "5 % loss"),
    ]  # fmt: skip
    assert _cells(table[0])[2:] == [
        "p50 ms", "p99 ms", "lost %", "server µs/delivery", "lines of code",
    ]  # fmt: skip
    assert rows[1][3] == "232 [231-233]" and rows[5][3] == "212 [211-213]"
    # TCP's clean-link CPU rests on 20 clock ticks a run: two digits, not four.
    assert rows[0][5] == "12"
    assert "fewer than 100 clock ticks" in _flat(head)
    assert "`report.generate.code_lines`" in head
    answer = head.split("**Why TCP 100 %", 1)[1].split("Each figure is the median", 1)[0]
    assert len(answer.split()) <= 250
    flat = _flat(answer)
    assert "it lost 9.70 % of deliveries, against the 9.75 %" in flat.replace("9.7 %", "9.70 %")
    assert "TCP's p99 was 232 ms (its retransmission timeout is at least 200 ms)" in flat
    assert "and reliable UDP's 212 ms (" in flat
    assert "its p99 was shorter than TCP's." in flat
    assert "lost nothing on either link" in flat
    assert "its congestion control is ours to get right" in flat
    # Cheaper than TCP here (4.00 against 12 µs): said where it wins, not where it cannot.
    assert "On a clean link reliable UDP cost the server 0.3× TCP's CPU per delivery." in flat
    code = f"{_code('udp-reliable-packets') / _code('tcp'):.1f}×"  # counted in the tree as it is
    assert f"**What it still cannot give.** Reliable UDP takes {code} TCP's lines of code" in flat
    assert "it probes after about the round trip plus 25 ms" in flat


def test_the_answer_follows_the_figures(tmp_path: Path) -> None:
    # Without packet sessions (a build before protocol 1.2) the first screen shows 1.0.
    results = synthetic_results()
    results["runs"] = [r for r in results["runs"] if "packets" not in r["result"]["protocol"]]
    for run in results["runs"]:
        if run["name"] == "udp-reliable 5% loss":
            run["result"]["p99_ms"] = 900.0
            run["result"]["lost"], run["result"]["loss_pct"] = 3, 0.01
        if run["name"] == "tcp 0% loss":
            run["result"]["server_cpu_us_per_delivery"] = 2.0
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, allow_nan=False), encoding="utf-8")
    flat = _flat(generate(path, tmp_path, CLEAN).read_text(encoding="utf-8"))
    assert "reliable UDP's 900 ms" in flat and "its p99 was no shorter than TCP's." in flat
    assert "some deliveries were lost: reliable UDP (1.0) on the 5 % link" in flat
    assert "backs off from no congestion but its own timeouts" in flat
    assert "its own timer starts at 200 ms" in flat
    assert "Reliable UDP cost the server 2.0× TCP's CPU per delivery on a clean link and" in flat


def test_a_harness_bound_figure_in_the_answer_is_marked(tmp_path: Path) -> None:
    results = synthetic_results()
    for run in results["runs"]:
        if run["name"] in ("udp-reliable-packets 0% loss", "udp-reliable-packets 5% loss"):
            run["result"]["harness_cpu_pct"] = 95.0
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, allow_nan=False), encoding="utf-8")
    flat = _flat(generate(path, tmp_path, CLEAN).read_text(encoding="utf-8"))
    assert "and reliable UDP's 212† ms (" in flat
    assert "On a clean link reliable UDP cost the server 0.3×† TCP's CPU per delivery." in flat
    runs = _flat((tmp_path / "RUNS.md").read_text(encoding="utf-8"))
    assert "each figure over 3 runs; one marked † (harness-bound), over every run made." in runs


def test_verdicts_follow_the_repeats(report: str, runs: str) -> None:
    rows = _rows(report)
    assert "**met**" in rows["tcp-200x5"] and "p99 1.60 ms [1.50-1.70]" in _rows(runs)["tcp-200x5"]
    assert "**unstable**" in rows["udp-raw-100x10"]
    assert "run 2: loss 0.000 %, p99 7.77 ms (failed)" in runs
    assert "harness-bound" in rows["tcp-200x50"] and rows["tcp-200x50"].endswith("| 0 of 3 |")
    assert "**met**" in rows["tcp-no-coalescing"]
    assert "**met**" in rows["udp-reliable-5pct"]


def test_the_cost_model_and_the_ablations_come_from_the_results(report: str) -> None:
    flat = _flat(report)
    assert "One loopback `send` costs about 8.5 µs of CPU" in flat
    # The floor over the 200 x 5 runs' median CPU per delivery (3.2 µs): messages per send.
    assert "one `send` carried at least 2.7 messages" in flat
    section = report.split("## 3.", 1)[1].split("## 4.", 1)[0]
    names = [_cells(line)[0] for line in section.splitlines() if line.startswith("| ")][1:]
    assert names[:5] == [
        "TCP 200 × 5, default rest", "TCP 200 × 5, no rest (`--coalesce-ms 0`)",
        "assignment's server 200 × 5, Nagle on", "assignment's server 200 × 5, TCP_NODELAY",
        "UDP raw 100 × 10, 1.0 (no packing)",
    ]  # fmt: skip


def test_the_link_matrix_has_every_configuration_at_every_loss(report: str) -> None:
    section = report.split("## 2.", 1)[1].split("## 3.", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert _cells(table[0])[1:] == ["0 % loss", "1 % loss", "5 % loss", "10 % loss"]
    assert [_cells(line)[0] for line in table[2:]] == [
        "tcp", "assignment", "udp-raw", "udp-raw-packets", "udp-reliable", "udp-reliable-packets",
    ]  # fmt: skip
    assert _cells(table[2])[3] == "0.58 / 232 / 2.32, 0.0 %"
    flat = _flat(section)
    assert "the UDP server counted 12 frames sent again (1.0) and 12 (packets)" in flat
    assert "the namespace's kernel, 34 TCP segments" in flat
    assert "every other configuration lost nothing at any loss" in flat


def test_calibration_is_quoted_from_its_file(report: str, tmp_path: Path) -> None:
    flat = _flat(report)
    assert "in the same rounds (3, 2026-01-04) and **passed**" in flat
    assert "CPU per delivery at 200 × 5 2.20 µs against 2.10 µs (+5%, ±15% allowed)" in flat
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    text = generate(results_path, tmp_path, CLEAN).read_text(encoding="utf-8")
    assert "not calibrated against the example here: run `make calibrate`" in _flat(text)


def test_past_one_machine_comes_from_the_cluster_file(report: str) -> None:
    section = _flat(report.split("## 6. Past one machine", 1)[1].split("## 7.", 1)[0])
    assert "2026-01-03T04:05:06+00:00, commit fedcba9876; all on 2 cores" in section
    assert "about 80,000 events/s, 16,000,000 deliveries/s at 200 members" in section
    assert "700,000 for one server alone" in section
    assert "each server's fan-out, not the stream, is the ceiling" in section


def test_resume_under_chaos_comes_from_the_chaos_file(report: str, runs: str) -> None:
    section = report.split("## 7. Resume under chaos", 1)[1].split("## 8.", 1)[0]
    flat = _flat(section)
    assert "(2026-01-04T05:06:07+00:00, commit abcdef0123): 50 users at 2 msg/s" in flat
    assert "for 300 s a scenario, a cut every 2 s" in flat and "every 30 s" in flat
    # The report sums the scenarios up; their table is in RUNS.md.
    assert (
        "Over 4 scenarios (TCP and UDP; one server, two on Redis): 560 cuts, 36 kills, "
        "2,360 resumes; the scenarios' resume p50 120 ms, p99 480 to 910 ms." in flat
    )
    assert "Nothing was missed without a notice, received twice or out of order." in flat
    assert "Resumed within 1 s at p99 in every scenario." in flat
    assert "The 48 missed with a notice followed a `resumed: false`" in flat
    assert "Each scenario: RUNS.md." in flat
    table = runs.split("## resume under chaos (`make bench-chaos`, 2026-01-04T05:06:07+00:00", 1)[1]
    rows = [_cells(line) for line in table.splitlines() if line.startswith(("| TCP", "| UDP"))]
    assert [row[0] for row in rows] == [
        "TCP, one server", "TCP, two on Redis", "UDP, one server", "UDP, two on Redis",
    ]  # fmt: skip
    assert rows[2] == [
        "UDP, one server", "140", "9", "590", "0", "12", "0", "0", "120", "870",
    ]  # fmt: skip


def test_the_chaos_reading_names_the_scenarios_short_of_the_targets(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    chaos = synthetic_chaos(missed_without_notice=61, out_of_order=2, resume_p99_ms=15098.2)
    (tmp_path / CHAOS_FILE).write_text(json.dumps(chaos), encoding="utf-8")
    report = _flat(generate(results_path, tmp_path, CLEAN).read_text(encoding="utf-8"))
    assert (
        "Against a target of none: UDP one server (61 missed without a notice, 2 out of order)."
        in report
    )
    assert "Resume p99 over 1 s: UDP one server (15,098 ms)." in report


def test_a_missing_chaos_file_says_how_to_make_it(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    report = generate(results_path, tmp_path, CLEAN).read_text(encoding="utf-8")
    assert "_Not measured: run `make bench-chaos`._" in report


def test_every_run_tables_are_in_runs_md_and_their_summaries_in_the_report(
    report: str, runs: str
) -> None:
    # Each load, overload case and chaos scenario is a row of RUNS.md, never of the report.
    for line in report.splitlines():
        assert not line.startswith(("| 200 ×", "| 3,000 close", "| TCP, ", "| UDP, ")), line
    assert "## saturation, each load over its repeats (median [range])" in runs
    assert "## overload, each case over its repeats (median)" in runs
    assert "## resume under chaos" in runs
    for section in ("## 5.", "## 7."):
        assert "RUNS.md" in report.split(section, 1)[1].split("\n## ", 1)[0]


def test_the_saturation_loads_are_a_row_each_in_runs_md_and_a_sentence_in_the_report(
    report: str, runs: str
) -> None:
    table = runs.split("## saturation, each load over its repeats", 1)[1].split("\n## ", 1)[0]
    rows = [_cells(line) for line in table.splitlines() if line.startswith("| 200")]
    assert [row[0] for row in rows] == ["200 × 5", "200 × 25", "200 × 50", "200 × 100"]
    assert all(row[6] == "0" for row in rows)  # nobody dropped
    section = _flat(report.split("## 5.", 1)[1].split("## 6.", 1)[0])
    assert (
        "From 200 × 5 to 200 × 100 (200,000 to 4,000,000 deliveries/s offered) it delivered at "
        "most 4,000,000 a second, at 200 × 100; p99 grew from 7.50 to 122 ms; no run lost or "
        "dropped anything, and the server's memory peaked at 30 MB." in section
    )


def test_a_saturation_run_that_lost_or_dropped_is_said_so(tmp_path: Path) -> None:
    results = synthetic_results()
    for run in results["runs"]:
        if run["group"] == "saturation" and run["spec"]["rate"] == 100:
            run["result"].update(lost=120, too_slow_seen=3, harness_cpu_pct=95.0)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, allow_nan=False), encoding="utf-8")
    section = _flat(generate(path, tmp_path, CLEAN).read_text(encoding="utf-8").split("## 5.")[1])
    assert "a run lost up to 120 deliveries and dropped up to 3 clients" in section
    assert "p99 grew from 7.50 to 122† ms" in section  # the heaviest load, harness-bound


def test_the_overload_cases_are_their_targets_in_the_report_and_their_medians_in_runs_md(
    report: str, runs: str
) -> None:
    section = report.split("## 5.", 1)[1].split("## 6.", 1)[0]
    assert "median [range] of 3 runs a case" in _flat(section)
    cells = map(_cells, section.splitlines())
    targets = {row[0]: row for row in cells if row[0].startswith("tcp-")}
    assert list(targets) == ["tcp-closing", "tcp-non-readers", "tcp-history-non-readers"]
    assert targets["tcp-closing"][1:] == [
        "**met**", "closed <= 1 s, newcomer welcomed <= 100 ms, memory back within 50 MB",
        "closed in 0.42 s, welcome 37.0 ms, memory back within 10 MB",
    ]  # fmt: skip
    table = runs.split("## overload, each case over its repeats", 1)[1].split("\n## ", 1)[0]
    rows = {row[0]: row for row in map(_cells, table.splitlines()) if "never" in row[0]
            or "close" in row[0]}  # fmt: skip
    closing = rows["3,000 close at once (3 runs)"]
    assert closing[1:4] == ["0.42", "37.0", "-"]
    assert closing[-3:] == ["150", "180", "160"]
    non_readers = rows["5,000 never read, 10 talk (3 runs)"]
    assert non_readers[1:5] == ["-", "-", "0", "48.0"]
    assert "100 never read, ask `history` 50 times (3 runs)" in rows


def test_an_overload_case_short_of_its_target_is_missed_in_the_report(tmp_path: Path) -> None:
    results = synthetic_results()
    for entry in results["overload"]:
        if entry["case"] == "closing":
            entry["welcome_ms"] = 400.0
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, allow_nan=False), encoding="utf-8")
    section = generate(path, tmp_path, CLEAN).read_text(encoding="utf-8").split("## 5.")[1]
    row = next(line for line in section.splitlines() if line.startswith("| tcp-closing"))
    assert _cells(row)[1] == "**missed**" and "welcome 400 ms" in row


def test_runs_md_has_every_run_and_marks_the_harness_bound(runs: str) -> None:
    marked = [line for line in runs.splitlines() if "**harness-bound**" in line]
    assert len(marked) == 3 and all("200x50" in line for line in marked)
    for group in ("targets", "peak", "lossy", "clients", "rate", "slow-reader", "coalesce"):
        assert f"## {group}" in runs
    assert "tcp 10% loss" in runs and "12 / 0 / 34" in runs
    assert "## cluster" in runs and "## capacity" in runs
    assert "## overload: tcp 3000 closing at once\n\n3000 closed in 0.42 s" in runs
    assert "## Targets of UDP packet sessions" in runs and "udp-packets-lossy-5" in runs


def test_figures_are_written(report: str, out: Path) -> None:
    for name in (
        "latency_vs_link_loss", "loss_vs_link_loss", "percentiles", "p99_vs_offered",
        "latency_vs_clients",
    ):  # fmt: skip
        assert f"]({name}.png)" in report
        assert (out / f"{name}.png").stat().st_size > 0


def test_a_missing_cluster_file_says_how_to_make_it(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    report = generate(results_path, tmp_path, CLEAN).read_text(encoding="utf-8")
    assert "_Not measured: run `make bench-cluster`._" in report
    assert "n/a" not in report


def test_a_report_from_uncommitted_files_says_so(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    draft = dataclasses.replace(CLEAN, clean=False)
    assert "**Draft" in generate(results_path, tmp_path, draft).read_text(encoding="utf-8")


def test_an_unknown_placeholder_is_an_error() -> None:
    assert render("a {{x}} b", {"x": "1"}) == "a 1 b"
    with pytest.raises(KeyError):
        render("{{missing}}", {})


def test_lines_of_code_leave_out_docstrings_comments_and_blanks(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        '"""A module\ndocstring."""\n\n# a comment\nX = 1  # counted\n\n\n'
        'def f() -> str:\n    """Its docstring."""\n    return """a string,\nnot a docstring"""\n',
        encoding="utf-8",
    )
    assert code_lines(source) == 4


def test_a_failed_repeat_leaves_its_round_out_of_a_paired_target() -> None:
    results = synthetic_results()
    results["runs"] = [
        run
        for run in results["runs"]
        if not (run["group"] == "targets" and run["name"] == "tcp 200x5" and run["repeat"] == 2)
    ]
    target = next(t for t in evaluate(results) if t.key == "tcp-200x5")
    assert [s.values["p99_ms"] for s in target.samples] == [1.5, 1.7]
    assert target.verdict == "met"


@pytest.mark.parametrize("out", ["REPORT.md", "existing-file"])
def test_out_given_a_file_name_says_it_takes_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    (tmp_path / "existing-file").write_text("keep me\n")
    assert report_main(["--out", str(tmp_path / out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("--out takes a folder") and error.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing-file"]


def test_cpu_figures_keep_the_digits_their_clock_ticks_allow() -> None:
    def run(ticks: int) -> LoadResult:
        return fake(LoadSpec(), server_cpu_us_per_delivery=3.8512, server_cpu_ticks=ticks)

    assert cpu([run(400)]) == "3.85"
    assert cpu([run(50)]) == "3.9"
    assert cpu([run(50), run(400)]) == "3.9"
    assert cpu([run(0)]) == "-"
    assert (coarse(12.345), coarse(0.8512), coarse(1234.5)) == ("12", "0.85", "1,234")


def test_the_closing_note_names_every_figure_over_fewer_runs(tmp_path: Path) -> None:
    results = synthetic_results()
    results["runs"] = [
        run for run in results["runs"] if not (run["name"] == "tcp 0% loss" and run["repeat"] == 2)
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, allow_nan=False), encoding="utf-8")
    generate(path, tmp_path, CLEAN)
    section = _flat((tmp_path / "RUNS.md").read_text(encoding="utf-8"))
    assert "each figure over 3 runs, except (runs counted) TCP, clean 2." in section
