"""Stage 1 details: kept widths rounded to filter.round_to, and the halving retry after a rollback."""

import copy

import pytest
import torch

from idap.prune.config import Recipe
from idap.prune.filter_stage import _ChannelPlan, run_filter_stage
from idap.prune.state import RunContext
from idap.prune.surgery import channel_groups, dependency_graph


def recipe(**filter_kw):
    return Recipe.from_dict({
        "calibration_size": 128, "eval_batch_size": 256, "device": "cpu", "max_accuracy_drop": 100.0,
        "filter": {"steps": 2, "p0": 0.3, **filter_kw}, "layer": {"enabled": False},
        "recovery": {"step_budget": 0, "final_budget": 0, "batch_size": 64}})


def conv_widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_rounding_keeps_widths_in_multiples_of_round_to(digits, trained_resnet20):
    widths = {}
    for q in (1, 8):
        ctx = RunContext.create(copy.deepcopy(trained_resnet20), digits, recipe(round_to=q), dense_val_acc=100.0)
        out, steps = run_filter_stage(copy.deepcopy(trained_resnet20), ctx, dense=trained_resnet20)
        assert any(s.action == "prune" for s in steps)
        widths[q] = conv_widths(out)
    assert any(w % 8 for w in widths[1])  # the spec's ranking leaves odd widths ...
    assert all(w % 8 == 0 for w in widths[8])  # ... which round_to=8 rounds
    assert widths[8] != conv_widths(trained_resnet20)  # and it still pruned
    assert min(widths[8]) >= 8  # never below the per-layer floor


def test_plan_rounds_to_the_nearest_multiple_and_never_to_nothing():
    ranked = {"a": list(range(40)), "b": list(range(16))}
    plan = _ChannelPlan([], ranked, {"a": 40, "b": 16}, {"a": 8, "b": 8}, 8)
    count = lambda picks, g: sum(1 for n, _ in picks if n == g)  # noqa: E731
    # a: 5 of 40 removed -> 35 kept -> 32 (nearest); b: 1 of 16 -> 15 kept -> 16 (nearest: nothing removed)
    picks = [("a", c) for c in range(5)] + [("b", 0)]
    out = plan.rounded(picks)
    assert count(out, "a") == 8 and count(out, "b") == 0
    assert [c for n, c in out if n == "a"] == list(range(8))  # the group's lowest-ranked channels
    # only b picked, rounds to nothing: it rounds down instead so the step removes something
    assert count(plan.rounded([("b", 0)]), "b") == 8
    # 15 wide, floor 10: 14 kept rounds up to all 15, and down (8) would break the floor: nothing
    floor_plan = _ChannelPlan([], {"b": list(range(15))}, {"b": 15}, {"b": 10}, 8)
    assert floor_plan.rounded([("b", 0)]) == []
    one = _ChannelPlan([], ranked, {"a": 40, "b": 16}, {"a": 8, "b": 8}, 1)
    assert one.rounded(picks) == picks


def _removed(step):
    return sum(step.removed["channels"].values())


def _channels(model, shape=(1, 8, 8)):
    """Channels over every prunable group: a step that removes k channels lowers this by exactly k."""
    return sum(g.channels for g in channel_groups(model, dependency_graph(model, shape)))


def _sized_accuracy(ctx, dense, tolerated):
    """A constructed evaluation: 90 % for the dense model, minus 3 pp per ``tolerated`` fraction of its
    prunable channels removed. A step fits the 3 pp budget exactly when it removes at most ``tolerated`` of
    them, on any CPU: nothing here depends on what training learned (tests/README.md)."""
    full = _channels(dense, ctx.input_shape)

    def evaluate(model):
        return 90.0 - 3.0 * (1 - _channels(model, ctx.input_shape) / full) / tolerated

    ctx.evaluate = evaluate


@pytest.mark.outcome
def test_a_rolled_back_step_is_retried_at_half_the_size(digits, trained_resnet20):
    def run(retries, tolerated):
        r = recipe(p0=0.5, steps=2, rollback_retries=retries, round_to=1).with_overrides(["max_accuracy_drop=3.0"])
        ctx = RunContext.create(copy.deepcopy(trained_resnet20), digits, r, dense_val_acc=90.0)
        _sized_accuracy(ctx, trained_resnet20, tolerated)
        return run_filter_stage(copy.deepcopy(trained_resnet20), ctx, dense=trained_resnet20), ctx

    full = _channels(trained_resnet20)
    (_, spec_steps), _ = run(0, tolerated=1e-6)
    assert [s.action for s in spec_steps] == ["rollback"]  # the spec: the first rollback ends stage 1
    first = _removed(spec_steps[0]) / full  # the fraction of channels the full first step removes
    # the budget admits a step a little over a quarter of the first: two halvings must be spent, on any CPU
    (out, steps), ctx = run(4, tolerated=first * 0.3)
    actions = [s.action for s in steps]
    assert actions[:3] == ["rollback", "rollback", "prune"], actions
    assert "retried with half the step" in steps[0].note
    accepted = [s for s in steps if s.action == "prune"]
    assert _removed(accepted[0]) < _removed(steps[0]) / 1.9  # at most half the rolled-back step
    assert _removed(steps[1]) <= _removed(steps[0]) / 2 + 1  # each retry halves the step
    assert _removed(accepted[0]) <= _removed(steps[1]) / 2 + 1
    assert conv_widths(out) != conv_widths(trained_resnet20)
    assert ctx.state.position.get("halvings") == 2  # the halved size is kept for the steps that follow (and a resume)
    # at most N halvings: with a budget nothing fits, 4 halvings are spent, and the next rollback ends the stage
    (out, steps), _ = run(4, tolerated=1e-6)
    actions = [s.action for s in steps]
    assert actions == ["rollback"] * 5, actions
    assert [("retried with half the step" in s.note) for s in steps] == [True] * 4 + [False]
    assert conv_widths(out) == conv_widths(trained_resnet20)  # every step rolled back: the dense widths
