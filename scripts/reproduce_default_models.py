"""Reproduce every shipped default model from scratch, on healthy data only (resumable).

Data: the MNI152 2009 T1 template that nilearn ships (``pip install nilearn``), augmented by
the trainers (affine and elastic deformation, flips, gamma, bias field, contrast). Each model's
stages run in order; intermediate runs go to ``--work`` (default ``runs/``), the shipped copies
(float16) to ``src/napari_uad/weights/``, and each model is calibrated for every method that
runs on it. Stopping (Ctrl-C) and running the same command again resumes: finished stages are
skipped and an interrupted ``napari-uad train`` run continues from its last checkpoint.

    python scripts/reproduce_default_models.py                      # all, about 4 h on 2 cores
    python scripts/reproduce_default_models.py --models disyre,addm --threads 2
    python scripts/reproduce_default_models.py --dry-run            # print the commands

Retraining ``disyre`` or ``addm`` refits the ensemble that fuses them
(``scripts/make_ensemble.py``) at the end. The recipes are the ones in each model's card
(docs/models.md); the defaults each model stores were chosen on docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "src" / "napari_uad" / "weights"
SCRIPTS = ROOT / "scripts"
PY = sys.executable
TRAIN = [PY, "-m", "napari_uad", "train"]

#: Defaults stored in each shipped model (chosen on docs/benchmarks.md).
SHIPPED_DEFAULTS = {
    "anoddpm-gaussian": {
        "autoddpm": {
            "noise_level": 25,
            "steps": 2,
            "inpaint_level": 15,
            "inpaint_steps": 2,
            "resample_steps": 2,
            "smoothing": 9,
        },
        "thor": {"noise_level": 50, "steps": 3, "harmonise_at": [40, 25, 10], "smoothing": 9},
    },
    "anoddpm-simplex": {
        "thor": {"noise_level": 250, "steps": 6, "harmonise_at": [200, 150, 100, 50]}
    },
    "disyre": {"severities": [1.0, 0.8, 0.6, 0.4, 0.2], "mode": "single-step", "smoothing": 9},
    "addm": {"noise_level": 25, "steps": 2, "smoothing": 9},
    "madad": {"sigma": 6.0},
}
#: Shipped models the shipped ensemble fuses (scripts/make_ensemble.py refits it after them).
ENSEMBLE_MEMBERS = ("disyre", "addm")
#: Components a shipped model leaves out (inference does not need them).
NOT_SHIPPED = {"addm": ["discriminator"]}
#: Methods calibrated on each shipped model.
CALIBRATE = {
    "anoddpm-gaussian": "anoddpm,autoddpm,thor",
    "anoddpm-simplex": "anoddpm,autoddpm,thor",
    "disyre": "disyre",
    "addm": "addm",
    "madad": "madad",
}


def _ddpm_stages(noise: str, restore_level: int, work: Path) -> list[tuple[list[str], Path]]:
    """The three stages of a shipped DDPM (train_default_models.py's recipe)."""
    script = [PY, str(SCRIPTS / "train_default_models.py"), "--noise", noise]
    first, second = work / f"anoddpm-{noise}-1", work / f"anoddpm-{noise}-2"
    final = work / f"anoddpm-{noise}"
    return [
        ([*script, "--steps", "1000", "--out", str(first)], first),
        (
            [*script, "--steps", "800", "--noise-level", "250", "--smoothing", "3"]
            + ["--seed", "1", "--init", str(first), "--out", str(second)],
            second,
        ),
        (
            [*script, "--steps", "0", "--noise-level", str(restore_level), "--smoothing", "9"]
            + ["--default-steps", "2", "--seed", "1", "--init", str(second), "--out", str(final)],
            final,
        ),
    ]


def recipes(work: Path) -> dict[str, list[tuple[list[str], Path]]]:
    """Per shipped model: its training stages as (command, output folder)."""
    mni = str(work / "mni")
    return {
        "anoddpm-gaussian": _ddpm_stages("gaussian", 25, work),
        "anoddpm-simplex": _ddpm_stages("simplex", 10, work),
        "disyre": [
            (
                [*TRAIN, mni, "--method", "disyre", "--out", str(work / "disyre")]
                + ["--steps", "1500", "--lr", "1e-3", "--checkpoint-every", "250"],
                work / "disyre",
            )
        ],
        # ADDM fine-tunes the shipped Gaussian DDPM (its generator) with the adversarial loss.
        "addm": [
            (
                [*TRAIN, mni, "--method", "addm", "--init", str(WEIGHTS / "anoddpm-gaussian")]
                + ["--out", str(work / "addm"), "--steps", "1000", "--lr", "1e-4", "--seed", "2"]
                + ["--checkpoint-every", "100", "--option", "max_timestep=500"],
                work / "addm",
            )
        ],
        "madad": [
            (
                [*TRAIN, mni, "--method", "madad", "--out", str(work / "madad-1")]
                + ["--steps", "1400", "--lr", "1e-3", "--checkpoint-every", "100"]
                + ["--option", "vae_steps=700"],
                work / "madad-1",
            ),
            (
                [*TRAIN, mni, "--method", "madad", "--init", str(work / "madad-1")]
                + ["--out", str(work / "madad"), "--steps", "2400", "--lr", "5e-4", "--seed", "3"]
                + ["--checkpoint-every", "200", "--option", "vae_steps=1000"],
                work / "madad",
            ),
        ],
    }


def _finished(command: list[str], out: Path) -> bool:
    """Whether a stage's output is complete (its model exists and, for ``napari-uad train``,
    its training state reached the requested steps)."""
    if not (out / "config.json").is_file() or not (out / "model.safetensors").is_file():
        return False
    if command[:4] != TRAIN:
        return True
    from napari_uad.training.state import STATE_NAME, load_state

    if not (out / STATE_NAME).is_file():
        return False
    _, metadata = load_state(out / STATE_NAME)
    return int(metadata["step"]) >= int(command[command.index("--steps") + 1])


def _resumable(command: list[str], out: Path) -> list[str]:
    """``napari-uad train`` continues an interrupted run instead of starting over."""
    from napari_uad.training.state import STATE_NAME

    if command[:4] == TRAIN and (out / STATE_NAME).is_file():
        return [*command[:5], "--out", str(out), "--resume"]
    return command


def _run(command: list[str], *, threads: int | None, dry_run: bool) -> None:
    if threads:
        command = [*command, "--threads", str(threads)]
    print("$", " ".join(command), flush=True)
    if not dry_run:
        subprocess.run(command, check=True, cwd=ROOT)


def _recipe_text(stages, work: Path) -> str:
    """The stages as a user would type them from the repository root."""
    shown = []
    for command, _ in stages:
        words = ["python" if w == PY else w for w in command]
        text = " ".join(words).replace(str(work), "runs").replace(str(ROOT) + "/", "")
        shown.append(text)
    return "; then ".join(shown)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CALIBRATE), help="comma-separated names")
    parser.add_argument("--work", type=Path, default=ROOT / "runs")
    parser.add_argument("--threads", type=int, help="CPU threads for training")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args()
    work = args.work.resolve()
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(CALIBRATE))
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}: use {', '.join(CALIBRATE)}")
    if not (work / "mni").is_dir():
        _run(
            [PY, str(SCRIPTS / "write_mni_folder.py"), str(work / "mni")],
            threads=None,
            dry_run=args.dry_run,
        )
    every = recipes(work)
    for name in chosen:
        stages = every[name]
        for command, out in stages:
            if _finished(command, out) and not args.dry_run:
                print(f"{name}: {out} is done, skipped")
                continue
            _run(_resumable(command, out), threads=args.threads, dry_run=args.dry_run)
        # Every run is shipped the same way: float16, the chosen defaults, the recipe; then
        # calibrated for every method that runs on it.
        ship = [PY, str(SCRIPTS / "ship_model.py"), str(stages[-1][1]), name]
        ship += ["--defaults", json.dumps(SHIPPED_DEFAULTS.get(name, {}))]
        for component in NOT_SHIPPED.get(name, []):
            ship += ["--drop", component]
        ship += ["--recipe", _recipe_text(stages, work)]
        _run(ship, threads=None, dry_run=args.dry_run)
        calibrate = [PY, str(SCRIPTS / "calibrate_methods.py"), "--model", str(WEIGHTS / name)]
        _run([*calibrate, "--methods", CALIBRATE[name]], threads=None, dry_run=args.dry_run)
    if set(chosen) & set(ENSEMBLE_MEMBERS):
        # The ensemble's tables describe its members' maps: refit them after a member changed.
        _run([PY, str(SCRIPTS / "make_ensemble.py")], threads=None, dry_run=args.dry_run)
    print("done: python scripts/write_model_cards.py rewrites docs/models.md")


if __name__ == "__main__":
    main()
