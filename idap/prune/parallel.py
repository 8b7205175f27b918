"""Data parallelism for recovery, dense training and flow scoring, on torch.distributed only (no Ray here).

When a torch.distributed process group with world size > 1 is initialised (Ray Train's ``TorchTrainer`` does
that on each worker; so does ``torch.multiprocessing`` with gloo in the tests), :func:`idap.prune.recovery.recover`
and :func:`~idap.prune.recovery.train` run data-parallel:

* **Same global batch.** Every rank draws the single process's seeded global batch (same generator, same
  permutation, same augmentation draws) and keeps its own contiguous slice of ``batch_size / world`` samples
  (:func:`shard`): over an epoch every sample is seen exactly once across ranks, and the mean loss over the
  shards, averaged by DDP's gradient all-reduce, is the single process's mean loss.
* **DDP.** The student is wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU); the distillation
  adapters (a few 1x1 convs / linears) have their gradients averaged by one all-reduce per step; the teacher
  runs on every worker, on that worker's shard.
* **Batch norm.** On GPU the student's BatchNorm layers become ``SyncBatchNorm`` for the run (statistics over the
  global batch, as in one process) and are turned back into plain BatchNorm afterwards. On CPU this torch
  refuses it (measured, torch 2.14 / gloo: ``ValueError: SyncBatchNorm layers only work with GPU modules``), so
  each rank normalises with its own shard's statistics during training (what DDP without SyncBatchNorm does)
  and at the end the running mean / variance are averaged over the ranks (:func:`average_buffers`): the mean of
  equal shards' means is the global mean exactly; the variance misses only the between-shard spread of the means.
  DDP's per-step buffer broadcast is off (it would keep rank 0's statistics only).
* **Scores.** :func:`idap.prune.divergence.flow_profile` splits the calibration samples over the ranks and
  all-reduces its additive sums (:func:`all_reduce_sums`): 2 ranks give the single process's scores to float
  tolerance.

A process with no process group runs exactly the single-process code. An edge can also hand the library an
:class:`Executor` (:func:`use_executor`): a ``recover`` / ``train`` call of at least ``executor.min_steps`` steps
made outside any process group is then run by the executor on its workers (Ray Train at the edge,
components/services/ray_train.py) and the trained weights are loaded back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor, nn


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_parallel() -> bool:
    return world()[1] > 1


def shard_size(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split evenly over {world_size} workers: "
                         "choose a batch size that is a multiple of the worker count")
    return batch_size // world_size


def shard(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous slice of a global batch (its first axis), ``len / world`` rows."""
    per = shard_size(len(batch), world_size)
    return batch[rank * per:(rank + 1) * per]


def sample_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s part of ``n`` samples split as evenly as possible (scoring)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _bn_to_sync(model: nn.Module) -> nn.Module:
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _sync_to_bn(module: nn.Module) -> nn.Module:
    """SyncBatchNorm back to BatchNorm2d (pruning surgery and export expect plain batch norm)."""
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        out = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats).to(module.weight.device if module.affine else "cpu")
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _sync_to_bn(child))
    return out


def prepare(model: nn.Module, device: torch.device) -> tuple[nn.Module, Callable[[], None]]:
    """Wrap ``model`` for data-parallel training; returns (the module to call, a finish function that undoes
    the wrapping's changes to ``model`` and synchronises its batch-norm buffers). Identity without a group."""
    if not is_parallel():
        return model, lambda: None
    synced = device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if synced:
        for name, child in list(model.named_children()):
            model.add_module(name, _bn_to_sync(child))
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              broadcast_buffers=False)

    def finish() -> None:
        if synced:
            for name, child in list(model.named_children()):
                model.add_module(name, _sync_to_bn(child))
        average_buffers(model)

    return ddp, finish


def average_buffers(model: nn.Module) -> None:
    """Average the float buffers (batch norm's running statistics) over the ranks."""
    if not is_parallel():
        return
    _, size = world()
    for buf in model.buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf)
            buf.div_(size)


def average_grads(params: list[Tensor]) -> None:
    """Average the gradients of parameters DDP does not own (the distillation adapters), one flat all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not is_parallel():
        return
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world()[1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_over_ranks(value: float) -> float:
    if not is_parallel():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t) / world()[1]


def all_reduce_sums(sums: dict[str, Any]) -> dict[str, Any]:
    """Sum a dict of tensors / numbers over the ranks (same keys on every rank, reduced in sorted key order)."""
    if not is_parallel():
        return sums
    out = {}
    for key in sorted(sums):
        value = sums[key]
        t = value.detach().to(torch.float64).cpu().clone() if isinstance(value, Tensor) else \
            torch.tensor(float(value), dtype=torch.float64)
        torch.distributed.all_reduce(t)
        out[key] = t.to(value.dtype).to(value.device) if isinstance(value, Tensor) else float(t)
    return out


# --- handing whole calls to an executor (the edge's Ray Train) ---------------------------------------------------


class Executor(Protocol):
    """Runs ``fn(payload)`` on ``workers`` ranks that each have a torch.distributed process group, and returns
    what rank 0's call returned: ``(state_dict, metadata)``."""

    workers: int
    min_steps: int

    def run(self, fn: Callable[[dict], tuple[dict[str, Tensor], dict[str, str]]],
            payload: dict) -> tuple[dict[str, Tensor], dict[str, str]]: ...


_EXECUTOR: list[Executor] = []


@contextmanager
def use_executor(executor: Executor | None) -> Iterator[None]:
    """Within the block, long ``recover`` / ``train`` calls run on ``executor`` (None: no change)."""
    if executor is None:
        yield
        return
    _EXECUTOR.append(executor)
    try:
        yield
    finally:
        _EXECUTOR.remove(executor)


def executor_for(steps: int) -> Executor | None:
    """The executor a call of ``steps`` optimizer steps should be handed to, or None (run it here)."""
    if not _EXECUTOR or is_parallel():
        return None
    ex = _EXECUTOR[-1]
    return ex if ex.workers > 1 and steps >= ex.min_steps else None
