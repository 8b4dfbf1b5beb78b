"""The calibration's verdict, in memory: medians, tolerances, too few rounds, a missing example."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.calibrate import MIN_ROUNDS, TOLERANCE, Figures, compare, format_calibration, main

EXAMPLE = [
    Figures(2.0, 18.0, 1_900_000.0),
    Figures(2.1, 17.0, 1_500_000.0),
    Figures(2.1, 40.0, 2_000_000.0),
]


def test_figures_within_the_tolerance_pass() -> None:
    ours = [
        Figures(2.1, 19.0, 1_700_000.0),
        Figures(2.2, 20.0, 1_680_000.0),
        Figures(2.1, 9.0, 1_900_000.0),
    ]
    result = compare(EXAMPLE, ours)
    assert result.passed and result.rounds == 3
    cpu = next(g for g in result.gaps if g.figure == "cpu_us")
    assert (cpu.seed, cpu.ours, cpu.tolerance) == (2.1, 2.1, TOLERANCE["cpu_us"])
    assert format_calibration(result).endswith("PASS")


def test_one_figure_out_of_its_band_fails_and_says_which() -> None:
    slower = [Figures(2.6, 18.0, 1_900_000.0)] * 3  # 24 % more CPU per delivery
    result = compare(EXAMPLE, slower)
    assert not result.passed
    assert [g.figure for g in result.gaps if not g.holds] == ["cpu_us"]
    text = format_calibration(result)
    assert "NO" in text and text.endswith("FAIL")


def test_the_medians_decide_not_one_lucky_round() -> None:
    ours = [
        Figures(2.1, 18.0, 1_900_000.0),
        Figures(2.1, 18.0, 1_900_000.0),
        Figures(9.0, 900.0, 10.0),
    ]
    assert compare(EXAMPLE, ours).passed


def test_fewer_rounds_than_the_minimum_fail_whatever_the_figures() -> None:
    result = compare(EXAMPLE[: MIN_ROUNDS - 1], EXAMPLE[: MIN_ROUNDS - 1])
    assert not result.passed
    assert "at least 3 are needed" in format_calibration(result)


def test_a_missing_example_is_skipped_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "calibration.json"
    assert main(["--seed", str(tmp_path / "absent.py"), "--out", str(out)]) == 0
    assert "calibration skipped" in capsys.readouterr().out
    assert not out.exists()
