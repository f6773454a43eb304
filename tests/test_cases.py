"""Case loading, case lists, review state and result storage (no GUI)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cases import (
    ReviewState,
    StoredLayer,
    case_folder,
    check_slice_range,
    find_cases,
    load_case,
    load_case_layers,
    open_cases,
    read_case_list,
    save_case_layers,
    skull_stripped_warning,
    to_jsonable,
)
from napari_uad.display import to_display
from napari_uad.io import InputError


def test_load_case_given_mask(phantom_scan_files):
    case = load_case(
        phantom_scan_files["scan"],
        brain_mask=phantom_scan_files["mask"],
        truth=phantom_scan_files["truth"],
    )
    info = case.info
    assert info.shape == (48, 56, 6)
    assert info.voxel_size == pytest.approx((1.2, 1.2, 3.0))
    assert info.orientation == "LAS"
    assert info.dtype == "float32"
    assert info.brain_mask == "given" and info.truth
    expected = np.asarray(nib.load(phantom_scan_files["mask"]).dataobj) > 0
    np.testing.assert_array_equal(case.brain_mask, expected)
    assert case.truth.dtype == np.uint8 and case.truth.max() == 1
    assert info.brain_volume_ml == pytest.approx(expected.sum() * 1.2 * 1.2 * 3.0 / 1000)
    assert case.brain_span == (0, 6)
    assert dict(info.rows())["Voxel size"] == "1.2 × 1.2 × 3 mm"
    assert not case.notes


def test_load_case_estimates_mask(phantom_scan_files):
    case = load_case(phantom_scan_files["scan"])
    given = np.asarray(nib.load(phantom_scan_files["mask"]).dataobj) > 0
    assert case.info.brain_mask == "estimated"
    dice = 2 * (case.brain_mask & given).sum() / (case.brain_mask.sum() + given.sum())
    assert dice > 0.95
    assert not case.notes  # a skull-stripped phantom: no warning


def test_skull_warning_on_noisy_background():
    rng = np.random.default_rng(0)
    head = rng.rayleigh(20.0, size=(40, 40, 8)).astype(np.float32)
    head[8:32, 8:32] += 400
    message = skull_stripped_warning(head)
    assert "still has skull" in message and "give a brain mask" in message
    head[head < 60] = 0
    assert skull_stripped_warning(head) is None


def test_load_case_bad_mask_shape(phantom_scan_files, tmp_path):
    bad = tmp_path / "bad_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), bad)
    with pytest.raises(InputError, match="has shape"):
        load_case(phantom_scan_files["scan"], brain_mask=bad)


def test_check_slice_range():
    assert check_slice_range(2, 5, 6) == (2, 5)
    with pytest.raises(InputError, match="not within"):
        check_slice_range(4, 4, 6)
    with pytest.raises(InputError, match="not within"):
        check_slice_range(0, 7, 6)


def make_cohort(folder, files, n=3):
    folder.mkdir()
    for k in range(n):
        shutil.copy(files["scan"], folder / f"sub-{k}.nii.gz")
        shutil.copy(files["mask"], folder / f"sub-{k}_brain_mask.nii.gz")
    shutil.copy(files["truth"], folder / "sub-1_truth.nii.gz")
    shutil.copy(files["truth"], folder / "sub-2_mask.nii.gz")  # a restore output: skipped
    (folder / "notes.txt").write_text("x")
    return folder


def test_find_cases_pairs_masks(phantom_scan_files, tmp_path):
    folder = make_cohort(tmp_path / "cohort", phantom_scan_files)
    (folder / "napari-uad-results").mkdir()
    shutil.copy(phantom_scan_files["scan"], folder / "napari-uad-results" / "x.nii.gz")
    cases = find_cases(folder)
    assert [c.id for c in cases] == ["sub-0", "sub-1", "sub-2"]
    assert cases[0].brain_mask.name == "sub-0_brain_mask.nii.gz"
    assert cases[0].truth is None and cases[1].truth.name == "sub-1_truth.nii.gz"
    with pytest.raises(InputError, match="No scans"):
        find_cases(_empty(tmp_path))


def _empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_read_case_list(phantom_scan_files, tmp_path):
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(
        "ID,Scan,Brain mask,Truth\n"
        f"a,{phantom_scan_files['scan']},{phantom_scan_files['mask']},\n"
        f"b,{phantom_scan_files['scan']},,{phantom_scan_files['truth']}\n"
    )
    cases = open_cases(csv_file)
    assert [c.id for c in cases] == ["a", "b"]
    assert cases[0].truth is None and cases[1].brain_mask is None
    csv_file.write_text("scan\nmissing.nii.gz\n")
    with pytest.raises(InputError, match="line 2: scan missing.nii.gz does not exist"):
        read_case_list(csv_file)
    csv_file.write_text("file_name\nx\n")
    with pytest.raises(InputError, match="no 'scan' column"):
        read_case_list(csv_file)


def test_review_state_round_trip(tmp_path):
    state = ReviewState(tmp_path / "results")
    assert state.status("sub-0") == "not run"
    state.set_status("sub-0", "reviewed", scan="/data/sub-0.nii.gz")
    state.set_status("sub-1", "done")
    state.set_current("sub-1")
    again = ReviewState(tmp_path / "results")
    assert again.status("sub-0") == "reviewed" and again.status("sub-1") == "done"
    assert again.current == "sub-1"
    assert again.counts(["sub-0", "sub-1", "sub-2"]) == {"not run": 1, "done": 1, "reviewed": 1}
    record = json.loads((tmp_path / "results" / "napari-uad-review.json").read_text())
    assert record["cases"]["sub-0"]["scan"] == "/data/sub-0.nii.gz"
    assert not list((tmp_path / "results").glob(".*"))  # no temporary file left behind
    with pytest.raises(InputError, match="Unknown status"):
        again.set_status("sub-0", "finished")


def test_case_layers_round_trip(phantom_scan_files, tmp_path):
    case = load_case(phantom_scan_files["scan"])
    display, _ = to_display(case.scan.data, case.scan.affine)
    labels = (display > display.mean()).astype(np.uint8)
    layers = [
        StoredLayer(
            "anomaly map",
            "image",
            display * 0.5,
            {"colormap": "hot", "contrast_limits": [0.0, 1.0], "opacity": 0.8},
            {"role": "anomaly", "provenance": {"threshold": np.float32(0.25)}, "x": object()},
        ),
        StoredLayer("lesion mask", "labels", labels, {"opacity": 0.7}, {"role": "lesion mask"}),
    ]
    folder = case_folder(tmp_path, "sub/0 x")
    assert folder.name == "sub_0_x"
    save_case_layers(folder, layers, like=case.scan)
    back = load_case_layers(folder, like=case.scan)
    assert [layer.name for layer in back] == ["anomaly map", "lesion mask"]
    np.testing.assert_allclose(back[0].data, display * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(back[1].data, labels)
    assert back[0].metadata == {"role": "anomaly", "provenance": {"threshold": 0.25}}
    assert back[0].properties["colormap"] == "hot"
    # The stored NIfTI is on the scan's own grid and affine (LAS here).
    saved = nib.load(folder / "anomaly_map.nii.gz")
    np.testing.assert_allclose(saved.affine, nib.load(phantom_scan_files["scan"]).affine)
    # Saving fewer layers removes the old files.
    save_case_layers(folder, layers[1:], like=case.scan)
    assert [p.name for p in folder.glob("*.nii.gz")] == ["lesion_mask.nii.gz"]
    assert load_case_layers(tmp_path / "nothing", like=case.scan) == []


def test_to_jsonable():
    assert to_jsonable({"a": np.arange(3), "b": float("nan"), "c": (1, "x")}) == {
        "a": [0, 1, 2],
        "b": None,
        "c": [1, "x"],
    }
