"""Resume: a run interrupted during stage 1, stage 2 or the final fine-tune continues from its last
completed step and ends with exactly the model and trajectory of an uninterrupted run (same seed)."""

import copy

import pytest
import torch

from idap.prune.checkpoint import Checkpoint, CheckpointMismatch
from idap.prune.compress import compress
from idap.prune.config import Recipe
from idap.prune.state import RunState

RECIPE = Recipe.from_dict({
    # budgets of 100 pp: no step or block depends on what training learned, so every run prunes filters, removes
    # max_removals blocks and fine-tunes, on any CPU (at 60 pp a block's drop came within 6 pp of the budget)
    "seed": 0, "max_accuracy_drop": 100.0, "calibration_size": 64, "eval_batch_size": 256,
    "filter": {"steps": 3, "p0": 0.1},
    "layer": {"max_removals": 2, "epsilon": 100.0},
    "recovery": {"step_budget": 3, "final_budget": 6, "batch_size": 32},
})


class Killed(Exception):
    """Stands for the process dying right after a step was recorded, before its checkpoint."""


def _killer(stage: str, nth: int):
    seen = []

    def on_step(rec):
        if rec.stage == stage:
            seen.append(rec)
            if len(seen) == nth:
                raise Killed(f"killed at {stage} record {nth}")

    return on_step


def _same_records(a, b):
    strip = [{k: v for k, v in r.to_json().items() if k != "seconds"} for r in a]
    return strip == [{k: v for k, v in r.to_json().items() if k != "seconds"} for r in b]


@pytest.fixture(scope="module")
def uninterrupted(trained_resnet20, digits):
    return compress(copy.deepcopy(trained_resnet20), digits, RECIPE)


@pytest.mark.slow
@pytest.mark.parametrize("stage,nth", [("filter", 2), ("layer", 1), ("finetune", 1)])
def test_killed_run_resumes_to_the_same_model(stage, nth, trained_resnet20, digits, uninterrupted, tmp_path):
    stages = {r.stage for r in uninterrupted.steps}
    assert {"filter", "layer", "finetune"} <= stages and any(r.action == "remove_block" for r in uninterrupted.steps)
    with pytest.raises(Killed):
        compress(copy.deepcopy(trained_resnet20), digits, RECIPE, checkpoint_dir=tmp_path, on_step=_killer(stage, nth))
    assert (tmp_path / "model" / "architecture.json").is_file()
    resumed = compress(copy.deepcopy(trained_resnet20), digits, RECIPE, checkpoint_dir=tmp_path)
    assert resumed.resumed_from is not None and resumed.resumed_from.startswith(stage if stage != "layer" else "layer")
    assert _same_records(resumed.steps, uninterrupted.steps)
    ours, theirs = resumed.model.state_dict(), uninterrupted.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_checkpoint_of_another_run_is_refused(trained_resnet20, digits, tmp_path):
    dense = copy.deepcopy(trained_resnet20).eval()
    Checkpoint(tmp_path, dense, RECIPE, digits).save(dense, RunState(90.0, 1, 1))
    other = RECIPE.with_overrides({"seed": 1})
    with pytest.raises(CheckpointMismatch, match="recipe"):
        Checkpoint(tmp_path, dense, other, digits).load()
    model, state = Checkpoint(tmp_path, dense, RECIPE, digits).load()
    assert state.dense_val_acc == 90.0 and state.stage == "filter"


def test_run_state_round_trips_and_refuses_garbage():
    state = RunState(91.5, 10, 20, recovery_used=3, stage="layer", position={"next": 2, "ranked": [["a", 0.1]]})
    assert RunState.from_json(state.to_json()) == state
    with pytest.raises(ValueError, match="not a run state"):
        RunState.from_json([1, 2])
    with pytest.raises(ValueError, match="stage must be one of"):
        RunState(1.0, 1, 1, stage="nowhere")
