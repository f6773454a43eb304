"""One input's set of output files, claimed by one run and written complete-or-absent.

A run claims each input's outputs with a lock file (``.<stem>.napari-uad.lock`` in the output
folder) that it holds locked (``flock``) for the whole run, so a second run on the same folder
stops at once instead of replacing them. The operating system releases the lock when the
process dies, however it dies, so a lock file that can be locked again is a killed run's: its
process, host name or PID do not matter (containers, clusters, PID reuse).

The files are first written as hidden temporaries beside their targets and renamed into place
only when all are written, ``<stem>.json`` last: a stem whose JSON is missing is incomplete. The
next run on a killed run's stem removes what it left (its temporaries, and its outputs when the
set has no JSON) and carries on.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .io import InputError

try:  # POSIX; elsewhere an existing lock file is taken as a live run's
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

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
    replaces : sequence of Path, optional
        Other files of this stem that a new set replaces (e.g. the uncertainty map of an
        earlier run with ``--samples``); removed when the new set is committed.
    """

    def __init__(self, folder: Path, stem: str, paths: dict[str, Path], replaces=()):
        self.folder = Path(folder)
        self.stem = stem
        self.paths = dict(paths)
        self.replaces = [Path(p) for p in replaces if Path(p) not in self.paths.values()]
        self.lock = self.folder / f".{stem}{LOCK_SUFFIX}"
        self.staged: dict[str, Path] = {}
        self.claimed = False
        self.swept: list[str] = []
        self._handle = None

    # ----------------------------------------------------------------- claiming
    def claim(self) -> None:
        """Take the lock of this stem; after a killed run, first remove what it left.

        Raises
        ------
        OutputsBusy
            When a live run holds the lock.
        """
        if fcntl is None:  # pragma: no cover - Windows
            self._claim_exclusive()
            return
        for _ in range(5):
            handle = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(handle)
                raise OutputsBusy(self._busy_message()) from None
            except BaseException:
                os.close(handle)
                raise
            self._handle, self.claimed = handle, True  # from here release() cleans up
            # The holder may have removed the file between our open and our lock: then we
            # locked a file nobody else sees, and must start again on the new one.
            try:
                same = os.fstat(handle).st_ino == os.stat(self.lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                self._handle, self.claimed = None, False
                os.close(handle)
                continue
            previous = os.read(handle, 4096)
            # A lock file with a record that we could lock belongs to a run that died.
            self._sweep(stale_run=bool(previous.strip()))
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
            os.ftruncate(handle, 0)
            os.pwrite(handle, record, 0)
            return
        raise OutputsBusy(f"could not lock {self.lock}: another run keeps replacing it")

    def _claim_exclusive(self) -> None:  # pragma: no cover - Windows
        try:
            handle = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise OutputsBusy(self._busy_message()) from None
        os.write(handle, json.dumps({"pid": os.getpid()}).encode())
        self._handle = handle
        self.claimed = True
        self._sweep(stale_run=False)

    def _busy_message(self) -> str:
        try:
            pid = json.loads(self.lock.read_text()).get("pid", "?")
        except (OSError, ValueError, AttributeError):
            pid = "?"
        return (
            f"another napari-uad run (pid {pid}) is writing {self.stem}'s outputs in "
            f"{self.folder}: wait for it, or use another --out"
        )

    def release(self) -> None:
        """Remove this run's staged files and its lock (never the finished outputs)."""
        self.discard()
        if self.claimed:
            self.lock.unlink(missing_ok=True)  # unlinked while still locked: no one reuses it
            os.close(self._handle)
            self._handle = None
            self.claimed = False

    def _sweep(self, *, stale_run: bool) -> None:
        """Remove this stem's staged files and their temporaries (only a dead run can have
        left them: this run holds the lock), and, after a dead run, its outputs when the set
        has no JSON."""
        prefixes = (f".{self.stem}{_STAGE_TAG}", f"..{self.stem}{_STAGE_TAG}")
        for entry in self.folder.iterdir():
            if entry.name.startswith(prefixes) and entry.is_file():
                entry.unlink(missing_ok=True)
                self.swept.append(entry.name)
        provenance = self.paths.get("provenance")
        if stale_run and provenance is not None and not provenance.exists():
            for path in [*self.paths.values(), *self.replaces]:
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
        """Rename every staged file into place, the JSON last.

        An old JSON goes first, so a replacement cut short reads as incomplete, never as the
        old run's; and if the renames fail half-way the whole set is removed (complete or
        absent).
        """
        provenance = self.paths.get("provenance")
        order = [role for role in self.staged if role != "provenance"]
        order += ["provenance"] if "provenance" in self.staged else []
        try:
            if provenance is not None and "provenance" in self.staged:
                provenance.unlink(missing_ok=True)
            for path in self.replaces:
                path.unlink(missing_ok=True)
            for role in order:
                os.replace(self.staged[role], self.paths[role])
        except BaseException:
            for path in self.paths.values():
                path.unlink(missing_ok=True)
            raise
        self.staged.clear()

    def discard(self) -> None:
        """Remove the staged files not yet renamed into place."""
        for path in self.staged.values():
            path.unlink(missing_ok=True)
        self.staged.clear()

    def existing(self) -> list[str]:
        """Names of this stem's outputs already in the folder."""
        return [path.name for path in self.paths.values() if path.exists()]
