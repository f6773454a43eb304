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
from napari_uad.io import Scan
from napari_uad.methods.base import Cancelled
from napari_uad.phantoms import add_lesions, make_brain
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
