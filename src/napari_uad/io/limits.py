"""Size limit for scans, checked before a volume is read or processed.

Processing a volume takes about 30 bytes per voxel at its peak (the float32 scan, its RAS+
copy, the normalised copy, the masks and the three outputs), so a volume above the limit is
refused with a message rather than exhausting the machine's memory.
"""

from __future__ import annotations

import math
import os

from .errors import InputError

#: Default largest volume in voxels: 512 x 512 x 512 (0.5 GiB as float32, ~4 GiB to process).
DEFAULT_MAX_VOXELS = 512**3
#: Environment variable that overrides the limit (a number of voxels).
MAX_VOXELS_ENV = "NAPARI_UAD_MAX_VOXELS"


def max_voxels() -> int:
    """The largest number of voxels a scan may have: ``$NAPARI_UAD_MAX_VOXELS`` or 512**3.

    Raises
    ------
    InputError
        The environment variable is set but is not a positive integer.
    """
    value = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_VOXELS
    try:
        limit = int(float(value))
    except ValueError:
        limit = 0
    if limit < 1:
        raise InputError(f"{MAX_VOXELS_ENV} must be a positive number of voxels, got {value!r}")
    return limit


def check_size(shape, name: str = "the scan") -> None:
    """Refuse a volume with more voxels than :func:`max_voxels` allows.

    Parameters
    ----------
    shape : sequence of int
        Shape of the volume (of the part that will be read, e.g. one volume of a 4-D file).
    name : str
        How the message names the volume (e.g. the file name).

    Raises
    ------
    InputError
        Too many voxels; the message gives the size, the limit and what to do.
    """
    count = math.prod(int(s) for s in shape)
    limit = max_voxels()
    if count > limit:
        raise InputError(
            f"{name} is too large: {tuple(int(s) for s in shape)} is {count:,} voxels, above the "
            f"limit of {limit:,} (about {30 * count / 2**30:.1f} GiB to process); crop or "
            f"downsample it, or raise the limit with {MAX_VOXELS_ENV}"
        )
