"""Atomic file writes: write a temporary file beside the target, then rename it into place."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path, write: Callable[[str], object], *, suffix: str = ".tmp") -> Path:
    """Call ``write(temp_path)`` and move the result onto ``path``.

    The temporary file lives in the target's folder (same filesystem, so the rename is atomic),
    starts with a dot, and ends with ``suffix`` (give ``.nii.gz`` where the writer picks its
    format from the name). It is removed if anything fails, so no partial file is left behind.
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        os.chmod(temp, 0o666 & ~_umask())
        write(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
