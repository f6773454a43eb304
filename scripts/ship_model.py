"""Turn a finished training run into a shipped default model (float16, its defaults, a card).

Usage::

    python scripts/ship_model.py RUN_FOLDER NAME [--defaults '{"steps": 2}'] \
        [--drop discriminator] [--recipe "how RUN_FOLDER was made"]

Writes ``src/napari_uad/weights/NAME/`` (or ``--out``): the run's EMA weights and the
components inference needs, stored as float16 (loaded back as float32), the config with
``--defaults`` merged into its defaults (by top-level key: a method's nested entry is
replaced whole) and the recipe in its model card. The calibration
starts empty: run ``scripts/calibrate_methods.py --model NAME --methods ...`` next (as
``scripts/reproduce_default_models.py`` does). The run folder is left untouched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_uad.models.checkpoint import load_checkpoint, load_component, save_checkpoint

WEIGHTS = Path(__file__).resolve().parent.parent / "src" / "napari_uad" / "weights"


def ship(run, name: str, *, out=None, defaults=None, drop=(), recipe: str | None = None) -> Path:
    """Write the shipped copy of the model in ``run``; returns its folder."""
    run = Path(run)
    out = Path(out) if out is not None else WEIGHTS / name
    if out.resolve() == run.resolve():
        raise SystemExit("the shipped copy must go to another folder than the run")
    model, config = load_checkpoint(run)
    components = {
        key: load_component(run, key, config=config) for key in config.components if key not in drop
    }
    config.components = {k: v for k, v in config.components.items() if k not in drop}
    config.name = name
    config.defaults = {**config.defaults, **(defaults or {})}
    config.calibration = {}
    if recipe:
        config.training = {**config.training, "recipe": recipe}
    save_checkpoint(out, model, config, half=True, components=components)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished training run's folder")
    parser.add_argument("name", help="the shipped model's name")
    parser.add_argument("--out", type=Path, help="default: src/napari_uad/weights/NAME")
    parser.add_argument("--defaults", type=json.loads, default={}, help="JSON object")
    parser.add_argument("--drop", action="append", default=[], help="a component not shipped")
    parser.add_argument("--recipe", help="the command(s) that made the run")
    args = parser.parse_args()
    out = ship(
        args.run,
        args.name,
        out=args.out,
        defaults=args.defaults,
        drop=args.drop,
        recipe=args.recipe,
    )
    size = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1e6
    print(f"shipped {out} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
