"""Training the models of each method family on folders of healthy scans.

Importing this package is cheap (no torch): the trainers live in its submodules.
"""

#: The model families ``napari-uad train --method`` takes.
TRAINER_NAMES = ("ddpm", "addm", "disyre", "madad")
