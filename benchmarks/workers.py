"""Parallel workers for a many-core or GPU machine: processes that claim jobs one at a time (atomic claim
files in each job's folder) and run them; the parent times the results afterwards."""

from __future__ import annotations

import os
import subprocess
import traceback
from pathlib import Path

from benchmarks.jobs import Job, run_job, runs_dir
from benchmarks.presets import Preset
from idap.cli import log

CLAIM = ".claim"


def claim(directory: Path) -> bool:
    """Take a job for this worker process; False when another worker holds it (atomic: O_EXCL)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_workers(preset: Preset, work: Path, worker_argv: list[str], workers: int) -> int:
    """Run the preset's jobs in ``workers`` processes that claim jobs one at a time; the number that failed.

    For a machine with many cores or a GPU: each worker trains on the same device with its own torch
    threads. Stale claims of an interrupted run are cleared first (only one parent runs per work folder).
    """
    for stale in runs_dir(work, preset).rglob(CLAIM):
        stale.unlink(missing_ok=True)
    log(f"starting {workers} worker processes")
    procs = [subprocess.Popen(worker_argv) for _ in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return sum(1 for c in codes if c != 0)


def run_worker_jobs(jobs: list[Job], preset: Preset, work: Path, **kwargs) -> int:
    """A worker: run every unclaimed job, keep going past a failed one; the number of failed jobs."""
    failed = 0
    for job in jobs:
        directory = runs_dir(work, preset) / job.key
        if not claim(directory):
            continue
        try:
            run_job(job, preset, work=work, **kwargs)
        except Exception:  # noqa: BLE001 - reported, counted, and the exit code says so
            failed += 1
            log(f"{job.key}: FAILED\n{traceback.format_exc()}")
        finally:
            (directory / CLAIM).unlink(missing_ok=True)
    return failed
