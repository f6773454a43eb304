"""Training speed of each trainer at the default settings: seconds per step and per 1,000 steps.

Usage::

    python benchmarks/train_speed.py [--steps 6] [--device auto] [--threads N]

Data: the lesion-free MNI-based sample slab that ships with the package (no download), on the
128x128 grid, with the default augmentation; batch 16; the compact 16-channel UNet. The first
step (allocation, warm-up) is excluded. Prints a markdown table (paste it into
docs/training.md).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from napari_uad.data.samples import sample_path
from napari_uad.io import read_mask, read_scan
from napari_uad.preprocess import prepare_volume
from napari_uad.training.api import TRAINER_NAMES, create_trainer
from napari_uad.training.dataset import slices_from_arrays


def sample_slices():
    scan = read_scan(sample_path("healthy"))
    prepared = prepare_volume(scan, brain_mask=read_mask(sample_path("brain_mask"), like=scan))
    return slices_from_arrays(prepared.model_slices, prepared.mask_model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = sample_slices()
    rows = []
    runs = [(f, f, {}) for f in TRAINER_NAMES if f != "madad"]
    runs += [
        ("madad", "madad, autoencoder stage", {"vae_steps": 10_000}),
        ("madad", "madad, latent diffusion stage", {"vae_steps": 1}),
    ]
    for family, label, options in runs:
        with tempfile.TemporaryDirectory() as folder:
            trainer = create_trainer(
                data,
                method=family,
                out=f"{folder}/model",
                steps=args.steps + 2,
                device=args.device,
                checkpoint_every=0,
                preview_every=0,
                calibrate=False,
                options=options,
            )
            run = trainer.iter_run()
            next(run)  # warm-up (and MAD-AD's switch to the latent stage)
            started = time.perf_counter()
            for _ in range(args.steps):
                next(run)
            seconds = (time.perf_counter() - started) / args.steps
            params = sum(p.numel() for p in trainer.networks["model"].parameters())
            others = [m for n, m in trainer.networks.items() if n != "model"]
            extra = sum(p.numel() for m in others for p in m.parameters())
            rows.append((label, str(trainer.device), params, extra, seconds))
            trainer.settings.steps = trainer.step  # nothing left: close without a checkpoint
            run.close()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    print(
        "| trainer | device | model params | other networks | s/step (batch 16) "
        "| min per 1,000 steps |"
    )
    print("|---|---|---|---|---|---|")
    for family, device, params, extra, seconds in rows:
        print(
            f"| {family} | {device} | {params / 1e6:.2f} M | {extra / 1e6:.2f} M | {seconds:.2f} | "
            f"{seconds * 1000 / 60:.0f} |"
        )


if __name__ == "__main__":
    main()
