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

from napari_uad.io import read_mask, read_scan
from napari_uad.preprocess import prepare_volume
from napari_uad.samples import sample_path
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
    for family in TRAINER_NAMES:
        with tempfile.TemporaryDirectory() as folder:
            options = {"vae_steps": 1} if family == "madad" else {}
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
            next(run)
            if family == "madad":
                next(run)  # the VAE stage: time the latent diffusion stage
            started = time.perf_counter()
            for _ in range(args.steps):
                next(run)
            seconds = (time.perf_counter() - started) / args.steps
            params = sum(p.numel() for p in trainer.networks["model"].parameters())
            extra = sum(
                p.numel()
                for n, m in trainer.networks.items()
                if n != "model"
                for p in m.parameters()
            )
            rows.append((family, str(trainer.device), params, extra, seconds))
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
