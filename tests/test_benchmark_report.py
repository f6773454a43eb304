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
    assert targets._limit(targets.SLICE_LIMIT_S, "anoddpm") == 1.0
    assert targets._limit(targets.SLICE_LIMIT_S, "ensemble") == 1.0
    assert targets._limit(targets.SLAB_LIMIT_S, "anoddpm") == 60.0


RUN = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def run_module():
    import sys

    sys.path.insert(0, str(RUN.parent))  # run.py imports its sibling targets.py
    spec = importlib.util.spec_from_file_location("benchmark_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case(name, split, rng):
    import numpy as np

    brain = np.zeros((20, 20, 2), dtype=bool)
    brain[2:18, 2:18] = True
    big = np.zeros_like(brain)
    big[4:12, 4:12] = True
    small = np.zeros_like(brain)
    small[14:16, 14:16, 0] = True
    lesions = {"tumour": (None, big), "ms": (None, small)}
    return {"name": name, "split": split, "brain": brain, "lesions": lesions}


def test_each_kind_is_scored_against_its_lesions_and_the_healthy_scans(run_module):
    import numpy as np

    rng = np.random.default_rng(0)
    cases = [_case("sub-01", "tune", rng), _case("sub-02", "test", rng)]
    maps = {}
    for case in cases:
        noise = rng.uniform(0, 0.5, case["brain"].shape)
        maps[(case["name"], "healthy")] = noise
        # The tumour is found perfectly; the small lesion scores like healthy tissue, except
        # that the healthy scan holds a hot spot brighter than anything in the lesion scans.
        maps[(case["name"], "tumour")] = noise + case["lesions"]["tumour"][1]
        maps[(case["name"], "ms")] = noise.copy()
        maps[(case["name"], "healthy")][3, 3, 1] = 5.0
    scored = run_module.score_maps(cases, ["tumour", "ms"], maps, threshold=1.0)
    assert set(scored) == {"tune", "test"}
    test = scored["test"]
    assert test["kinds"]["tumour"]["auroc"] > 0.99
    assert 0.3 < test["kinds"]["ms"]["auroc"] < 0.7
    # The healthy scan's hot spot counts against every kind: the tumour's AP is below 1.
    assert test["kinds"]["tumour"]["ap"] < 1.0
    assert test["macro_auroc"] == pytest.approx(
        (test["kinds"]["tumour"]["auroc"] + test["kinds"]["ms"]["auroc"]) / 2
    )
    # One voxel of 512 healthy brain voxels is at or above the threshold.
    assert test["healthy_flagged_percent"] == pytest.approx(100 / 512)
    row = run_module._row({"method": "m", "model": "x", "setting": "defaults"}, scored, {})
    assert row["auroc"] == test["macro_auroc"]
    assert row["tune_macro_auroc"] == scored["tune"]["macro_auroc"]
    cells = run_module._cells({**row, "nfe": 2, "s_per_slice": 0.1}, ["tumour", "ms"])
    assert len(cells) == len(run_module.columns(["tumour", "ms"]))
