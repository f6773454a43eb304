"""The ensemble method: fitted tables, fusion of its members' maps, loading and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_uad.data.phantoms import add_lesions, make_dataset
from napari_uad.methods.ensemble import Ensemble, intensity_bins
from napari_uad.models.checkpoint import CheckpointError
from napari_uad.pipeline import detect


@pytest.fixture(scope="module")
def healthy_slices():
    data = make_dataset(6, size=32, seed=50)
    return data["images"], data["masks"]


@pytest.fixture(scope="module")
def ensemble_dir(tiny_ensemble_dir, tmp_path_factory):
    import shutil

    # A copy: one test stores a calibration in it.
    return Path(shutil.copytree(tiny_ensemble_dir, tmp_path_factory.mktemp("e") / "ensemble"))


def test_intensity_bins_clamp_to_the_outer_bins():
    edges = torch.linspace(0, 1, 5)
    values = torch.tensor([-0.1, 0.0, 0.2, 0.25, 0.99, 1.0, 1.5])
    assert intensity_bins(values, edges).tolist() == [0, 0, 0, 1, 3, 3, 3]


def test_fitted_tables_put_every_member_in_units_of_its_healthy_tail(ensemble_dir, healthy_slices):
    ensemble = Ensemble.from_checkpoint(ensemble_dir)
    assert [m.name for m in ensemble.members] == ["disyre", "addm"]
    assert len(ensemble.edges) == 5 and all(len(s) == 4 for s in ensemble.spreads)
    assert all(s.min() > 0 for s in ensemble.spreads)
    images, masks = healthy_slices
    result = ensemble.restore(images, masks, rule="max")
    # Each member's map is divided by its own healthy 99.5th percentile, so on the slices it
    # was fitted on about 0.5 % of brain pixels exceed 1 for each member; the maximum of two
    # such maps flags at most twice that.
    flagged = float((result.anomaly[masks] > 1.0).mean())
    assert 0.001 < flagged <= 0.011
    pairs = zip(ensemble.members, ensemble.member_params, strict=True)
    assert result.nfe == sum(m.network_evaluations(p) for m, p in pairs)


def test_fused_map_is_the_mean_of_the_members_normalised_maps(ensemble_dir, healthy_slices):
    from napari_uad.methods.filters import median_filter2d

    ensemble = Ensemble.from_checkpoint(ensemble_dir)
    images, masks = healthy_slices
    image, truth = add_lesions(images[0], masks[0], kind="tumour", seed=1)
    stack, brain = image[None], masks[:1]
    fused = ensemble.restore(stack, brain, seed=3)
    expected = []
    for index, member in enumerate(ensemble.members):
        alone = member.restore(stack, brain, seed=3, smoothing=0)
        healthy = torch.from_numpy(alone.healthy)
        normalised = torch.from_numpy(alone.anomaly) / ensemble.spread_at(index, healthy)
        normalised = median_filter2d(normalised[:, None] * torch.from_numpy(brain)[:, None], 3)
        expected.append(normalised[:, 0].numpy() * brain / ensemble.scales[index])
    np.testing.assert_allclose(fused.anomaly, np.mean(expected, axis=0), rtol=1e-4, atol=1e-5)
    larger = ensemble.restore(stack, brain, seed=3, rule="max").anomaly
    assert (larger >= fused.anomaly - 1e-6).all() and (larger > fused.anomaly + 1e-4).any()


def test_detect_runs_the_ensemble_with_its_calibrated_threshold(ensemble_dir, phantom_scan_files):
    from napari_uad.io import read_scan
    from napari_uad.models.checkpoint import load_config
    from napari_uad.training.calibrate import store_calibration

    config = load_config(ensemble_dir)
    store_calibration(config, "ensemble", {"threshold": 1.25, "percentile": 99.5})
    (ensemble_dir / "config.json").write_text(json.dumps(config.to_dict()))
    scan = read_scan(phantom_scan_files["scan"])
    result = detect(scan, method="ensemble", model=ensemble_dir, device="cpu")
    assert result.threshold == pytest.approx(1.25)
    assert result.anomaly.shape == scan.shape and np.isfinite(result.anomaly).all()
    assert result.provenance["method"] == "ensemble"


def test_broken_ensembles_fail_with_one_line(ensemble_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(ensemble_dir, broken)
    tables = load_file(str(broken / "model.safetensors"))
    tables["spread.1"] = -tables["spread.1"]
    save_file(tables, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="non-positive"):
        Ensemble.from_checkpoint(broken)
    del tables["spread.1"]
    save_file(tables, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="spread.1"):
        Ensemble.from_checkpoint(broken)
    config = json.loads((ensemble_dir / "config.json").read_text())
    config["training"]["members"] = []
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no members"):
        Ensemble.from_checkpoint(broken)
    with pytest.raises(ValueError, match="rule"):
        Ensemble.from_checkpoint(ensemble_dir).resolve_parameters(rule="median")


def test_a_refitted_member_model_warns(ensemble_dir, tmp_path):
    import shutil

    config = json.loads((ensemble_dir / "config.json").read_text())
    config["training"]["members"][0]["sha256"] = "0" * 64
    changed = tmp_path / "changed"
    shutil.copytree(ensemble_dir, changed)
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="refit"):
        Ensemble.from_checkpoint(changed)
