"""The shipped default models: small, float16, calibrated, load as float32, and find lesions."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from napari_uad.data.samples import sample_path
from napari_uad.io import read_mask, read_scan
from napari_uad.methods import METHOD_NAMES, default_model_name, get_method_class
from napari_uad.metrics import auroc
from napari_uad.models.checkpoint import load_config
from napari_uad.models.registry import resolve_model
from napari_uad.pipeline import detect

SHIPPED = ("anoddpm-gaussian", "anoddpm-simplex", "addm", "disyre", "madad")
#: Shipped models without a network of their own (their tables fuse other models' maps).
SHIPPED_TABLES = ("ensemble",)

# Voxel AUROC on the lesion sample at each model's defaults, measured on the sample with its
# 30 mm tumour (in brackets; docs/benchmarks.md has the benchmark set's figures), bars a few
# hundredths under. AutoDDPM (0.55 here, 0.68 on the benchmark set) is left out: it does not
# find the sample's tumour, whose oedema its inpainting restores.
SAMPLE_BARS = {
    ("anoddpm", "anoddpm-gaussian"): 0.69,  # 0.715
    ("anoddpm", "anoddpm-simplex"): 0.50,  # 0.526
    ("addm", "addm"): 0.73,  # 0.755
    ("disyre", "disyre"): 0.92,  # 0.948
    ("madad", "madad"): 0.66,  # 0.692
    ("thor", "anoddpm-gaussian"): 0.51,  # 0.534
    ("ensemble", "ensemble"): 0.94,  # 0.963
}


@pytest.fixture(scope="module")
def sample():
    scan = read_scan(sample_path("lesion"))
    brain = read_mask(sample_path("brain_mask"), like=scan)
    return scan, brain, read_mask(sample_path("lesion_truth"), like=scan)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_is_small_float16_calibrated_and_loads(name):
    folder = resolve_model(name)
    files = sorted(folder.glob("*.safetensors"))
    assert sum(f.stat().st_size for f in files) < 10e6
    assert not (folder / "training_state.safetensors").exists()
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            assert {str(handle.get_tensor(k).dtype) for k in handle.keys()} == {"torch.float16"}
    config = load_config(folder)
    assert config.name == name and config.grid == 128
    assert "recipe" in config.training and config.training.get("steps", 0) > 0
    method = get_method_class(config.method).from_checkpoint(folder)
    assert {str(p.dtype) for p in method.model.parameters()} == {"torch.float32"}
    assert method.calibrated_threshold() > 0
    resolved = method.resolve_parameters()
    for key, value in config.defaults.items():
        if isinstance(value, dict):  # another method's defaults on this model
            theirs = get_method_class(key).defaults_for_config(config)
            assert {k: _plain(theirs[k]) for k in value} == value, key
        else:
            assert _plain(resolved[key]) == value, key


def test_every_method_has_a_shipped_model_it_accepts():
    for method in METHOD_NAMES:
        config = load_config(resolve_model(default_model_name(method)))
        assert config.name in SHIPPED + SHIPPED_TABLES
        assert get_method_class(method).accepts(config.method)


def test_the_shipped_ensemble_is_tiny_calibrated_and_fits_the_shipped_members():
    import warnings

    folder = resolve_model("ensemble")
    assert (folder / "model.safetensors").stat().st_size < 10_000
    config = load_config(folder)
    assert [m["model"] for m in config.training["members"]] == ["disyre", "addm"]
    assert "recipe" in config.training
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a member's weights changed: refit the ensemble
        ensemble = get_method_class("ensemble").from_checkpoint(folder)
    assert ensemble.calibrated_threshold() > 0
    assert [m.config.name for m in ensemble.members] == ["disyre", "addm"]


@pytest.mark.parametrize(("method", "model"), list(SAMPLE_BARS))
def test_shipped_models_find_the_lesions_of_the_sample(method, model, sample):
    scan, brain, truth = sample
    result = detect(scan, method=method, model=model, brain_mask=brain, device="cpu")
    assert result.provenance["model"] == model
    assert result.provenance["parameters"]["threshold_source"] == "model calibration"
    assert auroc(result.anomaly, truth, mask=brain) > SAMPLE_BARS[method, model]
