"""Pipeline step 4: stage 1, iterative divergence-aware filter pruning."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.services.artifacts import component_image


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

    ``trajectory`` is the run state (``idap.prune.state.RunState``) the next step continues from; its trajectory
    starts with the dense model's record, as in ``idap compress``.
    """
    import copy

    from components.services import artifacts, tracking
    from idap.bundle import load_bundle
    from idap.data import load_splits
    from idap.prune.compress import run_stages, start_run
    from idap.prune.divergence import FlowProfile

    recipe = artifacts.recipe_from_json(recipe_json)
    splits = load_splits(data.path)
    dense_model = load_bundle(dense.path)
    doc = artifacts.read_json(profile.path)
    with tracking.step_run(parent_run_id, "prune_filters") as t:
        ctx = start_run(dense_model, splits, recipe, on_step=artifacts.reporter(t), progress=True,  # recovery bars
                        dense_val_acc=doc["dense"]["val_acc"])
        ctx.on_plan = artifacts.plan_reporter(t)  # the time plan, made before the first pruning step
        current = run_stages(copy.deepcopy(dense_model), ctx, dense_model, FlowProfile.from_json(doc), until="layer",
                             scoring=doc["dense"].get("scoring_seconds"))  # a profile of an older step: None, timed
        artifacts.save_model(current, model, splits, recipe=recipe.to_dict())
        artifacts.save_state(trajectory.path, ctx.state)
