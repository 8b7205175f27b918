"""minilm-bbc: every method runs the same loop and budgets, differing only in what it scores and removes."""

from dataclasses import asdict

import pytest

from benchmarks.text import METHODS, REDUCED, markdown, recipe_for


def test_methods_share_budgets_and_differ_in_criterion_and_axis():
    recipes = {m: recipe_for(m, 1.5, REDUCED, 0) for m in METHODS}
    assert {r.recovery for r in recipes.values()} == {recipes["idap++"].recovery}  # same recovery for everyone
    assert {(r.max_accuracy_drop, r.target_macs_reduction) for r in recipes.values()} == {(1.0, 1.5)}
    idap, gpt, taylor, l1 = (recipes[m] for m in ("idap++", "shortgpt", "taylor", "l1"))
    assert idap.filter.enabled and idap.layer.enabled and idap.filter.importance == "idap"
    assert idap.layer.block_score == "divergence" and idap.layer.target_share == 0.5
    assert not gpt.filter.enabled and gpt.layer.enabled and gpt.layer.block_score == "block_influence"
    assert (taylor.filter.importance, l1.filter.importance) == ("taylor", "l1")
    assert not taylor.layer.enabled and not l1.layer.enabled
    assert idap.recovery.teacher == "dense" and idap.recovery.lambda_kd > 0  # distilled from the dense model


@pytest.mark.parametrize("reduced", [True, False])
def test_report_names_the_machine_the_run_size_and_the_citation(reduced):
    layers = [{"heads": 12, "head_dim": 32, "ffn": 1536}] * 6
    dense = {"test_acc": 98.0, "val_acc": 95.5, "params": 22_567_301, "macs_128": 1_434_453_888,
             "latency_ms_b1_128": 50.0, "throughput_b32_128": 20.0, "layers": layers}
    pruned = {**dense, "method": "shortgpt", "target": 1.5, "seed": 0, "seconds": 100.0, "macs_128": 956_302_592,
              "macs_reduction": 1.5, "speedup_b1": 1.4, "test_drop_pp": 0.5, "val_drop_pp": 1.0, "layers": layers[:4] + [None, None]}
    doc = {"reduced": reduced, "setting": asdict(REDUCED), "data": {"sizes": {"train": 1517}},
           "machine": {"device_name": "Test CPU"}, "threads": 1, "command": "python -m benchmarks.text --reduced",
           "results": {"dense": dense, "shortgpt@1.5x/seed0": pruned}}
    text = markdown(doc)
    assert ("(REDUCED)" in text) is reduced and "Test CPU, 1 thread" in text and "Greene and P. Cunningham" in text
    assert "| shortgpt | 1.5x | 98.00 | -0.50 | -1.00 |" in text and "12/12/12/12/–/–" in text
