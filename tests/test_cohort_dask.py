"""Cohort runs as Dask tasks: a local cluster of 2 worker processes, and a worker killed."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import nibabel as nib
import numpy as np
import pytest

from .test_cohort import _summary, restore, write_phantom

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    for i in range(4):
        write_phantom(folder / f"c{i}.nii.gz", 60 + i)
    return sorted(folder.glob("*.nii.gz"))


@pytest.fixture(scope="module")
def sequential(cohort, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    assert restore(cohort, tiny_model_dir, out) == 0
    return out


def _assert_same_outputs(out, reference, stems):
    for stem in stems:
        for suffix in ("anomaly", "healthy"):
            ours = np.asarray(nib.load(out / f"{stem}_{suffix}.nii.gz").dataobj)
            theirs = np.asarray(nib.load(reference / f"{stem}_{suffix}.nii.gz").dataobj)
            np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
        np.testing.assert_array_equal(
            np.asarray(nib.load(out / f"{stem}_brain_mask.nii.gz").dataobj),
            np.asarray(nib.load(reference / f"{stem}_brain_mask.nii.gz").dataobj),
        )
        assert json.loads((out / f"{stem}.json").read_text())["method"] == "anoddpm"
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".c")]
    assert not leftovers, leftovers


def test_two_local_workers_give_the_sequential_outputs(
    cohort, sequential, tiny_model_dir, tmp_path
):
    out = tmp_path / "jobs"
    assert restore(cohort, tiny_model_dir, out, "--jobs", "2") == 0
    stems = [p.name.removesuffix(".nii.gz") for p in cohort]
    _assert_same_outputs(out, sequential, stems)
    rows = _summary(out)
    assert [r["scan"] for r in rows] == stems and {r["status"] for r in rows} == {"done"}
    # --skip-existing on a finished cohort does no work
    started = time.perf_counter()
    assert restore(cohort, tiny_model_dir, out, "--jobs", "2", "--skip-existing") == 0
    assert time.perf_counter() - started < 30
    assert {r["status"] for r in _summary(out)} == {"skipped"}


def test_a_killed_workers_scan_is_redone_on_an_existing_cluster(
    cohort, sequential, tiny_model_dir, tmp_path
):
    from distributed import LocalCluster

    out = tmp_path / "killed"
    killed = []

    def kill_one_worker():
        # The lock file of a scan in progress records the process writing it.
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for lock in out.glob(".*.napari-uad.lock") if out.exists() else []:
                try:
                    pid = json.loads(lock.read_text())["pid"]
                except (OSError, ValueError, KeyError):
                    continue
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(lock.name)
                    return
            time.sleep(0.005)

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        killer = threading.Thread(target=kill_one_worker, daemon=True)
        killer.start()
        code = restore(cohort, tiny_model_dir, out, "--scheduler", cluster.scheduler_address)
        killer.join(timeout=5)
    assert killed, "no worker was caught mid-scan"
    assert code == 0
    stems = [p.name.removesuffix(".nii.gz") for p in cohort]
    _assert_same_outputs(out, sequential, stems)
    assert {r["status"] for r in _summary(out)} == {"done"}
