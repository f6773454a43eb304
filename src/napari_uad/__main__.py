"""``python -m napari_uad`` runs the command line (``torchrun -m napari_uad train`` too)."""

import sys

from .cli import main

sys.exit(main())
