"""Pipeline step 6: the final distillation fine-tune against the dense teacher."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.services.artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def finetune(
    data: Input[Dataset],
    dense: Input[Model],
    in_model: Input[Model],
    in_trajectory: Input[Artifact],
    recipe_json: str,
    parent_run_id: str,
    model: Output[Model],
    trajectory: Output[Artifact],
    workers: int = 1,
    ray_address: str = "",
    ray_storage: str = "",
):
    """``recovery.final_budget`` optimizer steps (or what the stages left of ``recovery.total_budget``) with
    the cosine schedule, continuing the run state of the previous step; the result is the compressed model.
    ``workers`` > 1 runs the fine-tune data-parallel on Ray Train (a local Ray, or ``ray_address``'s cluster;
    ``ray_storage`` an s3:// prefix when the workers are other machines)."""
    from components.services import artifacts, tracking
    from components.services.ray_train import step_workers
    from idap.bundle import load_bundle
    from idap.data import load_splits
    from idap.prune.compress import run_stages
    from idap.prune.state import RunContext

    recipe = artifacts.recipe_from_json(recipe_json)
    splits = load_splits(data.path)
    state = artifacts.load_state(in_trajectory.path)
    dense_model = load_bundle(dense.path)
    with tracking.step_run(parent_run_id, "finetune", params={"recovery.final_budget": recipe.recovery.final_budget}) as t:
        ctx = RunContext.create(dense_model, splits, recipe, on_step=artifacts.reporter(t), state=state,
                                progress=True)  # the fine-tune's bar in the step's log
        with step_workers(workers, ray_address, ray_storage):
            current = run_stages(load_bundle(in_model.path), ctx, dense_model, until="done")
        artifacts.save_model(current, model, splits, recipe=recipe.to_dict(),
                              metadata={"dataset": splits.describe(), "recipe_digest": recipe.digest()})
        artifacts.save_state(trajectory.path, ctx.state)
