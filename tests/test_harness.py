"""The benchmark harness at toy scale: one run of each kind, and the files it writes.

Each run uses 3 clients and half a second of measurement, so the whole module takes seconds; the
numbers are not benchmarks, only checks that every kind of run accounts for every message.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.__main__ import main as bench_main
from benchmarks.harness import (
    LINK_MATRIX,
    build_suite,
    configured,
    format_tables,
    run_suite,
    write_results,
)
from benchmarks.measure import LoadSpec, result_from_dict, result_to_dict, run_load
from benchmarks.servers import ServerProcess
from benchmarks.targets import evaluate, format_targets
from netsim.lossy import lossy_link_unavailable

# One scenario of each kind from the tiny suite: the four servers, a slow reader, Nagle, a
# thread per client, the capacity run, a saturation run and (where the machine can) the lossy
# link.
PICKED = {
    ("clients", "tcp 3x5"),
    ("clients", "assignment 3x5"),
    ("clients", "udp-raw 3x5"),
    ("clients", "udp-reliable 3x5"),
    ("lossy", "udp-reliable 5% loss"),
    ("slow-reader", "tcp + 1 slow reader"),
    ("nagle", "tcp nagle 3x5"),
    ("threads", "tcp 3x5, a thread per client"),
    ("capacity", "tcp 20 idle clients"),
    ("saturation", "tcp 3x20"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    scenarios = [s for s in build_suite("tiny") if (s.group, s.name) in PICKED]
    assert {(s.group, s.name) for s in scenarios} == PICKED
    outcome = run_suite(scenarios, "tiny")
    outcome["out_dir"] = str(tmp_path_factory.mktemp("results"))
    return outcome


def test_every_run_accounts_for_every_message(results: dict[str, Any]) -> None:
    names = {(run["group"], run["name"]) for run in results["runs"]}
    lossy_ran = lossy_link_unavailable() is None
    assert names == PICKED - {("capacity", "tcp 20 idle clients")} - (
        set() if lossy_ran else {("lossy", "udp-reliable 5% loss")}
    )
    for run in results["runs"]:
        r = result_from_dict(run["result"])
        assert r.sent > 0, run["name"]
        recipients = r.clients - 1 if r.protocol == "assignment" else r.clients
        assert r.expected == r.sent * recipients
        assert (r.lost, r.duplicates, r.unexpected, r.unsent) == (0, 0, 0, 0), run["name"]
        assert r.received == r.expected
        # A delivery takes about a millisecond on loopback; over the lossy link a frame may
        # need three retransmissions (200 + 400 + 800 ms).
        slowest = 1600 if "loss" in run["name"] else 500
        assert 0 < r.p50_ms <= r.p99_ms <= r.max_ms < slowest, run["name"]
        assert r.server_clean_exit is True
        assert r.server_peak_rss_mb > 1
    by_name = {run["name"]: result_from_dict(run["result"]) for run in results["runs"]}
    assert by_name["tcp 3x5, a thread per client"].threads == 3
    assert by_name["tcp nagle 3x5"].nagle
    assert by_name["tcp + 1 slow reader"].slow_readers == 1
    assert by_name["udp-reliable 3x5"].protocol == "udp-reliable"
    if not lossy_ran:
        assert results["skipped"][0]["group"] == "lossy"


def test_capacity_run_counts_everyone(results: dict[str, Any]) -> None:
    (capacity,) = results["capacity"]
    assert capacity["online"] == capacity["clients"] == 20
    assert capacity["bytes_per_client"] > 0


def test_files_carry_the_runs_and_the_metadata(results: dict[str, Any]) -> None:
    out_dir = Path(results["out_dir"])
    json_path, csv_path = write_results(results, out_dir)

    written = json.loads(json_path.read_text(encoding="utf-8"))
    meta = written["meta"]
    for key in ("date", "git_commit", "python", "suite", "load_average_before", "elapsed_s"):
        assert meta[key] not in (None, ""), key
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["cpu"]
    assert len(written["runs"]) == len(results["runs"])

    with csv_path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(results["runs"])
    for row in rows:
        assert row["git_commit"] == meta["git_commit"] and row["date"] == meta["date"]
        assert row["python"] == meta["python"] and row["machine"]
        assert int(row["lost"]) == 0

    tables = format_tables(written)
    assert "== clients" in tables and "== capacity" in tables
    assert "NOT MEASURED" in format_targets(evaluate(written))


def test_results_survive_json() -> None:
    spec = LoadSpec(server="tcp", clients=2, rate=10, duration=0.3, warmup=0.1, drain=1)
    result = run_load(spec)
    again = result_from_dict(json.loads(json.dumps(result_to_dict(result), allow_nan=False)))
    assert result_to_dict(again) == result_to_dict(result)


def test_the_matrix_sets_each_configuration_s_options_and_nodelay_is_told_apart() -> None:
    base = LoadSpec(server="tcp", clients=40)
    specs = {c.key: configured(base, c) for c in LINK_MATRIX}
    assert {key: spec.protocol for key, spec in specs.items()} == {k: k for k in specs}
    nodelay = [s for s in build_suite("bench") if s.spec is not None and s.spec.nodelay]
    assert nodelay and all(s.variant == "nodelay" for s in nodelay)
    assert all(s.variant == "" for s in build_suite("bench") if s.spec and not s.spec.nodelay)


def test_bad_specs_are_refused() -> None:
    for spec in (
        LoadSpec(clients=0),
        LoadSpec(clients=10, rate=2e8),
        LoadSpec(server="tcp", reliable=True),
        LoadSpec(server="udp", slow_readers=1),
        LoadSpec(server="tcp", relay_loss=0.05),
        LoadSpec(server="tcp", nodelay=True),
        LoadSpec(threads=0),
    ):
        with pytest.raises(ValueError):
            spec.validate()


def test_command_line_lists_the_suites(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--list", "--only", "lossy,capacity"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(("lossy" in line) or ("capacity" in line) for line in lines)
    # Every configuration meets every loss; 0 and 5 % three times each for the repeated ones.
    for config in LINK_MATRIX:
        again = 3 if config.repeated else 1
        assert sum(line.endswith(f" {config.key} 5% loss") for line in lines) == again
        assert sum(line.endswith(f" {config.key} 0% loss") for line in lines) == again
        assert sum(line.endswith(f" {config.key} 10% loss") for line in lines) == 1
    repeated = sum(c.repeated for c in LINK_MATRIX)
    assert len(lines) == 1 + len(LINK_MATRIX) * 4 + repeated * 2 * 2
    assert bench_main(["--list", "--only", "targets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # TCP, TCP without coalescing, the assignment's server, with and without Nagle, UDP raw 1.0
    # and packets at 100 x 10, and 4 more runs of packet sessions, in each of 3 rounds; the runs
    # over a lossy link are the `lossy` group's.
    assert len(lines) == 30 and sum("udp-reliable-packets 200x5" in line for line in lines) == 3
    assert sum("tcp 200x5 coalesce 0 ms" in line for line in lines) == 3
    assert sum("assignment 200x5 nodelay" in line for line in lines) == 3
    assert len(build_suite("full")) > len(build_suite("bench"))
    with pytest.raises(SystemExit):
        bench_main(["--only", "nonsense", "--list"])


SAYS_RETRANSMISSIONS = """
import signal, sys
for line in sys.argv[1:]:
    print(line, file=sys.stderr, flush=True)
print("listening on 127.0.0.1:9", file=sys.stderr, flush=True)
signal.pause()
"""


@pytest.mark.parametrize(
    ("lines", "counted"),
    [
        (["a left (bye); to client: 9 sent, 3 retransmitted", "b left (bye); 4 retransmitted"], 7),
        (["a joined from 127.0.0.1:5"], -1),
    ],
)
def test_the_server_s_own_retransmissions_are_added_up(lines: list[str], counted: int) -> None:
    server = ServerProcess([sys.executable, "-c", SAYS_RETRANSMISSIONS, *lines])
    assert server.wait_ready() == ("127.0.0.1", 9)
    server.stop()
    assert server.retransmitted == counted
