"""Skull strippers outside napari-uad, used when the user has them installed with their weights.

- HD-BET (Isensee et al. 2019): ``pip install hd-bet``; its ``hd-bet`` command.
- SynthStrip (Hoopes et al. 2022): FreeSurfer's ``mri_synthstrip`` (or the standalone
  ``synthstrip`` / ``nipreps-synthstrip`` commands).

Both are deep-learning methods whose weights the user installs; napari-uad never downloads
anything. The default, BET (:mod:`.bet`), needs nothing extra.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..io.errors import InputError

SKULL_STRIPPERS = ("bet", "hd-bet", "synthstrip", "none")
_COMMANDS = {
    "hd-bet": ("hd-bet",),
    "synthstrip": ("mri_synthstrip", "synthstrip", "nipreps-synthstrip"),
}
_INSTALL = {
    "hd-bet": "pip install hd-bet (and its model weights)",
    "synthstrip": "install FreeSurfer's mri_synthstrip (or nipreps-synthstrip) with its model",
}


def available_strippers() -> list[str]:
    """The skull strippers that can run here ('bet' and 'none' always can)."""
    found = [name for name, commands in _COMMANDS.items() if any(map(shutil.which, commands))]
    return ["bet", *found, "none"]


def external_brain_mask(volume: np.ndarray, affine: np.ndarray, name: str) -> np.ndarray:
    """Run HD-BET or SynthStrip on a volume and read back its brain mask.

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
    affine : ndarray, shape (4, 4)
    name : {'hd-bet', 'synthstrip'}

    Returns
    -------
    ndarray of bool, shape (X, Y, Z)

    Raises
    ------
    InputError
        The tool is not installed, fails, or writes no mask.
    """
    import nibabel as nib

    if name not in _COMMANDS:
        raise InputError(f"unknown skull stripper {name!r}")
    command = next((c for c in _COMMANDS[name] if shutil.which(c)), None)
    if command is None:
        raise InputError(
            f"{name} is not installed: {_INSTALL[name]}, or use the built-in --skull-strip bet"
        )
    with tempfile.TemporaryDirectory(prefix="napari-uad-strip-") as folder:
        folder = Path(folder)
        source = folder / "input.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine), source)
        if name == "hd-bet":
            args = [command, "-i", str(source), "-o", str(folder / "brain.nii.gz")]
            args += ["--save_bet_mask"] if _hd_bet_v2(command) else []
        else:
            args = [command, "-i", str(source), "-m", str(folder / "brain_mask.nii.gz")]
        try:
            run = subprocess.run(args, capture_output=True, text=True, check=False)
        except OSError as error:
            raise InputError(f"{name} could not start: {error}") from None
        if run.returncode != 0:
            last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InputError(f"{name} failed (exit {run.returncode}): {last[0]}")
        candidates = sorted(folder.glob("brain*mask*.nii*")) + sorted(folder.glob("*_bet.nii*"))
        if not candidates:
            raise InputError(f"{name} ran but wrote no brain mask")
        mask = np.asarray(nib.load(candidates[0]).dataobj) > 0
    if mask.shape != volume.shape:
        raise InputError(f"{name} wrote a mask of shape {mask.shape}, expected {volume.shape}")
    return mask


def _hd_bet_v2(command: str) -> bool:
    try:
        text = subprocess.run([command, "-h"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "--save_bet_mask" in text
