"""Ray Train at the edge: run idap's recovery / training data-parallel with ``ray.train.torch.TorchTrainer``.

:class:`RayTrainExecutor` is the executor idap.prune.parallel takes (``parallel.use_executor``): a ``recover`` or
``train`` call of at least ``min_steps`` optimizer steps becomes one ``TorchTrainer.fit`` on ``workers`` workers
(1 CPU and 1 torch thread each, or 1 GPU each). Ray Train makes the process group (gloo on CPU, NCCL on GPU);
idap's own code shards the global batch and wraps the model in DDP. Rank 0 saves the trained weights as
safetensors into a checkpoint reported through ``ray.train.report`` (to the run's storage: a local directory
or ``s3://``), and the driver reads them back with safetensors: nothing user-made is unpickled.

Fault tolerance is Ray Train's: ``FailureConfig(max_failures=N)`` restarts a failed worker group, which reruns
the call from its start with the same seed (a call is one recovery or one fine-tune: seconds to minutes); a
killed whole job resumes from idap compress's own checkpoints.

Connection rules are ``idap tune``'s (:func:`components.services.ray_connect.start_ray`): a private local Ray on
127.0.0.1 by default, or ``--address`` / ``RAY_ADDRESS`` for a cluster.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.services.ray_connect import start_ray, tune_storage

__all__ = ["DataParallelError", "RayTrainExecutor", "run_data_parallel", "step_workers"]


class DataParallelError(RuntimeError):
    """A data-parallel run that failed beyond its FailureConfig."""

WEIGHTS = "model.safetensors"


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: the call on this rank; rank 0 reports the weights as a checkpoint."""
    import ray
    import ray.train
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(config["threads"])
    payload = ray.get(config["payload"][0])
    state, meta = config["fn"](payload)
    ctx = ray.train.get_context()
    if ctx.get_world_rank() != 0:
        ray.train.report({"rank": ctx.get_world_rank()})
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(Path(tmp) / WEIGHTS),
                  metadata={str(k): str(v) for k, v in meta.items()})
        ray.train.report({"rank": 0, **{k: v for k, v in meta.items() if k == "final_loss"}},
                         checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_data_parallel(fn: Callable[[dict], tuple[dict, dict]], payload: dict, *, workers: int,
                      storage: str | None = None, name: str | None = None, max_failures: int = 0,
                      use_gpu: bool = False, threads: int = 1) -> tuple[dict, dict[str, str]]:
    """``fn(payload)`` on ``workers`` Ray Train workers (Ray must be initialised); rank 0's (state, metadata).

    Args:
        storage: where Ray Train keeps the run and its checkpoints: a local directory (default: a temporary
            one) or ``s3://bucket/prefix`` (a cluster: the workers cannot write to the driver's disk).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors import safe_open
    from safetensors.torch import load_file

    own_dir = None
    if storage is None:
        own_dir = tempfile.mkdtemp(prefix="idap-train-")
        storage = own_dir
    storage_path, fs = tune_storage(storage, Path(storage) / "x")
    if fs is None:
        storage_path = str(Path(storage).absolute())
    resources = {"CPU": 1} if not use_gpu else {"CPU": 1, "GPU": 1}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"fn": fn, "payload": [ray.put(payload)], "threads": threads},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name or f"idap-train-{int(time.time() * 1000)}", storage_path=storage_path,
                             storage_filesystem=fs, failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    try:
        result = trainer.fit()
    except Exception as error:  # ray.train.TrainingFailedError: a worker failed more than max_failures times
        raise DataParallelError(f"data-parallel run on {workers} workers failed: {error}".splitlines()[0]) from error
    if result.checkpoint is None:
        raise RuntimeError(f"the data-parallel run ended without a checkpoint: {result.error!r}")
    with result.checkpoint.as_directory() as folder:
        path = str(Path(folder) / WEIGHTS)
        state = load_file(path)
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
    if own_dir:
        import shutil

        shutil.rmtree(own_dir, ignore_errors=True)
    return state, meta


@dataclass
class RayTrainExecutor:
    """What ``idap train`` / ``idap compress --workers N [--address A]`` hand the library. Use it as a context
    manager: Ray is started (or attached to) on the first call and shut down at the end when this started it."""

    workers: int
    address: str | None = None
    storage: str | None = None
    max_failures: int = 0
    # Shorter calls run in this process: one fit costs ~25 s of Ray Train start-up on the 2-core VM (measured),
    # so the default keeps the per-step recoveries (step_budget 100) and the time plan's probe local and hands
    # the dense training and the final fine-tune (final_budget 1500) to the workers.
    min_steps: int = 200
    use_gpu: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)  # one entry per fit: steps, seconds
    _owns_ray: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    def __enter__(self) -> RayTrainExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, fn: Callable[[dict], tuple[dict, dict]], payload: dict) -> tuple[dict, dict[str, str]]:
        if not self._owns_ray:
            self._owns_ray = start_ray(self.address, num_cpus=None if self.address else max(self.workers,
                                                                                              os.cpu_count() or 1))
        t0 = time.perf_counter()
        out = run_data_parallel(fn, payload, workers=self.workers, storage=self.storage,
                                max_failures=self.max_failures, use_gpu=self.use_gpu)
        self.calls.append({"fn": getattr(fn, "__name__", str(fn)), "seconds": round(time.perf_counter() - t0, 2)})
        return out

    def close(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False


@contextlib.contextmanager
def step_workers(workers: int, address: str = "", storage: str = "", *, min_steps: int | None = 1,
                 report: Callable[[str], None] = print):
    """A step's or a command's training calls on Ray Train for its duration (the pipeline's ``workers`` /
    ``ray_address`` / ``ray_storage``, the CLI's ``--workers`` / ``--address`` / ``--storage``); ``workers`` 1 runs
    them in this process, as before.

    Args:
        min_steps: the shortest call handed over (1 in the finetune step: the fine-tune is all it trains; None:
            :class:`RayTrainExecutor`'s default, which keeps short recoveries local).
        report: told one line at the end: which calls ran on the workers and how long each took.
    """
    if workers <= 1:
        if address or storage:
            raise ValueError(f"ray_address / ray_storage need workers > 1 (they are the workers'), got workers={workers}")
        yield None
        return
    from idap.prune.parallel import use_executor

    options = {} if min_steps is None else {"min_steps": min_steps}
    with RayTrainExecutor(workers=workers, address=address or None, storage=storage or None,
                          **options) as executor, use_executor(executor):
        yield executor
    report(f"data-parallel on {workers} workers: " + (", ".join(f"{c['fn']} {c['seconds']:.1f} s" for c in executor.calls)
                                                     or "no call was long enough to hand over"))
