"""Calibrate the healthy threshold of methods that share a model (autoddpm and thor on the
shipped DDPMs), on the same held-out healthy data as the model's own calibration.

Usage (needs nilearn; minutes on a CPU)::

    python scripts/calibrate_methods.py --model anoddpm-gaussian --methods autoddpm,thor

Each method's 99.5th percentile of anomaly scores over 16 freshly augmented MNI152 slices
(augmentations the model never saw in training, seeded as in train_default_models.py) goes into
the model's ``config.json`` as ``calibration.methods.<method>``; ``--threshold auto`` and the
Threshold widget's Auto then use it. Only ``calibration`` changes; the weights are untouched.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

from napari_uad.io.atomic import atomic_write_text
from napari_uad.methods import get_method_class
from napari_uad.models.checkpoint import CONFIG_NAME, load_config
from napari_uad.models.registry import resolve_model
from napari_uad.training.augment import AugmentConfig, augment_batch
from napari_uad.training.calibrate import calibrate_method, store_calibration


def _recipe_module():
    path = Path(__file__).resolve().parent / "train_default_models.py"
    spec = importlib.util.spec_from_file_location("train_default_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def held_out_slices(seed: int = 1, count: int = 16):
    """Augmented MNI152 slices unseen in training (the recipe's calibration data)."""
    slices, _ = _recipe_module().mni_slices()
    generator = torch.Generator().manual_seed(10_000 + seed)
    index = torch.randperm(len(slices), generator=generator)[:count]
    images = torch.from_numpy(slices[index.numpy()])[:, None]
    held_out = augment_batch(images, config=AugmentConfig(), generator=generator)[:, 0].numpy()
    return held_out, held_out > 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model name or folder")
    parser.add_argument("--methods", required=True, help="comma-separated method names")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--percentile", type=float, default=99.5)
    args = parser.parse_args()
    folder = resolve_model(args.model)
    images, masks = held_out_slices(args.seed)
    config = load_config(folder)
    for name in args.methods.split(","):
        method = get_method_class(name.strip()).from_checkpoint(folder)
        entry = calibrate_method(method, images, masks, percentile=args.percentile)
        entry["data"] = f"{len(images)} augmented MNI152 slices, unseen augmentations"
        store_calibration(config, method.name, entry)
        print(f"{config.name}: {method.name} threshold {entry['threshold']:.6f}")
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")


if __name__ == "__main__":
    main()
