"""Stage 2: flow-guided layer truncation (spec §3).

Shape-preserving blocks are scored by flow divergence D(f) on the calibration split and visited in
ascending order: each is replaced by ``nn.Identity``, the model recovers briefly, and the removal is
kept only if the validation drop since the stage began stays within ε and the total drop within the
budget Δ; otherwise the block is restored and marked essential.
"""

from __future__ import annotations

import copy
import time

from torch import nn

from idap.models.prunable import block_candidates
from idap.prune.divergence import flow_profile
from idap.prune.state import LANDING_TOLERANCE, SEED_LAYER, RunContext, StepRecord, within_budget
from idap.prune.surgery import remove_block
from idap.prune.timing import TIME_BUDGET_REACHED


def rank_blocks(model: nn.Module, ctx: RunContext) -> list[tuple[str, float]]:
    """Candidate blocks with their scores, lowest (first to remove) first."""
    r = ctx.recipe
    candidates = block_candidates(model)
    if not candidates:
        return []
    profile = flow_profile(
        model,
        ctx.calib[0],
        blocks=candidates,
        block_metric=r.layer.block_score,
        batch_size=r.eval_batch_size,
        seed=r.seed + SEED_LAYER,
        device=ctx.device,
    )
    return sorted(profile.blocks.items(), key=lambda kv: (kv[1], candidates.index(kv[0])))


def run_layer_stage(
    model: nn.Module,
    ctx: RunContext,
    *,
    dense: nn.Module | None = None,
    plan: dict | None = None,
) -> tuple[nn.Module, list[StepRecord]]:
    """Remove up to ``layer.max_removals`` blocks; returns the kept model and the steps taken.

    With a MACs target, a block whose removal would overshoot it by more than LANDING_TOLERANCE is
    skipped (one block is a coarse step; stage 1 can close a remaining gap finely).
    With ``layer.exact_removals`` (benchmark mode) exactly that many of the lowest-scored blocks are
    removed, without the accept/revert test, so criteria can be compared at equal depth. With
    ``layer.patience`` P > 0 the stage stops once P candidates in a row were essential.

    Args:
        plan: where a resumed stage stands (``ctx.state.position``: the ranking made when the stage began,
            the accuracy then, the next candidate, removals so far); ``None`` starts the stage.

    After every candidate the run state holds the updated plan and ``ctx.save_point`` gets the kept model.
    """
    r = ctx.recipe
    cfg = r.layer
    model.to(ctx.device)
    first = len(ctx.state.trajectory)
    if plan is None and ctx.out_of_time():  # not even the ranking pass: the final fine-tune needs the time
        ctx.record(model, "layer", 0, "stop", val_acc=ctx.evaluate(model), started=time.perf_counter(), accepted=False,
                   note=TIME_BUDGET_REACHED)
        return model, ctx.state.trajectory[first:]
    if plan is None:
        start_acc = ctx.evaluate(model)
        plan = {"ranked": [list(kv) for kv in rank_blocks(model, ctx)], "start_acc": start_acc,
                "last_acc": start_acc, "accepted": 0, "next": 0, "misses": 0}
    plan = dict(plan)
    target = r.target_macs_reduction
    for i in range(plan["next"], len(plan["ranked"])):
        name, score = plan["ranked"][i]
        started = time.perf_counter()
        if plan["accepted"] >= cfg.max_removals:
            break
        if not cfg.exact_removals and ctx.target_reached(model):
            ctx.record(model, "layer", i, "stop", val_acc=plan["last_acc"], started=started, accepted=False,
                       note="target reached")
            break
        if cfg.patience and plan.get("misses", 0) >= cfg.patience:
            ctx.record(model, "layer", i, "stop", val_acc=plan["last_acc"], started=started, accepted=False,
                       note=f"{plan['misses']} blocks in a row essential: the {len(plan['ranked']) - i} left rank "
                            f"as more important (layer.patience {cfg.patience})")
            break
        if ctx.out_of_time():
            ctx.record(model, "layer", i, "stop", val_acc=plan["last_acc"], started=started, accepted=False,
                       note=TIME_BUDGET_REACHED)
            break
        snapshot = copy.deepcopy(model)
        remove_block(model, name)
        removed = {"block": name, "score": score}
        if not cfg.exact_removals and target is not None and ctx.macs_reduction(model) > target * (1 + LANDING_TOLERANCE):
            model = snapshot
            if cfg.overshoot == "stop":
                ctx.record(model, "layer", i, "stop", val_acc=plan["last_acc"], started=started, accepted=False,
                           removed=removed, note=f"{name} would overshoot the {target:g}x target: filters top up")
                break
            ctx.record(model, "layer", i, "skip_block", val_acc=plan["last_acc"], started=started, accepted=False,
                       removed=removed, note=f"would overshoot the {target:g}x target")
        else:
            given = ctx.recover_step(model, snapshot, dense, seed=r.seed + SEED_LAYER + i, desc=f"block {name} recovery")
            acc = ctx.evaluate(model)
            stage_drop, total_drop = plan["start_acc"] - acc, ctx.drop(acc)
            if cfg.exact_removals or (within_budget(stage_drop, cfg.epsilon) and within_budget(total_drop, r.stage_budget)):
                plan["accepted"] += 1
                plan["last_acc"] = acc
                plan["misses"] = 0
                ctx.record(model, "layer", i, "remove_block", val_acc=acc, started=started, removed=removed,
                           recovery_steps=given)
            else:
                ctx.record(
                    model, "layer", i, "revert_block", val_acc=acc, started=started, accepted=False, removed=removed,
                    recovery_steps=given,
                    note=f"essential: drop {stage_drop:.2f} pp since stage start (ε={cfg.epsilon}), "
                         f"{total_drop:.2f} pp total (budget {r.stage_budget})")
                model = snapshot
                plan["misses"] = plan.get("misses", 0) + 1
        plan["next"] = i + 1
        ctx.state.advance("layer", **plan)
        ctx.save_point(model)
    return model, ctx.state.trajectory[first:]
