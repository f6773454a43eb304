import nibabel as nib
import numpy as np
import pytest

from napari_uad.io import read_mask, read_scan
from napari_uad.methods.base import Cancelled
from napari_uad.metrics import auroc
from napari_uad.pipeline import detect


def test_detect_returns_maps_on_the_input_grid(tiny_model_dir, phantom_scan_files):
    scan = read_scan(phantom_scan_files["scan"])
    mask = read_mask(phantom_scan_files["mask"], like=scan)
    truth = read_mask(phantom_scan_files["truth"], like=scan)
    result = detect(scan, method="anoddpm", model=tiny_model_dir, brain_mask=mask, device="cpu")
    for array in (result.healthy, result.anomaly, result.lesion_mask):
        assert array.shape == scan.shape
    assert result.anomaly.dtype == np.float32 and result.lesion_mask.dtype == np.uint8
    assert (result.anomaly[~mask] == 0).all() and (result.lesion_mask[~mask] == 0).all()
    # The pseudo-healthy image is in the scan's own units, not [0, 1].
    assert result.healthy[mask].mean() == pytest.approx(scan.data[mask].mean(), rel=0.25)
    # The LAS file is handled: the map is high where the (flipped) lesion really is.
    assert auroc(result.anomaly, truth, mask=mask) > 0.6
    assert result.threshold == 0.2
    provenance = result.provenance
    assert provenance["nfe_per_slice"] == 5
    assert provenance["slices_processed"] == 6
    assert provenance["parameters"]["threshold_source"] == "model calibration"
    assert len(provenance["model_sha256"]) == 64


def test_detect_estimates_the_mask_and_restricts_slices(tiny_model_dir, phantom_scan_files):
    scan = read_scan(phantom_scan_files["scan"])
    result = detect(scan, model=tiny_model_dir, device="cpu", slices=[2], threshold=0.1)
    assert result.provenance["slices_processed"] == 1
    assert result.provenance["parameters"]["brain_mask"] == "estimated"
    # RAS slice 2 is input slice 2 (the file is only flipped left-right).
    assert np.abs(result.anomaly[:, :, [0, 1, 3, 4, 5]]).max() == 0
    assert np.abs(result.anomaly[:, :, 2]).max() > 0


def test_detect_can_be_cancelled(tiny_model_dir, phantom_scan_files):
    scan = read_scan(phantom_scan_files["scan"])
    with pytest.raises(Cancelled):
        detect(scan, model=tiny_model_dir, device="cpu", should_stop=lambda: True)


def test_bad_threshold_and_unknown_device(tiny_model_dir, phantom_scan_files):
    scan = read_scan(phantom_scan_files["scan"])
    with pytest.raises(ValueError, match="threshold"):
        detect(scan, model=tiny_model_dir, device="cpu", threshold="high")
    with pytest.raises(ValueError, match="device"):
        detect(scan, model=tiny_model_dir, device="tpu")


def test_same_seed_same_map(tiny_model_dir, phantom_scan_files):
    scan = read_scan(phantom_scan_files["scan"])
    a = detect(scan, model=tiny_model_dir, device="cpu", seed=3, eta=1.0)
    b = detect(scan, model=tiny_model_dir, device="cpu", seed=3, eta=1.0, batch_size=2)
    np.testing.assert_allclose(a.anomaly, b.anomaly, atol=1e-5)
    assert nib.load(phantom_scan_files["scan"]).shape == a.anomaly.shape


def test_erode_brain_silences_the_edge(tiny_model_dir, phantom_scan_files):
    scan = read_scan(phantom_scan_files["scan"])
    mask = read_mask(phantom_scan_files["mask"], like=scan)
    plain = detect(scan, model=tiny_model_dir, device="cpu", brain_mask=mask)
    eroded = detect(scan, model=tiny_model_dir, device="cpu", brain_mask=mask, erode_brain=2)
    edge = mask & (eroded.brain_mask == 0)
    assert edge.any()
    assert (eroded.anomaly[edge] == 0).all() and plain.anomaly[edge].max() > 0
    inner = eroded.brain_mask.astype(bool)
    np.testing.assert_allclose(eroded.anomaly[inner], plain.anomaly[inner])
    assert eroded.provenance["parameters"]["erode_brain"] == 2
    np.testing.assert_allclose(eroded.healthy, plain.healthy)  # restoration is not cropped


def test_compare_scores_the_brain_detect_scores(tiny_model_dir):
    """On a file stored (Z, Y, X), compare estimates the brain on the RAS+ volume like detect,
    not on the file's axis order (where its hole filling would run on sagittal slices)."""
    from napari_uad.compare import compare_methods
    from napari_uad.data.phantoms import make_brain
    from napari_uad.io import Scan
    from napari_uad.preprocess import estimate_brain_mask

    image, _ = make_brain((40, 44, 6), seed=8)
    image[18:22, 20:24, :] = 0  # a channel through every slice: closed only in axial slices
    stored = np.transpose(image * 800.0, (2, 1, 0)).astype(np.float32)
    affine = np.array([[0, 0, 1.2, 0], [0, 1.2, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1.0]])
    scan = Scan(stored, affine)
    assert not np.array_equal(
        estimate_brain_mask(stored), np.transpose(estimate_brain_mask(image), (2, 1, 0))
    ), "the phantom must tell the two grids apart"
    common = dict(method="anoddpm", model=str(tiny_model_dir), device="cpu", steps=1)
    alone = detect(scan, **common)
    (run,) = compare_methods(
        scan, ["anoddpm"], models={"anoddpm": str(tiny_model_dir)}, device="cpu", steps=1
    ).runs
    np.testing.assert_array_equal(run.detection.brain_mask, alone.brain_mask)
