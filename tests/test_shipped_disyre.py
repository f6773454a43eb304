"""The shipped DISYRE model: loads, matches its config and finds the sample's lesions."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from napari_uad.io import read_mask, read_scan
from napari_uad.methods import get_method_class
from napari_uad.metrics import auroc
from napari_uad.models.registry import default_model_name, resolve_model
from napari_uad.pipeline import detect
from napari_uad.samples import sample_path


@pytest.fixture(scope="module")
def folder():
    return resolve_model(default_model_name("disyre"))


def test_the_shipped_disyre_model_is_small_calibrated_and_loads(folder):
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 10e6
    with safe_open(str(weights), framework="pt") as handle:
        assert {str(handle.get_tensor(k).dtype) for k in handle.keys()} == {"torch.float16"}
    method = get_method_class("disyre").from_checkpoint(folder)
    assert method.config.method == "disyre" and method.config.grid == 128
    assert next(method.model.parameters()).dtype.is_floating_point
    assert str(next(method.model.parameters()).dtype) == "torch.float32"
    assert method.calibrated_threshold() > 0
    assert method.resolve_parameters()["severities"] == (1.0, 0.8, 0.6, 0.4, 0.2)
    assert "recipe" in method.config.training


def test_the_shipped_disyre_model_finds_the_lesions_of_the_sample(folder):
    scan = read_scan(sample_path("lesion"))
    brain = read_mask(sample_path("brain_mask"), like=scan)
    truth = read_mask(sample_path("lesion_truth"), like=scan)
    result = detect(scan, method="disyre", brain_mask=brain, device="cpu")
    assert result.provenance["model"] == "disyre"
    assert result.provenance["parameters"]["threshold_source"] == "model calibration"
    # Measured 0.595 on the sample (0.871 pooled on the benchmark set, docs/benchmarks.md).
    assert auroc(result.anomaly, truth, mask=brain) > 0.56
