"""The report generator on a synthetic results file: verdicts, marks, provenance, length."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import build_suite
from benchmarks.measure import DEFAULT_THREADS, PERCENTILES, LoadResult, LoadSpec, result_to_dict
from benchmarks.targets import evaluate
from report.__main__ import main as report_main
from report.generate import CLUSTER_FILE, Provenance, generate, render
from tcp.server import DEFAULT_COALESCE_MS


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
}


def synthetic_results() -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    capacity = []
    for scenario in build_suite("bench"):
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
             "load_1min": 0.25, "spec": dataclasses.asdict(scenario.spec),
             "result": result_to_dict(result)}
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
    return {"meta": meta, "runs": runs, "capacity": capacity, "skipped": []}


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


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("report")
    results_path = out / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    (out / CLUSTER_FILE).write_text(json.dumps(synthetic_cluster()), encoding="utf-8")
    return generate(results_path, out, CLEAN).read_text(encoding="utf-8")


def _rows(text: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}


def test_every_placeholder_is_filled_and_the_source_is_named(report: str) -> None:
    assert "{{" not in report and "}}" not in report
    assert "n/a" not in report
    assert "`benchmarks/results/latest.json` (committed in abc1234) at commit def5678" in report
    assert "measured at commit 0123456789" in report and "Draft" not in report


def test_verdicts_follow_the_repeats(report: str) -> None:
    rows = _rows(report)
    assert "**met**" in rows["tcp-200x5"]
    assert "- `tcp-200x5` (p99 1.60 ms [1.50-1.70]," in report
    assert "**unstable**" in rows["udp-raw-100x10"]
    assert "run 2: loss 0.000 %, p99 7.77 ms (failed)" in report
    assert "harness-bound" in rows["tcp-200x50"]
    assert "**met**" in rows["tcp-no-coalescing"]
    assert "**met**" in rows["udp-reliable-5pct"]


def test_the_targets_table_fits_a_screen(report: str) -> None:
    section = report.split("### 2.2", 1)[1].split("Measured, as median", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert len(table) == 8 and max(len(line) for line in table) <= 110


def _flat(text: str) -> str:
    """The text with its line breaks as spaces, as a reader sees it."""
    return " ".join(text.split())


def test_the_cost_model_and_the_writer_s_rest_come_from_the_results(report: str) -> None:
    assert "One loopback `send` costs 8.5 µs of CPU" in _flat(report)
    # The floor over the 200 x 5 runs' median CPU per delivery (3.2 µs): frames per send.
    assert "carried at least 2.7 frames" in _flat(report)
    rests = [
        line.split("|")[1:4]
        for line in report.split("**The writer's rest.**", 1)[1].splitlines()
        if line.startswith("| 200")
    ]
    default = f"{DEFAULT_COALESCE_MS:g}"
    assert [(load.strip(), rest.strip()) for load, rest, _ in rests] == [
        ("200 × 5", "0"), ("200 × 5", "5"), ("200 × 5 (default)", default),
        ("200 × 50", "0"), ("200 × 50 (default)", default),
    ]  # fmt: skip
    assert rests[0][2].strip() == "2.50"  # the repeated runs with no rest, their median


def test_past_one_machine_comes_from_the_cluster_file(report: str) -> None:
    section = _flat(report.split("## 5. Past one machine", 1)[1].split("## 6.", 1)[0])
    assert "2026-01-03T04:05:06+00:00 at commit fedcba9876" in section
    assert "this machine's 2 cores" in section
    assert "about 80,000 events/s, which at 200 members is 16,000,000 deliveries/s" in section
    assert "the 700,000 deliveries/s one server delivered alone" in section
    assert "(`chat:{lobby}:log`" in section


def test_harness_bound_runs_are_marked_in_the_tables(report: str) -> None:
    marked = [
        line
        for line in report.splitlines()
        if line.startswith("| ") and "**harness-bound**" in line
    ]
    assert len(marked) == 3 and all("200x50" in line for line in marked)


def test_figures_are_written(report: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    for name in ("percentiles", "latency_vs_clients", "throughput_vs_offered", "loss_vs_link_loss"):
        assert f"]({name}.png)" in report


def test_a_missing_cluster_file_says_how_to_make_it(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    text = generate(results_path, tmp_path, CLEAN).read_text(encoding="utf-8")
    assert "_Not measured: run `make bench-cluster`._" in text


def test_the_answer_and_the_report_keep_to_their_length(report: str) -> None:
    answer = report.split("## The answer", 1)[1].split("## 1.", 1)[0]
    answer = answer.split("Generated from", 1)[0]
    assert len(answer.split()) <= 300
    prose = [line for line in report.splitlines() if not line.startswith("|")]
    assert len(re.findall(r"\w+", "\n".join(prose))) <= 3000


def test_a_report_from_uncommitted_files_says_so(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    draft = dataclasses.replace(CLEAN, clean=False)
    assert "**Draft" in generate(results_path, tmp_path, draft).read_text(encoding="utf-8")


def test_an_unknown_placeholder_is_an_error() -> None:
    assert render("a {{x}} b", {"x": "1"}) == "a 1 b"
    with pytest.raises(KeyError):
        render("{{missing}}", {})


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
