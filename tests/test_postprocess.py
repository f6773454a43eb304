import csv
import os

import numpy as np
import pytest

from napari_uad import postprocess
from napari_uad.io import atomic


def test_remove_small_components_uses_full_connectivity():
    binary = np.zeros((10, 10, 10), dtype=bool)
    binary[1:3, 1:3, 1:3] = True
    binary[3, 3, 3] = True
    binary[7, 7, 7] = True
    kept = postprocess.remove_small_components(binary, min_size=5)
    assert kept[1:3, 1:3, 1:3].all()
    assert kept[3, 3, 3]
    assert not kept[7, 7, 7]
    assert kept.sum() == 9
    assert postprocess.remove_small_components(binary, min_size=10).sum() == 0
    assert (postprocess.remove_small_components(binary, min_size=0) == binary).all()


def test_remove_small_components_in_mm3():
    binary = np.zeros((6, 6, 6), dtype=bool)
    binary[0:2, 0:2, 0] = True
    binary[4:6, 4:6, 3:5] = True
    spacing = (0.5, 0.5, 2.0)
    kept = postprocess.remove_small_components(binary, min_size=3.0, spacing=spacing)
    assert kept.sum() == 8
    assert not kept[0, 0, 0]


def test_label_lesions_orders_by_size():
    binary = np.zeros((12, 12), dtype=bool)
    binary[0, 0] = True
    binary[5:9, 5:9] = True
    binary[0:2, 9:12] = True
    labels, n = postprocess.label_lesions(binary)
    assert n == 3
    assert labels.dtype == np.int32
    assert (labels[5:9, 5:9] == 1).all()
    assert (labels[0:2, 9:12] == 2).all()
    assert labels[0, 0] == 3


def test_lesion_table_volumes_with_anisotropic_spacing():
    mask = np.zeros((10, 12, 8), dtype=np.uint8)
    mask[1:3, 1:4, 1:5] = 1
    mask[6:9, 6:10, 2:7] = 1
    anomaly = np.zeros(mask.shape, dtype=np.float32)
    anomaly[1:3, 1:4, 1:5] = 0.5
    anomaly[6:9, 6:10, 2:7] = np.linspace(0, 1, 60).reshape(3, 4, 5)
    lesions = postprocess.lesion_table(mask, anomaly, spacing=(0.5, 1.0, 3.0))
    assert [lesion.label for lesion in lesions] == [1, 2]
    big, small = lesions
    assert big.n_voxels == 60
    assert big.volume_ml == pytest.approx(60 * 1.5 / 1000)
    assert small.n_voxels == 24
    assert small.volume_ml == pytest.approx(0.036)
    assert small.mean_score == pytest.approx(0.5)
    assert big.mean_score == pytest.approx(0.5)
    assert big.max_score == pytest.approx(1.0)
    assert big.centroid_voxel == pytest.approx((7.0, 7.5, 4.0))
    assert small.centroid_voxel == pytest.approx((1.5, 2.0, 2.5))
    assert postprocess.lesion_table(np.zeros((4, 4)), np.zeros((4, 4)), spacing=(1, 1)) == []


def test_lesion_table_checks_spacing_and_shape():
    mask = np.ones((3, 3))
    with pytest.raises(ValueError, match="spacing"):
        postprocess.lesion_table(mask, mask, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        postprocess.lesion_table(mask, mask, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        postprocess.lesion_table(mask, np.ones((3, 4)), spacing=(1.0, 1.0))


def test_healthy_threshold_is_a_percentile_inside_the_mask():
    scores = np.arange(200, dtype=np.float32).reshape(10, 20)
    mask = np.zeros((10, 20), dtype=bool)
    mask[:5] = True
    assert postprocess.healthy_threshold(scores, percentile=90, mask=mask) == pytest.approx(
        np.percentile(np.arange(100), 90)
    )
    assert postprocess.healthy_threshold(scores) == pytest.approx(
        np.percentile(np.arange(200), 99.5)
    )
    with pytest.raises(ValueError, match="percentile"):
        postprocess.healthy_threshold(scores, percentile=101)
    with pytest.raises(ValueError, match="non-empty"):
        postprocess.healthy_threshold(scores, mask=np.zeros_like(mask))


def test_binarise():
    anomaly = np.zeros((8, 8), dtype=np.float32)
    anomaly[1:4, 1:4] = 0.8
    anomaly[6, 6] = 0.9
    anomaly[0, 7] = 0.5
    brain = np.ones((8, 8), dtype=bool)
    brain[1, 1] = False
    out = postprocess.binarise(anomaly, 0.5, brain_mask=brain, min_size=2)
    assert out.dtype == np.uint8
    assert out.sum() == 8
    assert out[0, 7] == 0 and out[6, 6] == 0 and out[1, 1] == 0
    assert postprocess.binarise(anomaly, 0.5).sum() == 11


def test_median_filter_is_per_slice():
    volume = np.zeros((7, 7, 3), dtype=np.float32)
    volume[:, :, 1] = 1.0
    volume[3, 3, 0] = 5.0
    filtered = postprocess.median_filter(volume, size=3)
    assert filtered.dtype == np.float32
    assert (filtered[:, :, 1] == 1.0).all()
    assert filtered[3, 3, 0] == 0.0
    assert (postprocess.median_filter(volume, size=1) == volume).all()
    with pytest.raises(ValueError, match="2-D"):
        postprocess.median_filter(np.zeros(5))


def test_erode_mask_is_per_slice():
    mask = np.zeros((9, 9, 3), dtype=bool)
    mask[2:7, 2:7, :] = True
    eroded = postprocess.erode_mask(mask, iterations=1)
    assert eroded.sum() == 9 * 3
    assert eroded[3:6, 3:6, :].all()
    assert postprocess.erode_mask(mask, iterations=0).sum() == mask.sum()
    assert postprocess.erode_mask(mask[:, :, 0], iterations=2).sum() == 1


def _lesions():
    mask = np.zeros((6, 6, 4), dtype=bool)
    mask[0:2, 0:2, 0:2] = True
    mask[4, 4, 3] = True
    return postprocess.lesion_table(mask, mask * 0.7, spacing=(1.0, 1.0, 2.0))


def test_lesions_to_csv(tmp_path):
    path = postprocess.lesions_to_csv(_lesions(), tmp_path / "lesions.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    assert list(rows[0]) == [
        "label",
        "n_voxels",
        "volume_ml",
        "volume_mm3",
        "mean_score",
        "max_score",
        "centroid_i",
        "centroid_j",
        "centroid_k",
    ]
    assert rows[0]["label"] == "1" and rows[0]["n_voxels"] == "8"
    assert float(rows[0]["volume_mm3"]) == pytest.approx(16.0)
    assert float(rows[0]["volume_ml"]) == pytest.approx(0.016)
    assert float(rows[1]["centroid_k"]) == pytest.approx(3.0)
    assert os.listdir(tmp_path) == ["lesions.csv"]


def test_lesions_to_csv_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "lesions.csv"
    target.write_text("previous\n")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        postprocess.lesions_to_csv(_lesions(), target)
    assert target.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["lesions.csv"]
    monkeypatch.undo()
    postprocess.lesions_to_csv([], target)
    assert target.read_text().startswith("label,n_voxels")
    with pytest.raises(ValueError, match="does not exist"):
        postprocess.lesions_to_csv([], tmp_path / "missing" / "x.csv")
