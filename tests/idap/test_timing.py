"""idap.prune.timing: durations, the time plan and its sizing under constructed step costs, and runs that stop by
a constructed clock (no wall-clock assertion anywhere)."""

import argparse
import copy

import pytest
import torch

from idap.cli.common import add_recipe_args, recipe_from_args
from idap.models import create_model
from idap.prune.compress import compress, dense_profile, run_stages, start_run
from idap.prune.config import ConfigError, Recipe, parse_duration
from idap.prune.state import RunState
from idap.prune.timing import (
    MIN_CALIBRATION,
    MIN_FINAL_STEPS,
    MIN_STEP_RECOVERY,
    TIME_BUDGET_REACHED,
    RunPlan,
    StepCosts,
    format_duration,
    likely_filter_steps,
    plan_run,
    time_summary,
)
from idap.report.evaluate import stopping_limits

COSTS = StepCosts(optimizer_step=0.5, evaluation=2.0, scoring=1.0, calibration_size=2048, device="cpu")


@pytest.mark.parametrize("text, seconds", [("20m", 1200.0), ("1h", 3600.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
                                           ("90s", 90.0), (" 2 m ", 120.0), ("45", 45.0), (600, 600.0)])
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "20x", "m", "-5m", "0", 0, -1, True, None, "1h-2m"])
def test_a_bad_duration_names_the_field_and_the_forms(bad):
    with pytest.raises(ConfigError, match=r"recovery.time_budget .*(duration|positive)"):
        Recipe.from_dict({"recovery": {"time_budget": bad}}) if bad is not None else parse_duration(
            bad, "recovery.time_budget")


def test_the_recipe_holds_the_budget_in_seconds_and_the_flag_sets_it():
    assert Recipe.from_dict({"recovery": {"time_budget": "20m"}}).recovery.time_budget == 1200.0
    assert Recipe().recovery.time_budget is None
    p = argparse.ArgumentParser()
    add_recipe_args(p)
    assert recipe_from_args(p.parse_args(["--time-budget", "1h"])).recovery.time_budget == 3600.0
    with pytest.raises(ConfigError, match="recovery.time_budget"):
        recipe_from_args(p.parse_args(["--time-budget", "soon"]))


def test_format_duration():
    assert [format_duration(s) for s in (12.3, 95, 3725)] == ["12 s", "1 min 35 s", "1 h 02 min"]


def test_likely_filter_steps_follow_the_schedule_and_the_target():
    r = Recipe.from_dict({"filter": {"steps": 20, "p0": 0.05}})
    steps = [likely_filter_steps(r, t) for t in (1.2, 2.0, 3.0, 10.0)]
    assert steps == sorted(steps) and steps[0] < steps[-1] <= 20  # a larger target needs more steps
    assert likely_filter_steps(r, None) == 20  # no target: the whole schedule


def test_without_a_budget_the_plan_keeps_the_recipe_and_estimates_from_the_costs():
    r = Recipe.from_dict({"filter": {"steps": 4}, "layer": {"enabled": False},
                          "recovery": {"step_budget": 10, "final_budget": 100}})
    plan = plan_run(r, COSTS, blocks=0, spent=3.0)
    assert (plan.step_recovery, plan.final_steps, plan.calibration_size, plan.sized) == (10, 100, 2048, [])
    # 4 steps x (10 x 0.5 s recovery + 2 s evaluation + 1 s scoring) + 100 x 0.5 s + 2 x 2 s (the evaluations
    # before and after the fine-tune) + the 3 s spent
    assert plan.estimate_s == pytest.approx(4 * (5 + 2 + 1) + 54 + 3)
    assert plan.recipe_for(r) is r


def test_a_budget_sizes_the_recovery_so_the_likely_run_fits():
    r = Recipe.from_dict({"target_macs_reduction": 2.0, "recovery": {"time_budget": "10m"}})  # defaults: 100 / 1500
    plan = plan_run(r, COSTS, blocks=6, macs_target=2.0)
    assert plan.estimate_s <= 600 * 1.001
    assert MIN_STEP_RECOVERY <= plan.step_recovery < 100 and MIN_FINAL_STEPS <= plan.final_steps < 1500
    assert {s.split()[0] for s in plan.sized} >= {"recovery.step_budget", "recovery.final_budget"}
    sized = plan.recipe_for(r)
    assert (sized.recovery.step_budget, sized.recovery.final_budget) == (plan.step_recovery, plan.final_steps)
    roomy = plan_run(r.with_overrides({"recovery.time_budget": "100h"}), COSTS, blocks=6, macs_target=2.0)
    assert roomy.sized == [] and roomy.step_recovery == 100  # a budget is a ceiling, never a reason to do more


def test_a_tiny_budget_keeps_the_minimums_and_shrinks_costly_scoring():
    costly = StepCosts(optimizer_step=0.5, evaluation=1.0, scoring=60.0, calibration_size=2048)
    plan = plan_run(Recipe.from_dict({"recovery": {"time_budget": "10s"}}), costly, blocks=0)
    assert plan.step_recovery == MIN_STEP_RECOVERY and plan.final_steps == MIN_FINAL_STEPS
    assert plan.calibration_size == MIN_CALIBRATION  # scoring would have taken the whole budget


def test_when_even_the_minimums_do_not_fit_the_plan_says_how_many_steps_will():
    slow = StepCosts(optimizer_step=10.0, evaluation=3.0, scoring=3.0, calibration_size=2048)
    plan = plan_run(Recipe.from_dict({"target_macs_reduction": 1.5, "recovery": {"time_budget": "15m"}}), slow,
                    blocks=6, macs_target=1.5)
    assert plan.step_recovery == MIN_STEP_RECOVERY
    fit = int((900 - plan.final_seconds()) / plan.pruning_step_seconds())
    assert 0 < fit < plan.stage_steps and f"only {fit} of the likely {plan.stage_steps}" in plan.advice
    assert plan.estimate_s <= 900 and plan.estimate_s == pytest.approx(fit * plan.pruning_step_seconds()
                                                                       + plan.final_seconds())


def test_a_long_cpu_run_without_a_budget_proposes_one():
    slow = StepCosts(optimizer_step=15.0, evaluation=10.0, scoring=5.0, calibration_size=128, device="cpu")
    assert "--time-budget" in plan_run(Recipe(), slow, blocks=5).advice
    assert plan_run(Recipe(), StepCosts(15.0, 10.0, 5.0, 128, device="cuda"), blocks=5).advice == ""
    assert "--time-budget" not in plan_run(Recipe.from_dict({"recovery": {"time_budget": "1h"}}), slow, blocks=5).advice
    assert "time budget 1 h 00 min" in plan_run(Recipe.from_dict({"recovery": {"time_budget": "1h"}}), slow,
                                                blocks=5).line()


def test_the_plan_travels_in_the_run_state():
    plan = plan_run(Recipe.from_dict({"recovery": {"time_budget": "10m"}}), COSTS, blocks=2)
    state = RunState(90.0, 100, 1000, plan=plan.to_json(), time_spent=12.5)
    back = RunState.from_json(state.to_json())
    assert back == state and RunPlan.from_json(back.plan) == plan


class Clock:
    """A constructed clock: time moves only when the test moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def tiny_recipe(**recovery) -> Recipe:
    return Recipe.from_dict({"max_accuracy_drop": 100.0, "calibration_size": 64, "eval_batch_size": 256,
                             "device": "cpu", "filter": {"steps": 10, "p0": 0.05, "alpha": 0.0},
                             "layer": {"enabled": False},
                             "recovery": {"step_budget": 20, "final_budget": 40, "batch_size": 32, **recovery}})


def test_the_stages_stop_when_the_clock_leaves_only_the_final_fine_tune(digits):
    """Each step takes 30 s of a constructed clock; a step is planned at 12 s, the fine-tune at 21 s, the budget
    100 s: three steps fit (0+33, 30+33, 60+33 <= 100), the fourth does not."""
    torch.manual_seed(0)
    dense = create_model("cnn_small", digits.num_classes, digits.in_channels, digits.image_size).eval()
    r = tiny_recipe(time_budget=100)
    plan = plan_run(r, COSTS, blocks=0)
    plan.step_recovery, plan.final_steps, plan.sized = 20, 40, []  # 1 + 10 + 1 = 12 s a step; 20 + 1 = 21 s
    clock = Clock()
    ctx = start_run(dense, digits, r, dense_val_acc=50.0)
    ctx.clock, ctx._since, ctx.state.plan = clock, clock(), plan.to_json()
    seen = []

    def on_step(rec):
        seen.append((rec.action, clock.now))
        clock.now += 30.0

    ctx.on_step = on_step
    model = run_stages(copy.deepcopy(dense), ctx, dense)
    actions = [s.action for s in ctx.state.trajectory]
    assert actions == ["dense", "prune", "prune", "prune", "stop", "finetune"]
    stop = ctx.state.trajectory[4]
    assert stop.note == TIME_BUDGET_REACHED and [t for _, t in seen[:4]] == [0.0, 30.0, 60.0, 90.0]
    # 120 s worked, past the budget: the fine-tune the run planned still runs, at its minimum
    assert ctx.state.trajectory[-1].recovery_steps == min(40, MIN_FINAL_STEPS)
    assert ctx.plan.costs == COSTS  # the state's plan was used, nothing re-measured
    assert model(digits.val_x[:4]).shape == (4, digits.num_classes)
    steps = [s.to_json() for s in ctx.state.trajectory]
    assert "the time budget" in stopping_limits(steps, r.to_dict())[0]
    summary = time_summary(ctx.plan, ctx.elapsed(), ctx.state.trajectory)
    assert summary["budget_reached"] and "filter step 3 with 3 pruning step(s) kept" in summary["verdict"]


def test_a_run_given_almost_no_time_still_returns_a_valid_model_and_says_why(digits):
    torch.manual_seed(0)
    dense = create_model("cnn_small", digits.num_classes, digits.in_channels, digits.image_size).eval()
    result = compress(dense, digits, tiny_recipe(time_budget=0.001, final_budget=100))
    actions = [s.action for s in result.steps]
    assert actions == ["dense", "stop", "finetune"]  # not one pruning step fits, the planned fine-tune still runs
    assert result.steps[1].note == TIME_BUDGET_REACHED
    assert result.steps[-1].recovery_steps == MIN_FINAL_STEPS  # sized down from 100, never below the minimum
    assert result.recipe.recovery.final_budget == MIN_FINAL_STEPS  # the effective recipe is what ran
    assert result.model(digits.val_x[:4]).shape == (4, digits.num_classes)
    plan = RunPlan.from_json(result.state.plan)
    assert plan.time_budget == 0.001 and plan.costs.optimizer_step > 0 and plan.estimate_s > 0


def test_without_a_budget_planning_changes_nothing_a_run_draws(digits):
    """The plan's probe runs on a copy with the global random state restored: the same recipe compresses to
    the same model whether or not a plan was measured first."""
    dense = create_model("cnn_small", digits.num_classes, digits.in_channels, digits.image_size).eval()
    r = tiny_recipe().with_overrides({"filter.steps": 2})
    torch.manual_seed(3)
    first = compress(copy.deepcopy(dense), digits, r)
    torch.manual_seed(3)
    ctx = start_run(copy.deepcopy(dense), digits, r)
    ctx.state.plan = plan_run(r, COSTS, blocks=0).to_json()  # a plan given: nothing measured
    second = run_stages(copy.deepcopy(dense), ctx, dense, dense_profile(dense, ctx))
    a, b = first.model.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("budget, expected", [(100.0, 100), (70.0, 72), (40.0, MIN_FINAL_STEPS)])
def test_time_the_stages_saved_goes_to_the_final_fine_tune_up_to_the_recipes_own(digits, budget, expected):
    """One pruning step (filter.steps 1) takes 30 s of a constructed clock; the plan gave the fine-tune 40 of the
    recipe's 100 steps at 0.5 s. What is left after 30 s (less the two 2 s evaluations around the fine-tune) pays
    for up to 100 steps (budget 100 s), for 72 (budget 70 s), or for fewer than the minimum the fine-tune keeps (budget 40 s)."""
    torch.manual_seed(0)
    dense = create_model("cnn_small", digits.num_classes, digits.in_channels, digits.image_size).eval()
    r = tiny_recipe(time_budget=budget, final_budget=100).with_overrides({"filter.steps": 1})
    plan = plan_run(r, COSTS, blocks=0)
    plan.step_recovery, plan.final_steps, plan.sized = 20, 40, []
    assert plan.final_requested == 100
    clock = Clock()
    ctx = start_run(dense, digits, r, dense_val_acc=50.0)
    ctx.clock, ctx._since, ctx.state.plan = clock, clock(), plan.to_json()

    def on_step(rec):
        clock.now += 30.0

    ctx.on_step = on_step
    run_stages(copy.deepcopy(dense), ctx, dense)
    assert [s.action for s in ctx.state.trajectory] == ["dense", "prune", "finetune"]
    assert ctx.state.trajectory[-1].recovery_steps == expected


def test_a_fine_tune_that_slows_down_is_shortened_to_end_within_the_budget(digits, monkeypatch):
    """The machine slows down mid-run (constructed clock): the pruning step takes 30 s, then every fine-tune step
    3 s instead of the planned 0.5 s. Budget 200 s: the fine-tune was given 100 steps (300 s at that pace); its
    horizon, at its own pace, ends it after 56 (30 + 56 x 3 = 198 s, the 2 s evaluation after it fits)."""
    import idap.prune.compress as compress_module

    torch.manual_seed(0)
    dense = create_model("cnn_small", digits.num_classes, digits.in_channels, digits.image_size).eval()
    r = tiny_recipe(time_budget=200.0, final_budget=100).with_overrides({"filter.steps": 1})
    plan = plan_run(r, COSTS, blocks=0)
    plan.step_recovery, plan.final_steps, plan.sized = 20, 40, []
    clock = Clock()
    ctx = start_run(dense, digits, r, dense_val_acc=50.0)
    ctx.clock, ctx._since, ctx.state.plan = clock, clock(), plan.to_json()
    ctx.on_step = lambda rec: setattr(clock, "now", clock.now + (30.0 if rec.stage == "filter" else 0.0))
    real = compress_module.recover

    def slow(*args, **kwargs):  # the final fine-tune's steps, 3 s each
        assert kwargs.get("on_step") is None
        return real(*args, on_step=lambda step: setattr(clock, "now", clock.now + 3.0), **kwargs)

    monkeypatch.setattr(compress_module, "recover", slow)
    run_stages(copy.deepcopy(dense), ctx, dense)
    last = ctx.state.trajectory[-1]
    assert last.action == "finetune" and last.recovery_steps == 56 and "56 steps of 100 planned" in last.note
    assert clock.now == pytest.approx(30 + 56 * 3) and clock.now + COSTS.evaluation <= 200
