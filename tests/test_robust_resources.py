"""Resources: out of GPU memory, CPU thread limit, flat memory over a long run, size limit.

Issue 8, part 5. There is no GPU here: running out of memory is simulated by a model wrapper
that raises ``torch.cuda.OutOfMemoryError`` (what CUDA raises) for batches that are too large;
the "GPU" is torch's ``meta`` device, on which tensors hold no data.

Training: a batch larger than the data, bad or diverging learning rates, and label maps or
noise in the healthy folder.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import resource
import tracemalloc
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_uad import pipeline
from napari_uad.cli import main
from napari_uad.data.phantoms import make_brain, make_dataset
from napari_uad.io import InputError, Scan
from napari_uad.methods.anoddpm import AnoDDPM
from napari_uad.models.checkpoint import load_checkpoint


class _SmallGPU(torch.nn.Module):
    """The real network, but batches larger than ``capacity`` run out of memory."""

    def __init__(self, model, capacity):
        super().__init__()
        self.model, self.capacity, self.batches = model, capacity, []

    def forward(self, x, t):
        self.batches.append(len(x))
        if len(x) > self.capacity:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.model(x, t)


@pytest.fixture(scope="module")
def slices():
    data = make_dataset(10, size=32, seed=11, lesion_kinds=["tumour"])
    return data["images"].astype(np.float32), data["masks"].astype(bool)


def test_out_of_memory_retries_with_smaller_batches(tiny_model_dir, slices):
    images, masks = slices
    model, config = load_checkpoint(tiny_model_dir)
    reference = AnoDDPM(model, config).restore(images, masks, batch_size=2, steps=3, eta=1.0)
    small = _SmallGPU(model, capacity=2)
    method = AnoDDPM(small, config)
    with pytest.warns(UserWarning, match="out of memory") as caught:
        result = method.restore(images, masks, batch_size=8, steps=3, eta=1.0)
    assert [str(w.message).split()[-1] for w in caught] == ["4", "2"]  # 8 -> 4 -> 2
    assert result.batch_size == 2
    assert small.batches[:2] == [8, 4] and set(small.batches[2:]) <= {2}
    np.testing.assert_array_equal(result.anomaly, reference.anomaly)  # same map, any batch


def test_out_of_gpu_memory_at_batch_one_falls_back_to_the_cpu(tiny_model_dir, monkeypatch):
    real_load = pipeline.load_method

    def load_on_a_full_gpu(method, model=None, *, noise=None, device="auto"):
        loaded = real_load(method, model, noise=noise, device="cpu")
        if device == "cpu":
            return loaded
        gpu = copy.copy(loaded.method)  # leave the cached CPU method untouched
        gpu.model, gpu.device = _SmallGPU(loaded.method.model, 0), torch.device("meta")
        return dataclasses.replace(loaded, method=gpu)

    monkeypatch.setattr(pipeline, "load_method", load_on_a_full_gpu)
    image, mask = make_brain((32, 36, 3), seed=4)
    scan = Scan(image * 500, np.eye(4))
    reference = pipeline.detect(scan, model=tiny_model_dir, device="cpu", brain_mask=mask)
    with pytest.warns(UserWarning) as caught:
        result = pipeline.detect(scan, model=tiny_model_dir, device="cuda", brain_mask=mask)
    messages = [str(w.message) for w in caught]
    assert any("batch size 1" in m for m in messages)
    assert any("ran on the CPU" in m for m in messages)
    assert result.provenance["device"] == "cpu"
    assert "out of memory on meta" in result.provenance["device_fallback"]
    np.testing.assert_array_equal(result.anomaly, reference.anomaly)
    assert reference.provenance["device_fallback"] is None


def test_out_of_memory_on_the_cpu_is_a_clear_error(tiny_model_dir, slices, monkeypatch):
    real_load = pipeline.load_method

    def load_small(method, model=None, *, noise=None, device="auto"):
        loaded = real_load(method, model, noise=noise, device="cpu")
        cpu = copy.copy(loaded.method)
        cpu.model = _SmallGPU(loaded.method.model, 0)
        return dataclasses.replace(loaded, method=cpu)

    monkeypatch.setattr(pipeline, "load_method", load_small)
    image, mask = make_brain((32, 36, 2), seed=4)
    with pytest.warns(UserWarning, match="out of memory"):
        with pytest.raises(InputError, match="Out of memory on the CPU"):
            pipeline.detect(Scan(image, np.eye(4)), model=tiny_model_dir, device="cpu")


def test_cpu_thread_limit(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """--threads N (or NAPARI_UAD_THREADS) is in force while the network runs, and the old
    setting is restored afterwards."""
    from napari_uad.models import unet

    seen = []
    real_forward = unet.UNet.forward

    def forward(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(unet.UNet, "forward", forward)
    image, _ = make_brain((32, 36, 2), seed=4)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(image * 500, np.eye(4)), path)
    before = torch.get_num_threads()
    args = ["restore", str(path), "--method", "anoddpm", "--model", str(tiny_model_dir)]
    args += ["--device", "cpu", "--steps", "2", "--overwrite", "--out", str(tmp_path / "o")]
    limit = 1 if before > 1 else 2
    assert main([*args, "--threads", str(limit)]) == 0
    assert seen and set(seen) == {limit}
    assert torch.get_num_threads() == before

    seen.clear()
    monkeypatch.setenv("NAPARI_UAD_THREADS", str(limit))
    assert main(args) == 0
    assert set(seen) == {limit}
    assert torch.get_num_threads() == before

    capsys.readouterr()
    assert main([*args, "--threads", "0"]) == 2
    assert "--threads must be a positive number" in capsys.readouterr().err
    monkeypatch.setenv("NAPARI_UAD_THREADS", "many")
    assert main(args) == 2
    assert "NAPARI_UAD_THREADS must be a positive number" in capsys.readouterr().err


def _rss_mb() -> float:
    """Current resident memory in MB (Linux /proc), else the peak from ``resource``."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_memory_is_flat_over_a_100_slice_run(tiny_model_dir):
    """100 slices, one per batch, 2 steps each (200 network evaluations): resident memory and
    Python/numpy allocations measured at every step stay flat after the first slices. The
    bounds are below what keeping one 32 x 32 result per step would add (0.8 MB)."""
    data = make_dataset(100, size=32, seed=3, lesion_kinds=["tumour", "ms"])
    images, masks = data["images"].astype(np.float32), data["masks"].astype(bool)
    model, config = load_checkpoint(tiny_model_dir)
    method = AnoDDPM(model, config)
    method.restore(images[:4], masks[:4], batch_size=1, steps=2)  # warm-up
    rss, traced = [], []
    tracemalloc.start()
    try:

        def record(update):
            rss.append(_rss_mb())
            traced.append(tracemalloc.get_traced_memory()[0] / 2**20)

        result = method.restore(images, masks, batch_size=1, steps=2, progress=record)
    finally:
        tracemalloc.stop()
    assert len(rss) == 200 and result.anomaly.shape == (100, 32, 32)
    settled = slice(20, None)  # after the first 10 slices
    rss_growth = max(rss[settled]) - rss[20]
    traced_growth = max(traced[settled]) - traced[20]
    print(
        f"\n100-slice run: RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB (growth after slice 10: "
        f"{rss_growth:.2f} MB); traced Python/numpy memory growth {traced_growth:.3f} MB"
    )
    assert rss_growth < 8.0
    assert traced_growth < 0.5


# -- training: batch size, learning rate, divergence, data that are not T1 scans --------------
TRAIN_TINY = ["--grid", "32", "--channels", "8", "--preview-every", "0", "--no-augment"]


def _write_scan(path, data):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([1.4, 1.4, 3.0, 1.0])), path)


def _tiny_slices(count=16):
    from napari_uad.training.dataset import slices_from_arrays

    data = make_dataset(count, size=32, seed=0)
    return slices_from_arrays(data["images"], data["masks"])


def test_a_batch_larger_than_the_data_is_capped_with_one_warning(healthy_folder, tmp_path):
    from napari_uad.training.api import create_trainer

    with pytest.warns(UserWarning) as caught:
        trainer = create_trainer(
            healthy_folder, method="ddpm", out=tmp_path / "big", grid=32, base_channels=8,
            batch_size=500, device="cpu",
        )  # fmt: skip
    count = len(trainer.images)
    assert [str(w.message) for w in caught] == [
        f"batch size 500 is larger than the {count} training slices: using {count}"
    ]
    assert trainer.settings.batch_size == count and len(trainer.next_batch()[0]) == count
    assert trainer.exported_config().training["settings"]["batch_size"] == count


@pytest.mark.parametrize("rank", [0, 1])
def test_the_batch_cap_is_per_process_under_torchrun(rank, tmp_path, monkeypatch):
    from napari_uad.training import distributed
    from napari_uad.training.api import create_trainer

    monkeypatch.setattr(distributed, "rank_and_size", lambda: (rank, 2))
    monkeypatch.setattr(distributed, "wrap", lambda module, device: module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = create_trainer(
            _tiny_slices(), method="ddpm", out=tmp_path / "m", grid=32, base_channels=8,
            batch_size=64, holdout=0.0, device="cpu",
        )  # fmt: skip
    assert trainer.settings.batch_size == len(trainer.images) == 16
    assert len(trainer.next_batch()[0]) == 16
    expected = ["batch size 64 (per process) is larger than the 16 training slices: using 16"]
    assert [str(w.message) for w in caught] == (expected if rank == 0 else [])


@pytest.mark.parametrize("rate", ["inf", "nan", "-1e-4", "0"])
def test_bad_learning_rates_are_refused_before_any_work(healthy_folder, tmp_path, capsys, rate):
    out = tmp_path / "lr"
    assert main(["train", str(healthy_folder), "--out", str(out), f"--lr={rate}", *TRAIN_TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"napari-uad: error: the learning rate (--lr) must be a positive finite number, got "
        f"{float(rate)!r}: use e.g. 2e-4"
    ]
    assert not out.exists()


def test_a_diverging_run_stops_at_the_first_nan_and_keeps_its_checkpoint(
    healthy_folder, tmp_path, capsys
):
    """--lr 1e4: the loss is NaN by step 3. The run stops with one line, and the checkpoint on
    disk is the last one with finite weights (load_checkpoint refuses NaN weights)."""
    out = tmp_path / "diverged"
    args = ["train", str(healthy_folder), "--out", str(out), "--lr", "1e4", "--steps", "8"]
    code = main([*args, "--batch-size", "4", "--checkpoint-every", "1", *TRAIN_TINY])
    err = capsys.readouterr().err
    # The progress bar is left open (cli.py), so the error may follow it on its line.
    errors = [line.partition("napari-uad: error: ")[2] for line in err.splitlines()]
    errors = [error for error in errors if error]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    error = errors[0]
    assert error.startswith("training diverged at step ")
    assert "lower --lr (now 10000)" in error
    step = int(error.split("step ")[1].split()[0])
    assert step < 8
    _, config = load_checkpoint(out)
    assert config.training["steps"] < step
    assert error.endswith(f"the checkpoint of step {config.training['steps']} in {out} is kept")
    losses = (out / "losses.csv").read_text().splitlines()[1:]
    assert len(losses) == config.training["steps"]
    assert all(np.isfinite(float(line.split(",")[1])) for line in losses)


@pytest.mark.parametrize("where", ["loss", "weights"])
def test_divergence_never_overwrites_a_good_checkpoint(tmp_path, where):
    """NaN enters the weights before step 3 (its loss is NaN: stop at step 3), or during step 4
    (its loss is finite: caught before the step-4 checkpoint). The step-2 checkpoint stays."""
    from napari_uad.training.api import create_trainer
    from napari_uad.training.loop import TrainingDiverged

    out = tmp_path / "m"
    trainer = create_trainer(
        _tiny_slices(), method="ddpm", out=out, steps=6, grid=32, base_channels=8,
        batch_size=4, checkpoint_every=2, preview_every=0, device="cpu", augment=None,
    )  # fmt: skip
    real_step = trainer.training_step

    def poison():
        with torch.no_grad():
            next(trainer.networks["model"].parameters()).fill_(float("nan"))

    def training_step(images, masks):
        if where == "loss" and trainer.step == 2:
            poison()
        losses = real_step(images, masks)
        if where == "weights" and trainer.step == 3:
            poison()
        return losses

    trainer.training_step = training_step
    run = trainer.iter_run()
    assert next(run).step == 1 and next(run).checkpoint == str(out)
    saved = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TrainingDiverged) as error:
        for _ in run:
            pass
    bad_step, detail = (3, "loss nan") if where == "loss" else (4, "weights not finite")
    assert str(error.value) == (
        f"training diverged at step {bad_step} ({detail}): lower --lr (now 0.0002) and start "
        f"again with --overwrite; the checkpoint of step 2 in {out} is kept"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == saved
    assert load_checkpoint(out)[1].training["steps"] == 2


def _label_atlas(shape, labels, seed=0):
    """A brain cut into ``labels`` regions numbered 1.. (plus the 0 background)."""
    _, mask = make_brain(shape, seed=seed)
    grid = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1)[mask]
    centres = grid[np.random.default_rng(seed).choice(len(grid), labels, replace=False)]
    atlas = np.zeros(shape, np.float32)
    atlas[mask] = np.argmin(((grid[:, None] - centres) ** 2).sum(-1), -1) + 1
    return atlas


def test_label_maps_and_noise_are_not_healthy_training_data(healthy_folder, tmp_path, capsys):
    from napari_uad.training.dataset import load_healthy_folder

    rng = np.random.default_rng(0)
    atlas = _label_atlas((40, 44, 8), 32)
    assert len(np.unique(atlas)) == 33
    _write_scan(healthy_folder / "atlas.nii.gz", atlas)
    _write_scan(healthy_folder / "noise.nii.gz", rng.normal(500, 100, (40, 44, 8)))
    with pytest.warns(UserWarning) as caught:
        data = load_healthy_folder(healthy_folder, grid=32, cache_dir=tmp_path / "cache")
    messages = [str(w.message) for w in caught]
    with pytest.warns(UserWarning) as again:  # from the cache: the same warnings
        load_healthy_folder(healthy_folder, grid=32, cache_dir=tmp_path / "cache")
    assert [str(w.message) for w in again] == messages
    assert len(messages) == 2
    assert messages[0] == (
        "atlas.nii.gz looks like a label map (33 integer values), not a T1 scan: skipped"
    )
    assert messages[1].startswith("noise.nii.gz looks like pure noise (neighbouring voxels")
    assert messages[1].endswith("), not a T1 scan: skipped")
    assert [path.rsplit("/", 1)[-1] for path, *_ in data.report.used] == [
        "s0.nii.gz", "s1.nii.gz", "s2.nii.gz"
    ]  # fmt: skip
    assert len(data.report.skipped) == 2

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for name in ("atlas.nii.gz", "noise.nii.gz"):
        (only_bad / name).write_bytes((healthy_folder / name).read_bytes())
    with pytest.warns(UserWarning) as caught:
        assert main(["train", str(only_bad), "--out", str(tmp_path / "x"), *TRAIN_TINY]) == 2
    assert [str(w.message)[:20] for w in caught] == [m[:20] for m in messages]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"napari-uad: error: no usable scan in {only_bad} (atlas.nii.gz: ")
    assert err[0].endswith(": give a folder of healthy T1 scans")


def test_real_scans_pass_the_t1_check_and_masks_do_not():
    from importlib.resources import files

    from napari_uad.training.dataset import not_a_t1_scan

    samples = files("napari_uad") / "sample_data"
    for name in ("healthy_t1", "lesion_t1"):
        data = np.asarray(nib.load(samples / f"{name}.nii.gz").dataobj, np.float32)
        assert not_a_t1_scan(data) is None
    mask = np.asarray(nib.load(samples / "brain_mask.nii.gz").dataobj, np.float32)
    assert "label map (2 integer values)" in not_a_t1_scan(mask)
    for seed, shape in enumerate([(40, 44, 8), (32, 36, 3), (64, 64, 40)]):
        image, _ = make_brain(shape, seed=seed)
        for scan in (image * 700, np.round(image * 700), np.round(image * 255)):
            assert not_a_t1_scan(scan) is None
    # An atlas with more labels than the count limit is caught as piecewise constant.
    assert "label map (101 integer values)" in not_a_t1_scan(_label_atlas((64, 64, 40), 100))
    # One extreme voxel does not make a scan look like noise.
    image, _ = make_brain((40, 44, 8), seed=1)
    image[0, 0, 0] = 1e9
    assert not_a_t1_scan(image) is None


def test_disyre_previews_a_single_held_out_slice(tmp_path):
    """12 slices of one subject hold out one slice; DISYRE's final preview used to need two."""
    from napari_uad.training.api import create_trainer

    trainer = create_trainer(
        _tiny_slices(12), method="disyre", out=tmp_path / "d", steps=2, grid=32,
        base_channels=8, batch_size=4, preview_every=0, checkpoint_every=0, device="cpu",
    )  # fmt: skip
    assert len(trainer.held_images) == 1
    updates = []
    result = trainer.run(progress=updates.append)
    assert updates[-1].preview.shape == (3, 1, 32, 32) and result.threshold is not None
