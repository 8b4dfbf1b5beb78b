"""The load generator against the assignment's server: a short run must account for every message.

Kept small (5 clients, 20 msg/s each, 1 s measured) so it finishes in a few seconds.
"""

from __future__ import annotations

import math

import pytest

from benchmarks.load import format_results, run_tcp_load


def test_small_run_against_the_assignments_server_delivers_everything() -> None:
    result = run_tcp_load("assignment", clients=5, rate=20, duration=1.0, warmup=0.2, drain=3.0)

    assert result.offered_msgs_per_s == pytest.approx(100)
    assert result.unsent == 0
    # The assignment's server does not echo a message to its sender.
    assert result.expected == 4 * 100
    assert result.received == result.expected
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.reorders == 0
    assert result.unexpected == 0
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms < 1000
    assert math.isfinite(result.send_lag_p99_ms)
    assert result.deliveries_per_s > 0
    assert 0 <= result.server_cpu_us_per_delivery < 1000
    assert result.server_peak_rss_mb > 1
    assert result.server_threads >= 1 + 5
    assert 0 <= result.harness_cpu_pct < 100
    assert result.connect_s > 0
    assert "assignment" in format_results([result])


def test_rejects_a_rate_whose_send_times_would_collide() -> None:
    with pytest.raises(ValueError):
        run_tcp_load("assignment", clients=10, rate=2e8, duration=1.0)
