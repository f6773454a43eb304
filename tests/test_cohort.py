"""Cohort runs: BIDS and list inputs, BIDS derivatives out, resumable runs, headers, lesion TSV."""

from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_uad.cli import main
from napari_uad.cohort import collect_scans, find_bids_scans, read_scan_list
from napari_uad.cohort.inputs import parse_entities
from napari_uad.cohort.summary import GroupSummary, RunLog
from napari_uad.cohort.task import gpu_index
from napari_uad.data.phantoms import add_lesions, make_brain
from napari_uad.io import InputError
from napari_uad.postprocess import Lesion, lesion_summary, min_voxels

from .conftest import LAS_AFFINE


def write_phantom(path, seed, *, affine=LAS_AFFINE, lesion=True):
    """A small lesioned phantom scan (and its truth) on an LAS 1.2 x 1.2 x 3 mm grid."""
    image, mask = make_brain((40, 44, 5), seed=seed)
    truth = np.zeros_like(mask)
    if lesion:
        image, truth = add_lesions(image, mask, kind="tumour", seed=seed + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.flip(image * 800.0, axis=0).astype(np.float32), affine)
    img.header["descrip"] = b"spm - algebra"
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return np.flip(mask, axis=0)


def restore(inputs, model_dir, out, *extra):
    return main(
        [
            "restore",
            *map(str, inputs),
            "--method",
            "anoddpm",
            "--model",
            str(model_dir),
            "--device",
            "cpu",
            "--steps",
            "2",
            "--threshold",
            "0.05",
            "--out",
            str(out),
            *extra,
        ]
    )


def make_bids(root):
    """sub-01 (one session-less T1w), sub-02 (two sessions) and a derivative brain mask."""
    (root).mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0"})
    )
    mask = write_phantom(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 10)
    write_phantom(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T1w.nii.gz", 20)
    write_phantom(root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_run-1_T1w.nii.gz", 30)
    write_phantom(root / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz", 40)
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{}")
    brain = root / "derivatives" / "masks" / "sub-01" / "anat"
    brain.mkdir(parents=True)
    mask_image = nib.Nifti1Image(mask.astype(np.uint8), LAS_AFFINE)
    nib.save(mask_image, brain / "sub-01_desc-brain_mask.nii.gz")
    write_phantom(brain / "sub-01_desc-x_T1w.nii.gz", 5)  # a derivative T1w is not a raw scan
    return root


# ------------------------------------------------------------------ discovery
def test_bids_discovery_finds_t1w_scans_and_derivative_brain_masks(tmp_path):
    root = make_bids(tmp_path / "bids")
    scans = find_bids_scans(root)
    assert [s.key for s in scans] == ["sub-01_T1w", "sub-02_ses-1_T1w", "sub-02_ses-2_run-1_T1w"]
    assert scans[0].brain_mask.name == "sub-01_desc-brain_mask.nii.gz"
    assert scans[1].brain_mask is None
    assert scans[2].entities == {"sub": "02", "ses": "2", "run": "1"}
    assert str(scans[2].subfolder) == "sub-02/ses-2/anat"
    assert scans[0].source == "sub-01/anat/sub-01_T1w.nii.gz"
    assert [s.key for s in find_bids_scans(root, ["sub-02"])] == [
        "sub-02_ses-1_T1w",
        "sub-02_ses-2_run-1_T1w",
    ]
    assert [s.key for s in find_bids_scans(root, ["01"])] == ["sub-01_T1w"]
    with pytest.raises(InputError, match="sub-07"):
        find_bids_scans(root, ["07"])
    found, bids_root = collect_scans([root])
    assert bids_root == root and len(found) == 3
    with pytest.raises(InputError, match="derivatives"):
        collect_scans([root], brain_masks=["mask.nii.gz"])
    with pytest.raises(InputError, match="BIDS"):
        collect_scans([root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"], participants=["01"])


def test_parse_entities():
    assert parse_entities("sub-01_ses-2_acq-mp2rage_T1w") == (
        {"sub": "01", "ses": "2", "acq": "mp2rage"},
        "T1w",
    )
    assert parse_entities("scan") is None
    assert parse_entities("ses-1_T1w") is None  # no subject


def test_scan_list_reads_relative_paths_masks_and_ids(tmp_path):
    write_phantom(tmp_path / "data" / "a.nii.gz", 1)
    listing = tmp_path / "data" / "cohort.csv"
    listing.write_text("scan,brain_mask,id\na.nii.gz,,first\n/abs/b.nii.gz,m.nii.gz,\n")
    scans = read_scan_list(listing)
    assert scans[0].path == tmp_path / "data" / "a.nii.gz" and scans[0].key == "first"
    assert scans[0].brain_mask is None
    assert str(scans[1].path) == "/abs/b.nii.gz" and scans[1].key == "b"
    assert scans[1].brain_mask == tmp_path / "data" / "m.nii.gz"
    bad = tmp_path / "bad.tsv"
    bad.write_text("file\tx\na\tb\n")
    with pytest.raises(InputError, match="'scan' column"):
        read_scan_list(bad)


# ------------------------------------------------------------------ BIDS in, BIDS out
def test_bids_dataset_in_bids_derivatives_out(tiny_model_dir, tmp_path, capsys):
    root = make_bids(tmp_path / "bids")
    out = tmp_path / "derivatives" / "napari-uad"
    # The raw dataset itself is never written into
    assert restore([root], tiny_model_dir, root) == 2
    assert "inside the input dataset" in capsys.readouterr().err
    assert restore([root], tiny_model_dir, out, "--participant-label", "01", "02") == 0
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "napari-uad"
    assert description["DatasetLinks"]["raw"] == root.resolve().as_uri()
    anat = out / "sub-02" / "ses-2" / "anat"
    names = sorted(p.name for p in anat.iterdir())
    prefix = "sub-02_ses-2_run-1"
    assert names == sorted(
        [
            f"{prefix}_desc-healthy_T1w.nii.gz",
            f"{prefix}_desc-healthy_T1w.json",
            f"{prefix}_desc-anomaly_T1w.nii.gz",
            f"{prefix}_desc-anomaly_T1w.json",
            f"{prefix}_label-lesion_mask.nii.gz",
            f"{prefix}_label-lesion_mask.json",
            f"{prefix}_label-brain_mask.nii.gz",
            f"{prefix}_label-brain_mask.json",
            f"{prefix}_label-lesion_stats.tsv",
        ]
    )
    provenance = json.loads((anat / f"{prefix}_desc-anomaly_T1w.json").read_text())
    assert provenance["method"] == "anoddpm"
    assert provenance["Sources"] == [f"bids:raw:sub-02/ses-2/anat/{prefix}_T1w.nii.gz"]
    lesion_sidecar = json.loads((anat / f"{prefix}_label-lesion_mask.json").read_text())
    assert lesion_sidecar["Type"] == "Lesion" and lesion_sidecar["Threshold"] == 0.05
    anomaly_uri = f"bids::sub-02/ses-2/anat/{prefix}_desc-anomaly_T1w.nii.gz"
    assert lesion_sidecar["Sources"][0] == anomaly_uri
    # sub-01's brain mask came from the derivative
    sub01 = json.loads((out / "sub-01" / "anat" / "sub-01_desc-anomaly_T1w.json").read_text())
    assert sub01["parameters"]["brain_mask"] == "given"
    rows = _summary(out)
    assert [r["scan"] for r in rows] == ["sub-01_T1w", "sub-02_ses-1_T1w", "sub-02_ses-2_run-1_T1w"]
    assert {r["status"] for r in rows} == {"done"}
    # a second BIDS run on the same derivative folder reads our own outputs as outputs, not masks
    assert find_bids_scans(root)[1].brain_mask is None


# ------------------------------------------------------------------ resuming
def test_skip_existing_keeps_finished_scans_and_redoes_a_crashed_runs(tiny_model_dir, tmp_path):
    scans = [write_phantom(tmp_path / "in" / f"s{i}.nii.gz", 50 + i) for i in range(3)]
    assert len(scans) == 3
    inputs = sorted((tmp_path / "in").glob("*.nii.gz"))
    out = tmp_path / "out"
    assert restore(inputs, tiny_model_dir, out) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("s0*")}
    expected = np.asarray(nib.load(out / "s1_anomaly.nii.gz").dataobj)
    # A crash: s1 lost its JSON mid-commit; s2's run was killed (stale lock, staged file)
    (out / "s1.json").unlink()
    (out / "s2.json").unlink()
    (out / "s2_healthy.nii.gz").unlink()
    (out / ".s2.napari-uad.lock").write_text(json.dumps({"pid": 999999, "host": "x"}))
    (out / ".s2.napari-uad-999999.anomaly.nii.gz").write_bytes(b"partial")
    # Without --skip-existing or --overwrite nothing is replaced
    assert restore(inputs, tiny_model_dir, out) == 2
    assert restore(inputs, tiny_model_dir, out, "--skip-existing") == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("s0*")} == before
    for stem in ("s1", "s2"):
        assert json.loads((out / f"{stem}.json").read_text())["method"] == "anoddpm"
        assert (out / f"{stem}_healthy.nii.gz").exists()
    np.testing.assert_allclose(np.asarray(nib.load(out / "s1_anomaly.nii.gz").dataobj), expected)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".s")]
    rows = {r["scan"]: r for r in _summary(out)}
    assert [rows[k]["status"] for k in ("s0", "s1", "s2")] == ["skipped", "done", "done"]
    assert rows["s0"]["lesions"] != "" and float(rows["s0"]["brain_flagged_percent"]) >= 0
    log = (out / "napari-uad_log.tsv").read_text()
    assert "\tskipped\t" in log and "\tdone\t" in log
    # Another method's outputs are not taken as finished
    assert (
        main(
            [
                "restore",
                *map(str, inputs),
                "--method",
                "thor",
                "--model",
                str(tiny_model_dir),
                "--skip-existing",
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_one_failing_scan_does_not_end_the_cohort(tiny_model_dir, tmp_path, capsys):
    write_phantom(tmp_path / "good.nii.gz", 3)
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    assert restore([tmp_path / "bad.nii.gz", tmp_path / "good.nii.gz"], tiny_model_dir, out) == 2
    err = capsys.readouterr().err
    assert "napari-uad: error: bad:" in err and "1 of 2 scan(s) failed" in err
    rows = {r["scan"]: r for r in _summary(out)}
    assert rows["bad"]["status"] == "error" and rows["bad"]["error"]
    assert rows["good"]["status"] == "done"
    assert not list(out.glob("bad_*"))


# ------------------------------------------------------------------ outputs other tools read
def test_headers_lesion_tsv_world_coordinates_and_min_size_in_mm3(tiny_model_dir, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    write_phantom(scan, 7)
    out = tmp_path / "out"
    assert restore([scan], tiny_model_dir, out, "--min-size", "40") == 0
    mask_img = nib.load(out / "scan_mask.nii.gz")
    anomaly_img = nib.load(out / "scan_anomaly.nii.gz")
    for img in (mask_img, anomaly_img, nib.load(out / "scan_brain_mask.nii.gz")):
        descrip = img.header["descrip"].tobytes().decode()
        assert descrip.startswith("napari-uad") and "anoddpm" in descrip
    assert int(mask_img.header["intent_code"]) == 1002  # NIFTI_INTENT_LABEL
    assert int(anomaly_img.header["intent_code"]) == 0
    anomaly = np.asarray(anomaly_img.dataobj)
    assert float(anomaly_img.header["cal_max"]) == pytest.approx(float(anomaly.max()), rel=1e-5)
    # --min-size is in mm³: 40 mm³ on 1.2 x 1.2 x 3 mm voxels is 10 voxels
    record = json.loads((out / "scan.json").read_text())
    assert record["parameters"]["min_size"] == 10
    assert record["parameters"]["min_volume_mm3"] == 40
    with open(out / "scan_lesions.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert rows, "the phantom's tumour is found at threshold 0.05"
    labels, n = ndimage.label(np.asarray(mask_img.dataobj) > 0, np.ones((3, 3, 3)))
    assert len(rows) == n == record["lesions"]["count"]
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= 10
    for row in rows:
        assert int(row["n_voxels"]) >= 10
        assert float(row["volume_mm3"]) == pytest.approx(int(row["n_voxels"]) * 4.32, rel=1e-4)
        assert row["method"] == "anoddpm" and float(row["threshold"]) == 0.05
        voxel = [float(row[f"centroid_{a}"]) for a in "ijk"]
        world = LAS_AFFINE @ [*voxel, 1.0]
        assert [float(row[f"centroid_{a}_mm"]) for a in "xyz"] == pytest.approx(world[:3], abs=0.01)
    # the largest lesion's centroid is its voxels' mean
    biggest = int(np.argmax(sizes)) + 1
    centroid = np.argwhere(labels == biggest).mean(axis=0)
    assert [float(rows[0][f"centroid_{a}"]) for a in "ijk"] == pytest.approx(centroid, abs=0.01)


# ------------------------------------------------------------------ small parts
def test_min_voxels_and_lesion_summary():
    assert min_voxels(0, (1, 1, 1)) == 0
    assert min_voxels(27, (1, 1, 1)) == 27
    assert min_voxels(40, (1.2, 1.2, 3.0)) == 10
    assert min_voxels(0.1, (1, 1, 1)) == 1
    with pytest.raises(ValueError, match="mm³"):
        min_voxels(-1, (1, 1, 1))
    lesions = [
        Lesion(1, 30, 0.03, 1.0, 2.0, (1.0, 1.0, 1.0)),
        Lesion(2, 10, 0.01, 1.0, 2.0, (2.0, 2.0, 2.0)),
    ]
    summary = lesion_summary(lesions, brain_voxels=400)
    assert summary == {
        "count": 2,
        "total_volume_ml": 0.04,
        "largest_volume_ml": 0.03,
        "brain_flagged_percent": 10.0,
    }
    assert lesion_summary([])["largest_volume_ml"] == 0


def test_group_summary_merges_rows_of_several_runs(tmp_path):
    log = RunLog(tmp_path / "log.tsv")
    summary = GroupSummary(tmp_path / "summary.tsv", lock=log.path)
    summary.update({"scan": "b", "status": "done", "lesions": 2, "total_ml": 1.5})
    GroupSummary(tmp_path / "summary.tsv", lock=log.path).update({"scan": "a", "status": "error"})
    summary.update({"scan": "b", "status": "skipped", "error": "line one\nline two"})
    rows = _summary(tmp_path, "summary.tsv")
    assert [(r["scan"], r["status"]) for r in rows] == [("a", "error"), ("b", "skipped")]
    assert rows[1]["error"] == "line one line two"
    log.write("a", "start", "x\ty")
    log.write("a", "done")
    lines = (tmp_path / "log.tsv").read_text().splitlines()
    assert lines[0] == "time\tscan\tevent\tdetail" and len(lines) == 3
    assert lines[1].split("\t")[1:] == ["a", "start", "x y"]


def test_gpu_index_spreads_local_workers():
    assert [gpu_index(n, 2) for n in (0, 1, 2, 3)] == [0, 1, 0, 1]
    assert gpu_index("SLURMCluster-5", 4) == 1
    assert 0 <= gpu_index("tcp://host:1234", 3) < 3


def _summary(folder, name="napari-uad_summary.tsv"):
    with open(os.path.join(folder, name), newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_slurm_example_builds_its_job_script(capsys):
    """The documented SLURM example (scripts/slurm_cluster.py) makes a valid dask-jobqueue job."""
    import importlib.util
    import sys
    from pathlib import Path

    pytest.importorskip("dask_jobqueue")
    path = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.py"
    spec = importlib.util.spec_from_file_location("slurm_cluster", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--dry-run", "--partition", "gpu", "--gpus", "1", "--cores", "6"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:1" in script
    assert "#SBATCH --cpus-per-task=6" in script and "export NAPARI_UAD_THREADS=6" in script
    assert f"{sys.executable} -m distributed.cli.dask_worker" in script
    assert "--nthreads 1" in script


def test_dask_malloc_trim_is_undone_only_where_dask_set_it(monkeypatch):
    import platform

    from napari_uad.cohort.task import relax_malloc_trim

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert relax_malloc_trim() is False
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert relax_malloc_trim() is True
