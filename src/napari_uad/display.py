"""How volumes are shown: axial slices in radiological convention, placed in scanner mm.

A scan of any orientation is displayed as an array (Z, Y, X) taken from its RAS+ canonical form,
with anterior at row 0 and the patient's right at column 0. The mapping is only flips and axis
permutations, so it is exact and invertible: results computed on the display array go back to
the file's own grid.

In napari, world coordinates are the scanner's (z, y, x) in mm (RAS+, napari's last axis is x):
:func:`placement` gives a layer the scan's full affine (oblique included), so a layer from any
other NIfTI reader that honours the affine overlays ours. The radiological convention (anterior
at the top, the patient's right on the screen's left) is then a choice of view, made on the
camera by :func:`set_radiological_view`.
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


def display_world_affine(affine: np.ndarray, shape) -> np.ndarray:
    """The map from a display-array index to the scanner's world point, in napari's axis order.

    Parameters
    ----------
    affine : (4, 4) ndarray
        Voxel-to-world (RAS+ mm) affine of the file grid.
    shape : tuple of int
        Shape of the volume on the file grid (X, Y, Z), as given to :func:`to_display`.

    Returns
    -------
    (4, 4) ndarray
        ``M`` with ``M @ [k, r, c, 1] = [z, y, x, 1]``: display index ``(k, r, c)`` (slice, row,
        column of :func:`to_display`'s array) to world mm ``(z, y, x)``.
    """
    from .preprocess import canonical_affine

    ras_affine = canonical_affine(affine, tuple(shape))
    nx, ny, _ = _ras_shape(affine, shape)
    # display[k, r, c] = ras[nx - 1 - c, ny - 1 - r, k]
    undo_display = np.array(
        [[0, 0, -1, nx - 1], [0, -1, 0, ny - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
    )
    xyz_to_zyx = np.array(
        [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
    )
    return xyz_to_zyx @ ras_affine @ undo_display


def placement(affine: np.ndarray, shape) -> dict:
    """napari layer keywords placing a display array in the scanner's world (mm, (z, y, x)).

    ``scale`` is the voxel size in mm along the display axes (positive: widgets read it for
    voxel volumes and spacings); ``affine`` carries the rest (flips, axis order, rotation of an
    oblique scan, and the origin), so that napari's data-to-world map (``affine`` after
    ``scale``) is :func:`display_world_affine`.

    Parameters
    ----------
    affine : (4, 4) ndarray
        Voxel-to-world affine of the file grid.
    shape : tuple of int
        Shape on the file grid (X, Y, Z).

    Returns
    -------
    dict
        ``{"scale": (sz, sy, sx), "affine": (4, 4) ndarray}``.
    """
    to_world = display_world_affine(affine, shape)
    scale = np.sqrt((to_world[:3, :3] ** 2).sum(axis=0))
    physical_to_world = to_world @ np.diag([*(1.0 / scale), 1.0])
    return {"scale": tuple(float(s) for s in scale), "affine": physical_to_world}


#: Camera orientations (depth, vertical, horizontal) of the two views of the scanner's world.
#: Radiological: anterior (+y) up, the patient's right (+x) on the screen's left, superior (+z)
#: away from the viewer (seen from the feet); neurological: the patient's right on the screen's
#: right, superior towards the viewer (seen from above). Both show the RAS+ frame right-handed,
#: so a 3-D view is never a mirror image of the patient. (napari's ``camera.handedness`` calls
#: them "left": it judges the (axis 0, 1, 2) = (z, y, x) triple, in which RAS+ is left-handed.)
RADIOLOGICAL_ORIENTATION = ("away", "up", "left")
NEUROLOGICAL_ORIENTATION = ("towards", "up", "right")


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def set_radiological_view(viewer, radiological: bool = True) -> None:
    """Orient ``viewer``'s camera: radiological (default) or neurological convention.

    Axial slices then show anterior at the top, and the patient's right on the screen's left
    (radiological) or right (neurological); the 3-D view stays unmirrored (see
    :data:`RADIOLOGICAL_ORIENTATION`). World coordinates do not change.
    """
    camera(viewer).orientation = (
        RADIOLOGICAL_ORIENTATION if radiological else NEUROLOGICAL_ORIENTATION
    )


def is_radiological_view(viewer) -> bool:
    """Whether ``viewer``'s 2-D view is in the radiological convention."""
    return tuple(str(v) for v in camera(viewer).orientation2d) == RADIOLOGICAL_ORIENTATION[1:]


def apply_view_choice(viewer) -> None:
    """Put ``viewer`` in the radiological view unless it already shows the neurological one.

    Called where napari-uad layers enter a viewer, so a user's choice of convention survives
    loading the next scan. Never raises (a reader must not fail because of the view).
    """
    try:
        shown = tuple(str(v) for v in camera(viewer).orientation2d)
        set_radiological_view(viewer, shown != NEUROLOGICAL_ORIENTATION[1:])
    except Exception:  # noqa: BLE001 - the view is a nicety, never a failure
        pass


def upright_affine(viewer) -> np.ndarray:
    """A (3, 3) affine that shows a plain 2-D picture (row 0 at the top, column 0 on the left)
    upright whatever the orientation of ``viewer``'s camera (used for the training preview)."""
    vertical, horizontal = (str(v) for v in camera(viewer).orientation2d)
    return np.diag([-1.0 if vertical == "up" else 1.0, -1.0 if horizontal == "left" else 1.0, 1.0])


def _ras_shape(affine, shape) -> tuple[int, int, int]:
    """Shape of the RAS+ array that :func:`~napari_uad.preprocess.to_canonical` returns."""
    import nibabel.orientations as orientations

    ornt = orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    ras = [0, 0, 0]
    for file_axis, (ras_axis, _) in enumerate(ornt):
        ras[int(ras_axis)] = int(shape[file_axis])
    return tuple(ras)


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
