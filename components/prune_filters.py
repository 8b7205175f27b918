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

    ``trajectory`` is the run state (``idap.state.RunState``) the next step continues from; its trajectory
    starts with the dense model's record, as in ``idap compress``.
    """
    import copy

    from components import _artifacts, _tracking
    from idap.bundle import load_bundle
    from idap.compress import run_stages, start_run
    from idap.data import load_splits
    from idap.divergence import FlowProfile

    recipe = _artifacts.recipe_from_json(recipe_json)
    splits = load_splits(data.path)
    dense_model = load_bundle(dense.path)
    doc = _artifacts.read_json(profile.path)
    with _tracking.step_run(parent_run_id, "prune_filters") as t:
        ctx = start_run(dense_model, splits, recipe, on_step=_artifacts.reporter(t), progress=True,  # recovery bars
                        dense_val_acc=doc["dense"]["val_acc"])
        current = run_stages(copy.deepcopy(dense_model), ctx, dense_model, FlowProfile.from_json(doc), until="layer")
        _artifacts.save_model(current, model, splits, recipe=recipe.to_dict())
        _artifacts.save_state(trajectory.path, ctx.state)
