"""The ``napari-uad`` command.

``restore`` runs a method over scans and writes NIfTI outputs on each input's grid, ``evaluate``
scores anomaly maps against truth masks, ``models`` lists installed models, ``demo`` opens the
sample scan in napari (or, without a display, runs the pipeline on it and writes a figure).
Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

from . import __version__
from .device import cpu_threads

EXIT_BAD_INPUT = 2
THREADS_HELP = "CPU threads for the networks (default: $NAPARI_UAD_THREADS, else all cores)"


class _DefaultsHelp(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, [], argparse.SUPPRESS)
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHOD_NAMES

    parser = argparse.ArgumentParser(
        prog="napari-uad",
        description="Unsupervised anomaly detection in brain MRI with diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"napari-uad {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    restore = commands.add_parser(
        "restore",
        help="pseudo-healthy image, anomaly map and lesion mask for scans",
        description="Run a method over scans. For each INPUT it writes <stem>_healthy.nii.gz, "
        "<stem>_anomaly.nii.gz, <stem>_mask.nii.gz (lesions), <stem>_brain_mask.nii.gz (the "
        "brain scored), <stem>_lesions.tsv (one row per lesion, world coordinates in mm) and "
        "<stem>.json to --out, on the input's grid and affine; a BIDS dataset gives a BIDS "
        "derivatives dataset instead (docs/cohorts.md). napari-uad_summary.tsv (a row per "
        "scan) and napari-uad_log.tsv are kept up to date as scans finish. Raw scanner "
        "T1s (skull, neck) need --prepare (or 'napari-uad prepare' first). Unset options "
        "take the method's defaults stored with its model "
        "(docs/methods.md). The progress bar counts network evaluations of a batch of slices.",
        formatter_class=_DefaultsHelp,
    )
    restore.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="scans: NIfTI (.nii, .nii.gz), a DICOM series (folder or one .dcm file), a 2-D "
        "PNG/TIFF image; or a BIDS dataset folder; or a .csv/.tsv list (columns scan, "
        "brain_mask, id)",
    )
    restore.add_argument(
        "--method",
        required=True,
        choices=METHOD_NAMES,
        metavar="NAME",
        help=f"one of {', '.join(METHOD_NAMES)} (ensemble is the best on the benchmark; "
        "docs/methods.md)",
    )
    restore.add_argument(
        "--model", help="model name or checkpoint folder (default: the method's shipped model)"
    )
    restore.add_argument(
        "--noise",
        choices=("gaussian", "simplex"),
        help="noise type (DDPM methods; default: model's)",
    )
    restore.add_argument(
        "--noise-level", type=int, metavar="T", help="timestep to noise to (default: model's)"
    )
    restore.add_argument(
        "--steps", type=int, metavar="N", help="denoising steps = NFE per slice (default: model's)"
    )
    restore.add_argument(
        "--eta", type=float, metavar="E", help="0: DDIM (deterministic), 1: DDPM (default: model's)"
    )
    restore.add_argument(
        "--smoothing",
        type=int,
        metavar="K",
        help="median filter size for the map, 0: off (default: model's)",
    )
    restore.add_argument(
        "--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or mps"
    )
    restore.add_argument("--seed", type=int, default=0, metavar="S", help="seed of all randomness")
    restore.add_argument(
        "--brain-mask",
        action="append",
        metavar="PATH|auto",
        help="brain mask per input (repeat for several inputs); 'auto' (default) estimates it",
    )
    restore.add_argument(
        "--threshold",
        default="auto",
        metavar="auto|VALUE",
        help="lesion threshold on the map; 'auto': the model's threshold calibrated on "
        "healthy scans",
    )
    restore.add_argument(
        "--min-size",
        type=float,
        default=0.0,
        metavar="MM3",
        help="smallest lesion volume in mm³ (measured on each scan's own voxels)",
    )
    restore.add_argument(
        "--min-voxels", type=int, default=0, metavar="N", help="smallest lesion in voxels"
    )
    restore.add_argument(
        "--erode-brain",
        type=int,
        default=0,
        metavar="N",
        help="erode the brain mask by N voxels before scoring (silences the brain edge)",
    )
    restore.add_argument(
        "--batch-size", type=int, default=8, metavar="B", help="slices per network call"
    )
    restore.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    restore.add_argument(
        "--prepare",
        action="store_true",
        help="prepare each scan first (crop, N4, skull strip, align; see 'napari-uad prepare'); "
        "the outputs still land on the input's grid",
    )
    _add_prepare_arguments(restore, prefix="prepare-")
    _add_sampling_arguments(restore)
    restore.add_argument(
        "--participant-label",
        nargs="+",
        metavar="LABEL",
        help="BIDS input: only these participants (01 or sub-01)",
    )
    restore.add_argument(
        "--skip-existing",
        action="store_true",
        help="keep scans whose outputs are complete (a resumed run); partial ones are redone",
    )
    restore.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="scans at once, as Dask tasks on N local worker processes (1: in this process)",
    )
    restore.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the scans on an existing Dask cluster (tcp://host:8786; docs/cohorts.md)",
    )
    restore.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder (a BIDS derivatives dataset for a BIDS input)",
    )
    restore.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    compare = commands.add_parser(
        "compare",
        help="several methods on one scan: one side-by-side figure and a metrics table",
        description="Run several methods on one scan and write one figure with a row per "
        "method (<stem>_compare.png), each method's anomaly map, and, with --truth, AUROC, AP "
        "and Dice per method (<stem>_compare.csv and .json).",
    )
    compare.add_argument("input", metavar="SCAN", help="NIfTI scan")
    compare.add_argument(
        "--methods", required=True, metavar="A,B,C", help=f"from {', '.join(METHOD_NAMES)}"
    )
    compare.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="METHOD=MODEL",
        help="model name or folder for a method (repeat); shipped defaults otherwise",
    )
    compare.add_argument("--truth", metavar="MASK", help="lesion truth mask for metrics")
    compare.add_argument("--brain-mask", metavar="PATH|auto", default="auto")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--threshold", default="auto", metavar="auto|VALUE")
    compare.add_argument("--batch-size", type=int, default=8)
    compare.add_argument("--slice", type=int, metavar="N", help="axial slice shown (display index)")
    compare.add_argument("--format", choices=("png", "svg", "pdf"), default="png")
    compare.add_argument("--dpi", type=int, default=150)
    compare.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    _add_sampling_arguments(compare, method_params=False)
    compare.add_argument("--out", required=True, type=Path, metavar="DIR")
    compare.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    evaluate = commands.add_parser("evaluate", help="metrics of anomaly maps against truth masks")
    evaluate.add_argument("maps", nargs="+", metavar="ANOMALY", help="anomaly map NIfTI files")
    evaluate.add_argument(
        "--truth",
        action="append",
        required=True,
        metavar="PATH",
        help="truth mask per map (repeat, same order)",
    )
    evaluate.add_argument(
        "--brain-mask",
        action="append",
        metavar="PATH",
        help="restrict to the brain (repeat per map); default: map > 0 region "
        "is not assumed, all voxels count",
    )
    evaluate.add_argument(
        "--threshold",
        metavar="auto|VALUE",
        default="auto",
        help="threshold of 'Dice at threshold'; 'auto' reads the one restore used from "
        "<stem>.json beside the map (the table then names it)",
    )
    evaluate.add_argument("--json", type=Path, metavar="PATH", help="also write metrics as JSON")

    _add_train_parser(commands)
    _add_calibrate_parser(commands)

    prepare = commands.add_parser(
        "prepare",
        help="raw scanner T1 -> skull-stripped brain for the models (crop, N4, skull strip, align)",
        description="Prepare raw T1 scans (skull, neck, bias field, any tilt) for the models: "
        "reorient, crop the neck, resample (anti-aliased), N4 bias correction, skull stripping "
        "(BET by default), rigid alignment to the MNI152 template. For each INPUT it writes "
        "<stem>_prepared.nii.gz (the brain, 0 outside), <stem>_prepared_brain_mask.nii.gz (its "
        "grid), <stem>_brain_mask.nii.gz (the brain mask on the input's grid, for "
        "'restore --brain-mask') and <stem>_prepare.json (steps, times, the transform back).",
        formatter_class=_DefaultsHelp,
    )
    prepare.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI scans or DICOM series")
    _add_prepare_arguments(prepare)
    prepare.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    prepare.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    commands.add_parser("models", help="list installed models")

    demo = commands.add_parser("demo", help="open the sample scan in napari and detect anomalies")
    demo.add_argument(
        "--no-gui",
        action="store_true",
        help="run the pipeline on the sample and write outputs and a PNG figure",
    )
    demo.add_argument("--out", type=Path, default=Path("napari-uad-demo"), metavar="DIR")
    demo.add_argument("--device", default="auto")
    demo.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    return parser


def _add_prepare_arguments(parser, *, prefix: str = "") -> None:
    """The preparation's options; restore names them --prepare-..."""
    parser.add_argument(
        f"--{prefix}skull-strip",
        dest="skull_strip",
        choices=("bet", "hd-bet", "synthstrip", "none"),
        default="bet",
        help="bet (built in), hd-bet or synthstrip (when installed), none (already stripped)",
    )
    parser.add_argument(
        f"--{prefix}align",
        dest="align",
        choices=("none", "rigid", "affine"),
        default="rigid",
        help="alignment to the models' MNI152 template space",
    )
    parser.add_argument(
        f"--{prefix}resolution",
        dest="resolution",
        default="1",
        metavar="MM|native",
        help="isotropic voxel size of the prepared scan; 'native' keeps the input's voxels",
    )
    parser.add_argument(
        f"--{prefix}no-crop", dest="no_crop", action="store_true", help="keep the neck"
    )
    parser.add_argument(
        f"--{prefix}no-n4", dest="no_n4", action="store_true", help="skip N4 bias correction"
    )


def _prepare_options(args):
    from .prepare import PrepareOptions

    if args.resolution == "native":
        resolution = None
    else:
        try:
            resolution = float(args.resolution)
        except ValueError:
            raise UsageError(
                f"--resolution must be a size in mm or 'native', got {args.resolution!r}"
            ) from None
    return PrepareOptions(
        crop=not args.no_crop,
        resolution=resolution,
        bias_correction=not args.no_n4,
        skull_strip=args.skull_strip,
        align=args.align,
    )


def _prepare(args) -> int:
    """``napari-uad prepare``: the prepared brain, its masks and the record of each step."""
    from .io import Scan, nifti_stem, read_scan, write_nifti
    from .io.atomic import atomic_write_text

    options = _prepare_options(args)
    stems = [nifti_stem(path) for path in args.inputs]
    if len(set(stems)) != len(stems):
        raise UsageError("two inputs share a file name; their outputs would collide")
    planned = [_prepare_paths(args.out, stem) for stem in stems]
    _check_out_folder(args.out)
    for stem, outputs in zip(stems, planned, strict=True):
        _check_outputs(outputs.values(), args.inputs, args.out, overwrite=args.overwrite, stem=stem)
    with _claimed_outputs(args.out, stems, planned, overwrite=args.overwrite) as claims:
        for path, stem, claim in zip(args.inputs, stems, claims, strict=True):
            _say(f"reading {path}")
            scan = read_scan(path)
            prepared = _prepare_with_bar(scan, options, stem)
            grid = Scan(prepared.scan.data, prepared.scan.affine)
            write_nifti(claim.stage("prepared"), prepared.scan.data, like=grid)
            write_nifti(claim.stage("prepared_mask"), prepared.brain_mask, like=grid, dtype="uint8")
            write_nifti(
                claim.stage("brain_mask"), prepared.brain_mask_input, like=scan, dtype="uint8"
            )
            record = {"input": str(Path(path).resolve()), "input_shape": list(scan.shape)}
            record.update(prepared.provenance())
            record["napari_uad_version"] = __version__
            atomic_write_text(claim.stage("provenance"), json.dumps(record, indent=2) + "\n")
            claim.commit()
            print(
                f"{stem}: brain {record['brain_volume_ml']:.0f} mL, "
                f"{' x '.join(str(n) for n in prepared.scan.shape)} voxels; "
                f"{prepared.seconds:.1f} s -> {args.out}"
            )
    return 0


def _prepare_paths(out: Path, stem: str) -> dict[str, Path]:
    return {
        "prepared": out / f"{stem}_prepared.nii.gz",
        "prepared_mask": out / f"{stem}_prepared_brain_mask.nii.gz",
        "brain_mask": out / f"{stem}_brain_mask.nii.gz",
        "provenance": out / f"{stem}_prepare.json",
    }


def _prepare_with_bar(scan, options, stem: str):
    from tqdm.auto import tqdm

    from .prepare import prepare_scan
    from .prepare.core import STEP_COUNT, check_preparable

    check_preparable(scan)
    with tqdm(total=STEP_COUNT, desc=f"{stem} (prepare)", unit="step") as bar:

        def progress(done, total, name):
            bar.set_postfix_str(name)
            bar.update(done - bar.n)

        prepared = prepare_scan(scan, options, progress=progress)
        bar.update(bar.total - bar.n)
    return prepared


def _add_sampling_arguments(parser, *, method_params: bool = True) -> None:
    parser.add_argument(
        "--samples",
        type=int,
        default=1,
        metavar="K",
        help="run K seeds; write the mean map and its per-voxel standard deviation "
        "(<stem>_uncertainty.nii.gz)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE" if method_params else "METHOD.KEY=VALUE",
        help="a method parameter (docs/methods.md), e.g. harmonise_at=[300,150] or "
        "mask_percentile=90" + ("" if method_params else "; prefix the method: thor.kernel=9"),
    )


def _add_calibrate_parser(commands) -> None:
    from .methods import METHOD_NAMES

    calibrate = commands.add_parser(
        "calibrate",
        help="calibrate a model's lesion threshold on your own healthy scans",
        description="Run a method on healthy control scans from your scanner, prepared as your "
        "patients' scans are, and save a copy of the model whose threshold is the --percentile "
        "of the controls' pooled brain anomaly values; 'restore --model NAME --threshold auto' "
        "then uses it. Give 3 or more controls, and the method options you will restore with "
        "(method parameters given here become the new model's defaults).",
        formatter_class=_DefaultsHelp,
    )
    calibrate.add_argument(
        "controls",
        nargs="+",
        metavar="CONTROL",
        help="healthy scans: NIfTI files, DICOM series folders, or folders of NIfTI scans "
        "(searched recursively; <stem>_mask.nii.gz beside a scan is its brain mask)",
    )
    calibrate.add_argument(
        "--method",
        required=True,
        choices=METHOD_NAMES,
        metavar="NAME",
        help=f"one of {', '.join(METHOD_NAMES)}",
    )
    calibrate.add_argument(
        "--model", help="model name or folder to calibrate (default: the method's shipped model)"
    )
    calibrate.add_argument(
        "--out",
        required=True,
        metavar="NAME_OR_DIR",
        help="name of the new model (saved in the user models folder) or a folder path",
    )
    calibrate.add_argument(
        "--brain-mask",
        action="append",
        metavar="PATH|auto",
        help="brain mask per control, in order (repeat); default: <stem>_mask beside the scan, "
        "else estimated",
    )
    calibrate.add_argument(
        "--percentile",
        type=float,
        default=99.5,
        metavar="P",
        help="share of healthy brain voxels below the threshold (99.5 flags 0.5 %%)",
    )
    calibrate.add_argument(
        "--noise", choices=("gaussian", "simplex"), help="noise type (DDPM methods)"
    )
    calibrate.add_argument("--noise-level", type=int, metavar="T", help="timestep to noise to")
    calibrate.add_argument("--steps", type=int, metavar="N", help="denoising steps per slice")
    calibrate.add_argument("--eta", type=float, metavar="E", help="0: DDIM, 1: DDPM")
    calibrate.add_argument("--smoothing", type=int, metavar="K", help="median filter size")
    calibrate.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a method parameter (docs/methods.md), e.g. mask_percentile=90",
    )
    calibrate.add_argument(
        "--erode-brain",
        type=int,
        default=0,
        metavar="N",
        help="erode the brain masks by N voxels (restore with the same --erode-brain)",
    )
    calibrate.add_argument(
        "--samples",
        type=int,
        default=1,
        metavar="K",
        help="average K seeds per control (restore with the same --samples)",
    )
    calibrate.add_argument("--seed", type=int, default=0, metavar="S", help="seed of all runs")
    calibrate.add_argument(
        "--batch-size", type=int, default=8, metavar="B", help="slices per network call"
    )
    calibrate.add_argument(
        "--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or mps"
    )
    calibrate.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    calibrate.add_argument("--overwrite", action="store_true", help="replace a model named --out")


def _add_train_parser(commands) -> None:
    from .training import TRAINER_NAMES

    train = commands.add_parser(
        "train",
        help="train or fine-tune a model on a folder of healthy scans",
        description="Train a model on healthy scans (a folder, searched recursively; brain "
        "masks beside scans as <stem>_mask.nii.gz). Ctrl-C stops and saves a checkpoint; "
        "--resume continues it.",
    )
    train.add_argument("data", type=Path, metavar="DIR", help="folder of healthy NIfTI scans")
    train.add_argument("--method", choices=TRAINER_NAMES, help="model family (default: ddpm)")
    train.add_argument(
        "--out",
        required=True,
        metavar="NAME_OR_DIR",
        help="a model name (saved in the user models folder) or a folder path",
    )
    train.add_argument("--noise", choices=("gaussian", "simplex"), help="ddpm noise type")
    train.add_argument("--steps", type=int, metavar="N", help="total steps (default 1000)")
    train.add_argument("--batch-size", type=int, metavar="B", help="slices per step (default 16)")
    train.add_argument("--lr", type=float, metavar="X", help="peak learning rate (default 2e-4)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    train.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--init", metavar="MODEL", help="fine-tune from this model name or folder")
    train.add_argument("--overwrite", action="store_true", help="replace a run saved in --out")
    train.add_argument("--grid", type=int, default=128, help="model grid (default 128)")
    train.add_argument("--channels", type=int, default=16, help="UNet base width (default 16)")
    train.add_argument("--checkpoint-every", type=int, metavar="N", help="default 200 steps")
    train.add_argument("--preview-every", type=int, metavar="N", help="default 100 steps")
    train.add_argument("--no-augment", action="store_true", help="train without augmentation")
    train.add_argument("--cache", type=Path, metavar="DIR", help="cache prepared slices here")
    train.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe option, e.g. max_timestep=500 (ddpm/addm), vae_steps=2000 (madad), "
        "patch_size=64 (disyre), adversarial_weight=0.05 (addm)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-uad`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "restore": _restore,
        "compare": _compare,
        "evaluate": _evaluate,
        "train": _train,
        "calibrate": _calibrate,
        "models": _models,
        "demo": _demo,
        "prepare": _prepare,
    }
    try:
        with (
            warnings.catch_warnings(),
            cpu_threads(getattr(args, "threads", None)),
            _terminate_like_interrupt(enabled=args.command != "demo"),
        ):
            warnings.simplefilter("default")
            # Our own warnings are user-facing; libraries' deprecation notices (napari's
            # pydantic use prints ~20 at start-up) are not, as in Python's default filters.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
            warnings.formatwarning = _format_warning
            return handlers[args.command](args) or 0
    except _Terminated:
        print("napari-uad: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("napari-uad: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - known input errors become one line
        if not _is_input_error(error):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"napari-uad: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _is_input_error(error: Exception) -> bool:
    from .cohort.engine import is_input_error

    return isinstance(error, UsageError) or is_input_error(error)


def _format_warning(message, category, filename, lineno, line=None):
    return f"napari-uad: warning: {message}\n"


def _restore(args) -> int:
    """``napari-uad restore``: scans, a CSV list or a BIDS dataset; resumable; on Dask."""
    from .cohort import collect_scans
    from .cohort.layout import LOG_NAME, SUMMARY_NAME, dataset_description, dumps
    from .cohort.summary import GroupSummary, RunLog
    from .io.atomic import atomic_write_text
    from .pipeline import load_method, parse_threshold

    threshold = parse_threshold(args.threshold)
    masks = args.brain_mask or []
    if (
        masks
        and len(masks) not in (1, len(args.inputs))
        or (len(masks) == 1 and len(args.inputs) > 1 and masks[0] != "auto")
    ):
        raise UsageError("give one --brain-mask per input (or 'auto')")
    for flag, value in (("--batch-size", args.batch_size), ("--samples", args.samples)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1")
    if args.jobs < 1:
        raise UsageError("--jobs must be >= 1")
    if args.min_size < 0 or args.min_voxels < 0:
        raise UsageError("--min-size and --min-voxels must be >= 0")
    if args.skip_existing and args.overwrite:
        raise UsageError("--skip-existing keeps finished scans, --overwrite redoes them: pick one")
    if args.prepare and any(m != "auto" for m in masks):
        raise UsageError("--prepare makes the brain mask: give --brain-mask or --prepare, not both")
    prepare = _prepare_options(args) if args.prepare else None  # bad options fail early
    scans, bids_root = collect_scans(
        args.inputs, brain_masks=masks, participants=args.participant_label
    )
    if bids_root is not None:
        _check_bids_out(args.out, bids_root)
    if prepare is not None and any(scan.brain_mask is not None for scan in scans):
        raise UsageError("--prepare makes the brain mask: the list or dataset gives one too")
    keys = [scan.key for scan in scans]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise UsageError(f"two inputs share the name {twice}; their outputs would collide")
    params = {
        "noise": args.noise,
        "noise_level": args.noise_level,
        "steps": args.steps,
        "eta": args.eta,
        "smoothing": args.smoothing,
    }
    params = {k: v for k, v in params.items() if v is not None}
    params.update(_parse_options(args.param, flag="--param"))
    jobs = _restore_jobs(args, scans, bids_root is not None, threshold, params, prepare)
    _check_out_folder(args.out)
    given = [*(s.path for s in scans), *(s.brain_mask for s in scans if s.brain_mask)]
    pending, kept = [], []
    for job in jobs:
        _check_outputs(
            job.paths.values(),
            given,
            job.folder,
            overwrite=args.overwrite or args.skip_existing,
            stem=job.lock_stem,
        )
        (kept if args.skip_existing and _finished_before(job, args) else pending).append(job)
    _say(f"loading the {args.method} model{f' {args.model}' if args.model else ''} (torch)...")
    loaded = load_method(args.method, args.model, noise=params.get("noise"), device=args.device)
    _say(f"model {loaded.model_name} on {loaded.method.device}")
    created = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    if bids_root is not None:
        description = args.out / "dataset_description.json"
        if not description.exists():
            content = dataset_description(bids_root, method=args.method, version=__version__)
            atomic_write_text(description, dumps(content))
    log = RunLog(args.out / LOG_NAME)
    summary = GroupSummary(args.out / SUMMARY_NAME, lock=log.path)
    if kept:
        from .cohort.task import read_provenance, summary_row

        for job in kept:
            record = read_provenance(job.paths["provenance"])
            summary.update(summary_row(job, record, "skipped", None))
            log.write(job.scan.key, "skipped", "finished before")
        print(f"{len(kept)} of {len(jobs)} scan(s) finished before in {args.out}: kept")
    rows = []
    try:
        rows = _run_jobs(args, pending, summary, log)
    finally:
        # A folder this run made holds only what it wrote: without one finished scan, nothing.
        if created and not kept and not any(row["status"] == "done" for row in rows):
            shutil.rmtree(args.out, ignore_errors=True)
    return _restore_exit(rows, args.out, single=len(jobs) == 1)


def _restore_jobs(args, scans, bids: bool, threshold, params, prepare):
    """One :class:`~napari_uad.cohort.ScanJob` per scan."""
    from .cohort import ScanJob, output_paths
    from .cohort.layout import lock_stem

    detect = {
        "method": args.method,
        "model": args.model,
        "device": args.device,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "threshold": threshold,
        "min_size": args.min_voxels,
        "min_volume_mm3": args.min_size,
        "erode_brain": args.erode_brain,
        "samples": args.samples,
        **params,
    }
    jobs = []
    for scan in scans:
        paths = output_paths(args.out, scan, bids=bids, uncertainty=args.samples > 1)
        # A run without --samples replaces an earlier run's uncertainty map too.
        every = output_paths(args.out, scan, bids=bids, uncertainty=True)
        jobs.append(
            ScanJob(
                scan=scan,
                paths=paths,
                lock_stem=lock_stem(scan, bids=bids),
                out=args.out,
                bids=bids,
                detect=detect,
                prepare=prepare,
                threads=args.threads,
                skip_existing=args.skip_existing,
                replaces=tuple(p for p in every.values() if p not in paths.values()),
            )
        )
    return jobs


def _finished_before(job, args) -> bool:
    """With --skip-existing: are the scan's outputs complete, from the same method and model?"""
    from .cohort.task import is_complete, read_provenance
    from .outputs import LOCK_SUFFIX

    if (job.folder / f".{job.lock_stem}{LOCK_SUFFIX}").exists() or not is_complete(job.paths):
        return False
    record = read_provenance(job.paths["provenance"])
    same_model = (
        args.model is None
        or args.model
        in (
            record.get("model"),
            Path(record.get("model_path") or "").name,
        )
        or _same_path(record.get("model_path") or "", args.model)
    )
    if record.get("method") != args.method or not same_model:
        raise UsageError(
            f"{job.paths['provenance'].name} in {job.folder} is from {record.get('method')} "
            f"(model {record.get('model')}): use another --out, or --overwrite"
        )
    return True


def _check_bids_out(out: Path, bids_root: Path) -> None:
    """A BIDS run writes a derivatives dataset: never into the raw dataset's own folders."""
    out, root = out.resolve(), bids_root.resolve()
    inside = out == root or root in out.parents
    if inside and (root / "derivatives") not in [out, *out.parents]:
        raise UsageError(
            f"--out {out} is inside the input dataset: give a folder outside it or under "
            f"{root / 'derivatives'} (e.g. {root / 'derivatives' / 'napari-uad'})"
        )
    if (out / "dataset_description.json").exists():
        from .cohort.inputs import made_by_napari_uad

        if not made_by_napari_uad(out):
            raise UsageError(
                f"--out {out} holds another dataset (its dataset_description.json is not "
                "napari-uad's): choose another folder"
            )


def _run_jobs(args, jobs, summary, log) -> list[dict]:
    """Run the jobs in this process (--jobs 1) or on Dask; a line per finished scan."""
    from .cohort import run_dask, run_sequential
    from .outputs import OutputSet

    def report(row):
        for message in row.get("warnings_list") or []:
            named = f"{row['scan']}: {message}" if len(jobs) > 1 else message
            warnings.warn(named, stacklevel=2)
        if row["status"] == "done":
            print(
                f"{row['scan']}: {row['lesions']} lesion(s), {row['total_ml']:.2f} mL at "
                f"threshold {row['threshold']:.4g}; {row['seconds']:.1f} s -> {args.out}"
            )
        elif row["status"] == "skipped":
            print(f"{row['scan']}: finished before, kept")

    if not jobs:
        return []
    if args.jobs > 1 or args.scheduler:
        where = args.scheduler or f"{args.jobs} local worker processes"
        _say(f"{len(jobs)} scan(s) on Dask ({where})")
        bar = _scan_bar(len(jobs))

        def on_row(row):
            bar.update(1)
            report(row)

        try:
            return run_dask(
                jobs,
                summary=summary,
                log=log,
                workers=args.jobs,
                scheduler=args.scheduler,
                threads=args.threads,
                on_row=on_row,
            )
        finally:
            bar.close()
    claims = [
        OutputSet(job.folder, job.lock_stem, job.paths, replaces=job.replaces) for job in jobs
    ]
    with _claimed(claims, overwrite=args.overwrite or args.skip_existing):
        return run_sequential(
            jobs,
            summary=summary,
            log=log,
            claims=claims,
            progress_for=lambda job: _scan_bars(job, args.method),
            on_row=report,
        )


def _scan_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="scans", unit="scan")


def _scan_bars(job, method: str):
    """Progress bars of one scan: (method progress, preparation progress, close)."""
    from tqdm.auto import tqdm

    from .prepare.core import STEP_COUNT

    bars = {}
    _say(f"reading {job.scan.path}")

    def progress(update):
        if "method" not in bars:
            bars["method"] = tqdm(
                total=update.total, desc=f"{job.scan.key} ({method})", unit="step"
            )
        bars["method"].update(update.done - bars["method"].n)

    def prepare_progress(done, total, name):
        if "prepare" not in bars:
            bars["prepare"] = tqdm(total=STEP_COUNT, desc=f"{job.scan.key} (prepare)", unit="step")
        bars["prepare"].set_postfix_str(name)
        bars["prepare"].update(done - bars["prepare"].n)

    def close():
        for bar in bars.values():
            bar.close()

    return progress, prepare_progress, close


def _restore_exit(rows: list[dict], out: Path, *, single: bool) -> int:
    """Exit code of a restore: 0, or 2 when a scan failed (one line each), 1 for a bug."""
    from .cohort.layout import SUMMARY_NAME

    failed = [row for row in rows if row["status"] == "error"]
    if not failed:
        return 0
    if single:
        raise failed[0]["exception"]
    for row in failed:
        print(f"napari-uad: error: {row['scan']}: {row['error']}", file=sys.stderr)
    print(
        f"napari-uad: {len(failed)} of {len(rows)} scan(s) failed; the others are written "
        f"(see {out / SUMMARY_NAME})",
        file=sys.stderr,
    )
    bugs = [row for row in failed if not _is_input_error(row["exception"])]
    return 1 if bugs else EXIT_BAD_INPUT


def _say(message: str) -> None:
    """A status line on stderr, beside the progress bars, for the seconds before they start.

    Only in a terminal: in logs and pipes stderr keeps to progress bars and one-line errors.
    """
    if sys.stderr.isatty():
        print(f"napari-uad: {message}", file=sys.stderr, flush=True)


def _compare(args) -> int:
    from tqdm.auto import tqdm

    from .compare import TABLE_COLUMNS, iter_compare, parse_methods, write_table
    from .figures import methods_figure
    from .io import nifti_stem, read_mask, read_scan, write_nifti
    from .io.atomic import atomic_write_text
    from .pipeline import parse_threshold
    from .progress import run_to_completion

    methods = parse_methods(args.methods)
    models = {}
    for item in args.model:
        method, sep, model = item.partition("=")
        if not sep or method not in methods or not model:
            raise UsageError(f"--model takes METHOD=MODEL for a compared method, got {item!r}")
        models[method] = model
    params: dict[str, dict] = {}
    for key, value in _parse_options(args.param, flag="--param").items():
        method, sep, name = key.partition(".")
        if not sep or method not in methods:
            raise UsageError(f"--param takes METHOD.KEY=VALUE for a compared method, got {key!r}")
        params.setdefault(method, {})[name] = value
    if args.samples < 1 or args.batch_size < 1:
        raise UsageError("--samples and --batch-size must be >= 1")
    threshold = parse_threshold(args.threshold)
    stem = nifti_stem(args.input)
    outputs = {
        "figure": args.out / f"{stem}_compare.{args.format}",
        "table": args.out / f"{stem}_compare.csv",
        **{m: args.out / f"{stem}_{m}_anomaly.nii.gz" for m in methods},
        "provenance": args.out / f"{stem}_compare.json",
    }
    if not 10 <= args.dpi <= 1200:
        raise UsageError(f"--dpi must be between 10 and 1200, got {args.dpi}")
    given = [args.input, *(p for p in (args.truth, args.brain_mask) if p and p != "auto")]
    _check_out_folder(args.out)
    claim_stem = f"{stem}_compare"
    _check_outputs(outputs.values(), given, args.out, overwrite=args.overwrite, stem=claim_stem)
    scan = read_scan(args.input)
    if args.slice is not None:
        from .display import to_display

        slices = to_display(scan.data, scan.affine)[0].shape[0]
        if not 0 <= args.slice < slices:
            raise UsageError(f"--slice must be between 0 and {slices - 1}, got {args.slice}")
    truth = read_mask(args.truth, like=scan) if args.truth else None
    brain_mask = None if args.brain_mask == "auto" else read_mask(args.brain_mask, like=scan)
    bars: dict[str, tqdm] = {}

    def progress(update):
        bar = bars.get(update.message)
        if bar is None:
            for previous in bars.values():
                previous.close()
            bar = bars[update.message] = tqdm(total=update.total, desc=update.message, unit="step")
        bar.update(update.done - bar.n)

    claimed = _claimed_outputs(args.out, [claim_stem], [outputs], overwrite=args.overwrite)
    with claimed as claims:  # before the compute, so a second run stops at once
        claim = claims[0]
        try:
            comparison = run_to_completion(
                iter_compare(
                    scan,
                    methods,
                    models=models,
                    truth=truth,
                    brain_mask=brain_mask,
                    params=params,
                    device=args.device,
                    seed=args.seed,
                    batch_size=args.batch_size,
                    threshold=threshold,
                    samples=args.samples,
                ),
                progress,
            )
        finally:
            for bar in bars.values():
                bar.close()
        rows = comparison.rows()
        for run in comparison.runs:
            write_nifti(claim.stage(run.method), run.detection.anomaly, like=scan)
        methods_figure(
            scan,
            [(run.label, run.detection) for run in comparison.runs],
            claim.stage("figure"),
            truth=truth,
            metrics=[run.metrics for run in comparison.runs],
            slice_index=args.slice,
            dpi=args.dpi,
            title=f"{stem}: {len(methods)} methods, axial slice {{slice}}",
        )
        write_table(rows, claim.stage("table"))
        details = [
            {**row, "provenance": run.detection.provenance}
            for row, run in zip(rows, comparison.runs, strict=True)
        ]
        atomic_write_text(claim.stage("provenance"), json.dumps(details, indent=2) + "\n")
        claim.commit()
    _print_table(rows, list(TABLE_COLUMNS))
    print(
        f"wrote {outputs['figure'].name}, {outputs['table'].name} and {len(methods)} maps "
        f"-> {args.out}"
    )
    return 0


def _check_out_folder(out: Path) -> None:
    """--out must be a folder (created when missing), not a file."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder (it is created if missing)")


def _check_outputs(outputs, inputs, out: Path, *, overwrite: bool, stem=None) -> None:
    """Refuse outputs that would replace an input, and existing ones without --overwrite.

    Outputs of a stem whose lock file is present are checked once the lock is taken (they may
    be the remains of a killed run, which are then removed).
    """
    from .outputs import LOCK_SUFFIX

    outputs = list(outputs)
    for output in outputs:
        if any(_same_path(output, other) for other in inputs):
            raise UsageError(f"refusing to overwrite the input file {output}: change --out")
    if stem is not None and (out / f".{stem}{LOCK_SUFFIX}").exists():
        return
    _refuse_existing([p.name for p in outputs if p.exists()], out, overwrite=overwrite)


def _refuse_existing(existing: list[str], out: Path, *, overwrite: bool) -> None:
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists in {out}; pass --overwrite to replace")


@contextlib.contextmanager
def _claimed_outputs(out: Path, stems, planned, *, overwrite: bool, replaces=None):
    """Create ``out``, claim every stem's outputs (see :mod:`napari_uad.outputs`) and yield the
    claims; on leaving, remove what this run staged but did not finish, and its locks. A folder
    this run created is removed again when nothing was written into it."""
    from .outputs import OutputSet

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    replaces = replaces or [()] * len(stems)
    claims = [
        OutputSet(out, stem, outputs, replaces=extra)
        for stem, outputs, extra in zip(stems, planned, replaces, strict=True)
    ]
    try:
        with _claimed(claims, overwrite=overwrite):
            yield claims
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


@contextlib.contextmanager
def _claimed(claims, *, overwrite: bool):
    """Claim every output set (creating its folder), refuse existing outputs without
    ``overwrite``, and release them all on leaving; folders created here and left empty are
    removed."""
    made = []
    try:
        for claim in claims:
            if not claim.folder.exists():
                claim.folder.mkdir(parents=True)
                made.append(claim.folder)
            claim.claim()
            if claim.swept:
                more = " …" if len(claim.swept) > 4 else ""
                warnings.warn(
                    f"removed what an interrupted run left of {claim.stem} in {claim.folder}: "
                    f"{', '.join(claim.swept[:4])}{more}",
                    stacklevel=3,
                )
        for claim in claims:
            _refuse_existing(claim.existing(), claim.folder, overwrite=overwrite)
        yield claims
    finally:
        for claim in claims:
            claim.release()
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not empty: something was written
                folder.rmdir()


def _same_path(a, b) -> bool:
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop (RuntimeError before 3.13)
        loop = next((p for p in (a, b) if _is_symlink_loop(p)), a)
        raise UsageError(f"{loop} cannot be resolved (a symlink loop?): {error}") from None


def _is_symlink_loop(path: Path) -> bool:
    try:
        path.resolve(strict=True)
    except (OSError, RuntimeError):
        return path.is_symlink()
    return False


def _evaluate(args) -> int:
    import numpy as np

    from .io import nifti_stem, read_mask, read_scan
    from .io.atomic import atomic_write_text
    from .metrics import evaluate

    if len(args.truth) != len(args.maps):
        raise UsageError(f"got {len(args.maps)} maps but {len(args.truth)} --truth masks")
    if args.brain_mask and len(args.brain_mask) != len(args.maps):
        raise UsageError("give one --brain-mask per map")
    given = [*args.maps, *args.truth, *(args.brain_mask or [])]
    if args.json and any(_same_path(args.json, other) for other in given):
        raise UsageError(f"refusing to overwrite the input file {args.json}: change --json")
    rows, sources = [], []
    pooled_scores, pooled_truth = [], []
    for index, (map_path, truth_path) in enumerate(zip(args.maps, args.truth, strict=True)):
        anomaly = read_scan(map_path)
        truth = read_mask(truth_path, like=anomaly)
        _check_not_constant(anomaly.data, map_path)
        region = (
            read_mask(args.brain_mask[index], like=anomaly)
            if args.brain_mask
            else np.ones(truth.shape, dtype=bool)
        )
        threshold, source = _evaluation_threshold(args.threshold, Path(map_path))
        metrics = evaluate(anomaly.data, truth, mask=region, threshold=threshold)
        rows.append({"map": nifti_stem(map_path), **metrics, "threshold": threshold})
        sources.append(f"{nifti_stem(map_path)}: {source}")
        pooled_scores.append(anomaly.data[region])
        pooled_truth.append(truth[region])
    if len(rows) > 1:
        scores = np.concatenate(pooled_scores)
        truth = np.concatenate(pooled_truth)
        rows.append({"map": "pooled", **evaluate(scores, truth)})
    columns = ["map", "auroc", "ap", "best_dice", "best_threshold", "dice_at_threshold"]
    _print_table(rows, [*columns, "threshold"])
    print("Dice at threshold used: " + "; ".join(sources))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0


def _check_not_constant(scores, path) -> None:
    """A constant map (all zero, or all NaN before reading set them to 0) scores AUROC 0.5,
    which reads like a result; it is none."""
    import numpy as np

    flat = np.asarray(scores).ravel()
    if flat.size and np.all(flat == flat[0]):
        raise UsageError(
            f"{path} is constant ({float(flat[0]):g} everywhere, NaN is read as 0): it holds no "
            "anomaly map to evaluate"
        )


def _evaluation_threshold(value: str, map_path: Path) -> tuple[float | None, str]:
    """The threshold of "Dice at threshold" for one map, and where it came from."""
    if value != "auto":
        try:
            return float(value), f"--threshold {float(value):g}"
        except ValueError:
            raise UsageError(f"--threshold must be 'auto' or a number, got {value!r}") from None
    stem = map_path.name.split(".")[0].removesuffix("_anomaly")
    sidecar = map_path.with_name(f"{stem}.json")
    if sidecar.is_file():
        try:
            threshold = float(json.loads(sidecar.read_text())["parameters"]["threshold"])
            return threshold, f"{threshold:.4g} from {sidecar.name}"
        except (KeyError, ValueError, TypeError, RecursionError, json.JSONDecodeError):
            return None, f"none ({sidecar.name} holds no threshold)"
    return None, f"none (no {sidecar.name} beside the map; pass --threshold)"


def _print_table(rows: list[dict], columns: list[str]) -> None:
    from .tables import format_table

    print(format_table(rows, columns))


def _calibrate(args) -> int:
    from tqdm.auto import tqdm

    from .site_calibration import (
        calibrate_on_controls,
        check_percentile,
        check_site_model_out,
        find_controls,
        restore_hint,
    )

    percentile = check_percentile(args.percentile)
    if args.batch_size < 1 or args.samples < 1:
        raise UsageError("--batch-size and --samples must be >= 1")
    controls = find_controls(args.controls, args.brain_mask)
    out = check_site_model_out(args.out, overwrite=args.overwrite)  # before minutes of work
    params = {
        "noise": args.noise,
        "noise_level": args.noise_level,
        "steps": args.steps,
        "eta": args.eta,
        "smoothing": args.smoothing,
    }
    params = {k: v for k, v in params.items() if v is not None}
    params.update(_parse_options(args.param, flag="--param"))
    _say(f"loading the {args.method} model{f' {args.model}' if args.model else ''} (torch)...")
    bars: dict[int, tqdm] = {}

    def progress(update):
        if not update.total:
            return
        bar = bars.get(update.control)
        if bar is None:
            for previous in bars.values():
                previous.close()
            desc = f"{update.control + 1}/{update.controls} {update.name}"
            bar = bars[update.control] = tqdm(total=update.total, desc=desc, unit="step")
        bar.update(update.done - bar.n)

    try:
        calibration = calibrate_on_controls(
            controls,
            method=args.method,
            model=args.model,
            percentile=percentile,
            device=args.device,
            progress=progress,
            seed=args.seed,
            samples=args.samples,
            erode_brain=args.erode_brain,
            batch_size=args.batch_size,
            **params,
        )
    finally:
        for bar in bars.values():
            bar.close()
    folder = calibration.save(out, overwrite=args.overwrite)
    print(calibration.summary())
    columns = ["control", "brain_mL", "old_mL", "old_%", "new_mL", "new_%", "held_out_%"]
    _print_table(calibration.rows(), columns)
    print(f"saved model {folder.name!r} -> {folder}")
    from .models.registry import user_models_dir

    named = _same_path(folder.parent, user_models_dir())
    print(f"use it with: {restore_hint(calibration, folder.name if named else str(folder))}")
    return 0


def _train(args) -> int:
    from tqdm.auto import tqdm

    from .models.registry import model_output_folder
    from .training import distributed
    from .training.api import create_trainer

    value = args.out
    out = model_output_folder(value)
    device = distributed.init_from_env(args.device)
    rank, world = distributed.rank_and_size()
    leader = rank == 0
    settings = {
        key: value
        for key, value in (
            ("batch_size", args.batch_size),
            ("learning_rate", args.lr),
            ("seed", args.seed),
            ("checkpoint_every", args.checkpoint_every),
            ("preview_every", args.preview_every),
        )
        if value is not None
    }
    if args.no_augment:
        settings["augment"] = None
    if args.precision != "auto":
        settings["precision"] = args.precision
    try:
        trainer = create_trainer(
            args.data,
            method=args.method or (None if args.resume else "ddpm"),
            out=out,
            steps=args.steps,
            noise=args.noise,
            init=args.init,
            resume=args.resume,
            overwrite=args.overwrite,
            grid=args.grid,
            base_channels=args.channels,
            device=device,
            options=_parse_options(args.option),
            cache_dir=args.cache,
            **settings,
        )
        if leader:
            print(trainer.data_report.summary())
            where = f"{trainer.device}" + (f" x {world} processes" if world > 1 else "")
            print(
                f"training {trainer.family} model {out.name!r} on {where}: "
                f"step {trainer.step} of {trainer.settings.steps}, {len(trainer.images)} "
                f"training slices; writing {out}"
            )
        bar = tqdm(
            total=trainer.settings.steps,
            initial=trainer.step,
            unit="step",
            disable=not leader,
            desc=trainer.family,
        )
        stop = _StopOnInterrupt()
        try:
            with stop:
                for update in _updates(trainer.iter_run(stop), result := {}):
                    bar.update(1)
                    losses = {k: f"{v:.4f}" for k, v in update.losses.items()}
                    bar.set_postfix(losses, refresh=False)
        finally:
            bar.close()  # before any error line, so it gets a line of its own
    finally:
        distributed.shutdown()
    result = result["value"]
    if result.stopped:
        if leader:
            why = f" by {stop.signal_name}" if stop.signal_name else ""
            print(
                f"napari-uad: stopped{why} at step {result.step} and saved {result.model_dir}; "
                f"continue with: napari-uad train {args.data} --out {value} --resume",
                file=sys.stderr,
            )
        return 143 if stop.signal_name == "SIGTERM" else 130
    if leader:
        threshold = result.threshold
        threshold = "" if threshold is None else f", healthy threshold {threshold:.4f}"
        print(
            f"saved {result.model_dir} after {result.step} steps "
            f"({result.seconds / 60:.1f} min{threshold})"
        )
    return 0


class _StopOnInterrupt:
    """A stop flag set by the first Ctrl-C or SIGTERM (the loop then stops at the next step
    boundary and saves); a second one interrupts at once."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.requested = False
        self.signal_name = None
        self.previous: dict = {}

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self):
        import signal

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            self.signal_name = signal.Signals(signum).name

        for name in self.SIGNALS:
            try:
                self.previous[name] = signal.signal(getattr(signal, name), handler)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc):
        import signal

        for name, previous in self.previous.items():
            signal.signal(getattr(signal, name), previous)
        return False


class _Terminated(KeyboardInterrupt):
    """SIGTERM (what ``kill``, ``timeout`` and job schedulers send), handled like Ctrl-C."""


@contextlib.contextmanager
def _terminate_like_interrupt(*, enabled: bool = True):
    """Turn SIGTERM into :class:`_Terminated` while a command runs, so it cleans up as on
    Ctrl-C (staged outputs removed, locks released) instead of dying mid-write. Not for the
    napari demo: a Python handler runs only when Qt hands control back to Python."""
    import signal

    def handler(signum, frame):
        raise _Terminated

    if not enabled:
        yield
        return
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _updates(run, result: dict):
    """Yield a training generator's updates; put its return value in ``result['value']``."""
    result["value"] = yield from run


def _parse_options(items: list[str], *, flag: str = "--option") -> dict:
    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def _models(args) -> int:
    from .models.registry import list_models, user_models_dir

    found = list_models(include_broken=True)
    models = [m for m in found if m.error is None]
    for m in found:
        if m.error is not None:
            print(
                f"napari-uad: warning: skipped broken model {m.name!r}: {m.error}", file=sys.stderr
            )
    if not models:
        print(f"no models installed (user folder: {user_models_dir()})")
        return 0
    rows = [
        {
            "name": m.name,
            "method": m.method,
            "noise": m.noise,
            "grid": m.grid,
            "size_mb": f"{m.size_mb:.1f}",
            "source": m.source,
            **({"origin": m.origin} if m.origin else {}),
            "path": str(m.path),
        }
        for m in models
    ]
    columns = ["name", "method", "noise", "grid", "size_mb", "source", "origin", "path"]
    _print_table(rows, columns)
    return 0


def _demo(args) -> int:
    import importlib.util

    from .demo import run_demo

    gui = not args.no_gui and _has_display()
    if gui and importlib.util.find_spec("napari") is None:
        raise UsageError(
            "napari is not installed: pip install 'napari-uad[gui]', or run 'napari-uad demo "
            "--no-gui'"
        )
    return run_demo(out=args.out, gui=gui, device=args.device)


def _has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
