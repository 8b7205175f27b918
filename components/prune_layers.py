"""Pipeline step 5: stage 2, flow-guided removal of whole blocks."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.services.artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def prune_layers(
    data: Input[Dataset],
    dense: Input[Model],
    in_model: Input[Model],
    in_trajectory: Input[Artifact],
    recipe_json: str,
    parent_run_id: str,
    model: Output[Model],
    trajectory: Output[Artifact],
):
    """Remove up to ``layer.max_removals`` blocks of the filter-pruned model (and, with a MACs target the
    blocks stop short of, let stage 1 top up the gap), continuing the run state of the previous step, as
    ``idap compress`` does; with ``layer.enabled`` false the model passes through unchanged."""
    import shutil

    from components.services import artifacts, tracking
    from idap.bundle import load_bundle
    from idap.data import load_splits
    from idap.prune.compress import run_stages
    from idap.prune.state import RunContext

    recipe = artifacts.recipe_from_json(recipe_json)
    state = artifacts.load_state(in_trajectory.path)
    with tracking.step_run(parent_run_id, "prune_layers", params={"layer.enabled": recipe.layer.enabled}) as t:
        if not recipe.layer.enabled:  # the next step's run_stages skips the stage the same way
            shutil.copytree(in_model.path, model.path, dirs_exist_ok=True)
            shutil.copyfile(in_trajectory.path, trajectory.path)
            model.metadata.update(in_model.metadata)
            print("layer stage disabled by the recipe: model passed through", flush=True)
            return
        splits = load_splits(data.path)
        dense_model = load_bundle(dense.path)
        ctx = RunContext.create(dense_model, splits, recipe, on_step=artifacts.reporter(t), state=state,
                                progress=True)  # recovery bars in the step's log
        current = run_stages(load_bundle(in_model.path), ctx, dense_model, until="finetune")
        artifacts.save_model(current, model, splits, recipe=recipe.to_dict())
        artifacts.save_state(trajectory.path, ctx.state)
