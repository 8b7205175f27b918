"""Pipeline step 4: stage 1, iterative divergence-aware filter pruning."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components._artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def prune_filters(
    data: Input[Dataset],
    dense: Input[Model],
    profile: Input[Artifact],
    recipe_json: str,
    parent_run_id: str,
    model: Output[Model],
    trajectory: Output[Artifact],
):
    """Prune channels of the dense model; the first step ranks by the profile artifact (no re-scoring).

    The trajectory starts with the dense model's record, as in ``idap compress``.
    """
    import copy
    import time

    from components import _artifacts, _tracking
    from idap.bundle import load_bundle
    from idap.compress import filter_stage
    from idap.data import load_splits
    from idap.divergence import FlowProfile
    from idap.steps import RunContext

    recipe = _artifacts.recipe_from_json(recipe_json)
    splits = load_splits(data.path)
    dense_model = load_bundle(dense.path)
    doc = _artifacts.read_json(profile.path)
    with _tracking.step_run(parent_run_id, "prune_filters") as t:
        started = time.perf_counter()
        ctx = RunContext.create(dense_model, splits, recipe, on_step=_artifacts.reporter(t),
                                dense_val_acc=doc["dense"]["val_acc"])
        steps = [ctx.record(dense_model, "dense", 0, "dense", val_acc=ctx.dense_val_acc, started=started)]
        current = copy.deepcopy(dense_model)
        if recipe.filter.enabled:
            current, records = filter_stage(current, ctx, dense_model, FlowProfile.from_json(doc))
            steps += records
        _artifacts.save_model(current, model, splits, recipe=recipe.to_dict())
        _artifacts.save_trajectory(trajectory.path, steps)
