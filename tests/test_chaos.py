"""The chaos benchmark: its counts on logs made by hand, and a few seconds of the real thing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.chaos import Counts, Resumed, analyse, caught_up, percentile, resume_times
from tests.conftest import ROOT


def counts(**changed: int) -> Counts:
    base = {
        "messages": 3,
        "deliveries": 6,
        "missed_without_notice": 0,
        "missed_with_notice": 0,
        "received_twice": 0,
        "out_of_order": 0,
    }
    return Counts(**{**base, **changed})


def test_everyone_got_everything_once_in_order() -> None:
    everything = [(0, 1), (1, 1), (0, 2)]
    assert analyse([everything, everything]) == counts()


def test_a_gap_without_a_notice_is_missed_silently() -> None:
    assert analyse([[(0, 1), (0, 2), (0, 3)], [(0, 1), (0, 3)]]) == counts(
        deliveries=5, missed_without_notice=1
    )


def test_a_gap_with_a_notice_between_is_announced() -> None:
    assert analyse([[(0, 1), (0, 2), (0, 3)], [(0, 1), None, (0, 3)]]) == counts(
        deliveries=5, missed_with_notice=1
    )


def test_a_notice_elsewhere_does_not_excuse_a_gap() -> None:
    log = [(0, 1), (0, 3), None]
    assert analyse([[(0, 1), (0, 2), (0, 3)], log]) == counts(deliveries=5, missed_without_notice=1)


def test_the_tail_is_due_too_and_a_notice_at_the_end_announces_it() -> None:
    full = [(0, 1), (0, 2), (0, 3)]
    assert analyse([full, [(0, 1)]]).missed_without_notice == 2
    assert analyse([full, [(0, 1), None]]).missed_with_notice == 2


def test_twice_and_out_of_order_are_counted_and_not_as_misses() -> None:
    full = [(0, 1), (0, 2), (0, 3)]
    assert analyse([full, [(0, 2), (0, 1), (0, 3), (0, 3)]]) == counts(
        deliveries=7, received_twice=1, out_of_order=1
    )


def test_a_user_still_catching_up_when_the_chat_stops_is_waited_for() -> None:
    """Its tail is not missed yet: the run ends once everyone has each sender's last message."""
    full = [(0, 1), (1, 1), (0, 2), (1, 2)]
    assert caught_up([full, full, [(0, 1), (1, 1), (0, 2), (1, 2)]])
    assert not caught_up([full, [(0, 1), (1, 1)]])  # on its way back: wait for it
    assert caught_up([full, [(0, 1), None, (0, 2), (1, 2)]])  # a gap it was told of: over
    assert caught_up([full, [(0, 1), (1, 1), None]])  # the last ones lost, and it was told
    assert not caught_up([full, [None, (0, 1), (1, 1)]])  # told of an earlier gap only
    assert caught_up([[], []])


def test_resume_time_counts_from_the_loss_or_from_the_server_being_back() -> None:
    resumes = [Resumed(10.0, 10.3, True), Resumed(20.0, 25.5, True), Resumed(30.0, 30.1, False)]
    assert resume_times(resumes, backs=[25.0]) == pytest.approx([0.1, 0.3, 0.5])
    assert percentile([0.1, 0.2, 0.3], 0.5) == 0.2
    assert percentile([0.1, 0.2, 0.3], 0.99) == 0.3


def test_a_short_run_resumes_everyone_with_nothing_missed_twice_or_out_of_order(
    tmp_path: Path,
) -> None:
    """A few seconds of cuts and one kill of a server on its history file, over TCP."""
    out = tmp_path / "chaos.json"
    command = [sys.executable, "-m", "benchmarks.chaos", "--quick", "--duration", "4"]
    command += ["--transport", "tcp", "--setup", "single", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (scenario,) = json.loads(out.read_text())["scenarios"]
    assert scenario["cuts"] >= 3 and scenario["kills"] == 1
    assert scenario["resumes"] >= scenario["cuts"]
    assert scenario["messages"] > 0 and scenario["deliveries"] > scenario["messages"]
    assert scenario["missed_without_notice"] == 0
    assert scenario["received_twice"] == 0
    assert scenario["out_of_order"] == 0
    assert scenario["notes"] == []
