"""Preprocessing between a scan's voxel grid and the 2-D model grid, and the exact way back.

One module per job, all re-exported here: :mod:`.orientation` (RAS+ and back),
:mod:`.brain_mask`, :mod:`.intensity`, :mod:`.grid` (slices to the model grid and back) and
:mod:`.volume` (:func:`prepare_volume`, the whole way for one scan).

Conventions
-----------
- Processing happens in RAS+ canonical orientation, reached by flips and axis permutations only
  (no resampling): array axis 0 runs left -> right, axis 1 posterior -> anterior, axis 2
  inferior -> superior. Axial slices are the last axis.
- Model-side slice stacks have shape (N, grid, grid): axis 0 is the slice, axis 1 follows RAS
  axis 0 (left -> right) and axis 2 follows RAS axis 1 (posterior -> anterior).
- A slice is mapped to the model grid through a box that is square in millimetres, centred on
  the brain's bounding box (union over all slices), so anisotropic voxels are not distorted.
"""

from __future__ import annotations

from .brain_mask import estimate_brain_mask, estimate_scan_brain_mask, slices_with_brain
from .grid import SliceGeometry, from_model_grid, slice_geometry, to_model_grid
from .intensity import intensity_range, normalise_intensity
from .orientation import canonical_affine, from_canonical, to_canonical
from .volume import PreparedVolume, prepare_volume

__all__ = [
    "PreparedVolume",
    "SliceGeometry",
    "canonical_affine",
    "estimate_brain_mask",
    "estimate_scan_brain_mask",
    "from_canonical",
    "from_model_grid",
    "intensity_range",
    "normalise_intensity",
    "prepare_volume",
    "slice_geometry",
    "slices_with_brain",
    "to_canonical",
    "to_model_grid",
]
