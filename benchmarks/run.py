"""Speed and detection benchmark of every method on the benchmark set.

For each method with a model (the shipped ones, plus ``--model METHOD=PATH``) and a sweep of
its speed knob (noise level, step count, re-sampling rounds, severities), including the papers'
full schedule where it is affordable, and a no-model baseline, it reports on the benchmark set
(``benchmarks/make_benchmark_set.py``: healthy subjects unlike the training data, with tumour,
MS-like and stroke-like lesions): voxel AUROC, AP, best Dice, Dice at the calibrated threshold
(pooled over subjects, per lesion kind and over all), false-positive volume on the healthy
scans at that threshold, NFE and seconds per slice, and the peak memory of the process. Prints
a table and writes ``docs/benchmarks.md`` with a plot of AUROC against seconds per slice.

    python benchmarks/make_benchmark_set.py          # once (needs nilearn)
    python benchmarks/run.py [--methods anoddpm,thor] [--model disyre=PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from napari_uad.io import read_mask, read_scan
from napari_uad.io.atomic import atomic_write_text
from napari_uad.methods import METHOD_NAMES, get_method_class
from napari_uad.metrics import evaluate
from napari_uad.models.checkpoint import CheckpointError
from napari_uad.models.registry import default_model_name, list_models, resolve_model
from napari_uad.pipeline import detect
from napari_uad.preprocess import normalise_intensity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from targets import (  # noqa: E402  (the sibling script, not a package)
    schedule_markdown,
    schedule_rows,
    target_rows,
    targets_markdown,
)

HERE = Path(__file__).resolve().parent
KINDS = ("tumour", "ms", "stroke")

#: Per method: settings swept (the method's defaults first, then the speed knob, then the
#: papers' full schedule where it runs in minutes: "full" steps mean noise_level + 1).
SWEEPS = {
    "anoddpm": [{}, {"steps": 1}, {"steps": 5}, {"steps": "full"}],
    "addm": [{}, {"steps": 5}, {"steps": "full"}],
    "autoddpm": [{}, {"resample_steps": 5}],
    "thor": [{}, {"steps": "full"}],
    "disyre": [{}, {"mode": "multi-step"}, {"smoothing": 3}],
    "madad": [{}, {"steps": 5}, {"sigma": 2.5}],
}
QUICK = {name: sweep[:1] for name, sweep in SWEEPS.items()}


def load_set(folder: Path, subjects: int | None):
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(
            f"no benchmark set in {folder}: run python benchmarks/make_benchmark_set.py first"
        )
    manifest = json.loads(manifest_path.read_text())
    cases = []
    for entry in manifest["subjects"][:subjects]:
        healthy = read_scan(folder / entry["healthy"])
        brain = read_mask(folder / entry["brain_mask"], like=healthy)
        lesions = {}
        for kind, files in entry["lesions"].items():
            scan = read_scan(folder / files["scan"])
            lesions[kind] = (scan, read_mask(folder / files["truth"], like=scan))
        cases.append({"name": entry["name"], "healthy": healthy, "brain": brain, **lesions})
    return cases


def _pooled(parts, threshold=None) -> dict:
    scores = np.concatenate([p[0] for p in parts])
    truth = np.concatenate([p[1] for p in parts])
    return evaluate(scores, truth, threshold=threshold)


def _score_rows(label, per_kind, healthy_fp, extra) -> dict:
    """One table row: metrics over all kinds, plus AUROC per kind."""
    everything = [part for parts in per_kind.values() for part in parts]
    threshold = extra.pop("threshold", None)
    overall = _pooled(everything, threshold)
    row = {**label, **extra, **overall}
    for kind, parts in per_kind.items():
        row[f"auroc_{kind}"] = _pooled(parts)["auroc"]
    row["healthy_fp_ml"] = healthy_fp
    return row


def baseline_row(cases) -> dict:
    """No model: absolute deviation from the brain's median normalised intensity."""
    per_kind = {kind: [] for kind in KINDS}
    for case in cases:
        brain = case["brain"]
        for kind in KINDS:
            scan, truth = case[kind]
            normalised = normalise_intensity(scan.data, brain)
            scores = np.abs(normalised - np.median(normalised[brain]))
            per_kind[kind].append((scores[brain], truth[brain]))
    label = {"method": "baseline", "model": "deviation from brain median", "setting": "-"}
    return _score_rows(label, per_kind, None, {"nfe": 0, "s_per_slice": 0.0})


def _resolve_setting(method_class, config, setting: dict) -> dict:
    defaults = method_class.defaults_for_config(config)
    params = {}
    for key, value in setting.items():
        if value == "full":
            value = int(params.get("noise_level", defaults["noise_level"])) + 1
        elif isinstance(value, str) and value.startswith("default+"):
            value = int(defaults[key]) + int(value.split("+")[1])
        params[key] = value
    return params


def method_rows(cases, method: str, model, sweep, device: str):
    from napari_uad.models.checkpoint import load_config

    method_class = get_method_class(method)
    config = load_config(model)
    rows = []
    for setting in sweep:
        params = _resolve_setting(method_class, config, setting)
        per_kind = {kind: [] for kind in KINDS}
        seconds, slices, nfe, threshold = 0.0, 0, None, None
        for case in cases:
            brain = case["brain"]
            for kind in KINDS:
                scan, truth = case[kind]
                result = detect(
                    scan, method=method, model=model, brain_mask=brain, device=device, **params
                )
                per_kind[kind].append((result.anomaly[brain], truth[brain]))
                seconds += result.provenance["timings"]["restore_s"]
                slices += result.provenance["slices_processed"]
                nfe = result.provenance["nfe_per_slice"]
                threshold = result.threshold
                used = result.provenance["parameters"]
        fp_ml = 0.0
        for case in cases:
            on_healthy = detect(
                case["healthy"],
                method=method,
                model=model,
                brain_mask=case["brain"],
                device=device,
                threshold=threshold,
                **params,
            )
            fp_ml += float(on_healthy.lesion_mask.sum()) * np.prod(case["healthy"].spacing) / 1e3
        shown = {k: used[k] for k in params} if params else {}
        label = {
            "method": method,
            "model": config.name,
            "setting": ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults",
        }
        extra = {"nfe": nfe, "s_per_slice": seconds / max(slices, 1), "threshold": threshold}
        rows.append(_score_rows(label, per_kind, fp_ml / len(cases), extra))
        rows[-1]["full"] = "full" in setting.values()
        print(_format_row(rows[-1]), flush=True)
    return rows


def _models(args) -> list[tuple[str, Path]]:
    """(method, model folder) pairs: ``--model`` choices, else every installed model of the
    method's own family (both shipped DDPMs for anoddpm), else its default model."""
    chosen: dict[str, list[str]] = {}
    for item in args.model:
        method, _, path = item.partition("=")
        chosen.setdefault(method, []).append(path)
    pairs = []
    for method in args.methods:
        names = chosen.get(method)
        if names is None:
            own = [
                m.name
                for m in list_models()
                if get_method_class(method).model_methods[:1] == (m.method,)
            ]
            names = own if method == "anoddpm" and own else [default_model_name(method)]
        for name in names:
            try:
                pairs.append((method, resolve_model(name)))
            except CheckpointError:
                print(f"skipping {method}: no model {name!r} (pass --model {method}=PATH)")
    return pairs


COLUMNS = [
    "method",
    "model",
    "setting",
    "nfe",
    "s_per_slice",
    "auroc",
    "auroc_tumour",
    "auroc_ms",
    "auroc_stroke",
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


def plot(rows, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.4, 4.2), layout="constrained")
    ax = figure.add_subplot()
    runs = dict.fromkeys((r["method"], r["model"]) for r in rows if r["method"] != "baseline")
    for method, model in runs:
        points = sorted(
            (r["s_per_slice"], r["auroc"])
            for r in rows
            if (r["method"], r["model"]) == (method, model)
        )
        ax.plot(*zip(*points, strict=True), marker="o", label=f"{method} ({model})")
    for r in rows:
        if r["method"] == "baseline":
            ax.axhline(r["auroc"], color="grey", ls="--", label="no-model baseline")
    ax.axhline(0.5, color="lightgrey", ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per slice (CPU)")
    ax.set_ylabel("voxel AUROC (all lesion kinds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.savefig(path, dpi=120)
    return path


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def to_markdown(
    rows,
    *,
    device: str,
    command: str,
    cases: int,
    figure: str,
    peak_mb,
    note: str = "",
    targets=(),
    threads: int | None = None,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Made by `{command}` on the benchmark set of `benchmarks/make_benchmark_set.py`: "
        f"{cases} healthy subjects (the MNI152 template deformed in 3-D, bias field, gamma, "
        "Rician noise; none of the training augmentations), each with a tumour (oedema in the "
        "truth), MS-like and stroke-like lesions. Metrics are pooled over subjects inside the "
        "brain; `dice_at_threshold` uses the model's calibrated healthy threshold (the scan's "
        "99th percentile when the method has none), `healthy_fp_ml` is the volume flagged at "
        "that threshold on each healthy subject (mean). Seconds per slice are the restoration "
        "alone, batches of 8.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {threads} "
        f"torch threads, device `{device}`, torch {torch.__version__}; peak resident memory of "
        f"the benchmark process {peak_mb:.0f} MB.",
        "",
        *([note, ""] if note else []),
        f"![AUROC against seconds per slice]({figure})",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + _format_row(row) + " |" for row in rows]
    schedules = schedule_rows(rows)
    if schedules:
        lines += [
            "",
            "## Default settings against every denoising step",
            "",
            "The same model run with every denoising step from its default noise level "
            "(`steps=full`, the papers' sampling at that level), against its default strided "
            "schedule, in the run above.",
            "",
            *schedule_markdown(schedules),
        ]
    if targets:
        lines += [
            "",
            "## Speed and memory targets",
            "",
            "Each method at its defaults with its default model, by `benchmarks/targets.py`: "
            "*slice* is one `detect(..., slices=[k])` call on the lesion sample with the model "
            "already loaded (as napari keeps it), preprocessing and writing back included, "
            "median of 3; *slab* is the whole 24-slice lesion sample; *peak* is the peak "
            "resident memory of a fresh process detecting on a 256 x 256 x 180 volume (the "
            "sample resampled), with its time in brackets.",
            "",
            *targets_markdown(targets),
        ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--model", action="append", default=[], metavar="METHOD=PATH")
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--subjects", type=int, help="use only the first N subjects")
    parser.add_argument("--quick", action="store_true", help="defaults only, no sweep")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--note", default="", help="a paragraph for the page (e.g. on the models)")
    parser.add_argument(
        "--no-targets", action="store_true", help="skip the speed and memory target runs"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="PATH",
        help="rewrite the page and the plot from a previous run's benchmarks.json",
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        write_outputs(
            saved["rows"],
            args.out,
            saved["command"],
            saved["cases"],
            saved["device"],
            peak_mb=saved["peak_mb"],
            note=args.note or saved.get("note", ""),
            targets=saved.get("targets", []),
            threads=saved.get("threads"),
        )
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.methods = [m for m in args.methods.split(",") if m]
    command = " ".join(["python benchmarks/run.py", *sys.argv[1:]])
    cases = load_set(args.data, args.subjects)
    print(" | ".join(COLUMNS), flush=True)
    rows = [baseline_row(cases)]
    print(_format_row(rows[-1]), flush=True)
    sweeps = QUICK if args.quick else SWEEPS
    first_models = {}
    for method, model in _models(args):
        # The sweep runs on a method's first model; further models run at their defaults.
        sweep = sweeps[method] if method not in first_models else QUICK[method]
        first_models.setdefault(method, model)
        rows += method_rows(cases, method, model, sweep, args.device)
    targets = []
    if not args.no_targets:
        print("targets (current slice, 24-slice slab, 256x256x180 memory):", flush=True)
        targets = target_rows(list(first_models), first_models, device=args.device)
    write_outputs(rows, args.out, command, len(cases), args.device, note=args.note, targets=targets)


def write_outputs(
    rows,
    out: Path,
    command: str,
    cases: int,
    device: str,
    peak_mb=None,
    note: str = "",
    targets=(),
    threads=None,
) -> None:
    """The page, the plot and the rows as JSON (``--from-json`` rewrites the first two)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    threads = threads or torch.get_num_threads()
    figure = out.with_name("benchmarks_auroc_speed.png")
    plot(rows, figure)
    peak_mb = peak_memory_mb() if peak_mb is None else peak_mb
    text = to_markdown(
        rows,
        device=device,
        command=command,
        cases=cases,
        figure=figure.name,
        peak_mb=peak_mb,
        note=note,
        targets=targets,
        threads=threads,
    )
    atomic_write_text(out, text)
    record = {
        "command": command,
        "cases": cases,
        "device": device,
        "peak_mb": round(peak_mb),
        "note": note,
        "threads": threads,
        "rows": rows,
        "targets": list(targets),
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}, {figure} and {out.with_suffix('.json').name}")


if __name__ == "__main__":
    main()
