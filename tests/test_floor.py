"""The kernel floor probe: real loopback sockets, a reader process, CPU per write."""

from __future__ import annotations

import math

from benchmarks.floor import measure_floor


def test_floor_reports_a_positive_cost_per_write() -> None:
    floor = measure_floor(peers=4, rounds=5)
    for cost in (floor.tcp_send_us, floor.udp_sendto_us):
        assert math.isfinite(cost) and cost > 0
