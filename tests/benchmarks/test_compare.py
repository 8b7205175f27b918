"""The peer-comparison benchmark: its plan and verdicts (fast), and the digits smoke run end to end (slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.analysis import ablations, aggregate, goals, pareto
from benchmarks.jobs import Job, base_recipe, plan_jobs
from benchmarks.methods import METHODS
from benchmarks.presets import PRESETS, SMOKE

ROOT = Path(__file__).resolve().parents[2]


def test_plan_runs_every_method_at_each_point_of_its_axis():
    preset = PRESETS["fashion-resnet20"]
    jobs = plan_jobs(preset)
    assert len({j.key for j in jobs}) == len(jobs)
    for seed in preset.seeds:
        mine = [j for j in jobs if j.seed == seed]
        assert {j.target for j in mine if j.method == "tp-lamp"} == set(preset.targets)
        assert {j.target for j in mine if j.method == "idap++-pre"} == set(preset.ablation_targets)
        assert {j.blocks for j in mine if j.method == "depth-block-influence"} == set(preset.block_counts)
        assert [j.method for j in mine].count("dense-control") == 1


def test_method_recipes_differ_only_where_they_should():
    base = base_recipe(PRESETS["fashion-resnet20"], seed=1, device="cpu")
    tp = METHODS["tp-fpgm"].recipe(base, target=3.0)
    assert (tp.filter.importance, tp.layer.enabled, tp.target_macs_reduction) == ("fpgm", False, 3.0)
    assert tp.recovery == base.recovery and tp.filter.p0 == base.filter.p0 and tp.seed == 1
    depth = METHODS["depth-random"].recipe(base, blocks=4)
    assert not depth.filter.enabled and depth.layer.exact_removals and depth.layer.max_removals == 4
    assert depth.layer.block_score == "random" and depth.target_macs_reduction is None
    idap = METHODS["idap++"].recipe(base, target=2.0)
    assert idap.layer.enabled and idap.filter.importance == "idap" and idap.layer.target_share > 0
    with pytest.raises(ValueError, match="MACs target"):
        METHODS["idap++"].recipe(base)


def _run(method, acc, *, target=3.0, seed=0, speedup=2.0, macs_reduction=3.0, val=None):
    return {"key": Job(method, seed, target=target).key, "method": method, "target": target, "blocks": None,
            "seed": seed, "test_acc": acc, "val_acc": acc if val is None else val, "params": 1, "macs": 1,
            "macs_reduction": macs_reduction, "reached_target": True, "blocks_removed": [], "total_steps": 10,
            "speedup_b1": speedup, "throughput_gain_b64": speedup, "latency_ms_b1": 1.0, "throughput_b64": 1.0}


def test_goal_verdicts_follow_the_numbers():
    runs = [_run("idap++", 91.0, speedup=2.6), _run("idap++", 91.2, seed=1, speedup=2.6),
            _run("tp-l1", 90.0), _run("tp-taylor", 91.5),
            _run("idap++-stage1", 92.0, target=2.0, speedup=1.6), _run("idap++-stage1", 90.0, speedup=2.2),
            {**_run("dense-control", 91.5, target=None), "macs_reduction": 1.0, "reached_target": None}]
    verdicts = {v["goal"].split(" at ")[0].split(" >=")[0]: v["status"] for v in goals(aggregate(runs),
                                                                                     {"test_acc": 91.8}, 3.0)}
    assert verdicts["IDAP++ test accuracy above every Torch-Pruning criterion's"] == "not met"  # taylor 91.5
    assert verdicts["IDAP++ within 1 pp of the dense model"] == "met"  # 91.1 vs 91.8
    assert verdicts["IDAP++ measured CPU speed-up"] == "met"  # 2.6 >= 0.8 * 3
    # stage 1 alone interpolated at 91.1%: 1.6 + (2.2 - 1.6) * 0.45 = 1.87x < 2.6x
    assert verdicts["stage 2 adds speed-up that stage 1 alone does not reach"] == "met"


def test_ablation_winner_needs_a_margin_beyond_the_seed_spread():
    runs = [_run("idap++", 90.0, val=90.0), _run("idap++", 90.0, seed=1, val=90.2),
            _run("idap++-pre", 92.0, val=92.0), _run("idap++-pre", 92.0, seed=1, val=92.1),
            _run("idap++-previous-teacher", 90.1, val=90.1), _run("idap++-previous-teacher", 90.1, seed=1, val=90.3)]
    by_choice = {a["choice"]: a for a in ablations(aggregate(runs))}
    assert by_choice["filter.score_point"]["winner"] == "pre"
    assert "make filter.score_point=pre the default" in by_choice["filter.score_point"]["advice"]
    assert by_choice["recovery.teacher"]["winner"].startswith("tie")


def test_pareto_names_who_dominates_whom_on_accuracy_and_measured_speed():
    runs = [_run("idap++", 90.0, speedup=2.0), _run("tp-l1", 89.0, speedup=1.8),  # dominated by IDAP++
            _run("tp-taylor", 91.0, speedup=1.5),  # more accurate, slower: neither dominates
            _run("tp-l1", 90.5, target=4.0, speedup=2.1)]  # dominates IDAP++
    (line,) = pareto(aggregate(runs))
    assert "dominated by Torch-Pruning l1 4x MACs (90.50%, 2.10x)" in line
    assert "it dominates 1 of 3 Torch-Pruning points" in line and "faster than all" not in line
    (line,) = pareto(aggregate(runs[:3]))
    assert "no Torch-Pruning point is both as fast and as accurate" in line and "faster than all of them" in line


def test_method_recipes_pin_their_ranking():
    base = base_recipe(PRESETS["fashion-resnet20"], seed=0, device="cpu")
    assert METHODS["tp-l1"].recipe(base, target=3.0).filter.ranking == "score"
    assert METHODS["tp-l1-per-mac"].recipe(base, target=3.0).filter.ranking == "score_per_mac"
    assert METHODS["idap++"].recipe(base, target=3.0).filter.ranking == "score_per_mac"
    assert METHODS["idap++-score-ranking"].recipe(base, target=3.0).filter.ranking == "score"
    assert METHODS["idap++-previous-teacher"].recipe(base, target=3.0).recovery.teacher == "previous"
    # budget mode (no target caps a step): the spec's ranking, unless the method names its own
    assert METHODS["idap++"].recipe(base, budget=1.0).filter.ranking == "score"
    assert METHODS["idap++"].recipe(base, budget=1.0).target_macs_reduction is None
    assert METHODS["tp-taylor-per-mac"].recipe(base, budget=1.0).filter.ranking == "score_per_mac"


def test_set_overrides_every_method_and_rejects_a_bad_key(tmp_path):
    from dataclasses import replace

    preset = replace(PRESETS[SMOKE], recipe_overrides=("recovery.final_reserve=0.5",))
    assert base_recipe(preset, 0, "cpu").recovery.final_reserve == 0.5
    bad = subprocess.run([sys.executable, "-m", "benchmarks.compare", "--smoke", "--set", "recovery.nope=1",
                          "--work", str(tmp_path), "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "recovery.nope" in bad.stderr


@pytest.mark.slow
def test_smoke_comparison_end_to_end(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, "-m", "benchmarks.compare", "--smoke", "--out", str(out), "--work", str(work)]
    # the jobs in two worker processes, no timing (as on a GPU machine) ...
    jobs = subprocess.run([*cmd, "--workers", "2", "--skip-speed"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert jobs.returncode == 0, jobs.stderr[-3000:]
    assert "starting 2 worker processes" in jobs.stderr and "timing skipped" in jobs.stderr
    assert not (out / f"{SMOKE}.png").exists() and not list(work.rglob(".claim"))
    started = [line.rsplit(": start", 1)[0].rsplit("] ", 1)[-1].strip() for line in jobs.stderr.splitlines()
               if line.endswith(": start")]
    assert sorted(started) == sorted(j.key for j in plan_jobs(PRESETS[SMOKE]))  # each job ran once, by one worker
    # ... then only the timing, here: every job comes from the cache
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert ": start" not in first.stderr
    for suffix in ("json", "md", "png"):
        assert (out / f"{SMOKE}.{suffix}").stat().st_size > 0
    payload = json.loads((out / f"{SMOKE}.json").read_text())
    preset = PRESETS[SMOKE]
    assert payload["status"] == "complete"

    expected = {(j.method, j.target, j.blocks) for j in plan_jobs(preset)}
    rows = [(r["method"], r["target"], r["blocks"]) for r in payload["rows"]]
    assert sorted(rows, key=str) == sorted(expected, key=str)  # one row per method and target, none missing
    assert {r["method"] for r in payload["rows"]} == set(METHODS)

    for run in payload["runs"]:
        assert run["total_steps"] == preset.total_budget, run["key"]  # the same budget for everyone
        assert run["latency_ms_b1"] > 0 and run["throughput_b64"] > 0
        if run["method"] == "idap++-stage2-only":  # blocks only, no channel top-up: as close as whole blocks go
            assert run["blocks_removed"] and 1 < run["macs_reduction"] < run["target"] * 1.1, run["key"]
            assert run["recipe"]["filter"]["enabled"] is False
        elif run["target"] is not None:  # compressed to the target: the capped step lands on it or just past it
            assert run["reached_target"] and run["macs_reduction"] >= run["target"], run["key"]
            assert run["macs_reduction"] < run["target"] * 1.1, run["key"]  # no block-sized overshoot
        elif run["blocks"] is not None:
            assert len(run["blocks_removed"]) == run["blocks"], run["key"]
            assert run["macs_reduction"] > 1
        else:
            assert run["method"] == "dense-control" and run["macs"] == payload["dense"]["macs"]
    assert {g["status"] for g in payload["goals"]} <= {"met", "not met", "not determined"}
    assert len(payload["goals"]) == 4 and len(payload["ablations"]) == 5  # 3 flags + 2 channel criteria
    assert {a["alternative"] for a in payload["ablations"] if a["choice"] == "filter.importance"} == {"taylor", "l1"}

    markdown = (out / f"{SMOKE}.md").read_text()
    for method in METHODS.values():
        assert f"| {method.label} |" in markdown
    assert "## Goals" in markdown and f"![test accuracy vs MACs]({SMOKE}.png)" in markdown

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count(": cached") == len(payload["runs"]) + 1  # dense and every run resumed from the cache


def test_budget_mode_plans_one_budget_job_per_contender_and_seed():
    preset = PRESETS["budget-fashion-resnet56"]
    jobs = plan_jobs(preset)
    budget = [j for j in jobs if j.budget is not None]
    assert {j.method for j in budget} == {"idap++", "idap++-stage1", "tp-l1", "tp-taylor", "tp-fpgm", "tp-lamp"}
    assert len(budget) == len(preset.seeds) * 6 and all(j.target is None and j.budget == 1.0 for j in budget)
    assert {j.key for j in budget if j.method == "tp-l1"} == {"tp-l1/1ppbudget/seed0", "tp-l1/1ppbudget/seed1"}
    assert {j.target for j in jobs if j.method == "tp-l1" and j.budget is None} == {3.0, 4.0}  # equal MACs too
    # at least 5 epochs of recovery + fine-tune, the same for every method
    train = 60000 - preset.validation_size - preset.calibration_size
    assert preset.total_budget * preset.batch_size >= 5 * train
    reduced = PRESETS["budget-fashion-resnet20-reduced"]
    assert "REDUCED" in reduced.note and reduced.total_budget * reduced.batch_size >= 5 * reduced.train_limit


def test_budget_mode_recipe_has_no_target_and_the_budget_on():
    base = base_recipe(PRESETS["budget-fashion-resnet56"], seed=0, device="cpu")
    assert base.max_accuracy_drop == 100.0  # equal-MACs jobs: budget off
    r = METHODS["idap++"].recipe(base, budget=1.0)
    assert r.target_macs_reduction is None and r.max_accuracy_drop == 1.0
    assert r.layer.enabled and r.layer.epsilon == 0.5  # stage 2 under its epsilon rule
    tp = METHODS["tp-taylor"].recipe(base, budget=1.0)
    assert not tp.layer.enabled and tp.max_accuracy_drop == 1.0 and tp.recovery == r.recovery


def test_budget_goals_compare_macs_and_speed_within_the_budget():
    from benchmarks.analysis import budget_goals

    def run(method, macs, speed, seed=0):
        return {**_run(method, 90.0, target=None, seed=seed, speedup=speed, macs_reduction=macs, val=89.5),
                "key": Job(method, seed, budget=1.0).key, "budget": 1.0, "reached_target": None}

    rows = aggregate([run("idap++", 3.0, 2.5), run("idap++", 3.2, 2.7, seed=1), run("tp-l1", 2.0, 1.8),
                      run("tp-taylor", 3.5, 2.0)])
    verdicts = budget_goals(rows, {"val_acc": 90.0, "test_acc": 90.0}, 1.0)
    status = {v["goal"].split("IDAP++ ")[-1].split(" above")[0]: v["status"] for v in verdicts}
    assert status["MACs reduction"] == "not met"  # Taylor reached 3.5x > 3.1x
    assert status["measured batch-1 speed-up"] == "met"
    assert verdicts[-1]["status"] == "met"  # every validation drop 0.5 pp <= 1 pp
    assert budget_goals(rows, {"val_acc": 90.0}, None) == []


def test_a_set_variant_caches_its_runs_apart_from_the_preset(tmp_path):
    from dataclasses import replace

    from benchmarks.jobs import runs_dir

    preset = PRESETS["budget-fashion-resnet20-reduced"]
    plain = runs_dir(tmp_path, preset)
    slack = runs_dir(tmp_path, replace(preset, recipe_overrides=(*preset.recipe_overrides, "stage_slack=1.5")))
    other = runs_dir(tmp_path, replace(preset, recipe_overrides=(*preset.recipe_overrides, "stage_slack=0.5")))
    assert plain == tmp_path / preset.name and len({plain, slack, other}) == 3
    assert slack == runs_dir(tmp_path, replace(preset, recipe_overrides=(*preset.recipe_overrides, "stage_slack=1.5")))


def test_a_field_added_later_keeps_cached_runs_valid_only_at_its_earlier_behaviour():
    from benchmarks.jobs import keyed_recipe
    from idap.prune.config import Recipe

    spec = Recipe.from_dict({"layer": {"patience": 0}})  # the behaviour before the field existed
    assert "patience" not in keyed_recipe(spec)["layer"] and "device" not in keyed_recipe(spec)
    patient = Recipe()
    assert keyed_recipe(patient)["layer"]["patience"] == 2 and keyed_recipe(patient) != keyed_recipe(spec)
    # a field of a disabled stage cannot change what ran: left out whatever its value
    off = Recipe.from_dict({"layer": {"enabled": False, "patience": 2}})
    assert keyed_recipe(off) == keyed_recipe(Recipe.from_dict({"layer": {"enabled": False, "patience": 0}}))
