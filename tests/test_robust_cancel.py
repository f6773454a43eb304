"""Cancellation and concurrency: no threads or files left, no mixed results.

Issue 8, part 4 (the core's part: restoration, the command line and figure export; cancelling
training and closing napari during a run belong to the trainer and widget work).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cli import main
from napari_uad.data.phantoms import add_lesions, make_brain
from napari_uad.io import Scan
from napari_uad.methods.base import Cancelled
from napari_uad.pipeline import detect, iter_detect, load_method


def _scan(seed):
    image, mask = make_brain((36, 40, 6), seed=seed)
    image, _ = add_lesions(image, mask, kind="stroke", seed=seed + 10)
    return Scan(image * 600, np.diag([1.2, 1.2, 2.5, 1.0])), mask


OPTIONS = dict(device="cpu", steps=3, eta=1.0, batch_size=2)


def _threads():
    return {t.ident for t in threading.enumerate()}


def test_stop_request_ends_within_one_step_and_leaves_no_threads(tiny_model_dir):
    scan, mask = _scan(1)
    before = _threads()
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) >= 2

    updates = []
    with pytest.raises(Cancelled):
        detect(
            scan,
            model=tiny_model_dir,
            brain_mask=mask,
            should_stop=should_stop,
            progress=updates.append,
            **OPTIONS,
        )
    assert len(updates) == 2  # stopped right after the step that saw the request
    assert updates[-1].done < updates[-1].total
    assert _threads() <= before


def test_closing_the_generator_stops_and_the_next_run_is_unaffected(tiny_model_dir):
    """A napari worker quits by closing the generator; the cached model must not be left in a
    half-used state: the next run equals a fresh one."""
    scan, mask = _scan(2)
    reference = detect(scan, model=tiny_model_dir, brain_mask=mask, seed=5, **OPTIONS)
    before = _threads()
    run = iter_detect(scan, model=tiny_model_dir, brain_mask=mask, seed=5, **OPTIONS)
    first = next(run)
    next(run)
    run.close()  # GeneratorExit inside the sampling loop
    assert first.done == 1
    with pytest.raises(StopIteration):
        next(run)
    assert _threads() <= before
    again = detect(scan, model=tiny_model_dir, brain_mask=mask, seed=5, **OPTIONS)
    np.testing.assert_array_equal(again.anomaly, reference.anomaly)


def test_interleaved_runs_do_not_mix(tiny_model_dir):
    """Two detections stepped alternately (as two quick clicks on Run would) share the cached
    model; each gives exactly what it gives alone."""
    (scan_a, mask_a), (scan_b, mask_b) = _scan(3), _scan(4)
    alone_a = detect(scan_a, model=tiny_model_dir, brain_mask=mask_a, seed=1, **OPTIONS)
    alone_b = detect(scan_b, model=tiny_model_dir, brain_mask=mask_b, seed=2, **OPTIONS)
    runs = {
        "a": iter_detect(scan_a, model=tiny_model_dir, brain_mask=mask_a, seed=1, **OPTIONS),
        "b": iter_detect(scan_b, model=tiny_model_dir, brain_mask=mask_b, seed=2, **OPTIONS),
    }
    results = {}
    while runs:
        for name in list(runs):
            try:
                next(runs[name])
            except StopIteration as finished:
                results[name] = finished.value
                del runs[name]
    assert load_method("anoddpm", tiny_model_dir, device="cpu") is load_method(
        "anoddpm", tiny_model_dir, device="cpu"
    )  # the same cached model served both
    np.testing.assert_array_equal(results["a"].anomaly, alone_a.anomaly)
    np.testing.assert_array_equal(results["b"].anomaly, alone_b.anomaly)
    np.testing.assert_array_equal(results["b"].healthy, alone_b.healthy)


def test_concurrent_runs_in_threads_do_not_mix(tiny_model_dir):
    scans = [_scan(seed) for seed in (5, 6, 7)]
    alone = [
        detect(s, model=tiny_model_dir, brain_mask=m, seed=i, **OPTIONS).anomaly
        for i, (s, m) in enumerate(scans)
    ]
    before = _threads()
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [
            pool.submit(detect, s, model=tiny_model_dir, brain_mask=m, seed=i, **OPTIONS)
            for i, (s, m) in enumerate(scans)
        ]
        together = [f.result().anomaly for f in futures]
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert _threads() <= before


def test_ctrl_c_during_restoration_writes_nothing(tiny_model_dir, tmp_path, monkeypatch, capsys):
    scan, _ = _scan(8)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(scan.data, scan.affine), path)
    from napari_uad.methods import base

    real = base.Method.iter_restore

    def interrupted(self, *args, **kwargs):
        steps = real(self, *args, **kwargs)
        yield next(steps)
        raise KeyboardInterrupt

    monkeypatch.setattr(base.Method, "iter_restore", interrupted)
    out = tmp_path / "out"
    code = main(
        ["restore", str(path), "--method", "anoddpm", "--model", str(tiny_model_dir)]
        + ["--device", "cpu", "--out", str(out)]
    )
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_interrupted_figure_export_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from napari_uad.figures import overview_figure
    from napari_uad.pipeline import Detection

    scan, mask = _scan(9)
    lesion = np.zeros(scan.shape, np.uint8)
    detection = Detection(
        healthy=scan.data,
        anomaly=np.zeros(scan.shape, np.float32),
        lesion_mask=lesion,
        brain_mask=mask,
        threshold=0.1,
        provenance={"method": "anoddpm", "model": "tiny"},
    )
    real_savefig = Figure.savefig

    def slow_savefig(self, fname, **kwargs):
        real_savefig(self, fname, **kwargs)  # the file is complete ... and then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", slow_savefig)
    with pytest.raises(KeyboardInterrupt):
        overview_figure(scan, detection, tmp_path / "figure.svg")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Issue 22: real processes on one --out, killed with TERM or KILL at several points.


#: About 0.4 s per scan with the tiny model, so that signals land while scans are processed.
SLOW = ("--samples", "8", "--steps", "10")


def _restore_process(scans, model, out, *extra):
    import subprocess
    import sys

    command = [sys.executable, "-m", "napari_uad", "restore", *map(str, scans)]
    command += ["--method", "anoddpm", "--model", str(model), "--out", str(out)]
    command += ["--device", "cpu", "--threads", "1", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def three_scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    paths = []
    for seed in range(3):
        scan, _ = _scan(seed)
        path = folder / f"case{seed}.nii.gz"
        nib.save(nib.Nifti1Image(scan.data.astype(np.float32), scan.affine), path)
        paths.append(path)
    return paths


def _stems_on_disk(out, stems):
    """Per stem: 'complete' (JSON and all its maps), 'absent' (nothing) or what is there."""
    names = {p.name for p in out.iterdir()} if out.exists() else set()
    state = {}
    for stem in stems:
        mine = {n for n in names if n.startswith(f"{stem}_") or n == f"{stem}.json"}
        maps = ("_healthy.nii.gz", "_anomaly.nii.gz", "_mask.nii.gz", "_brain_mask.nii.gz")
        maps += ("_uncertainty.nii.gz", "_lesions.tsv")
        full = {f"{stem}{suffix}" for suffix in maps}  # --samples > 1: with uncertainty
        full.add(f"{stem}.json")
        state[stem] = "complete" if mine == full else ("absent" if not mine else sorted(mine))
    return state


def _stop_while_running(scans, model, out, delay, signum):
    """Start a slow restore, and send ``signum`` ``delay`` seconds after it made ``out``."""
    import time

    process = _restore_process(scans, model, out, *SLOW)
    _wait_for(lambda: process.poll() is not None or out.exists())
    time.sleep(delay)
    process.send_signal(signum)
    return process


def _wait_for(predicate, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


def test_a_second_run_on_the_same_out_stops_and_touches_nothing(
    three_scans, tiny_model_dir, tmp_path
):
    out = tmp_path / "out"
    first = _restore_process(three_scans, tiny_model_dir, out, *SLOW, "--samples", "24")
    _wait_for(lambda: out.exists() and any(p.name.endswith(".lock") for p in out.iterdir()))
    second = _restore_process(three_scans, tiny_model_dir, out, "--overwrite")
    _, error = second.communicate(timeout=120)
    assert second.returncode == 2
    assert "another napari-uad run" in error and error.count("napari-uad: error") == 1
    first.communicate(timeout=300)
    assert first.returncode == 0
    stems = [p.name.removesuffix(".nii.gz") for p in three_scans]
    assert set(_stems_on_disk(out, stems).values()) == {"complete"}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("delay", [0.0, 0.5, 1.0])
def test_sigterm_leaves_every_output_set_complete_or_absent(
    three_scans, tiny_model_dir, tmp_path, delay
):
    import signal

    out = tmp_path / "out"
    process = _stop_while_running(three_scans, tiny_model_dir, out, delay, signal.SIGTERM)
    _, error = process.communicate(timeout=120)
    assert process.returncode in (0, 143), error[-800:]
    if process.returncode == 143:
        assert "terminated" in error and "Traceback" not in error
    stems = [p.name.removesuffix(".nii.gz") for p in three_scans]
    state = _stems_on_disk(out, stems)
    listing = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert set(state.values()) <= {"complete", "absent"}, (state, error[-800:])
    # No temporaries and no lock are left behind.
    assert not [name for name in listing if name.startswith(".")], (listing, error[-800:])


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_after_sigkill_the_next_run_cleans_up_and_completes(
    three_scans, tiny_model_dir, tmp_path, delay
):
    import signal

    out = tmp_path / "out"
    process = _stop_while_running(three_scans, tiny_model_dir, out, delay, signal.SIGKILL)
    process.communicate(timeout=60)
    stems = [p.name.removesuffix(".nii.gz") for p in three_scans]
    # What a reader sees: a stem with its JSON is complete; one without it is not finished.
    for stem, state in _stems_on_disk(out, stems).items():
        assert state in ("complete", "absent") or f"{stem}.json" not in state
    again = _restore_process(three_scans, tiny_model_dir, out, *SLOW)
    _, error = again.communicate(timeout=300)
    finished = [s for s, state in _stems_on_disk(out, stems).items() if state == "complete"]
    if again.returncode == 2:  # stems the killed run finished are kept, not redone
        assert "exists" in error and finished
    else:
        assert again.returncode == 0, error[-800:]
        assert len(finished) == 3
    assert set(_stems_on_disk(out, stems).values()) <= {"complete", "absent"}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_sigterm_stops_training_and_saves_a_checkpoint(healthy_folder, tmp_path):
    import signal
    import subprocess
    import sys

    from napari_uad.training.state import STATE_NAME

    out = tmp_path / "model"
    command = [sys.executable, "-m", "napari_uad", "train", str(healthy_folder), "--out", str(out)]
    command += ["--grid", "32", "--channels", "8", "--batch-size", "4", "--steps", "100000"]
    command += ["--checkpoint-every", "100000", "--device", "cpu", "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait until training steps run (tqdm counts them on stderr), then TERM it as a scheduler
    # would: the run must stop at the next step and save, not lose its steps.
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(process.stderr.readline, "")))
    reader.start()
    _wait_for(lambda: process.poll() is not None or any("step/s" in line for line in seen), 120)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    reader.join(timeout=10)
    error = "".join(seen)
    assert process.returncode == 143, error[-800:]
    assert "stopped by SIGTERM at step" in error and "--resume" in error
    assert (out / "model.safetensors").exists() and (out / STATE_NAME).exists()
