"""Stage 1 details: kept widths rounded to filter.round_to, and the halving retry after a rollback."""

import copy

import torch

from idap.config import Recipe
from idap.filter_stage import _ChannelPlan, run_filter_stage
from idap.state import RunContext


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


def test_a_rolled_back_step_is_retried_at_half_the_size(digits, trained_resnet20):
    def run(retries):
        r = recipe(p0=0.9, steps=2, rollback_retries=retries, round_to=1).with_overrides(["max_accuracy_drop=3.0"])
        ctx = RunContext.create(copy.deepcopy(trained_resnet20), digits, r)
        return run_filter_stage(copy.deepcopy(trained_resnet20), ctx, dense=trained_resnet20), ctx

    (_, spec_steps), _ = run(0)
    assert [s.action for s in spec_steps] == ["rollback"]  # the spec: the first rollback ends stage 1
    (out, steps), ctx = run(4)
    actions = [s.action for s in steps]
    assert actions[0] == "rollback" and "retried with half the step" in steps[0].note
    accepted = [s for s in steps if s.action == "prune"]
    assert accepted, actions  # a smaller step fitted the budget
    assert _removed(accepted[0]) < _removed(steps[0]) / 1.9  # at most half the rolled-back step
    rollbacks = sum(a == "rollback" for a in actions)
    assert rollbacks <= 5  # 4 halvings, then the next rollback ends the stage
    assert conv_widths(out) != conv_widths(trained_resnet20)
    if ctx.state.stage == "filter" and ctx.state.position.get("t"):
        assert ctx.state.position.get("halvings", 0) >= 1  # a resumed run keeps the halved step size
