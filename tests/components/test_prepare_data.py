"""prepare_data: the effective recipe, the splits it writes, and the MLflow parent run it opens."""

import json

import torch

from components.services.artifacts import recipe_from_json
from idap.data import load_dataset, load_splits

from .conftest import TINY_RECIPE


def test_splits_are_the_ones_idap_compress_loads(chain):
    recipe = recipe_from_json(chain.recipe_json)
    direct = load_dataset("digits", seed=recipe.seed, calibration_size=recipe.calibration_size,
                          validation_size=recipe.validation_size)
    written = load_splits(chain.out["data"].path)
    for split in ("train", "calib", "val", "test"):
        assert torch.equal(getattr(written, f"{split}_x"), getattr(direct, f"{split}_x"))
        assert torch.equal(getattr(written, f"{split}_y"), getattr(direct, f"{split}_y"))
    assert chain.out["data"].metadata["sizes"] == direct.describe()["sizes"]
    assert chain.out["data"].metadata["source"] == "digits"


def test_recipe_output_is_the_effective_recipe(chain):
    recipe = recipe_from_json(chain.recipe_json)
    assert recipe.filter.steps == TINY_RECIPE["filter"]["steps"] and recipe.max_accuracy_drop == 5.0
    assert json.loads(chain.recipe_json) == recipe.to_dict()


def test_parent_run_holds_a_child_run_per_step(chain, mlflow_client):
    parent = mlflow_client.get_run(chain.parent_run_id)
    assert parent.info.status == "FINISHED"  # closed by register_model
    assert parent.data.tags["idap.recipe_digest"] == recipe_from_json(chain.recipe_json).digest()
    children = mlflow_client.search_runs([parent.info.experiment_id],
                                         f"tags.mlflow.parentRunId = '{chain.parent_run_id}'")
    steps = {r.data.tags["idap.step"]: r for r in children}
    assert {"prepare_data", "train_baseline", "score_divergence", "prune_filters", "prune_layers", "finetune",
            "evaluate", "register"} <= set(steps)
    assert all(r.info.status == "FINISHED" for r in children)
    assert steps["prepare_data"].data.params["filter.steps"] == str(TINY_RECIPE["filter"]["steps"])
    assert steps["prepare_data"].data.tags["idap.dataset"] == "digits"
