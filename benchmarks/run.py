"""Speed and detection benchmark of the shipped models on the sample scans.

Runs each installed ``anoddpm`` model over the lesion sample at several step counts (the speed
knob), including the papers' full schedule, plus a no-model baseline, and reports voxel AUROC,
AP, best Dice, Dice at the calibrated threshold, false-positive volume on the healthy sample,
NFE and seconds per slice. Prints a table and writes ``docs/benchmarks.md``.

    python benchmarks/run.py [--steps 5,10,25,full] [--device cpu] [--out docs/benchmarks.md]

Caveat: the default models are trained on the MNI152 template and the samples are a slab of the
same template, so these figures are optimistic; a benchmark set of other healthy brains comes
with the benchmark issue.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from napari_uad.io import read_mask, read_scan
from napari_uad.io.atomic import atomic_write_text
from napari_uad.metrics import evaluate
from napari_uad.models.registry import list_models
from napari_uad.pipeline import detect, load_method
from napari_uad.preprocess import normalise_intensity
from napari_uad.samples import sample_path


def baseline_row(scan, brain, truth) -> dict:
    """No model: absolute deviation from the brain's median normalised intensity."""
    normalised = normalise_intensity(scan.data, brain)
    scores = np.abs(normalised - np.median(normalised[brain])) * brain
    metrics = evaluate(scores, truth, mask=brain)
    return {
        "method": "baseline",
        "model": "deviation from brain median (no model)",
        "noise_level": "-",
        "steps": "-",
        "nfe": 0,
        "s_per_slice": 0.0,
        **metrics,
        "dice_at_threshold": None,
        "healthy_fp_ml": None,
    }


def run(step_options: list[str], levels: list[int], device: str) -> list[dict]:
    scan = read_scan(sample_path("lesion"))
    healthy = read_scan(sample_path("healthy"))
    brain = read_mask(sample_path("brain_mask"), like=scan)
    truth = read_mask(sample_path("lesion_truth"), like=scan)
    voxel_ml = float(np.prod(scan.spacing)) / 1000.0
    rows = [baseline_row(scan, brain, truth)]
    print(_format_row(rows[-1]), flush=True)
    for info in list_models(method="anoddpm"):
        method = load_method("anoddpm", info.path, device=device).method
        defaults = method.resolve_parameters()
        settings = [{"noise_level": level} for level in levels]
        for option in step_options:
            full = defaults["noise_level"] + 1
            settings.append({"steps": full if option == "full" else int(option)})
        for params in settings:
            started = time.perf_counter()
            result = detect(
                scan,
                method="anoddpm",
                model=info.path,
                brain_mask=brain,
                device=device,
                **params,
            )
            elapsed = time.perf_counter() - started
            used = result.provenance["parameters"]
            metrics = evaluate(result.anomaly, truth, mask=brain, threshold=result.threshold)
            fp_ml = None
            if used["steps"] <= 50:  # the full schedule on the healthy scan adds little
                on_healthy = detect(
                    healthy,
                    method="anoddpm",
                    model=info.path,
                    brain_mask=brain,
                    device=device,
                    **params,
                )
                fp_ml = float(on_healthy.lesion_mask.sum()) * voxel_ml
            rows.append(
                {
                    "method": "anoddpm",
                    "model": info.name,
                    "noise_level": used["noise_level"],
                    "steps": used["steps"],
                    "nfe": result.provenance["nfe_per_slice"],
                    "s_per_slice": result.provenance["timings"]["seconds_per_slice"],
                    "total_s": elapsed,
                    **metrics,
                    "healthy_fp_ml": fp_ml,
                }
            )
            print(_format_row(rows[-1]), flush=True)
    return rows


COLUMNS = [
    "method",
    "model",
    "noise_level",
    "steps",
    "nfe",
    "s_per_slice",
    "auroc",
    "ap",
    "best_dice",
    "dice_at_threshold",
    "healthy_fp_ml",
]


def _fmt(value):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _format_row(row) -> str:
    return " | ".join(_fmt(row.get(c)) for c in COLUMNS)


def to_markdown(rows, *, device: str) -> str:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# Benchmarks",
        "",
        "Made by `python benchmarks/run.py`. Lesion sample (24 axial slices of the MNI152 "
        "template with a synthetic tumour and 5 MS-like lesions), metrics inside the brain mask; "
        "`healthy_fp_ml` is the lesion volume flagged on the healthy sample at the calibrated "
        "threshold. Each model runs at several noise levels with its default step count, then "
        "at its default noise level with fewer steps and with the papers' full schedule "
        "(every timestep, NFE = t + 1). Seconds per slice cover the network work (restore), "
        "batch size 8.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads, device `{device}`, torch {torch.__version__}; peak resident memory of "
        f"the benchmark process {peak_mb:.0f} MB.",
        "",
        "**Caveat**: the shipped models were trained on the same MNI152 template the samples "
        "are cut from, so these numbers are optimistic; a benchmark on other healthy brains "
        "with several lesion kinds is the next step.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + _format_row(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="5,full", help="step counts at the default level")
    parser.add_argument(
        "--levels", default="25,50,100,250", help="noise levels at the default step count"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args()
    print(" | ".join(COLUMNS))
    levels = [int(v) for v in args.levels.split(",") if v]
    rows = run([v for v in args.steps.split(",") if v], levels, args.device)
    atomic_write_text(args.out, to_markdown(rows, device=args.device))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
