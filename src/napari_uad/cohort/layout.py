"""Where a scan's outputs go: today's flat names, or a BIDS derivatives dataset.

Flat (scan files and lists), in ``--out``::

    <stem>_healthy.nii.gz  <stem>_anomaly.nii.gz  <stem>_mask.nii.gz (lesions)
    <stem>_brain_mask.nii.gz  <stem>_lesions.tsv  <stem>.json (provenance, written last)

BIDS derivatives (a BIDS dataset as the input), in ``--out/sub-XX/[ses-YY/]anat/``::

    <entities>_desc-healthy_T1w.nii.gz (+ .json)    pseudo-healthy image
    <entities>_desc-anomaly_T1w.nii.gz (+ .json)    anomaly map; its JSON holds the provenance
    <entities>_label-lesion_mask.nii.gz (+ .json)   lesion mask
    <entities>_label-brain_mask.nii.gz (+ .json)    the brain scored
    <entities>_label-lesion_stats.tsv               one row per lesion

``<entities>`` is the scan's own (``sub-01_ses-2_run-1``) without its ``desc``. The role
``provenance`` is always renamed into place last: a scan whose provenance file exists is
complete (see :mod:`napari_uad.outputs`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .inputs import CohortScan, entity_prefix

BIDS_VERSION = "1.10.0"
SUMMARY_NAME = "napari-uad_summary.tsv"
LOG_NAME = "napari-uad_log.tsv"

#: The NIfTI outputs: role -> (what it holds, stored dtype, NIfTI intent).
NIFTI_ROLES = {
    "healthy": ("pseudo-healthy image", "float32", None),
    "anomaly": ("anomaly map", "float32", None),
    "mask": ("lesion mask", "uint8", "label"),
    "brain_mask": ("brain scored", "uint8", "label"),
    "uncertainty": ("anomaly map standard deviation", "float32", None),
}


def flat_paths(out: Path, stem: str, *, uncertainty: bool = False) -> dict[str, Path]:
    """Role -> path of a scan's outputs with the flat names (provenance last)."""
    paths = {
        "healthy": out / f"{stem}_healthy.nii.gz",
        "anomaly": out / f"{stem}_anomaly.nii.gz",
        "mask": out / f"{stem}_mask.nii.gz",
        "brain_mask": out / f"{stem}_brain_mask.nii.gz",
    }
    if uncertainty:
        paths["uncertainty"] = out / f"{stem}_uncertainty.nii.gz"
    paths["lesions"] = out / f"{stem}_lesions.tsv"
    paths["provenance"] = out / f"{stem}.json"
    return paths


def bids_paths(out: Path, scan: CohortScan, *, uncertainty: bool = False) -> dict[str, Path]:
    """Role -> path of a scan's outputs in a BIDS derivatives dataset (provenance last).

    Sidecars of the images are roles ``<role>_json``; the anomaly map's is ``provenance``.
    """
    folder = out / scan.subfolder
    prefix = entity_prefix(scan.entities)
    stems = {
        "healthy": f"{prefix}_desc-healthy_T1w",
        "mask": f"{prefix}_label-lesion_mask",
        "brain_mask": f"{prefix}_label-brain_mask",
        "anomaly": f"{prefix}_desc-anomaly_T1w",
    }
    if uncertainty:
        stems["uncertainty"] = f"{prefix}_desc-uncertainty_T1w"
    paths = {role: folder / f"{stem}.nii.gz" for role, stem in stems.items()}
    for role, stem in stems.items():
        if role != "anomaly":
            paths[f"{role}_json"] = folder / f"{stem}.json"
    paths["lesions"] = folder / f"{prefix}_label-lesion_stats.tsv"
    paths["provenance"] = folder / f"{stems['anomaly']}.json"
    return paths


def output_paths(out: Path, scan: CohortScan, *, bids: bool, uncertainty: bool = False):
    """A scan's output paths in the layout of its run."""
    if bids:
        return bids_paths(out, scan, uncertainty=uncertainty)
    return flat_paths(out / scan.subfolder, scan.key, uncertainty=uncertainty)


def lock_stem(scan: CohortScan, *, bids: bool) -> str:
    """The stem the scan's lock file is named after (unique within its output folder)."""
    return entity_prefix(scan.entities) if bids else scan.key


def bids_sidecars(scan: CohortScan, provenance: dict, paths: dict[str, Path], out: Path) -> dict:
    """The JSON sidecars of a BIDS derivative scan: role -> content.

    ``Sources`` use BIDS URIs: ``bids:raw:<path>`` for the input (``raw`` is named in the
    dataset's ``DatasetLinks``) and ``bids::<path>`` for this dataset's own files.
    """

    def own(role):
        return f"bids::{paths[role].relative_to(out).as_posix()}"

    raw = [f"bids:raw:{scan.source}"]
    parameters = provenance.get("parameters", {})
    method = provenance.get("method")
    sidecars = {
        "healthy_json": {
            "Description": f"Pseudo-healthy reconstruction of the scan by {method}",
            "Sources": raw,
            "SkullStripped": True,
        },
        "mask_json": {
            "Description": "Lesions: anomaly map >= threshold inside the brain scored",
            "Type": "Lesion",
            "Sources": [own("anomaly"), own("brain_mask")],
            "Threshold": parameters.get("threshold"),
            "ThresholdSource": parameters.get("threshold_source"),
            "Method": method,
            "Model": provenance.get("model"),
        },
        "brain_mask_json": {
            "Description": "The brain that was scored",
            "Type": "Brain",
            "Sources": raw,
            "BrainMask": parameters.get("brain_mask"),
        },
    }
    if "uncertainty" in paths:
        sidecars["uncertainty_json"] = {
            "Description": "Per-voxel standard deviation of the anomaly map over samples",
            "Sources": raw,
        }
    sidecars["provenance"] = {
        "Description": f"Anomaly map of {method} (higher = more anomalous; 0 outside the brain)",
        "Sources": raw,
        **provenance,
    }
    return sidecars


def dataset_description(bids_root: Path, *, method: str, version: str) -> dict:
    """``dataset_description.json`` of the derivatives dataset a BIDS run writes."""
    raw = Path(bids_root).resolve().as_uri()
    return {
        "Name": f"napari-uad anomaly detection ({method})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "napari-uad",
                "Version": version,
                "Description": "Unsupervised anomaly detection in brain MRI with diffusion models",
            }
        ],
        "SourceDatasets": [{"URL": raw}],
        "DatasetLinks": {"raw": raw},
    }


def dumps(content: dict) -> str:
    """JSON text as the outputs store it."""
    return json.dumps(content, indent=2) + "\n"
