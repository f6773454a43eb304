"""Speed and detection benchmark of every method on the benchmark set, per lesion kind.

For each method with a model (the shipped ones, plus ``--model METHOD=PATH``), at its defaults
and a few other settings (the papers' full schedule where it is affordable), and for two
no-model baselines, it reports on the benchmark set (``benchmarks/make_benchmark_set.py``:
healthy subjects made unlike the training template in anatomy and acquisition, each with a
tumour, MS-like plaques, a small T1-bright lesion and a stroke): per lesion kind the voxel
AUROC, AP and best Dice inside the brain, each kind scored against its own lesion voxels, the
other brain voxels of its scans and every voxel of the healthy scans; their macro average over
the kinds (pooled figures would be dominated by the large tumours); the share of healthy brain
flagged at the calibrated threshold; NFE and seconds per slice. Figures are reported on the
*test* subjects; the tuning subjects' macro AUROC is shown beside them (defaults may be chosen
on those, never on the test ones). Prints a table and writes ``docs/benchmarks.md`` with a plot
of macro AUROC against seconds per slice.

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
from scipy import ndimage

from napari_uad.io import read_mask, read_scan
from napari_uad.io.atomic import atomic_write_text
from napari_uad.methods import METHOD_NAMES, default_model_name, get_method_class
from napari_uad.metrics import evaluate
from napari_uad.models.checkpoint import CheckpointError
from napari_uad.models.registry import list_models, resolve_model
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
SPLITS = ("tune", "test")

#: Per method: settings run (the method's defaults first; "full" steps mean noise_level + 1,
#: the papers' sampling from the default noise level).
SWEEPS = {
    "anoddpm": [{}, {"steps": "full"}],
    "addm": [{}],
    "autoddpm": [{}],
    "thor": [{}],
    "disyre": [{}, {"smoothing": 3}],
    "madad": [{}],
    "ensemble": [{}, {"rule": "max"}],
}
QUICK = {name: sweep[:1] for name, sweep in SWEEPS.items()}


def load_set(folder: Path, subjects: int | None = None):
    """The benchmark's subjects: per subject its split, brain, healthy scan and lesion scans."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(
            f"no benchmark set in {folder}: run python benchmarks/make_benchmark_set.py first"
        )
    manifest = json.loads(manifest_path.read_text())
    if "split" not in manifest["subjects"][0]:
        raise SystemExit(
            f"{folder} holds an older benchmark set: rebuild it with "
            "python benchmarks/make_benchmark_set.py"
        )
    cases = []
    for entry in manifest["subjects"][:subjects]:
        healthy = read_scan(folder / entry["healthy"])
        brain = read_mask(folder / entry["brain_mask"], like=healthy)
        lesions = {}
        for kind, files in entry["lesions"].items():
            scan = read_scan(folder / files["scan"])
            lesions[kind] = (scan, read_mask(folder / files["truth"], like=scan))
        cases.append(
            {
                "name": entry["name"],
                "split": entry["split"],
                "healthy": healthy,
                "brain": brain,
                "lesions": lesions,
            }
        )
    return cases, list(manifest["kinds"])


def score_maps(cases, kinds, maps, threshold=None) -> dict:
    """Per split: per-kind AUROC/AP/best Dice, their macro means, and the healthy share flagged.

    ``maps[(subject, case)]`` is the anomaly map of a subject's ``"healthy"`` scan or of one
    lesion kind's scan.
    """
    scored = {}
    for split in SPLITS:
        chosen = [c for c in cases if c["split"] == split]
        if not chosen:
            continue
        healthy = [maps[(c["name"], "healthy")][c["brain"]] for c in chosen]
        per_kind = {}
        for kind in kinds:
            scores, truths = [], []
            for case, normal in zip(chosen, healthy, strict=True):
                brain = case["brain"]
                truth = case["lesions"][kind][1]
                scores += [maps[(case["name"], kind)][brain], normal]
                truths += [truth[brain], np.zeros(normal.shape, dtype=bool)]
            result = evaluate(np.concatenate(scores), np.concatenate(truths))
            per_kind[kind] = {k: result[k] for k in ("auroc", "ap", "best_dice")}
        entry = {"kinds": per_kind}
        for metric in ("auroc", "ap", "best_dice"):
            entry[f"macro_{metric}"] = float(np.mean([per_kind[k][metric] for k in kinds]))
        if threshold is not None:
            flagged = np.concatenate(healthy) >= threshold
            entry["healthy_flagged_percent"] = 100.0 * float(flagged.mean())
        scored[split] = entry
    return scored


def _row(label, scored, extra) -> dict:
    main = scored.get("test") or scored["tune"]
    row = {**label, **extra, "splits": scored}
    row.update({k: v for k, v in main.items() if k != "kinds"})
    row["kinds"] = main["kinds"]
    row["auroc"] = main["macro_auroc"]  # the plot and the schedule table read this
    row["tune_macro_auroc"] = scored["tune"]["macro_auroc"] if "tune" in scored else None
    return row


def _scans(case, kinds) -> dict:
    """A subject's scans by name: ``"healthy"`` and one per lesion kind."""
    return {"healthy": case["healthy"], **{k: case["lesions"][k][0] for k in kinds}}


def _baseline_maps(cases, kinds, score) -> dict:
    maps = {}
    for case in cases:
        brain = case["brain"]
        for name, scan in _scans(case, kinds).items():
            normalised = normalise_intensity(scan.data, brain)
            maps[(case["name"], name)] = score(normalised, brain) * brain
    return maps


def baseline_rows(cases, kinds) -> list[dict]:
    """No model: deviation from the brain's median; residual of a 7 x 7 x 3 median filter."""
    rules = [
        ("deviation from brain median", lambda x, b: np.abs(x - np.median(x[b]))),
        (
            "7x7x3 median filter residual",
            lambda x, b: np.abs(x - ndimage.median_filter(x, (7, 7, 3))),
        ),
    ]
    rows = []
    for name, rule in rules:
        scored = score_maps(cases, kinds, _baseline_maps(cases, kinds, rule))
        label = {"method": "baseline", "model": name, "setting": "-"}
        rows.append(_row(label, scored, {"nfe": 0, "s_per_slice": 0.0}))
    return rows


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


def method_rows(cases, kinds, method: str, model, sweep, device: str):
    from napari_uad.models.checkpoint import load_config

    method_class = get_method_class(method)
    config = load_config(model)
    rows = []
    for setting in sweep:
        params = _resolve_setting(method_class, config, setting)
        maps = {}
        seconds, slices, nfe, used = 0.0, 0, None, {}
        for case in cases:
            for name, scan in _scans(case, kinds).items():
                result = detect(
                    scan,
                    method=method,
                    model=model,
                    brain_mask=case["brain"],
                    device=device,
                    **params,
                )
                maps[(case["name"], name)] = result.anomaly
                seconds += result.provenance["timings"]["restore_s"]
                slices += result.provenance["slices_processed"]
                nfe = result.provenance["nfe_per_slice"]
                used = result.provenance["parameters"]
        shown = {k: used[k] for k in params} if params else {}
        label = {
            "method": method,
            "model": config.name,
            "setting": ", ".join(f"{k}={v}" for k, v in shown.items()) or "defaults",
        }
        # A calibration belongs to the defaults it was made with.
        threshold = None if params else method_class.calibrated_threshold_of(config)
        extra = {"nfe": nfe, "s_per_slice": seconds / max(slices, 1), "threshold": threshold}
        rows.append(_row(label, score_maps(cases, kinds, maps, threshold), extra))
        rows[-1]["full"] = "full" in setting.values()
        print(_format_row(rows[-1], kinds), flush=True)
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


HEAD = ["method", "model", "setting", "nfe", "s/slice", "macro AUROC", "macro AP", "macro Dice"]
TAIL = ["healthy flagged %", "tune macro AUROC"]


def _fmt(value, digits: int = 3):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def columns(kinds) -> list[str]:
    return [*HEAD, *(f"{k} AUROC / AP / Dice" for k in kinds), *TAIL]


def _cells(row, kinds) -> list[str]:
    cells = [row["method"], row["model"], row["setting"], _fmt(row["nfe"])]
    cells += [_fmt(row["s_per_slice"])]
    cells += [_fmt(row[f"macro_{m}"]) for m in ("auroc", "ap", "best_dice")]
    for kind in kinds:
        k = row["kinds"][kind]
        cells.append(f"{k['auroc']:.3f} / {k['ap']:.3f} / {k['best_dice']:.3f}")
    cells += [_fmt(row.get("healthy_flagged_percent"), 2), _fmt(row.get("tune_macro_auroc"))]
    return cells


def _format_row(row, kinds) -> str:
    return " | ".join(_cells(row, kinds))


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
    baselines = [r for r in rows if r["method"] == "baseline"]
    for r, style in zip(baselines, ["--", "-.", ":"] * len(baselines), strict=False):
        ax.axhline(r["auroc"], color="grey", ls=style, label=f"no model: {r['model']}")
    ax.axhline(0.5, color="lightgrey", ls="-", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per slice (CPU)")
    ax.set_ylabel("macro voxel AUROC over lesion kinds (test subjects)")
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
    cases: dict,
    kinds,
    figure: str,
    peak_mb,
    note: str = "",
    targets=(),
    threads: int | None = None,
) -> str:
    head = columns(kinds)
    lines = [
        "# Benchmarks",
        "",
        f"Made by `{command}` on the benchmark set of `benchmarks/make_benchmark_set.py`: "
        f"{cases.get('tune', 0)} tuning and {cases.get('test', 0)} test subjects, each the "
        "MNI152 template made into another person's scan (3-D deformation, larger or smaller "
        "ventricles, atrophy, another tissue contrast, thick slices or blur, bias field, "
        "gamma, Rician noise 1.5-4 %; none of the training augmentations), with a healthy scan "
        "and one scan per lesion kind: **tumour** (mass effect, necrosis, oedema in the truth), "
        "**ms** (6-12 T1-hypointense white-matter plaques, 2-6 mm radius, half "
        "periventricular), **bright** (one T1-bright lesion, 4-9 mm radius), **stroke** (a "
        "hypointense cortical wedge). Each kind is scored on the *test* subjects against its "
        "lesion voxels, the other brain voxels of its scans and all brain voxels of the "
        "healthy scans (voxel AUROC / AP / best Dice inside the brain); *macro* is the mean "
        "over the four kinds. *healthy flagged %* is the share of healthy brain voxels at or "
        "above the model's calibrated threshold (only for the defaults it was calibrated "
        "with). *tune macro AUROC* is the same macro figure on the tuning subjects, on which "
        "defaults may be chosen; the test subjects are only ever reported. Seconds per slice "
        "are the restoration alone, batches of 8.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {threads} "
        f"torch threads, device `{device}`, torch {torch.__version__}; peak resident memory of "
        f"the benchmark process {peak_mb:.0f} MB.",
        "",
        *([note, ""] if note else []),
        f"![Macro AUROC against seconds per slice]({figure})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + _format_row(row, kinds) + " |" for row in rows]
    tuned = [r for r in rows if "tune" in r.get("splits", {})]
    if tuned:
        lines += [
            "",
            "## Tuning subjects",
            "",
            "The same runs on the tuning subjects (AUROC / AP / best Dice per kind).",
            "",
            "| method | model | setting | macro AUROC | "
            + " | ".join(f"{k}" for k in kinds)
            + " | healthy flagged % |",
            "|" + "---|" * (5 + len(kinds)),
        ]
        for r in tuned:
            t = r["splits"]["tune"]
            cells = [r["method"], r["model"], r["setting"], _fmt(t["macro_auroc"])]
            cells += [
                f"{t['kinds'][k]['auroc']:.3f} / {t['kinds'][k]['ap']:.3f} / "
                f"{t['kinds'][k]['best_dice']:.3f}"
                for k in kinds
            ]
            cells.append(_fmt(t.get("healthy_flagged_percent"), 2))
            lines.append("| " + " | ".join(cells) + " |")
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
        "--merge",
        type=Path,
        metavar="PATH",
        help="start from an earlier run's benchmarks.json (its baselines and method rows come "
        "first; the speed targets then cover its methods too)",
    )
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
            saved["kinds"],
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
    cases, kinds = load_set(args.data, args.subjects)
    print(" | ".join(columns(kinds)), flush=True)
    if args.merge:
        earlier = json.loads(args.merge.read_text())
        rows = earlier["rows"]
        command = f"{earlier['command']}; then {command}"
    else:
        rows = baseline_rows(cases, kinds)
    for row in rows:
        print(_format_row(row, kinds), flush=True)
    sweeps = QUICK if args.quick else SWEEPS
    first_models = {}
    for method, model in _models(args):
        # The sweep runs on a method's first model; further models run at their defaults.
        sweep = sweeps[method] if method not in first_models else QUICK[method]
        first_models.setdefault(method, model)
        rows += method_rows(cases, kinds, method, model, sweep, args.device)
    targets = []
    if not args.no_targets:
        print("targets (current slice, 24-slice slab, 256x256x180 memory):", flush=True)
        methods = dict.fromkeys(r["method"] for r in rows if r["method"] != "baseline")
        targets = target_rows(list(methods), first_models, device=args.device)
    counts = {split: sum(c["split"] == split for c in cases) for split in SPLITS}
    write_outputs(
        rows, args.out, command, counts, kinds, args.device, note=args.note, targets=targets
    )


def write_outputs(
    rows,
    out: Path,
    command: str,
    cases: dict,
    kinds,
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
        kinds=kinds,
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
        "kinds": list(kinds),
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
