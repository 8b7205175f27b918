"""Any channel criterion + the flow layer stage (issue 23): ``filter.importance: taylor`` (or l1, ...) with
``layer.enabled: true`` ranks stage 1's channels by that criterion and removes blocks by IDAP++'s flow
divergence in stage 2. Mechanism only (constructed budgets, no learned outcome): the channels stage 1 removed
are the ones the named criterion ranks lowest, and stage 2 removed the block the flow divergence ranks first."""

import copy

import pytest
import torch

from idap.prune.compress import run_stages, start_run
from idap.prune.config import Recipe
from idap.prune.importance import ScoringContext, create_importance
from idap.prune.layer_stage import rank_blocks
from idap.prune.surgery import channel_groups, dependency_graph

K = 24  # channels stage 1's one step removes (p0 * prunable, below every per-layer cap)


def recipe(importance: str, k_fraction: float, **layer) -> Recipe:
    # no accuracy budget, no MACs target, no recovery: stage 1 takes exactly one step, stage 2 removes exactly
    # one block (epsilon 100 pp accepts it), the final fine-tune is off, so nothing but the criteria decide
    return Recipe.from_dict({
        "max_accuracy_drop": 100.0, "calibration_size": 128, "eval_batch_size": 256, "device": "cpu",
        "filter": {"importance": importance, "steps": 1, "p0": k_fraction, "alpha": 0.0, "round_to": 1,
                   "ranking": "score", "min_channels": 1, "min_fraction": 0.0},
        "layer": {"enabled": True, "epsilon": 100.0, "max_removals": 1, "patience": 0, **layer},
        "recovery": {"step_budget": 0, "final_budget": 0, "batch_size": 64}})  # fmt: skip


def lowest_by(criterion: str, model, data, r: Recipe, k: int) -> dict[str, int]:
    """How many of each group's channels the criterion's global ranking puts among the k lowest."""
    imp = create_importance(criterion)
    x, y = data.calib_x[: r.calibration_size], data.calib_y[: r.calibration_size]
    imp.prepare(model, ScoringContext(x, y, batch_size=r.eval_batch_size, seed=0, device=torch.device("cpu"),
                                      point=r.filter.score_point, score_pointwise=r.filter.score_pointwise))
    groups = channel_groups(model, dependency_graph(model, (data.in_channels, data.image_size, data.image_size)))
    owners, scores = [], []
    for g in groups:
        s = imp(g)
        if s is None:
            continue
        owners += [g.name] * g.channels
        scores.append(s.float())
    order = torch.argsort(torch.cat(scores), stable=True)[:k].tolist()
    counts: dict[str, int] = {}
    for i in order:
        counts[owners[i]] = counts.get(owners[i], 0) + 1
    return counts


def prunable(model, data) -> int:
    groups = channel_groups(model, dependency_graph(model, (data.in_channels, data.image_size, data.image_size)))
    return sum(g.channels for g in groups)


@pytest.mark.parametrize("criterion", ["taylor", "l1"])
def test_criterion_channels_then_flow_blocks(digits, trained_resnet20, criterion):
    dense = copy.deepcopy(trained_resnet20).eval()
    n = prunable(dense, digits)
    r = recipe(criterion, (K + 0.5) / n)
    expected = lowest_by(criterion, dense, digits, r, K)
    ctx = start_run(dense, digits, r)
    model = run_stages(copy.deepcopy(dense), ctx, dense, until="layer")  # stage 1
    step = [rec for rec in ctx.state.trajectory if rec.stage == "filter" and rec.action == "prune"]
    assert len(step) == 1
    removed = {g: c for g, c in step[0].removed["channels"].items() if c}
    assert sum(removed.values()) == K
    assert removed == expected  # stage 1 took exactly what the named criterion ranks lowest
    # ... and not what IDAP++'s flow score would have taken, so the criterion was not silently replaced
    assert removed != lowest_by("idap", dense, digits, r, K)

    first_block = rank_blocks(model, ctx)[0][0]  # the flow divergence's least transforming block now
    model = run_stages(model, ctx, dense, until="finetune")  # stage 2
    layer = [rec for rec in ctx.state.trajectory if rec.stage == "layer" and rec.accepted]
    assert [rec.removed.get("block") for rec in layer] == [first_block]
    assert isinstance(dict(model.named_modules())[first_block], torch.nn.Identity)
    assert ctx.recipe.filter.importance == criterion and ctx.recipe.layer.block_score == "divergence"

