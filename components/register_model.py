"""Pipeline step 8: register the compressed model in MLflow and promote it, or not, by rule."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from components.services.artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def register_model(
    model: Input[Model],
    dense: Input[Model],
    report_json: Input[Artifact],
    data: Input[Dataset],
    recipe_json: str,
    registered_name: str,
    base_model: str,
    objective: str,
    tolerance_pp: float,
    parent_run_id: str,
) -> str:
    """A new version of ``registered_name`` ("" = idap-<model>-<dataset>), aliased challenger, and champion
    when the rule says so (budget kept, better on ``objective`` within ``tolerance_pp``). The decision is
    made here, not with ``dsl.If``, so the local runner takes the same path. Closes the pipeline's MLflow run.

    Args:
        base_model: where the dense model came from ("" = the source train_baseline recorded in the bundle).

    Returns:
        The registration as JSON (``registry.register_and_promote``): name, version, decision, champion, reason...
    """
    import json

    from components.services import artifacts, registry, tracking
    from idap.bundle import read_bundle_info
    from idap.data import load_splits

    try:
        report = artifacts.read_json(report_json.path)
        dataset = load_splits(data.path).describe()
        recipe = artifacts.recipe_from_json(recipe_json)
        base = base_model or read_bundle_info(dense.path)["metadata"].get("source", dense.uri)
        result = registry.register_and_promote(
            parent_run_id=parent_run_id, model_dir=model.path, dense_dir=dense.path, report=report, recipe=recipe,
            dataset=dataset,
            registered_name=registered_name or artifacts.default_registered_name(report["model"], dataset["name"]),
            base_model=base, objective=objective, tolerance_pp=tolerance_pp)
        if parent_run_id:  # the run a user opens first: final figures, key settings, the decision
            tracking.log_pipeline_summary(parent_run_id, report=report, recipe=recipe, dataset=dataset,
                                           registration=result, base_model=base)
    except BaseException:
        if parent_run_id:
            tracking.finish_pipeline_run(parent_run_id, "FAILED")
        raise
    if parent_run_id:
        tracking.finish_pipeline_run(parent_run_id)
    print(f"registered {result['name']} version {result['version']}: {result['decision']} ({result['reason']})",
          flush=True)
    return json.dumps(result)
