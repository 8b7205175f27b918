"""finetune: the final distillation fine-tune, recorded as the trajectory's last step."""

import torch

from components.services.artifacts import load_trajectory, recipe_from_json
from idap.bundle import load_bundle
from idap.data import load_splits
from idap.measure.metrics import count_params


def test_final_step_is_recorded_and_the_weights_moved(chain):
    recipe = recipe_from_json(chain.recipe_json)
    steps = load_trajectory(chain.out["final_trajectory"].path)
    before = load_trajectory(chain.out["layers_trajectory"].path)
    assert steps[:-1] == before and steps[-1].stage == "finetune"
    assert steps[-1].note == f"{recipe.recovery.final_budget} steps"
    splits = load_splits(chain.out["data"].path)
    tuned, pruned = load_bundle(chain.out["final"].path), load_bundle(chain.out["layers"].path)
    assert count_params(tuned) == count_params(pruned) == steps[-1].params
    assert not torch.equal(tuned(splits.val_x), pruned(splits.val_x))
