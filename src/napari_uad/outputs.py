"""One input's set of output files, claimed by one run and written complete-or-absent.

A run claims each input's outputs with a lock file (``.<stem>.napari-uad.lock`` in the output
folder, created exclusively), so a second run on the same folder stops at once instead of
replacing them. The files are first written as hidden temporaries beside their targets and
renamed into place only when all are written, ``<stem>.json`` last: a stem whose JSON is
missing is incomplete. A run killed with SIGKILL leaves its lock behind; the next run finds its
process gone, removes the incomplete outputs and temporaries of that stem, and carries on.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .io import InputError

LOCK_SUFFIX = ".napari-uad.lock"
_STAGE_TAG = ".napari-uad-"


class OutputsBusy(InputError):
    """Another live run holds the outputs of a stem."""


class OutputSet:
    """The output files of one input, claimed by this process.

    Parameters
    ----------
    folder : Path
        Output folder (must exist before :meth:`claim`).
    stem : str
        The input's name without extension.
    paths : dict of str to Path
        Role -> final path; the role ``"provenance"`` (the JSON) is renamed into place last.
    """

    def __init__(self, folder: Path, stem: str, paths: dict[str, Path]):
        self.folder = Path(folder)
        self.stem = stem
        self.paths = dict(paths)
        self.lock = self.folder / f".{stem}{LOCK_SUFFIX}"
        self.staged: dict[str, Path] = {}
        self.claimed = False
        self.swept: list[str] = []

    # ----------------------------------------------------------------- claiming
    def claim(self) -> None:
        """Take the lock of this stem; a stale lock (its process is gone) is taken over after
        removing what that run left half-written.

        Raises
        ------
        OutputsBusy
            When a live run holds the lock.
        """
        for _ in range(3):
            if self._create_lock():
                self.claimed = True
                self._sweep(stale_run=False)
                return
            owner = _read_lock(self.lock)
            if _is_alive(owner):
                pid = owner.get("pid", "?") if owner else "?"
                raise OutputsBusy(
                    f"another napari-uad run (pid {pid}) is writing {self.stem}'s outputs in "
                    f"{self.folder}: wait for it, or use another --out (if no run is active, "
                    f"remove {self.lock.name})"
                )
            self._sweep(stale_run=True)
            self.lock.unlink(missing_ok=True)
        raise OutputsBusy(f"could not lock {self.lock}: another run keeps taking it")

    def _create_lock(self) -> bool:
        """Create the lock with its content in one step (a hard link fails if it exists), so
        no other run ever reads a half-written lock."""
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        temp = self.folder / f".{self.stem}{_STAGE_TAG}{os.getpid()}.lock-tmp"
        temp.write_text(record)
        try:
            os.link(temp, self.lock)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem: exclusive create, then write
            try:
                handle = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(handle, "w") as file:
                file.write(record)
        finally:
            temp.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        """Remove this run's staged files and its lock (never the finished outputs)."""
        self.discard()
        if self.claimed:
            self.lock.unlink(missing_ok=True)
            self.claimed = False

    def _sweep(self, *, stale_run: bool) -> None:
        """Remove temporaries of this stem's outputs left by dead runs, and, after a dead run,
        its incomplete outputs (a set without its JSON)."""
        names = [path.name for path in self.paths.values()]
        for entry in self.folder.iterdir():
            name = entry.name
            # Staged files, and the temporaries atomic writes make of them (one more dot).
            ours = name.lstrip(".").startswith(f"{self.stem}{_STAGE_TAG}")
            written = any(name.startswith(f".{target}.") for target in names)
            if (ours or written) and entry.is_file() and not name.endswith(LOCK_SUFFIX):
                if ours and _is_alive({"pid": _staged_pid(name), "host": socket.gethostname()}):
                    continue
                entry.unlink(missing_ok=True)
                self.swept.append(name)
        provenance = self.paths.get("provenance")
        if stale_run and provenance is not None and not provenance.exists():
            for path in self.paths.values():
                if path.exists():
                    path.unlink()
                    self.swept.append(path.name)

    # ----------------------------------------------------------------- writing
    def stage(self, role: str) -> Path:
        """A hidden temporary path for ``role``, beside its target and with its suffixes."""
        final = self.paths[role]
        suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
        path = self.folder / f".{self.stem}{_STAGE_TAG}{os.getpid()}.{role}{suffix}"
        self.staged[role] = path
        return path

    def commit(self) -> None:
        """Rename every staged file into place, the JSON last. An old JSON goes first, so an
        interrupted replacement reads as incomplete, never as the old run's."""
        provenance = self.paths.get("provenance")
        if provenance is not None and "provenance" in self.staged:
            provenance.unlink(missing_ok=True)
        order = [role for role in self.staged if role != "provenance"]
        order += ["provenance"] if "provenance" in self.staged else []
        for role in order:
            os.replace(self.staged[role], self.paths[role])
        self.staged.clear()

    def discard(self) -> None:
        """Remove the staged files not yet renamed into place."""
        for path in self.staged.values():
            path.unlink(missing_ok=True)
        self.staged.clear()

    def existing(self) -> list[str]:
        """Names of this stem's outputs already in the folder."""
        return [path.name for path in self.paths.values() if path.exists()]


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _staged_pid(name: str) -> int | None:
    try:
        return int(name.split(_STAGE_TAG, 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return None


def _is_alive(owner: dict | None) -> bool:
    """Whether the process that wrote a lock still runs (on another host: assume it does)."""
    if not owner or not isinstance(owner.get("pid"), int):
        return False
    if owner.get("host") not in (None, socket.gethostname()):
        return True
    if owner["pid"] == os.getpid():
        return True
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
