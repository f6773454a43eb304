"""Fit the shipped ensemble (``--method ensemble``) on healthy data and write its model folder.

Usage (needs nilearn; about a minute on a CPU)::

    python scripts/make_ensemble.py                           # disyre + addm -> weights/ensemble
    python scripts/make_ensemble.py --members disyre=disyre,addm=my-ddpm --out MODELS/my-ensemble

Each member runs at its own defaults on 32 freshly augmented MNI152 slices (augmentations the
models never saw in training, as ``scripts/calibrate_methods.py``); the fitted tables (each
member's healthy spread per pseudo-healthy intensity bin and its healthy 99.5th percentile) go
into the folder's ``model.safetensors``, the members into its ``config.json``, and the fused
map's healthy 99.5th percentile, on 16 other slices, becomes the calibrated threshold. The
members, the smoothing and the rule were chosen on the benchmark's tuning subjects
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from napari_uad.io.atomic import atomic_write_text
from napari_uad.methods import get_method_class
from napari_uad.methods.ensemble import Ensemble
from napari_uad.models.checkpoint import CONFIG_NAME, load_config
from napari_uad.models.registry import resolve_model
from napari_uad.training.calibrate import calibrate_method, store_calibration
from napari_uad.training.ensemble import ensemble_config, fit_ensemble, save_ensemble

ROOT = Path(__file__).resolve().parent.parent


def _held_out_slices(seed: int, count: int):
    path = ROOT / "scripts" / "calibrate_methods.py"
    spec = importlib.util.spec_from_file_location("calibrate_methods", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.held_out_slices(seed, count)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="disyre=disyre,addm=addm", help="METHOD=MODEL,...")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "src" / "napari_uad" / "weights" / "ensemble"
    )
    parser.add_argument("--smoothing", type=int, default=9)
    parser.add_argument("--rule", default="mean", choices=("mean", "max"))
    parser.add_argument("--percentile", type=float, default=99.5)
    args = parser.parse_args()
    pairs = [item.split("=", 1) for item in args.members.split(",") if item]
    folders = [(method, resolve_model(model)) for method, model in pairs]
    members = [get_method_class(m).from_checkpoint(folder) for m, folder in folders]
    grid = members[0].config.grid
    fit_images, fit_masks = _held_out_slices(seed=2, count=32)
    tables = fit_ensemble(
        members, fit_images, fit_masks, smoothing=args.smoothing, percentile=args.percentile
    )
    config = ensemble_config(
        args.out.name, folders, grid=grid, smoothing=args.smoothing, rule=args.rule
    )
    config.training.update(
        {
            "data": f"{len(fit_images)} augmented MNI152 slices, unseen augmentations (seed 2)",
            "recipe": "python scripts/make_ensemble.py --members " + args.members,
        }
    )
    save_ensemble(args.out, config, tables)
    ensemble = Ensemble.from_checkpoint(args.out)
    images, masks = _held_out_slices(seed=1, count=16)
    entry = calibrate_method(ensemble, images, masks, percentile=args.percentile)
    entry["data"] = f"{len(images)} augmented MNI152 slices, unseen augmentations"
    config = load_config(args.out)
    store_calibration(config, "ensemble", entry)
    atomic_write_text(args.out / CONFIG_NAME, json.dumps(config.to_dict(), indent=2) + "\n")
    spreads = {
        m.name: [round(float(v), 4) for v in tables[f"spread.{i}"]] for i, m in enumerate(members)
    }
    print(f"{args.out}: scales {[round(float(v), 3) for v in tables['scale']]}, spreads {spreads}")
    print(f"threshold {entry['threshold']:.4f}")


if __name__ == "__main__":
    main()
