"""How volumes are shown: axial slices in radiological convention, physical scale.

A scan of any orientation is displayed as an array (Z, Y, X) taken from its RAS+ canonical form,
with anterior at the top of the screen and the patient's right on the screen's left (the
radiological convention). The mapping is only flips and axis permutations, so it is exact and
invertible: results computed on the display array go back to the file's own grid.
"""

from __future__ import annotations

import numpy as np

from .preprocess import from_canonical, to_canonical


def to_display(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    """The display array (Z, Y, X) of a volume on its file grid, and its scale in mm.

    Parameters
    ----------
    data : (X, Y, Z) ndarray
        On the grid described by ``affine``.
    affine : (4, 4) ndarray

    Returns
    -------
    display : (Z, Y, X) ndarray (a view where possible)
    scale : tuple of 3 floats, voxel size in mm along the display axes
    """
    ras, _ = to_canonical(data, affine)
    spacing = _ras_spacing(affine, data.shape)
    display = np.transpose(ras, (2, 1, 0))[:, ::-1, ::-1]
    return display, (spacing[2], spacing[1], spacing[0])


def from_display(display: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_display`: the display array back on the file's grid (X, Y, Z)."""
    ras = np.transpose(np.asarray(display)[:, ::-1, ::-1], (2, 1, 0))
    _, orientation = to_canonical(np.empty(_file_shape(ras.shape, affine), dtype=bool), affine)
    return from_canonical(ras, orientation)


def _ras_spacing(affine, shape) -> tuple[float, float, float]:
    from .preprocess import canonical_affine

    ras_affine = canonical_affine(affine, shape)
    return tuple(float(v) for v in np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0)))


def _file_shape(ras_shape, affine) -> tuple[int, ...]:
    """Shape on the file grid of an array whose RAS+ shape is ``ras_shape``."""
    import nibabel.orientations as orientations

    ornt = orientations.io_orientation(affine)
    shape = [0, 0, 0]
    for file_axis, (ras_axis, _) in enumerate(ornt):
        shape[file_axis] = ras_shape[int(ras_axis)]
    return tuple(shape)
