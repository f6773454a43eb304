"""Data napari-uad makes or ships: synthetic phantoms for tests and benchmarks
(:mod:`.phantoms`, :mod:`.head_phantom`) and the paths of the packaged sample scans
(:mod:`.samples`)."""
