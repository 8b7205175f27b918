"""prune_layers: stage 2 on the filter-pruned model, or a pass-through when the recipe disables it."""

import json

import torch
from kfp import dsl

from components.prune_layers import prune_layers
from components.services.artifacts import load_trajectory, recipe_from_json, recipe_param
from idap.bundle import load_bundle
from idap.data import load_splits
from idap.models.prunable import block_candidates


def test_cnn_small_has_no_block_to_remove(chain):
    """cnn_small has no residual block: the stage runs and changes nothing."""
    splits = load_splits(chain.out["data"].path)
    assert block_candidates(load_bundle(chain.out["filters"].path)) == []
    before, after = load_bundle(chain.out["filters"].path), load_bundle(chain.out["layers"].path)
    assert torch.equal(before(splits.val_x), after(splits.val_x))
    assert load_trajectory(chain.out["layers_trajectory"].path) == load_trajectory(chain.out["filters_trajectory"].path)


def test_disabled_stage_passes_model_and_trajectory_through(chain, tmp_path):
    recipe = recipe_from_json(chain.recipe_json).with_overrides(["layer.enabled=false"])
    model, trajectory = dsl.Model(uri=str(tmp_path / "m")), dsl.Artifact(uri=str(tmp_path / "t.json"))
    prune_layers.python_func(data=chain.out["data"], dense=chain.out["dense"], in_model=chain.out["filters"],
                             in_trajectory=chain.out["filters_trajectory"], recipe_json=recipe_param(recipe),
                             parent_run_id="", model=model, trajectory=trajectory)
    src = chain.out["filters"].path
    for name in ("architecture.json", "weights.safetensors", "parity.safetensors"):
        assert (tmp_path / "m" / name).read_bytes() == open(f"{src}/{name}", "rb").read()
    assert json.loads((tmp_path / "t.json").read_text()) == json.load(open(chain.out["filters_trajectory"].path))
