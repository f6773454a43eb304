"""The benchmark's target tables judge the measured figures against the issue's targets."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TARGETS = Path(__file__).resolve().parent.parent / "benchmarks" / "targets.py"


@pytest.fixture(scope="module")
def targets():
    spec = importlib.util.spec_from_file_location("benchmark_targets", TARGETS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, model, setting, nfe, auroc, full=False):
    return {
        "method": method,
        "model": model,
        "setting": setting,
        "nfe": nfe,
        "auroc": auroc,
        "full": full,
    }


def test_full_schedule_rows_pair_with_the_defaults_of_the_same_model(targets):
    rows = [
        _row("anoddpm", "g", "defaults", 2, 0.75),
        _row("anoddpm", "g", "steps=5", 5, 0.76),
        _row("anoddpm", "g", "steps=26", 26, 0.76, full=True),
        _row("thor", "g", "defaults", 8, 0.60),
        _row("thor", "g", "steps=51", 51, 0.65, full=True),
    ]
    found = targets.schedule_rows(rows)
    assert [(r["method"], r["default_nfe"], r["full_nfe"]) for r in found] == [
        ("anoddpm", 2, 26),
        ("thor", 8, 51),
    ]
    table = "\n".join(targets.schedule_markdown(found))
    # anoddpm: 0.01 lower at 13x fewer NFE meets the target; thor: 6.4x fewer and 0.05 lower
    # does not.
    assert "| anoddpm | g | 2 | 26 | 13.0x | 0.750 | 0.760 | -0.010 | yes |" in table
    assert "| thor | g | 8 | 51 | 6.4x | 0.600 | 0.650 | -0.050 | **no** |" in table


def test_speed_and_memory_rows_fail_when_any_limit_is_exceeded(targets):
    row = {
        "method": "anoddpm",
        "model": "g",
        "nfe": 2,
        "slice_s": 0.1,
        "slab_s": 1.0,
        "slice_limit_s": 2.0,
        "slab_limit_s": 60.0,
        "volume_peak_mb": 900.0,
        "volume_s": 7.0,
    }
    assert targets.format_target_row(row).endswith("| yes")
    assert targets.format_target_row({**row, "slice_s": 2.5}).endswith("**no**")
    assert targets.format_target_row({**row, "volume_peak_mb": 4000.0}).endswith("**no**")
    assert targets._limit(targets.SLICE_LIMIT_S, "anoddpm") == 2.0
    assert targets._limit(targets.SLICE_LIMIT_S, "thor") == 5.0
