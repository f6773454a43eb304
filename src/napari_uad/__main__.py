"""``python -m napari_uad`` runs the command line (``torchrun -m napari_uad train`` too)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
