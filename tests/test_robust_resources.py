"""Resources: out of GPU memory, CPU thread limit, flat memory over a long run, size limit.

Issue 8, part 5. There is no GPU here: running out of memory is simulated by a model wrapper
that raises ``torch.cuda.OutOfMemoryError`` (what CUDA raises) for batches that are too large;
the "GPU" is torch's ``meta`` device, on which tensors hold no data.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import resource
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_uad import pipeline
from napari_uad.cli import main
from napari_uad.io import InputError, Scan
from napari_uad.methods.anoddpm import AnoDDPM
from napari_uad.models.checkpoint import load_checkpoint
from napari_uad.phantoms import make_brain, make_dataset


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
