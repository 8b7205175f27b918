"""The run state every stage reads and writes, and the context that carries it with the data and recipe.

:class:`RunState` is where a run stands — the dense reference, the trajectory so far, the recovery budget
spent, the next stage and the place inside it — as JSON. It is what a pipeline step hands the next one,
what a checkpoint holds beside the current model (so a killed run resumes from its last completed step),
and what a search trial reports from. :class:`RunContext` adds what is not state: data, recipe, device
and the callbacks. Stages report progress through ``on_step(StepRecord)``; the caller decides whether
that becomes a log line, a progress bar or an MLflow metric. Nothing here knows it runs inside a pipeline.

Example:
    >>> state = RunState(dense_val_acc=91.0, dense_params=1000, dense_macs=5000)
    >>> RunState.from_json(state.to_json()) == state
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from idap.data.splits import DataSplits
from idap.measure.metrics import accuracy, count_macs, count_params, resolve_device
from idap.prune.config import Recipe
from idap.prune.recovery import recover
from idap.prune.timing import FINAL_EVALUATIONS, MIN_FINAL_STEPS, RunPlan

# Seed offsets so every stage, step and purpose draws from its own stream: a stage run in a separate
# pipeline step, or resumed after a kill, gets exactly the numbers it gets inside one `idap compress`.
SEED_FILTER, SEED_LAYER, SEED_FINAL, SEED_TOPUP = 1_000, 2_000, 3_000, 4_000
# A block whose removal would overshoot a MACs target by more than this fraction is left to stage 1.
LANDING_TOLERANCE = 0.02
# The stages in the order compress() runs them; a state's ``stage`` names the next one to run.
STAGES = ("filter", "layer", "topup", "finetune", "done")
# Accuracy differences below this are float noise (percentages of a few thousand samples): one
# tolerance for every "within budget" decision.
BUDGET_EPSILON = 1e-9


def within_budget(drop_pp: float, budget_pp: float) -> bool:
    """Whether an accuracy drop (percentage points) respects a budget — the one rule the stages, the report
    and the registry share."""
    return drop_pp <= budget_pp + BUDGET_EPSILON


@dataclass
class StepRecord:
    """One step of the trajectory: what changed, and where the model stands after it."""

    stage: str  # dense | filter | layer | finetune
    index: int
    action: str  # dense | prune | rollback | remove_block | revert_block | skip_block | finetune | stop
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
class RunState:
    """Where a run stands, as JSON: enough, with the current model, to continue it anywhere."""

    dense_val_acc: float
    dense_params: int
    dense_macs: int
    trajectory: list[StepRecord] = field(default_factory=list)
    recovery_used: int = 0  # per-step recovery steps given so far (all stages), for recovery.final_reserve
    stage: str = "filter"  # the next stage to run (STAGES)
    position: dict = field(default_factory=dict)  # that stage's progress: {"t": next step} / the layer plan
    plan: dict | None = None  # the run's time plan (idap.prune.timing.RunPlan), made before the first step
    time_spent: float = 0.0  # seconds the run has worked so far (all processes, resumed runs included)
    recovery_timing: list = field(default_factory=lambda: [0, 0.0])  # [optimizer steps, seconds] of recoveries

    @property
    def time_plan(self) -> RunPlan | None:
        """The run's time plan (``idap.prune.timing``), once the run has made it."""
        return RunPlan.from_json(self.plan) if self.plan else None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"run state stage must be one of {list(STAGES)}, got {self.stage!r}")

    @property
    def recovery_spent(self) -> int:
        """Optimizer steps of recovery recorded in the trajectory (per-step recoveries and the fine-tune)."""
        return sum(r.recovery_steps for r in self.trajectory)

    def advance(self, stage: str, **position) -> None:
        self.stage, self.position = stage, dict(position)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["trajectory"] = [r.to_json() for r in self.trajectory]
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> RunState:
        if not isinstance(doc, dict) or "dense_val_acc" not in doc:
            raise ValueError(f"not a run state: expected an object with dense_val_acc, got {str(doc)[:80]!r}")
        doc = dict(doc)
        doc["trajectory"] = [StepRecord(**r) for r in doc.get("trajectory", [])]
        return cls(**doc)


@dataclass
class RunContext:
    """Data, settings and callbacks around a :class:`RunState`.

    Args:
        checkpoint: called as ``checkpoint(model, state)`` after every completed step, with the model the
            state describes; a resumable caller saves both there.
    """

    data: DataSplits
    recipe: Recipe
    device: torch.device
    state: RunState
    on_step: OnStep | None = None
    progress: bool = False
    checkpoint: Callable[[nn.Module, RunState], None] | None = None
    on_plan: Callable[[RunPlan], None] | None = None  # told the plan before the first pruning step
    clock: Callable[[], float] = time.perf_counter  # seconds; tests pass a constructed clock

    def __post_init__(self) -> None:
        self._since = self.clock()

    @classmethod
    def create(cls, dense: nn.Module, data: DataSplits, recipe: Recipe, *, on_step: OnStep | None = None,
               progress: bool = False, dense_val_acc: float | None = None,
               state: RunState | None = None, checkpoint=None) -> RunContext:
        """A context for a new run (the dense reference measured here) or, given ``state``, a continued one."""
        device = resolve_device(recipe.device)
        dense.to(device)
        ctx = cls(data, recipe, device, state or RunState(0.0, count_params(dense), 0), on_step, progress, checkpoint)
        if state is None:
            ctx.state.dense_macs = ctx.macs(dense)
            ctx.state.dense_val_acc = ctx.evaluate(dense) if dense_val_acc is None else dense_val_acc
        return ctx

    # the dense reference, read through the state
    @property
    def dense_val_acc(self) -> float:
        return self.state.dense_val_acc

    @property
    def dense_params(self) -> int:
        return self.state.dense_params

    @property
    def dense_macs(self) -> int:
        return self.state.dense_macs

    @property
    def recovery_used(self) -> int:
        return self.state.recovery_used

    @recovery_used.setter
    def recovery_used(self, value: int) -> None:
        self.state.recovery_used = value

    @property
    def input_shape(self) -> tuple[int, ...]:
        shape = getattr(self.data, "input_shape", None)  # text splits: (tokens,)
        if shape is not None:
            return tuple(shape)
        return (self.data.in_channels, self.data.image_size, self.data.image_size)

    @property
    def calib(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.recipe.calibration_size
        return self.data.calib_x[:n], self.data.calib_y[:n]

    def evaluate(self, model: nn.Module) -> float:
        from idap.measure.tokens import (
            eval_batch_size,  # a language model: batches whose (B, T, V) logits fit
        )

        return accuracy(model, self.data.val_x, self.data.val_y, device=self.device,
                        batch_size=eval_batch_size(self.data, self.recipe.eval_batch_size))

    def macs(self, model: nn.Module) -> int:
        return count_macs(model, self.input_shape)

    def macs_reduction(self, model: nn.Module) -> float:
        return self.dense_macs / max(1, self.macs(model))

    def recovery_spent(self, records: list[StepRecord] | None = None) -> int:
        """Recovery steps in ``records`` (default: the whole trajectory of this run)."""
        return self.state.recovery_spent if records is None else sum(r.recovery_steps for r in records)

    def drop(self, acc: float) -> float:
        """Accuracy drop from the dense model, in percentage points."""
        return self.dense_val_acc - acc

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

    def recover_step(self, model: nn.Module, previous: nn.Module, dense: nn.Module | None, *, seed: int,
                     desc: str) -> int:
        """The short recovery after a structural change (spec §4): ``take_recovery()`` optimizer steps of
        distillation from the previous model (parity) or the dense one (``recovery.teacher``); returns the steps."""
        r = self.recipe
        teacher = previous if r.recovery.teacher == "previous" or dense is None else dense
        given = self.take_recovery()
        started = self.clock()
        recover(model, teacher, self.data.train_x, self.data.train_y, steps=given, config=r.recovery, seed=seed,
                device=self.device, schedule=r.recovery.schedule, progress=self.progress, desc=desc)
        steps, seconds = self.state.recovery_timing
        self.state.recovery_timing = [steps + given, seconds + self.clock() - started]
        return given

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
        """Append a step to the trajectory and report it."""
        rec = StepRecord(stage, index, action, count_params(model), self.macs(model), val_acc,
                         seconds=round(time.perf_counter() - started, 3), **kw)
        self.state.trajectory.append(rec)
        if self.on_step is not None:
            self.on_step(rec)
        return rec

    # ---- time ----------------------------------------------------------------------------------
    @property
    def plan(self) -> RunPlan | None:
        return self.state.time_plan

    def elapsed(self) -> float:
        """Seconds this run has worked: what earlier processes recorded plus this one's time so far."""
        now = self.clock()
        self.state.time_spent += now - self._since
        self._since = now
        return self.state.time_spent

    def step_seconds(self) -> float | None:
        """Seconds per recovery optimizer step as this run's recoveries took them (None before 10 steps: then
        the plan's probe stands); what the pruned model really costs, under whatever else runs on the machine."""
        steps, seconds = self.state.recovery_timing
        return seconds / steps if steps >= 10 else None

    def out_of_time(self) -> bool:
        """True when the time budget cannot pay for another pruning step as planned and still leave the final
        fine-tune its planned time."""
        plan = self.plan
        if plan is None or plan.time_budget is None:
            return False
        rate = self.step_seconds()
        return self.elapsed() + plan.pruning_step_seconds(rate) + plan.final_seconds(rate) > plan.time_budget

    def final_steps_in_time(self, steps: int) -> int:
        """The final fine-tune's steps under a time budget: what the time left pays for — fewer than planned
        when the stages overran, more (up to the recipe's own final budget, never beyond) when they ended early,
        and never below the planned minimum: the fine-tune the run planned is always finished."""
        plan = self.plan
        if plan is None or plan.time_budget is None or steps <= 0:
            return steps
        left = plan.time_budget - self.elapsed() - FINAL_EVALUATIONS * plan.costs.evaluation
        fits = int(left / max(self.step_seconds() or plan.costs.optimizer_step, 1e-9))
        return max(min(steps, MIN_FINAL_STEPS), min(max(steps, plan.final_requested), fits))

    def final_horizon(self, steps: int) -> Callable[[int], int] | None:
        """Under a time budget, the final fine-tune's horizon (``recover(horizon=)``): after a few steps at its own
        observed pace, the steps the budget still pays for (less the evaluation after it), never below the
        minimum the plan keeps. A machine that slows down mid-fine-tune (another job starts) then shortens the
        fine-tune instead of overrunning the budget. None without a budget."""
        plan = self.plan
        if plan is None or plan.time_budget is None or steps <= 0:
            return None
        started = self.clock()

        def horizon(done: int) -> int:
            if done < 3:
                return steps
            pace = (self.clock() - started) / done
            left = plan.time_budget - self.elapsed() - plan.costs.evaluation
            return max(min(steps, MIN_FINAL_STEPS), done + int(left / max(pace, 1e-9)))

        return horizon

    def save_point(self, model: nn.Module) -> None:
        """The state now describes ``model`` after a completed step: hand both to the checkpoint callback."""
        self.elapsed()  # the time worked so far travels with the state
        if self.checkpoint is not None:
            self.checkpoint(model, self.state)
