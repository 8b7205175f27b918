"""IDAP++ end to end: stage 1 (filters), stage 2 (blocks), final fine-tune against the dense teacher.

Each stage is a function of (model, context) with its own seed stream, so a pipeline that runs the
stages as separate steps produces the same model as :func:`compress` in one process.

Example:
    >>> from idap import Recipe, compress, create_model, load_dataset          # doctest: +SKIP
    >>> data = load_dataset("digits")                                            # doctest: +SKIP
    >>> result = compress(create_model("cnn_small", 10, 1, 8), data, Recipe())   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from torch import nn

from idap.config import Recipe
from idap.data import DataSplits
from idap.divergence import FlowProfile, flow_profile
from idap.filter_stage import run_filter_stage
from idap.importance import FlowImportance, create_importance
from idap.layer_stage import run_layer_stage
from idap.models import block_candidates
from idap.recovery import recover
from idap.steps import SEED_FINAL, SEED_TOPUP, OnStep, RunContext, StepRecord


@dataclass
class CompressionResult:
    model: nn.Module
    dense: nn.Module
    steps: list[StepRecord]
    profile: FlowProfile
    recipe: Recipe
    dense_val_acc: float
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


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


def filter_stage(model: nn.Module, ctx: RunContext, dense: nn.Module, profile: FlowProfile | None = None):
    r = ctx.recipe
    imp = create_importance(r.filter.importance)
    if isinstance(imp, FlowImportance) and profile is not None:
        imp.profile = profile  # already computed on this very model: skip the first scoring pass
    return run_filter_stage(model, ctx, dense=dense, importance=imp, macs_target=filter_macs_target(r))


def layer_stage(model: nn.Module, ctx: RunContext, dense: nn.Module) -> tuple[nn.Module, list[StepRecord]]:
    """Stage 2, then — when a MACs target is set and blocks stopped short of it — stage 1 tops up the gap."""
    r = ctx.recipe
    model, records = run_layer_stage(model, ctx, dense=dense)
    if r.filter.enabled and r.target_macs_reduction is not None and not ctx.target_reached(model):
        model, more = run_filter_stage(model, ctx, dense=dense, importance=create_importance(r.filter.importance),
                                       seed_offset=SEED_TOPUP)
        for rec in more:
            rec.note = f"top-up after stage 2. {rec.note}".strip()
        records += more
    return model, records


def final_budget(recipe: Recipe, spent: int) -> int:
    """Steps of the final fine-tune: fixed, or what recovery left of recovery.total_budget."""
    total = recipe.recovery.total_budget
    return recipe.recovery.final_budget if total is None else max(0, total - spent)


def final_finetune(model: nn.Module, ctx: RunContext, dense: nn.Module, *, spent: int = 0) -> tuple[nn.Module, list[StepRecord]]:
    """Long distillation fine-tune with the original dense model as teacher (cosine learning rate).

    Args:
        spent: recovery steps the stages already used (matters only with ``recovery.total_budget``).
    """
    r = ctx.recipe
    started = time.perf_counter()
    steps = final_budget(r, spent)
    stats = recover(model, dense, ctx.data.train_x, ctx.data.train_y, steps=steps, config=r.recovery,
                    seed=r.seed + SEED_FINAL, device=ctx.device, lr=r.recovery.final_lr, schedule="cosine",
                    progress=ctx.progress, desc="final fine-tune")
    acc = ctx.evaluate(model)
    rec = ctx.record(model, "finetune", 0, "finetune", val_acc=acc, started=started, note=f"{stats.steps} steps",
                     recovery_steps=stats.steps)
    return model, [rec]


def compress(
    model: nn.Module,
    data: DataSplits,
    recipe: Recipe,
    *,
    on_step: OnStep | None = None,
    progress: bool = False,
    dense_val_acc: float | None = None,
) -> CompressionResult:
    """Compress a trained ``model`` within ``recipe.max_accuracy_drop``; the input model is not modified.

    Args:
        dense_val_acc: the dense model's validation accuracy when already known (else measured).
    """
    started = time.perf_counter()
    dense = copy.deepcopy(model).eval()
    ctx = RunContext.create(dense, data, recipe, on_step=on_step, progress=progress, dense_val_acc=dense_val_acc)
    steps = [ctx.record(dense, "dense", 0, "dense", val_acc=ctx.dense_val_acc, started=started)]
    profile = dense_profile(dense, ctx)
    current = copy.deepcopy(dense)
    if recipe.filter.enabled:
        current, recs = filter_stage(current, ctx, dense, profile)
        steps += recs
    if recipe.layer.enabled:
        current, recs = layer_stage(current, ctx, dense)
        steps += recs
    current, recs = final_finetune(current, ctx, dense, spent=ctx.recovery_spent(steps))
    steps += recs
    return CompressionResult(current.eval(), dense, steps, profile, recipe, ctx.dense_val_acc,
                             seconds=time.perf_counter() - started)
