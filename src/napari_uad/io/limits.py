"""Size limit for scans, checked before a volume is read or processed.

Detection on a volume takes about 60 bytes per voxel at its peak (the float32 scan, its RAS+
copy, the normalised copy, the brain mask estimation, the three outputs; measured: 320 x 320 x 96
voxels, 9.8 M, peak +509 MB over the scan), so a volume above the limit is refused with a
message rather than exhausting the machine's memory.
"""

from __future__ import annotations

import math
import os

from .errors import InputError

#: Default largest volume in voxels: 512 x 512 x 512 (0.5 GiB as float32, ~7.5 GiB to process).
DEFAULT_MAX_VOXELS = 512**3
#: Environment variable that overrides the limit (a number of voxels).
MAX_VOXELS_ENV = "NAPARI_UAD_MAX_VOXELS"
#: Peak memory of a detection per voxel, measured (see above).
BYTES_PER_VOXEL = 60


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
        number = float(value)
    except ValueError:
        number = math.nan
    # float() also takes "inf", "nan" and "1e400" (inf), which int() cannot convert.
    if not (math.isfinite(number) and number >= 1 and number == int(number)):
        raise InputError(
            f"{MAX_VOXELS_ENV} must be a positive integer (a number of voxels, e.g. "
            f"{DEFAULT_MAX_VOXELS}), got {value!r}: fix or unset it"
        )
    return int(number)


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
        need = BYTES_PER_VOXEL * count / 2**30
        raise InputError(
            f"{name} is too large: {tuple(int(s) for s in shape)} is {count:,} voxels, above the "
            f"limit of {limit:,} (about {need:.1f} GiB to process); crop or downsample it, or "
            f"raise the limit with {MAX_VOXELS_ENV}"
        )
