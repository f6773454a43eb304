"""Reproduce the shipped default models from scratch (healthy data only).

Data: the MNI152 2009 T1 template that nilearn ships (1 mm, skull-stripped), its axial slices
with brain, on the 128x128 model grid, with strong augmentation (affine + elastic deformation,
flips, gamma, bias field, contrast) so that the network sees many "subjects".

Usage (CPU, about 30 minutes per 1,000 steps on one core)::

    pip install nilearn
    python scripts/train_default_models.py --noise gaussian --steps 1000 --out runs/g1

``scripts/reproduce_default_models.py`` chains the stages of every shipped model.

Each run writes ``src/napari_uad/weights/anoddpm-<noise>/`` (config.json + model.safetensors,
fp16) with its calibrated healthy threshold and a model card in config.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_uad.io import Scan
from napari_uad.models.checkpoint import load_checkpoint, save_checkpoint
from napari_uad.models.config import DiffusionConfig, ModelConfig
from napari_uad.models.unet import UNetConfig
from napari_uad.preprocess import prepare_volume
from napari_uad.training.augment import AugmentConfig, augment_batch
from napari_uad.training.calibrate import calibrate_threshold
from napari_uad.training.ddpm import train_ddpm

WEIGHTS = Path(__file__).resolve().parent.parent / "src" / "napari_uad" / "weights"
UNET = UNetConfig(
    base_channels=16,
    channel_mults=(1, 2, 4, 8),
    num_res_blocks=1,
    attention_levels=(False, False, False, True),
)


def mni_slices(grid: int = 128, min_fraction: float = 0.35):
    """Axial MNI152 slices with brain on the model grid, and their brain masks."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=1)
    mask = load_mni152_brain_mask(resolution=1).get_fdata() > 0
    scan = Scan(data=template.get_fdata(dtype=np.float32), affine=template.affine)
    prepared = prepare_volume(scan, brain_mask=mask, grid=grid)
    areas = prepared.mask_model.sum(axis=(1, 2))
    keep = areas >= min_fraction * areas.max()
    return prepared.model_slices[keep], prepared.mask_model[keep]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", choices=("gaussian", "simplex"), required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--max-timestep", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--init", type=Path, help="continue from this model folder")
    parser.add_argument(
        "--noise-level",
        type=int,
        default=250,
        help="default restoration timestep stored in the model",
    )
    parser.add_argument(
        "--smoothing", type=int, default=3, help="default median filter size stored in the model"
    )
    parser.add_argument(
        "--default-steps", type=int, default=2, help="default denoising steps stored in the model"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    name = f"anoddpm-{args.noise}"
    out = args.out or WEIGHTS / name
    slices, masks = mni_slices()
    print(f"{len(slices)} training slices of {slices.shape[1:]}")
    config = ModelConfig(
        name=name,
        method="anoddpm",
        grid=128,
        unet=UNET,
        diffusion=DiffusionConfig(prediction_type="sample", noise=args.noise),
        defaults={
            "noise_level": args.noise_level,
            "steps": args.default_steps,
            "eta": 0.0,
            "smoothing": args.smoothing,
        },
    )
    initial, previous = None, {}
    if args.init:
        initial, init_config = load_checkpoint(args.init)
        initial.train()
        previous = init_config.training
        config.unet = init_config.unet
    started = time.time()

    def progress(update):
        if update.step % 20 == 0 or update.step == update.total:
            rate = update.seconds / update.step
            print(
                f"step {update.step}/{update.total} loss {update.loss:.4f} "
                f"({rate:.2f} s/step, eta {rate * (update.total - update.step) / 60:.1f} min)",
                flush=True,
            )

    augment = AugmentConfig()
    model, history = train_ddpm(
        slices,
        config,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_timestep=args.max_timestep,
        augment=augment,
        seed=args.seed,
        progress=progress,
        model=initial,
    )
    minutes = (time.time() - started) / 60 + previous.get("minutes", 0.0)
    total_steps = len(history.losses) + previous.get("steps", 0)
    recipe = f"scripts/train_default_models.py --noise {args.noise} --steps {args.steps}"
    recipe += f" --noise-level {args.noise_level} --smoothing {args.smoothing}"
    recipe += f" --default-steps {args.default_steps}"
    if args.init:
        recipe = f"{previous.get('recipe')}, then {recipe} --seed {args.seed} --init <that model>"

    # Held-out healthy data for the threshold: fresh augmentations never seen in training.
    generator = torch.Generator().manual_seed(10_000 + args.seed)
    index = torch.randperm(len(slices), generator=generator)[:16]
    images = torch.from_numpy(slices[index.numpy()])[:, None]
    held_out = augment_batch(images, config=augment, generator=generator)[:, 0].numpy()
    held_masks = held_out > 0
    threshold = calibrate_threshold(model, config, held_out, held_masks, percentile=99.5)
    config.calibration = {
        "threshold": threshold,
        "percentile": 99.5,
        "data": "16 augmented MNI152 slices, unseen augmentations",
    }
    config.training = {
        "data": "MNI152 2009 T1 template (nilearn, 1 mm), axial slices with >=35% of the "
        "largest brain area, augmented (affine, elastic, flip, gamma, bias, contrast)",
        "recipe": recipe,
        "steps": total_steps,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "max_timestep": args.max_timestep,
        "final_loss": (
            float(np.mean(history.losses[-20:])) if history.losses else previous.get("final_loss")
        ),
        "minutes": round(minutes, 1),
        "hardware": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "seed": args.seed,
    }
    save_checkpoint(out, model, config, half=True)
    print(f"saved {out} (threshold {threshold:.4f}, {minutes:.1f} min)")


if __name__ == "__main__":
    main()
