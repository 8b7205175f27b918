"""Stage 1: iterative divergence-aware filter pruning (spec §2).

Each step scores every dependency group, ranks all channels globally, removes the k_t lowest (per-layer
floors respected, capped so a target is not overshot), recovers, and evaluates on the validation
split. A step that breaks the accuracy budget is rolled back; with ``filter.rollback_retries`` > 0 the step
is retried at half the size (the halved size is kept for later steps) until that many halvings are spent,
and the next rollback ends the stage (0 = the spec: the first rollback ends it). The result is the last
model within budget.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch
from torch import nn

from idap.measure.metrics import layer_macs
from idap.prune.importance import FlowImportance, Importance, ScoringContext, create_importance
from idap.prune.schedule import channels_to_remove, prune_fraction
from idap.prune.state import SEED_FILTER, RunContext, StepRecord, within_budget
from idap.prune.surgery import (
    SurgeryError,
    attention_modules,
    channel_floor,
    channel_groups,
    dependency_graph,
    prune_channels,
    prune_heads,
)
from idap.prune.timing import TIME_BUDGET_REACHED

# A landing step whose rounded widths overshoot the MACs target by more than this lands unrounded (_capped).
ROUNDING_OVERSHOOT = 0.05


class _ChannelPlan:
    """A step's channel removals in global rank order, and how to round a prefix of them to ``round_to``."""

    def __init__(self, picks, ranked, widths, floors, round_to):
        self.picks = picks  # [(group root name, channel)], global rank order
        self.ranked = ranked  # group name -> its channels, lowest score first
        self.widths = widths  # group name -> current width
        self.floors = floors  # group name -> channels the group must keep
        self.round_to = round_to

    def rounded(self, picks):
        """``picks`` with each group's kept width rounded to a multiple of ``round_to`` (nearest; a tie keeps
        more; never below the group's floor). When every group rounds to no removal, the group with the most
        picks rounds down instead, so a non-empty step stays non-empty."""
        if self.round_to <= 1 or not picks:
            return list(picks)
        counts: dict[str, int] = {}
        for name, _ in picks:
            counts[name] = counts.get(name, 0) + 1
        q = self.round_to
        out = {}
        for name, n in counts.items():
            width, floor = self.widths[name], self.floors[name]
            kept = width - n
            down, up = (kept // q) * q, -(-kept // q) * q
            best = down if kept - down < up - kept and down >= floor else up
            out[name] = max(0, width - min(best, width))
        if not any(out.values()):
            name = max(counts, key=lambda k: (counts[k], k))
            down = ((self.widths[name] - counts[name]) // q) * q
            if down >= self.floors[name] and down > 0:
                out[name] = self.widths[name] - down
        return [(name, c) for name, n in out.items() for c in self.ranked[name][:n]]


def _plan_channels(model: nn.Module, ctx: RunContext, imp: Importance, t: int, original: dict[str, int],
                   blocked: dict[str, str], scale: float = 1.0) -> _ChannelPlan:
    """Channels to remove this step, in rank order (``scale`` shrinks the step: a retry after a rollback)."""
    cfg = ctx.recipe.filter
    groups = [g for g in channel_groups(model, dependency_graph(model, ctx.input_shape)) if g.name not in blocked]
    per_layer = layer_macs(model, ctx.input_shape) if cfg.ranking == "score_per_mac" else None
    scores, owners, caps, prunable = [], [], {}, 0
    ranked, widths, floors = {}, {}, {}
    for g in groups:
        original.setdefault(g.name, g.channels)
        floor = channel_floor(original[g.name], cfg.min_channels, cfg.min_fraction)
        removable = g.channels - floor
        if removable <= 0:
            continue
        s = imp(g)
        if s is None:
            continue
        caps[g.name] = removable
        prunable += g.channels
        s = s.float()
        if per_layer is not None:  # importance per MAC saved; a group that saves nothing goes last
            s = s / max(g.macs_per_channel(per_layer), 1e-12)
        scores.append(s)
        owners.extend((g.name, c) for c in range(g.channels))
        ranked[g.name] = torch.argsort(s, stable=True).tolist()
        widths[g.name], floors[g.name] = g.channels, floor
    plan = _ChannelPlan([], ranked, widths, floors, cfg.round_to)
    if not scores:
        return plan
    k = math.floor(scale * channels_to_remove(t, cfg.steps, cfg.p0, cfg.alpha, prunable))
    order = torch.argsort(torch.cat(scores), stable=True).tolist()
    taken = dict.fromkeys(caps, 0)
    for i in order:
        if len(plan.picks) >= k:
            break
        name, channel = owners[i]
        if taken[name] < caps[name]:
            taken[name] += 1
            plan.picks.append((name, channel))
    return plan


def _plan_heads(model: nn.Module, ctx: RunContext, imp: Importance, t: int, original: dict[str, int],
                scale: float = 1.0):
    cfg = ctx.recipe.filter
    attention = attention_modules(model)
    if not cfg.prune_heads or not attention:
        return []
    head_scores = imp.head_scores(model)
    entries, caps, prunable = [], {}, 0
    for name, m in attention.items():
        original.setdefault(name, m.num_heads)
        removable = m.num_heads - max(1, math.ceil(cfg.min_fraction * original[name]))
        if removable <= 0 or name not in head_scores:
            continue
        caps[name] = removable
        prunable += m.num_heads
        entries.extend((float(s), name, h) for h, s in enumerate(head_scores[name]))
    k = math.floor(scale * prune_fraction(t, cfg.steps, cfg.p0, cfg.alpha) * prunable)
    picks, taken = [], dict.fromkeys(caps, 0)
    for _, name, h in sorted(entries, key=lambda e: e[0]):
        if len(picks) >= k:
            break
        if taken[name] < caps[name]:
            taken[name] += 1
            picks.append((name, h))
    return picks


def _apply(model: nn.Module, ctx: RunContext, channel_picks, head_picks) -> dict:
    channels: dict[str, list[int]] = {}
    for name, c in channel_picks:
        channels.setdefault(name, []).append(c)
    heads: dict[str, list[int]] = {}
    for name, h in head_picks:
        heads.setdefault(name, []).append(h)
    prune_heads(model, heads)
    prune_channels(model, ctx.input_shape, channels)
    return {"channels": {k: len(v) for k, v in channels.items()}, "heads": {k: len(v) for k, v in heads.items()}}


def _capped(model: nn.Module, ctx: RunContext, plan: _ChannelPlan, head_picks, macs_target: float | None):
    """The shortest prefix of the ranked picks that reaches the target (binary search), or all of them; the
    channel picks rounded to ``filter.round_to`` (a prefix is judged after rounding, which is monotone).

    The target is the contract, rounding a preference: when rounding makes the landing overshoot a MACs
    target by more than ROUNDING_OVERSHOOT (narrow layers round in large jumps), the landing step is cut
    unrounded instead, so equal-MACs comparisons stay at equal MACs."""
    channel_picks = plan.rounded(plan.picks)
    if macs_target is None and ctx.recipe.target_macs_reduction is None and ctx.recipe.target_params_reduction is None:
        return channel_picks, head_picks
    if not ctx.target_reached(_pruned_copy(model, ctx, channel_picks, head_picks), macs_target):
        return channel_picks, head_picks
    picks = [("c", p) for p in plan.picks] + [("h", p) for p in head_picks]

    def split(n, rounding=True):
        chans = [p for kind, p in picks[:n] if kind == "c"]
        return plan.rounded(chans) if rounding else chans, [p for kind, p in picks[:n] if kind == "h"]

    def landing(rounding):
        lo, hi = 1, len(picks)
        while lo < hi:
            mid = (lo + hi) // 2
            if ctx.target_reached(_pruned_copy(model, ctx, *split(mid, rounding)), macs_target):
                hi = mid
            else:
                lo = mid + 1
        return split(lo, rounding)

    rounded = landing(True)
    target = macs_target if macs_target is not None else ctx.recipe.target_macs_reduction
    if plan.round_to <= 1 or target is None:
        return rounded
    if ctx.macs_reduction(_pruned_copy(model, ctx, *rounded)) <= target * (1 + ROUNDING_OVERSHOOT):
        return rounded
    if not ctx.target_reached(_pruned_copy(model, ctx, *split(len(picks), False)), macs_target):
        return rounded  # unrounded, the step would stop short of the target: keep the rounded landing
    return landing(False)


def _probe(model: nn.Module, ctx: RunContext) -> None:
    with torch.no_grad():
        was = model.training
        model.eval()
        try:
            model(torch.zeros(1, *ctx.input_shape, device=ctx.device))
        finally:
            model.train(was)


def _unfollowable(model: nn.Module, ctx: RunContext, names: set[str], error: Exception) -> dict[str, str]:
    """The groups among ``names`` whose pruning alone breaks the forward pass (a parameter or op the
    dependency graph cannot follow uses their channels); each is named in a warning and left unpruned."""
    bad = {}
    for name in sorted(names):
        trial = copy.deepcopy(model)
        try:
            prune_channels(trial, ctx.input_shape, {name: [0]})
            _probe(trial, ctx)
        except Exception as exc:  # whatever the model's own code raises on a narrower tensor
            bad[name] = f"{type(exc).__name__}: {exc}"
    if not bad:
        raise SurgeryError(f"pruning channels of {sorted(names)} breaks the model's forward pass, but no single "
                           f"group does: {type(error).__name__}: {error}")
    for name, why in bad.items():
        warnings.warn(f"{name}: left unpruned: Torch-Pruning's dependency graph cannot follow every use of its "
                      f"channels (removing one gives {why})", stacklevel=3)
    return bad


def _pruned_copy(model: nn.Module, ctx: RunContext, channel_picks, head_picks) -> nn.Module:
    trial = copy.deepcopy(model)
    _apply(trial, ctx, channel_picks, head_picks)
    return trial


def run_filter_stage(
    model: nn.Module,
    ctx: RunContext,
    *,
    dense: nn.Module | None = None,
    importance: Importance | None = None,
    macs_target: float | None = None,
    seed_offset: int = SEED_FILTER,
    start: int = 0,
    stage: str = "filter",
    note: str = "",
) -> tuple[nn.Module, list[StepRecord]]:
    """Prune channels (and attention heads) of ``model`` step by step; returns the kept model and its steps.

    Args:
        dense: the dense model, teacher when ``recovery.teacher == "dense"``.
        importance: criterion (default: the recipe's ``filter.importance``). A prepared
            :class:`FlowImportance` with a profile of ``model`` skips the first scoring pass.
        macs_target: overrides the recipe's MACs target (the layer stage may take a share of it).
        seed_offset: seed stream of this run of the stage (a top-up after stage 2 uses its own).
        start: the first step to run (a resumed run continues at ``ctx.state.position["t"]``).
        stage: the run state's name for this run of the stage (``filter`` or ``topup``).
        note: prefix of every record's note.

    After every step the run state points at the next one and ``ctx.save_point`` is called with the kept model.
    """
    r = ctx.recipe
    cfg = r.filter
    imp = importance or create_importance(cfg.importance)
    first = len(ctx.state.trajectory)
    # per-layer floors are fractions of the DENSE widths, also when the stage runs on a pruned model
    original: dict[str, int] = {}
    if dense is not None:
        original = {g.name: g.channels for g in channel_groups(dense, dependency_graph(dense, ctx.input_shape))}
        original.update({n: m.num_heads for n, m in attention_modules(dense).items()})
    calib_x, calib_y = ctx.calib
    model.to(ctx.device)
    blocked: dict[str, str] = {}  # groups whose channels some code the dependency graph cannot see uses
    t = start
    # halvings of the step size so far (filter.rollback_retries); a resumed run continues with its own
    halvings = ctx.state.position.get("halvings", 0) if start and ctx.state.stage == stage else 0
    while t < cfg.steps:
        started = time.perf_counter()
        if ctx.target_reached(model, macs_target):
            _stop(ctx, model, t, started, f"{note}target reached")
            break
        if ctx.out_of_time():  # the next step would eat into the time the final fine-tune needs
            _stop(ctx, model, t, started, f"{note}{TIME_BUDGET_REACHED}")
            break
        imp.prepare(model, ScoringContext(calib_x, calib_y, batch_size=r.eval_batch_size, seed=r.seed + seed_offset + t,
                                          device=ctx.device, point=cfg.score_point, score_pointwise=cfg.score_pointwise))
        scale = 0.5 ** halvings
        plan = _plan_channels(model, ctx, imp, t, original, blocked, scale)
        head_picks = _plan_heads(model, ctx, imp, t, original, scale)
        if not plan.picks and not head_picks:
            if isinstance(imp, FlowImportance):
                imp.consume()
            _stop(ctx, model, t, started, note + (f"the step halved {halvings} times removes nothing" if halvings
                                                  else "nothing left to prune above the per-layer floors"))
            break
        snapshot = copy.deepcopy(model)
        try:
            channel_picks, head_picks = _capped(model, ctx, plan, head_picks, macs_target)
            if not channel_picks and not head_picks:  # every group is within round_to of its floor
                if isinstance(imp, FlowImportance):
                    imp.consume()
                _stop(ctx, model, t, started, f"{note}nothing left to prune above the per-layer floors "
                                              f"in multiples of filter.round_to={cfg.round_to}")
                break
            removed = _apply(model, ctx, channel_picks, head_picks)
            _probe(model, ctx)
        except Exception as error:  # the model's own code fails on the narrower tensors
            model = snapshot
            blocked.update(_unfollowable(model, ctx, {n for n, _ in plan.picks}, error))
            continue  # plan this step again without those groups (the scores are still prepared)
        if isinstance(imp, FlowImportance):
            imp.consume()
        model.zero_grad(set_to_none=True)
        given = ctx.recover_step(model, snapshot, dense, seed=r.seed + seed_offset + t, desc=f"filter step {t} recovery")
        acc = ctx.evaluate(model)
        drop = ctx.drop(acc)
        rolled_back = not within_budget(drop, r.stage_budget)
        retry = rolled_back and halvings < cfg.rollback_retries
        ctx.record(model, "filter", t, "rollback" if rolled_back else "prune", val_acc=acc, started=started,
                   accepted=not rolled_back, removed=removed, recovery_steps=given,
                   note=note + (f"accuracy drop {drop:.2f} pp > budget {r.stage_budget} pp: step rolled back"
                                + (", retried with half the step" if retry else "") if rolled_back else ""))
        if rolled_back:
            model = snapshot
            if not retry:
                break
            halvings += 1  # NNCF-style: the smaller step size is kept for the steps that follow
            continue
        ctx.state.advance(stage, t=t + 1, **({"halvings": halvings} if halvings else {}))
        ctx.save_point(model)
        t += 1
    return model, ctx.state.trajectory[first:]


def _stop(ctx: RunContext, model: nn.Module, t: int, started: float, note: str) -> None:
    last = ctx.state.trajectory[-1] if ctx.state.trajectory else None
    # the last record describes the current model when it was kept; evaluation is deterministic either way
    acc = last.val_acc if last is not None and last.accepted and last.stage == "filter" else ctx.evaluate(model)
    ctx.record(model, "filter", t, "stop", val_acc=acc, started=started, accepted=False, note=note)
