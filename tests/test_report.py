"""The report generator on a synthetic results file: tables, prose numbers, verdicts, figures."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness import build_suite
from benchmarks.measure import DEFAULT_THREADS, LoadResult, LoadSpec, result_to_dict
from report.generate import generate, render


def fake(spec: LoadSpec, **overrides: Any) -> LoadResult:
    """A plausible result for a spec: everything delivered, latency growing with the load."""
    offered = spec.clients * spec.rate
    deliveries = offered * spec.clients
    sent = round(offered * spec.duration)
    result = LoadResult(
        protocol=spec.protocol, link=spec.link, clients=spec.clients,
        threads=min(spec.threads, spec.clients), rate=spec.rate, duration=spec.duration,
        nagle=spec.nagle, slow_readers=spec.slow_readers, connect_s=0.25,
        offered_msgs_per_s=offered, sent_msgs_per_s=offered,
        offered_deliveries_per_s=deliveries, deliveries_per_s=deliveries, sent=sent,
        expected=sent * spec.clients, received=sent * spec.clients, lost=0, loss_pct=0.0,
        unsent=0, duplicates=0, reorders=0, unexpected=0, p50_ms=0.5 + deliveries / 1e5,
        p95_ms=0.9 + deliveries / 5e4, p99_ms=1.1 + deliveries / 2e4,
        max_ms=3.0 + deliveries / 1e4, send_lag_p50_ms=0.1, send_lag_p99_ms=0.4,
        retransmitted=0, send_errors=0, slow_dropped=spec.slow_readers,
        too_slow_seen=spec.clients if spec.slow_readers else 0,
        too_slow_after_s=2.5 if spec.slow_readers else math.nan, server_cpu_pct=40.0,
        server_cpu_us_per_delivery=4.0, server_peak_rss_mb=30.0, server_threads=spec.clients + 2,
        harness_cpu_pct=30.0, server_clean_exit=True,
    )  # fmt: skip
    return dataclasses.replace(result, **overrides)


# Distinctive values for the runs whose numbers the prose quotes.
SPECIAL: dict[tuple[str, str], dict[str, Any]] = {
    ("clients", "tcp 200x5"): {"p50_ms": 0.613, "p99_ms": 1.734, "server_cpu_us_per_delivery": 3.2},
    ("clients", "naive 200x5"): {"p99_ms": 987.6, "server_cpu_us_per_delivery": 9.87},
    ("udp-target", "udp-raw 100x10"): {"loss_pct": 0.456, "p99_ms": 7.77, "server_cpu_pct": 97.0},
    ("udp-target", "udp-raw 100x10, run 2"): {"p99_ms": 3.33, "server_cpu_us_per_delivery": 3.9},
    ("udp-target", "udp-raw 100x10, run 3"): {"p99_ms": 44.4, "server_cpu_us_per_delivery": 4.4},
    ("lossy", "udp-reliable 5% loss"): {"p50_ms": 111.5, "p99_ms": 444.4, "retransmitted": 321},
    ("lossy", "udp-raw 5% loss"): {"loss_pct": 9.61, "lost": 384},
    ("rate", "tcp 200x20"): {"deliveries_per_s": 412_345.0, "p99_ms": 900.0},
    ("rate", "tcp 200x50"): {"deliveries_per_s": 401_000.0, "p99_ms": 3000.0},
    ("rate", "naive 200x5"): {"deliveries_per_s": 150_000.0, "p99_ms": 1500.0},
    ("rate", "naive 200x10"): {"deliveries_per_s": 151_234.0, "p99_ms": 2000.0},
    ("rate", "naive 200x20"): {"deliveries_per_s": 140_000.0, "p99_ms": 4000.0},
    ("rate", "naive 200x50"): {"deliveries_per_s": 120_000.0, "p99_ms": 6000.0},
}  # fmt: skip


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
        result = fake(scenario.spec, **SPECIAL.get((scenario.group, scenario.name), {}))
        runs.append(
            {"group": scenario.group, "name": scenario.name, "load_1min": 0.25 + len(runs) / 100,
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
    return {"meta": meta, "runs": runs, "capacity": capacity, "skipped": []}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    results_path = out / "results.json"
    results_path.write_text(json.dumps(synthetic_results(), allow_nan=False), encoding="utf-8")
    return generate(results_path, out)


def test_every_placeholder_is_filled(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "{{" not in text and "}}" not in text
    assert "n/a" not in text
    assert "2026-01-02T03:04:05+00:00" in text and "0123456789" in text and "Test CPU" in text
    assert "load average was 0.42 before the suite and 1.23 after it" in text
    assert "As each run started it was between 0.25 and 0.75" in text


def test_prose_numbers_are_the_files(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "TCP p50 0.61 ms and p99\n1.73 ms" in text or "TCP p50 0.61 ms and p99 1.73 ms" in text
    assert "TCP 3.20 µs of server CPU per delivery, naive\n9.87 µs" in text
    assert "UDP raw: 0.456 % lost" in text and "7.77" in text
    assert "repeated 3 times" in text and "p99s were 3.33, 7.77 and 44.4 ms" in text
    assert "went from 3.90 to 4.40 µs" in text
    assert "p50 112 ms and p99\n444 ms at 5 % (321 retransmissions" in text
    assert "9.61 % at 5 %" in text
    assert "peaks at\n412,345 deliveries/s" in text and "151,234 deliveries/s" in text
    assert "1,000 of 1,000 idle clients" in text
    assert "42.0 KiB" in text


def test_targets_are_judged_from_the_data(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "**met**" in rows["tcp-200x5"]
    assert "**met**" in rows["tcp-saturation"]  # 412,345 against 151,234: 2.73x
    assert "2.73x" in rows["tcp-saturation"]
    assert "**missed**" in rows["udp-raw-100x10"]
    assert "p99 7.77 ms (the median of 3 runs, whose p99s were 3.33, 7.77, 44.40 ms)" in text
    assert "97 % of a core" in rows["udp-raw-100x10"]
    assert "`sendto` costs 7.3 µs" in rows["udp-raw-100x10"]
    assert "drains with the 3% of the thread left over" in rows["udp-raw-100x10"]
    assert "lasts about 32 times as long" in rows["udp-raw-100x10"]
    assert "100,000 deliveries/s written one `sendto` each would take 0.73 cores" in text
    assert "one message to its 100 recipients is 0.73 ms of writing" in text
    assert "load average was 0.45 as the run started" in rows["udp-raw-100x10"]
    assert "**met**" in rows["udp-reliable-5pct"]
    assert "3 of 4 targets met; missed: udp-raw-100x10" in text


def test_tables_and_figures_are_written(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "| run " in text and "| tcp 200x5 " in text and "| udp-reliable 10% loss " in text
    for name in (
        "latency_vs_clients",
        "loss_vs_link_loss",
        "throughput_vs_offered",
        "cpu_per_delivery",
    ):
        png = report.parent / f"{name}.png"
        assert f"]({name}.png)" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_an_unknown_placeholder_is_an_error() -> None:
    assert render("a {{x}} b", {"x": "1"}) == "a 1 b"
    with pytest.raises(KeyError):
        render("{{missing}}", {})
