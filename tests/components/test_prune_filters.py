
"""prune_filters: stage 1 from the profile artifact; the dense model is not scored a second time."""

import copy

import pytest
import torch
from kfp import dsl

import idap.prune.compress
import idap.prune.importance
from components.prune_filters import prune_filters
from components.services.artifacts import load_trajectory, read_json, recipe_from_json
from idap.bundle import load_bundle
from idap.data import load_splits
from idap.measure.metrics import count_params
from idap.prune.compress import stage_one
from idap.prune.divergence import FlowProfile
from idap.prune.state import RunContext


@pytest.mark.outcome
def test_trajectory_starts_dense_and_the_bundle_is_the_last_kept_model(chain, margin):
    steps = load_trajectory(chain.out["filters_trajectory"].path)
    margin("first filter step's drop (pp), budget 5", steps[0].val_acc - steps[1].val_acc, 5.0, above=False)
    assert steps[0].stage == "dense" and {s.stage for s in steps[1:]} == {"filter"}
    kept = [s for s in steps if s.accepted]
    model = load_bundle(chain.out["filters"].path)
    assert count_params(model) == kept[-1].params < steps[0].params
    assert chain.out["filters"].metadata["params"] == kept[-1].params


def test_same_model_as_filter_stage_in_process(chain):
    recipe = recipe_from_json(chain.recipe_json)
    splits = load_splits(chain.out["data"].path)
    dense = load_bundle(chain.out["dense"].path)
    ctx = RunContext.create(dense, splits, recipe)
    model, _ = stage_one(copy.deepcopy(dense), ctx, dense, FlowProfile.from_json(read_json(chain.out["profile"].path)))
    assert torch.equal(model(splits.test_x), load_bundle(chain.out["filters"].path)(splits.test_x))


def test_first_step_ranks_by_the_profile_artifact(chain, tmp_path, monkeypatch):
    calls, plan_scorings = [], []
    real = idap.prune.importance.flow_profile
    monkeypatch.setattr(idap.prune.importance, "flow_profile", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(idap.prune.compress, "flow_profile", lambda *a, **k: plan_scorings.append(1) or real(*a, **k))
    prune_filters.python_func(data=chain.out["data"], dense=chain.out["dense"], profile=chain.out["profile"],
                              recipe_json=chain.recipe_json, parent_run_id="",
                              model=dsl.Model(uri=str(tmp_path / "m")), trajectory=dsl.Artifact(uri=str(tmp_path / "t")))
    pruning_steps = [s for s in read_json(tmp_path / "t")["trajectory"] if s["stage"] == "filter"]  # a run state
    assert len(calls) == len(pruning_steps) - 1  # every step scores its model, except the first: the artifact
    # the time plan reuses the score step's timing of the same pass instead of scoring the dense model again
    profile_doc = read_json(chain.out["profile"].path)
    plan = read_json(tmp_path / "t")["plan"]
    assert plan_scorings == [] and plan["costs"]["scoring"] == profile_doc["dense"]["scoring_seconds"] > 0
