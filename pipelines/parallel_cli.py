"""``--workers`` / ``--address`` / ``--storage`` of ``idap train``, ``compress`` and ``import``: the edge hands idap a
Ray Train executor (components/services/ray_train.py) for the command's duration, so its long training calls run
data-parallel; ``--workers 1`` (the default) changes nothing."""

from __future__ import annotations

import argparse
import contextlib

from idap.cli import log
from pipelines._cli_args import PipelineError, positive_int

__all__ = ["add_workers", "data_parallel"]


def add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=positive_int, default=1,
                   help="data-parallel workers (Ray Train, 1 CPU and 1 thread each) for the dense training and "
                        "the long fine-tunes; 1 = one process, as before")
    p.add_argument("--address", dest="workers_address", default=None,
                   help="with --workers: a Ray cluster (host:port or ray://host:10001, as idap tune); default a "
                        "local Ray on this machine's cores")
    p.add_argument("--storage", dest="workers_storage", default=None,
                   help="with --workers: Ray Train's run and checkpoint storage, s3://bucket/prefix when the workers "
                        "run on other machines than this one (default: a temporary local directory)")


@contextlib.contextmanager
def data_parallel(args: argparse.Namespace):
    """``--workers N`` (N > 1): idap's long training calls run on Ray Train for the command's duration."""
    # own dests: idap tune has an --address of its own (its trials' cluster), which must not read as the workers'
    workers, address = getattr(args, "workers", 1), getattr(args, "workers_address", None)
    if workers <= 1:
        if address or getattr(args, "workers_storage", None):
            raise PipelineError("--address and --storage need --workers N with N > 1 (they are the workers')")
        yield None
        return
    from components.services.ray_train import step_workers

    storage = getattr(args, "workers_storage", None)
    with step_workers(workers, address or "", storage or "", min_steps=None, report=log) as executor:
        yield executor
