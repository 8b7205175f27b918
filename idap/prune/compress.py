"""IDAP++ end to end: stage 1 (filters), stage 2 (blocks, then a stage-1 top-up), final fine-tune.

Each stage is a public function of (model, context) that continues from the context's :class:`RunState`
and draws from its own seed stream, so a pipeline that runs the stages as separate steps, or a run that
resumes from a checkpoint after a kill, produces the same model as one uninterrupted :func:`compress`.

Example:
    >>> from idap import Recipe, compress, create_model, load_dataset          # doctest: +SKIP
    >>> data = load_dataset("digits")                                            # doctest: +SKIP
    >>> result = compress(create_model("cnn_small", 10, 1, 8), data, Recipe())   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from torch import nn

from idap.data.splits import DataSplits
from idap.models.prunable import block_candidates
from idap.prune.checkpoint import Checkpoint
from idap.prune.config import Recipe
from idap.prune.divergence import FlowProfile, flow_profile
from idap.prune.filter_stage import run_filter_stage
from idap.prune.importance import FlowImportance, create_importance
from idap.prune.layer_stage import run_layer_stage
from idap.prune.recovery import recover
from idap.prune.state import SEED_FINAL, SEED_TOPUP, STAGES, OnStep, RunContext, RunState, StepRecord
from idap.prune.timing import RunPlan, measure_costs, plan_run


@dataclass
class CompressionResult:
    model: nn.Module
    dense: nn.Module
    steps: list[StepRecord]
    profile: FlowProfile
    recipe: Recipe
    dense_val_acc: float
    seconds: float = 0.0
    state: RunState | None = None
    resumed_from: str | None = None  # "<stage> step <n>" when the run continued from a checkpoint


def dense_profile(dense: nn.Module, ctx: RunContext) -> FlowProfile:
    """The dense model's divergence profile: the report's per-layer view and stage 1's first scores."""
    r = ctx.recipe
    return flow_profile(dense, ctx.calib[0], blocks=block_candidates(dense), block_metric=r.layer.block_score,
                        point=r.filter.score_point, score_pointwise=r.filter.score_pointwise,
                        batch_size=r.eval_batch_size, seed=r.seed, device=ctx.device)


def filter_macs_target(recipe: Recipe) -> float | None:
    """Stage 1's share of the MACs target (the rest is left to block removal)."""
    t = recipe.target_macs_reduction
    if t is None or not recipe.layer.enabled:
        return t
    return t ** (1 - recipe.layer.target_share)


def _position(ctx: RunContext, stage: str) -> dict:
    return ctx.state.position if ctx.state.stage == stage else {}


def stage_one(model: nn.Module, ctx: RunContext, dense: nn.Module, profile: FlowProfile | None = None):
    """Stage 1 (iterative filter pruning, ``idap.prune.filter_stage``) from where the run state stands; returns ``(model, records of this call)``.

    Args:
        profile: the dense model's profile, reused for the first step's ranking (no second scoring pass).
    """
    r = ctx.recipe
    start = _position(ctx, "filter").get("t", 0)
    imp = create_importance(r.filter.importance)
    if isinstance(imp, FlowImportance) and profile is not None and start == 0:
        imp.profile = profile  # already computed on this very model: skip the first scoring pass
    return run_filter_stage(model, ctx, dense=dense, importance=imp, macs_target=filter_macs_target(r), start=start)


def needs_topup(model: nn.Module, ctx: RunContext) -> bool:
    """After stage 2: blocks stopped short of a MACs target and stage 1 may close the gap."""
    r = ctx.recipe
    return r.filter.enabled and r.target_macs_reduction is not None and not ctx.target_reached(model)


def stage_two_and_topup(model: nn.Module, ctx: RunContext, dense: nn.Module) -> tuple[nn.Module, list[StepRecord]]:
    """Stage 2 (block removal, ``idap.prune.layer_stage``), then — when a MACs target is set and blocks stopped short of it — stage 1 tops up the gap."""
    first = len(ctx.state.trajectory)
    if ctx.state.stage in ("filter", "layer"):
        plan = _position(ctx, "layer") or None
        model, _ = run_layer_stage(model, ctx, dense=dense, plan=plan)
        ctx.state.advance("topup")
        ctx.save_point(model)
    if ctx.state.stage == "topup":
        if needs_topup(model, ctx):
            model, _ = run_filter_stage(model, ctx, dense=dense, importance=create_importance(ctx.recipe.filter.importance),
                                        seed_offset=SEED_TOPUP, start=_position(ctx, "topup").get("t", 0),
                                        stage="topup", note="top-up after stage 2. ")
        ctx.state.advance("finetune")
        ctx.save_point(model)
    return model, ctx.state.trajectory[first:]


def final_budget(recipe: Recipe, spent: int) -> int:
    """Steps of the final fine-tune: fixed, or what recovery left of recovery.total_budget."""
    total = recipe.recovery.total_budget
    return recipe.recovery.final_budget if total is None else max(0, total - spent)


def final_finetune(model: nn.Module, ctx: RunContext, dense: nn.Module, *, spent: int | None = None
                   ) -> tuple[nn.Module, list[StepRecord]]:
    """Long distillation fine-tune with the original dense model as teacher (cosine learning rate).

    Args:
        spent: recovery steps the stages already used (matters only with ``recovery.total_budget``;
            default: what the run state's trajectory records).
    """
    r = ctx.recipe
    started = time.perf_counter()
    steps = ctx.final_steps_in_time(final_budget(r, ctx.recovery_spent() if spent is None else spent))
    before = ctx.evaluate(model) if steps > 0 else None
    kept = {k: v.detach().clone() for k, v in model.state_dict().items()} if steps > 0 else None
    stats = recover(model, dense, ctx.data.train_x, ctx.data.train_y, steps=steps, config=r.recovery,
                    seed=r.seed + SEED_FINAL, device=ctx.device, lr=r.recovery.final_lr, schedule="cosine",
                    progress=ctx.progress, desc="final fine-tune", horizon=ctx.final_horizon(steps))
    acc = ctx.evaluate(model)
    note = f"{stats.steps} steps" + (f" of {steps} planned (time budget)" if stats.steps < steps else "")
    if before is not None and acc < before:
        # A fine-tune that lowers validation accuracy (a learning rate wrong for the model, too few steps to
        # settle) is never kept: the model before it is already a valid result of the stages.
        model.load_state_dict(kept)
        note += f"; it lowered validation accuracy {before:.2f} -> {acc:.2f} %: kept the model before it"
        acc = before
    rec = ctx.record(model, "finetune", 0, "finetune", val_acc=acc, started=started, note=note,
                     recovery_steps=stats.steps)
    ctx.state.advance("done")
    ctx.save_point(model)
    return model, [rec]


def start_run(dense: nn.Module, data: DataSplits, recipe: Recipe, *, on_step: OnStep | None = None,
              progress: bool = False, dense_val_acc: float | None = None, checkpoint=None) -> RunContext:
    """A new run: the dense reference measured (or given) and recorded as the trajectory's first step."""
    started = time.perf_counter()
    ctx = RunContext.create(dense, data, recipe, on_step=on_step, progress=progress, dense_val_acc=dense_val_acc,
                            checkpoint=checkpoint)
    ctx.record(dense, "dense", 0, "dense", val_acc=ctx.dense_val_acc, started=started)
    return ctx


def plan_time(model: nn.Module, ctx: RunContext, *, scoring: float | None = None) -> RunPlan:
    """The run's time plan (``idap.prune.timing``), made once before the first pruning step and kept in the run
    state: the step costs measured on ``model``, the steps the schedule can take, the estimated time and, with
    ``recovery.time_budget``, the recovery budgets sized to fit. ``scoring``: a scoring pass's seconds when
    already timed (the dense profile)."""
    r = ctx.recipe
    costs = measure_costs(model, x=ctx.data.train_x, y=ctx.data.train_y, recovery=r.recovery, device=ctx.device,
                          evaluate=ctx.evaluate, score=lambda m: dense_profile(m, ctx), scoring=scoring,
                          calibration_size=len(ctx.calib[0]), clock=ctx.clock)
    blocks = len(block_candidates(model)) if r.layer.enabled else 0
    return plan_run(r, costs, blocks=blocks, macs_target=filter_macs_target(r), spent=ctx.elapsed())


def run_stages(model: nn.Module, ctx: RunContext, dense: nn.Module, profile: FlowProfile | None = None, *,
               until: str = "done", scoring: float | None = None) -> nn.Module:
    """Run every stage the recipe enables from wherever ``ctx.state`` stands until the state reaches ``until``.

    The one way through the stages: :func:`compress` runs it to ``done``; the pipeline's steps run it to
    ``layer`` (stage 1), ``finetune`` (stage 2 and the top-up) and ``done`` (the final fine-tune), each on
    the state the previous step handed on.

    Args:
        profile: the dense model's profile (stage 1's first ranking reuses it).
        until: ``layer``, ``finetune`` or ``done``.
        scoring: seconds a scoring pass took, when the caller timed one (the time plan reuses it).

    The first call plans the run's time (:func:`plan_time`) and tells ``ctx.on_plan``; every call runs with
    the budgets that plan sized (``ctx.recipe`` becomes the effective recipe).
    """
    if until not in ("layer", "finetune", "done"):
        raise ValueError(f"until must be one of ['layer', 'finetune', 'done'], got {until!r}")
    if ctx.state.plan is None:
        ctx.state.plan = plan_time(model, ctx, scoring=scoring).to_json()
    plan = ctx.plan
    ctx.recipe = plan.recipe_for(ctx.recipe)
    if ctx.on_plan is not None:
        ctx.on_plan(plan)
    order, r = STAGES.index, ctx.recipe
    if ctx.state.stage == "filter" and order(until) > order("filter"):
        if r.filter.enabled:
            model, _ = stage_one(model, ctx, dense, profile)
        ctx.state.advance("layer")
        ctx.save_point(model)
    if ctx.state.stage in ("layer", "topup") and order(until) > order("topup"):
        if r.layer.enabled:
            model, _ = stage_two_and_topup(model, ctx, dense)
        ctx.state.advance("finetune")
    if ctx.state.stage == "finetune" and until == "done":
        model, _ = final_finetune(model, ctx, dense)
    return model


def compress(
    model: nn.Module,
    data: DataSplits,
    recipe: Recipe,
    *,
    on_step: OnStep | None = None,
    progress: bool = False,
    dense_val_acc: float | None = None,
    checkpoint_dir=None,
    on_plan=None,
) -> CompressionResult:
    """Compress a trained ``model`` within ``recipe.max_accuracy_drop``; the input model is not modified.

    Args:
        dense_val_acc: the dense model's validation accuracy when already known (else measured).
        checkpoint_dir: save the model and the run state there after every completed step, and continue
            from what is there when it holds a checkpoint of this very run (same dense model, recipe and
            data); the result equals an uninterrupted run's (with ``recovery.time_budget`` the stages stop by
            the clock, so a resumed run may take other steps than an uninterrupted one would have).
        on_plan: told the run's time plan (``idap.prune.timing.RunPlan``) before the first pruning step.
    """
    started = time.perf_counter()
    dense = copy.deepcopy(model).eval()
    saver = Checkpoint(checkpoint_dir, dense, recipe, data) if checkpoint_dir is not None else None
    resumed = saver.load() if saver is not None else None
    if resumed is not None:
        current, state = resumed
        ctx = RunContext.create(dense, data, recipe, on_step=on_step, progress=progress, state=state,
                                checkpoint=saver.save)
    else:
        ctx = start_run(dense, data, recipe, on_step=on_step, progress=progress, dense_val_acc=dense_val_acc,
                        checkpoint=saver.save if saver is not None else None)
        current = copy.deepcopy(dense)
    ctx.on_plan = on_plan
    where = f"{ctx.state.stage} {ctx.state.position.get('t', ctx.state.position.get('next', 0))}"
    scored = time.perf_counter()
    profile = dense_profile(dense, ctx)
    current = run_stages(current.to(ctx.device), ctx, dense, profile, scoring=time.perf_counter() - scored)
    return CompressionResult(current.eval(), dense, list(ctx.state.trajectory), profile, ctx.recipe, ctx.dense_val_acc,
                             seconds=time.perf_counter() - started, state=ctx.state,
                             resumed_from=where if resumed is not None else None)
