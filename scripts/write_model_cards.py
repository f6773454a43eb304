"""Write docs/models.md from the model cards stored in the shipped models' config.json."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "src" / "napari_uad" / "weights"


def card(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    if config["method"] == "ensemble":
        return ensemble_card(folder, config)
    training = config.get("training", {})
    calibration = config.get("calibration", {})
    unet = config["unet"]
    size_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
    parts = ["model", *config.get("components", {})]
    diffusion = config["diffusion"]
    rows = [
        ("method", config["method"]),
        ("noise", diffusion["noise"]),
        ("prediction", diffusion["prediction_type"]),
        ("schedule", f"{diffusion['beta_schedule']}, T = {diffusion['num_train_timesteps']}"),
        (
            "network",
            f"UNet, widths {[unet['base_channels'] * m for m in unet['channel_mults']]}, "
            f"{unet['num_res_blocks']} res block(s) per level, attention at the "
            f"coarsest level; {' + '.join(parts)}: {size_mb:.1f} MB in all (float16)",
        ),
        ("grid", f"{config['grid']} x {config['grid']}"),
        (
            "defaults",
            ", ".join(
                f"{k} = {v}"
                for k, v in config.get("defaults", {}).items()
                if not isinstance(v, dict)
            ),
        ),
        (
            "calibrated threshold",
            f"{calibration.get('threshold')} "
            f"({calibration.get('percentile')}th percentile of "
            f"{calibration.get('data', 'healthy data')})",
        ),
    ]
    for method, values in config.get("defaults", {}).items():
        if isinstance(values, dict):
            rows.append(
                (f"defaults for `{method}`", ", ".join(f"{k} = {v}" for k, v in values.items()))
            )
    for method, entry in calibration.get("methods", {}).items():
        rows.append(
            (
                f"calibrated threshold for `{method}`",
                f"{entry.get('threshold')} ({entry.get('percentile')}th percentile, same data; "
                "`scripts/calibrate_methods.py`)",
            )
        )
    rows += [(f"training: {k}", v) for k, v in training.items()]
    lines = [f"## `{config['name']}`", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def ensemble_card(folder: Path, config: dict) -> str:
    """An ensemble has no network: its members, its rule and its fitted tables."""
    training = config.get("training", {})
    calibration = config.get("calibration", {})
    members = ", ".join(
        f"`{m['method']}` on model `{m['model']}`" for m in training.get("members", [])
    )
    size_kb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e3
    rows = [
        ("method", "ensemble"),
        ("members", members),
        (
            "rule",
            "each member's raw map / its healthy spread in 10 bins of its pseudo-healthy "
            "intensity, median filtered, / its healthy 99.5th percentile; then the "
            f"{config.get('defaults', {}).get('rule', 'mean')} over members",
        ),
        ("tables", f"bin edges, spreads, scales: {size_kb:.1f} kB (`model.safetensors`)"),
        ("grid", f"{config['grid']} x {config['grid']}"),
        ("defaults", ", ".join(f"{k} = {v}" for k, v in config.get("defaults", {}).items())),
        (
            "calibrated threshold",
            f"{calibration.get('threshold')} ({calibration.get('percentile')}th percentile of "
            f"{calibration.get('data', 'healthy data')})",
        ),
        ("fitted on", training.get("data", "")),
        ("recipe", training.get("recipe", "")),
    ]
    lines = [f"## `{config['name']}`", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main():
    folders = sorted(p for p in WEIGHTS.iterdir() if (p / "config.json").is_file())
    text = [
        "# Shipped models",
        "",
        "Small default models, trained on healthy data only. Every number below is read from the "
        "model's own `config.json` (`python scripts/write_model_cards.py` regenerates this page). "
        "Reproduce a model from scratch with the `recipe` command (needs `pip install "
        "nilearn`; CPU, 2 cores), or all of them with `python "
        "scripts/reproduce_default_models.py` (resumable). The defaults each model stores "
        "were chosen on [benchmarks.md](benchmarks.md), where every model's detection and "
        "speed are measured.",
        "",
        "Why x0-prediction and t <= 500: on this compute budget (about a thousand training "
        "steps) direct restoration objectives converge far faster than epsilon-prediction, and "
        "anomaly detection only ever restores from t <= 500, so training on higher timesteps "
        "would spend capacity the method never uses.",
        "",
    ]
    text += [card(folder) + "\n" for folder in folders]
    (ROOT / "docs" / "models.md").write_text("\n".join(text))
    print(f"wrote docs/models.md ({len(folders)} models)")


if __name__ == "__main__":
    main()
