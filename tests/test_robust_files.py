"""Safe files: atomic outputs, inputs never overwritten, disk-full and permission errors.

Issue 8, part 2. Disk-full and permission errors are simulated with monkeypatch (the tests may
run as root, where a read-only folder does not stop writes); each test checks that the user
gets one line, the input is untouched and no partial or temporary file is left behind.
"""

from __future__ import annotations

import errno
import os
import tempfile

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cli import main
from napari_uad.data.phantoms import make_brain
from napari_uad.io import InputError, read_scan, write_nifti
from napari_uad.io import atomic as atomic_module

OUTPUT_NAMES = [
    "napari-uad_log.tsv",
    "napari-uad_summary.tsv",
    "scan.json",
    "scan_anomaly.nii.gz",
    "scan_brain_mask.nii.gz",
    "scan_healthy.nii.gz",
    "scan_lesions.tsv",
    "scan_mask.nii.gz",
]
RUN_RECORDS = ("napari-uad_log.tsv", "napari-uad_summary.tsv")


@pytest.fixture
def scan_file(tmp_path):
    image, _ = make_brain((40, 44, 4), seed=5)
    path = tmp_path / "in" / "scan.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(image * 700, np.diag([1.2, 1.2, 3.0, 1.0])), path)
    return path


def _restore(inputs, model_dir, out, *extra):
    return main(
        ["restore", *map(str, inputs), "--method", "anoddpm", "--model", str(model_dir)]
        + ["--device", "cpu", "--steps", "2", "--out", str(out), *extra]
    )


def _error_line(capsys):
    """The single error line (progress bars and warnings aside); no traceback."""
    text = capsys.readouterr().err
    assert "Traceback" not in text
    err = [line for line in text.splitlines() if line.startswith("napari-uad: error")]
    assert len(err) == 1 and err[0].startswith("napari-uad: error: "), text
    return err[0]


def _listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_disk_full_during_the_third_output_leaves_no_outputs(
    scan_file, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """ENOSPC while writing the lesion mask: one line, and the healthy and anomaly files
    already written for this scan are removed again (all four outputs or none)."""
    real_save = nib.save
    calls = []

    def save(img, filename):
        calls.append(filename)
        if len(calls) == 3:
            with open(filename, "wb") as handle:
                handle.write(b"\x00" * 100)  # half-written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(img, filename)

    monkeypatch.setattr(nib, "save", save)
    out = tmp_path / "out"
    before = scan_file.read_bytes()
    assert _restore([scan_file], tiny_model_dir, out) == 2
    assert "No space left on device" in _error_line(capsys)
    assert _listing(out) == []
    assert scan_file.read_bytes() == before
    assert len(calls) == 3


def test_permission_denied_on_the_output_folder(
    scan_file, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """A read-only output folder (simulated: creating the temporary file is refused)."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "out"
    assert _restore([scan_file], tiny_model_dir, out) == 2
    assert "Permission denied" in _error_line(capsys)
    assert _listing(out) == []


def test_read_only_file_system_at_rename_leaves_no_temporary_file(scan_file, tmp_path, monkeypatch):
    """The temporary file is complete but the rename fails (EROFS): it is removed."""
    scan = read_scan(scan_file)
    out = tmp_path / "out"
    out.mkdir()

    def refuse(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(atomic_module.os, "replace", refuse)
    with pytest.raises(InputError, match="Read-only file system") as info:
        write_nifti(out / "a.nii.gz", scan.data, like=scan)
    assert "\n" not in str(info.value)
    assert _listing(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_real_read_only_folder(scan_file, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert _restore([scan_file], tiny_model_dir, out) == 2
        assert "Permission denied" in _error_line(capsys)
        assert _listing(out) == []
    finally:
        out.chmod(0o755)


def test_an_output_that_is_another_input_is_refused_even_with_overwrite(
    scan_file, tiny_model_dir, capsys
):
    """Two inputs in one folder, --out that folder: ``scan``'s output ``scan_healthy.nii.gz``
    would replace the second input. Refused before anything runs."""
    second = scan_file.with_name("scan_healthy.nii.gz")
    second.write_bytes(scan_file.read_bytes())
    before = {p.name: p.read_bytes() for p in scan_file.parent.iterdir()}
    code = _restore([scan_file, second], tiny_model_dir, scan_file.parent, "--overwrite")
    assert code == 2
    assert "refusing to overwrite the input file" in _error_line(capsys)
    assert {p.name: p.read_bytes() for p in scan_file.parent.iterdir()} == before


def test_brain_mask_is_never_an_output(scan_file, tiny_model_dir, capsys):
    mask = scan_file.with_name("scan_mask.nii.gz")
    image = read_scan(scan_file).data
    nib.save(nib.Nifti1Image((image > 0).astype(np.uint8), np.eye(4)), mask)
    before = mask.read_bytes()
    code = _restore(
        [scan_file, "--brain-mask", mask], tiny_model_dir, scan_file.parent, "--overwrite"
    )
    assert code == 2
    assert "scan_mask.nii.gz" in _error_line(capsys)
    assert mask.read_bytes() == before


def test_existing_outputs_of_a_later_input_stop_the_run_before_it_starts(
    scan_file, tiny_model_dir, tmp_path, capsys
):
    other = tmp_path / "in" / "other.nii.gz"
    other.write_bytes(scan_file.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.json").write_text("{}")
    assert _restore([scan_file, other], tiny_model_dir, out) == 2
    assert "--overwrite" in _error_line(capsys)
    assert _listing(out) == ["other.json"]  # scan's outputs were not written either
    assert (out / "other.json").read_text() == "{}"


def test_evaluate_refuses_to_write_json_over_an_input(scan_file, capsys):
    before = scan_file.read_bytes()
    code = main(["evaluate", str(scan_file), "--truth", str(scan_file), "--json", str(scan_file)])
    assert code == 2
    assert "refusing to overwrite" in _error_line(capsys)
    assert scan_file.read_bytes() == before


def test_interrupt_while_writing_leaves_no_outputs(
    scan_file, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """Ctrl-C between two outputs: exit 130, and no incomplete set of outputs."""
    real_save = nib.save
    calls = []

    def save(img, filename):
        calls.append(filename)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(img, filename)

    monkeypatch.setattr(nib, "save", save)
    out = tmp_path / "out"
    assert _restore([scan_file], tiny_model_dir, out) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _listing(out) == []


def test_successful_run_leaves_exactly_the_outputs(scan_file, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert _restore([scan_file], tiny_model_dir, out) == 0
    assert _listing(out) == OUTPUT_NAMES  # no temporary files


def test_napari_writer_errors_are_clear_and_leave_nothing(scan_file, tmp_path, monkeypatch):
    """Saving a layer: onto its own source file is refused; a failing disk leaves no file."""
    from napari_uad._napari import read_nifti_layers, write_image

    ((data, meta, _),) = read_nifti_layers(str(scan_file))
    before = scan_file.read_bytes()
    with pytest.raises(InputError, match="overwrite the input"):
        write_image(str(scan_file), data, meta)
    assert scan_file.read_bytes() == before
    with pytest.raises(ValueError, match="no NIfTI geometry"):
        write_image(str(tmp_path / "x.nii.gz"), data, {"metadata": {}})

    def full(img, filename):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nib, "save", full)
    out = tmp_path / "saved"
    with pytest.raises(InputError, match="No space left"):
        write_image(str(out / "layer.nii.gz"), data, meta)
    assert _listing(out) == []


def test_figure_and_csv_exports_are_atomic(tmp_path, monkeypatch):
    """A failing figure or CSV export leaves neither a partial file nor a temporary one."""
    from matplotlib.figure import Figure

    from napari_uad.io import Scan
    from napari_uad.pipeline import Detection
    from napari_uad.postprocess import lesion_table, lesions_to_csv

    image, mask = make_brain((32, 32, 3), seed=2)
    scan = Scan(image, np.eye(4))
    lesion = np.zeros(image.shape, np.uint8)
    lesion[10:14, 10:14, 1] = 1
    detection = Detection(
        healthy=image,
        anomaly=lesion * 0.5,
        lesion_mask=lesion,
        brain_mask=mask,
        threshold=0.2,
        provenance={"method": "anoddpm", "model": "tiny"},
    )
    from napari_uad.figures import overview_figure

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(b"%PDF-partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    for name in ("figure.png", "figure.pdf"):
        with pytest.raises(OSError, match="No space"):
            overview_figure(scan, detection, tmp_path / name)
    monkeypatch.undo()
    lesions = lesion_table(lesion, lesion * 0.5, spacing=(1.0, 1.0, 1.0))
    import csv

    class FullDisk:
        def __init__(self, handle, **options):
            self.handle = handle

        def writerow(self, row):
            self.handle.write("label,n_vox")  # part of the header, then the disk is full

        def writerows(self, rows):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(csv, "writer", FullDisk)
    with pytest.raises(OSError, match="No space"):
        lesions_to_csv(lesions, tmp_path / "lesions.csv")
    monkeypatch.undo()
    assert _listing(tmp_path) == []


def test_failed_overwrite_leaves_no_mix_of_old_and_new_outputs(
    scan_file, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    assert _restore([scan_file], tiny_model_dir, out) == 0

    def outputs():
        return {p.name: p.read_bytes() for p in out.iterdir() if p.name not in RUN_RECORDS}

    before = outputs()
    real_save = nib.save
    calls = []

    def save(img, filename):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(img, filename)

    monkeypatch.setattr(nib, "save", save)
    assert _restore([scan_file], tiny_model_dir, out, "--overwrite") == 2
    assert "No space left" in _error_line(capsys)
    # The new outputs are written beside the old ones and renamed into place only once all are
    # written: a failure leaves the old set whole (no new healthy image beside an old anomaly
    # map), and no temporary or lock file. The summary records the failure.
    assert outputs() == before
    summary = (out / "napari-uad_summary.tsv").read_text()
    assert "\terror\t" in summary and "No space left" in summary


# --------------------------------------------------------------------------------------------
# Issue 22: arguments refused before any work; degenerate runs; --out, evaluate edge cases.


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a method starts restoring (the check must come before the work)."""
    from napari_uad.methods.base import Method

    def refuse(*args, **kwargs):
        raise AssertionError("the restoration ran before the arguments were checked")

    monkeypatch.setattr(Method, "iter_restore", refuse)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--smoothing", "100000"], "smoothing must be between 0 and"),
        (["--param", "noise_level=1e309"], "noise_level must be a finite number"),
        (["--param", "eta=NaN"], "eta must be a finite number"),
        (["--param", "eta=inf"], "eta must be a finite number"),
        (["--erode-brain", "1000"], "erode_brain must be between 0 and 100"),
        (["--erode-brain", "-1"], "erode_brain must be between 0 and 100"),
    ],
)
def test_impossible_parameters_are_refused_before_the_work(
    scan_file, tiny_model_dir, tmp_path, capsys, no_compute, extra, message
):
    out = tmp_path / "out"
    assert _restore([scan_file], tiny_model_dir, out, *extra) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_an_erosion_that_removes_the_whole_brain_is_an_error(
    scan_file, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    assert _restore([scan_file], tiny_model_dir, out, "--erode-brain", "40") == 2
    assert "leaves no brain to score" in _error_line(capsys)
    assert _listing(out) == []


def test_a_sagittal_slab_is_not_processed_as_one_voxel_lines(tiny_model_dir, tmp_path, capsys):
    image, _ = make_brain((40, 24, 44), seed=2)
    slab = image[18:19]  # one sagittal plane: axial "slices" would be 1 x 40 voxels
    path = tmp_path / "slab.nii.gz"
    nib.save(nib.Nifti1Image(slab * 700, np.eye(4)), path)
    assert _restore([path], tiny_model_dir, tmp_path / "out") == 2
    assert "axial slices of this scan are 1 x" in _error_line(capsys)


@pytest.mark.parametrize("command", ["restore", "compare"])
def test_out_pointing_at_a_file_is_one_line(scan_file, tiny_model_dir, tmp_path, capsys, command):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    if command == "restore":
        code = _restore([scan_file], tiny_model_dir, target)
    else:
        code = main(["compare", str(scan_file), "--methods", "anoddpm", "--out", str(target)])
    assert code == 2
    assert "is a file: give a folder" in _error_line(capsys)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    "extra, message",
    [(["--slice", "9999"], "--slice must be between 0 and 3"), (["--dpi", "100000"], "--dpi")],
)
def test_compare_figure_options_are_checked_before_the_work(
    scan_file, tiny_model_dir, tmp_path, capsys, no_compute, extra, message
):
    out = tmp_path / "out"
    code = main(
        ["compare", str(scan_file), "--methods", "anoddpm", "--model", f"anoddpm={tiny_model_dir}"]
        + ["--device", "cpu", "--out", str(out), *extra]
    )
    assert code == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def _map_and_truth(folder):
    truth = np.zeros((20, 20, 4), np.uint8)
    truth[5:9, 5:9, 1:3] = 1
    scores = np.random.default_rng(0).random(truth.shape).astype(np.float32) + truth
    paths = {}
    for name, data in (("m_anomaly", scores), ("truth", truth)):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), paths[name])
    return paths


def test_evaluate_of_an_all_nan_map_is_an_error_not_auroc_half(tmp_path, capsys):
    paths = _map_and_truth(tmp_path)
    nan_map = tmp_path / "nan_anomaly.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 4), np.nan, np.float32), np.eye(4)), nan_map)
    assert main(["evaluate", str(nan_map), "--truth", str(paths["truth"])]) == 2
    assert "is constant" in _error_line(capsys)


def test_evaluate_survives_a_nested_sidecar_and_a_json_symlink_loop(tmp_path, capsys):
    paths = _map_and_truth(tmp_path)
    (tmp_path / "m.json").write_text("[" * 100_000 + "]" * 100_000)
    args = ["evaluate", str(paths["m_anomaly"]), "--truth", str(paths["truth"])]
    assert main(args) == 0
    assert "holds no threshold" in capsys.readouterr().out
    loop_a, loop_b = tmp_path / "loop_a.json", tmp_path / "loop_b.json"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    assert main([*args, "--json", str(loop_a)]) == 2
    assert "symlink loop" in _error_line(capsys)


def test_a_stale_lock_is_taken_over_and_its_leftovers_swept(tmp_path):
    import json
    import subprocess
    import sys

    from napari_uad.outputs import OutputsBusy, OutputSet

    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    out = tmp_path / "out"
    out.mkdir()
    paths = {
        "healthy": out / "case_healthy.nii.gz",
        "anomaly": out / "case_anomaly.nii.gz",
        "provenance": out / "case.json",
    }
    (out / ".case.napari-uad.lock").write_text(json.dumps({"pid": pid, "host": None}))
    leftovers = [
        out / f".case.napari-uad-{pid}.anomaly.nii.gz",  # staged, not renamed
        out / f"..case.napari-uad-{pid}.healthy.nii.gz.x1y2.nii.gz",  # a write under way
        paths["healthy"],  # renamed into place, but the set has no JSON: unfinished
    ]
    for path in leftovers:
        path.write_text("partial")
    kept = [out / "other_healthy.nii.gz", out / ".case.json.swp"]  # not this tool's
    for path in kept:
        path.write_text("someone else's")
    claim = OutputSet(out, "case", paths)
    claim.claim()
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([".case.napari-uad.lock", *(p.name for p in kept)])
    assert len(claim.swept) == 3
    # While this process holds it, another claim of the same stem is refused.
    with pytest.raises(OutputsBusy, match="another napari-uad run"):
        OutputSet(out, "case", paths).claim()
    claim.release()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in kept)
