"""What the stages share: the run context (data, recipe, dense reference) and the step record.

Stages report progress by calling ``on_step(StepRecord)``; the caller decides whether that becomes a
log line, a progress bar or an MLflow metric. Nothing here knows it runs inside a pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from idap.config import Recipe
from idap.data import DataSplits
from idap.metrics import accuracy, count_macs, count_params, resolve_device

# Seed offsets so every stage, step and purpose draws from its own stream: a stage run in a separate
# pipeline step gets exactly the numbers it gets inside `idap compress`.
SEED_FILTER, SEED_LAYER, SEED_FINAL, SEED_TOPUP = 1_000, 2_000, 3_000, 4_000
# A block whose removal would overshoot a MACs target by more than this fraction is left to stage 1.
LANDING_TOLERANCE = 0.02


@dataclass
class StepRecord:
    """One step of the trajectory: what changed, and where the model stands after it."""

    stage: str  # dense | filter | layer | finetune
    index: int
    action: str  # prune | rollback | remove_block | revert_block | finetune | stop
    params: int
    macs: int
    val_acc: float
    accepted: bool = True
    removed: dict = field(default_factory=dict)  # {"channels": {layer: n}, "heads": {attn: n}, "block": name}
    note: str = ""
    seconds: float = 0.0
    recovery_steps: int = 0  # optimizer steps of recovery spent on this step


    def to_json(self) -> dict:
        return asdict(self)


OnStep = Callable[[StepRecord], None]


@dataclass
class RunContext:
    """Data, settings and the dense reference every stage measures against."""

    data: DataSplits
    recipe: Recipe
    device: torch.device
    dense_val_acc: float
    dense_params: int
    dense_macs: int
    on_step: OnStep | None = None
    progress: bool = False
    recovery_used: int = 0  # per-step recovery steps given so far in this run (all stages)

    @classmethod
    def create(cls, dense: nn.Module, data: DataSplits, recipe: Recipe, *, on_step: OnStep | None = None,
               progress: bool = False, dense_val_acc: float | None = None) -> RunContext:
        device = resolve_device(recipe.device)
        dense.to(device)
        ctx = cls(data, recipe, device, 0.0, count_params(dense), 0, on_step, progress)
        ctx.dense_macs = ctx.macs(dense)
        ctx.dense_val_acc = ctx.evaluate(dense) if dense_val_acc is None else dense_val_acc
        return ctx

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.data.in_channels, self.data.image_size, self.data.image_size)

    @property
    def calib(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.recipe.calibration_size
        return self.data.calib_x[:n], self.data.calib_y[:n]

    def evaluate(self, model: nn.Module) -> float:
        return accuracy(model, self.data.val_x, self.data.val_y, batch_size=self.recipe.eval_batch_size, device=self.device)

    def macs(self, model: nn.Module) -> int:
        return count_macs(model, self.input_shape)

    def macs_reduction(self, model: nn.Module) -> float:
        return self.dense_macs / max(1, self.macs(model))

    def recovery_spent(self, records: list[StepRecord]) -> int:
        return sum(r.recovery_steps for r in records)

    def take_recovery(self) -> int:
        """Optimizer steps for the next per-step recovery: ``step_budget``, unless ``total_budget`` with a
        ``final_reserve`` leaves less for the stages (then what is left of their share, down to 0)."""
        rc = self.recipe.recovery
        steps = rc.step_budget
        if rc.total_budget is not None and rc.final_reserve > 0:
            allowance = int(rc.total_budget * (1 - rc.final_reserve)) - self.recovery_used
            steps = max(0, min(steps, allowance))
        self.recovery_used += steps
        return steps

    def target_reached(self, model: nn.Module, macs_target: float | None = None) -> bool:
        """True once the model is at least as small as every configured target."""
        r = self.recipe
        macs_target = r.target_macs_reduction if macs_target is None else macs_target
        if macs_target is None and r.target_params_reduction is None:
            return False
        ok = True
        if macs_target is not None:
            ok &= self.dense_macs / max(1, self.macs(model)) >= macs_target
        if r.target_params_reduction is not None:
            ok &= self.dense_params / max(1, count_params(model)) >= r.target_params_reduction
        return ok

    def record(self, model: nn.Module, stage: str, index: int, action: str, *, val_acc: float, started: float,
               **kw) -> StepRecord:
        rec = StepRecord(stage, index, action, count_params(model), self.macs(model), val_acc,
                         seconds=round(time.perf_counter() - started, 3), **kw)
        if self.on_step is not None:
            self.on_step(rec)
        return rec
