"""Start a Dask cluster of SLURM jobs for ``napari-uad restore --scheduler`` (dask-jobqueue).

Run it on the cluster's login node, in the environment napari-uad is installed in (the jobs
start their workers with the same Python), and leave it running while the cohort runs::

    pip install "napari-uad[cluster]"
    python scripts/slurm_cluster.py --jobs 8 --partition gpu --gpus 1 --memory 32GB
    # prints: scheduler tcp://10.1.2.3:41234 -> in a second shell:
    napari-uad restore /data/study --method disyre --out /data/study/derivatives/napari-uad \\
        --scheduler tcp://10.1.2.3:41234 --skip-existing

Each SLURM job runs one worker process (one scan at a time, the model loaded once). With
``--dry-run`` it prints the batch script the jobs would use and submits nothing. For PBS, use
``dask_jobqueue.PBSCluster`` with the same arguments (``--partition`` becomes ``queue``).
"""

from __future__ import annotations

import argparse
import sys
import time


def make_cluster(args):
    """The SLURMCluster these arguments describe (no job is submitted yet)."""
    from dask_jobqueue import SLURMCluster

    extra = [f"--gres=gpu:{args.gpus}"] if args.gpus else []
    return SLURMCluster(
        queue=args.partition,
        account=args.account,
        # One worker thread (one scan at a time) per job; torch uses all the job's cores.
        cores=1,
        processes=1,
        job_cpu=args.cores,
        memory=args.memory,
        walltime=args.walltime,
        job_extra_directives=extra,
        python=sys.executable,
        job_script_prologue=[f"export NAPARI_UAD_THREADS={args.cores}"],
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs (= Dask workers)")
    parser.add_argument("--partition", help="SLURM partition (queue)")
    parser.add_argument("--account", help="SLURM account")
    parser.add_argument("--cores", type=int, default=4, help="CPU cores per job")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per job")
    parser.add_argument("--memory", default="16GB", help="memory per job")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--dry-run", action="store_true", help="print the job script only")
    args = parser.parse_args(argv)
    cluster = make_cluster(args)
    if args.dry_run:
        print(cluster.job_script())
        cluster.close()
        return 0
    cluster.scale(jobs=args.jobs)
    print(f"scheduler {cluster.scheduler_address}", flush=True)
    print("pass it to napari-uad restore --scheduler; Ctrl-C stops the cluster", flush=True)
    try:
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
