"""Pipeline step 1: settle the recipe, load and split the dataset, open the MLflow parent run."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.services.artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def prepare_data(
    dataset: str,
    data_root: str,
    recipe_json: str,
    seed: int,
    max_accuracy_drop: float,
    target_macs_reduction: float,
    target_params_reduction: float,
    train_limit: int,
    test_limit: int,
    run_name: str,
    data: Output[Dataset],
    time_budget: str = "",
) -> NamedTuple("PreparedData", [("recipe_json", str), ("parent_run_id", str)]):
    """Split ``dataset`` (a builtin name, a path, an s3:// URI or a dataset spec) with the recipe's seed and sizes.

    Small datasets travel to the later steps as tensors; a streamed one (a spec) as a reference to its files
    and their split assignments (``idap.data.sources.save_splits``), never as pixels.

    The explicit parameters override ``recipe_json`` (negative = keep the recipe's value, a target of 0 =
    no target; ``time_budget`` "20m" sets ``recovery.time_budget``, "" keeps the recipe's); every later step
    receives the resulting recipe, so the whole run uses one recipe.
    """
    from collections import namedtuple

    from components.services import artifacts, mlflow_backend, sources, tracking
    from idap.data import load_dataset, save_splits

    settings = mlflow_backend.configure()
    recipe = artifacts.effective_recipe(recipe_json, seed=seed, max_accuracy_drop=max_accuracy_drop,
                                         target_macs_reduction=target_macs_reduction,
                                         target_params_reduction=target_params_reduction, time_budget=time_budget)
    source = sources.resolve_dataset(dataset, settings.workdir)  # s3:// data and s3:// spec sources, fetched
    parent = tracking.start_pipeline_run(run_name or f"idap-compress {dataset}",
                                          tags={"idap.dataset": dataset, "idap.recipe_digest": recipe.digest()})
    params = {"dataset": dataset, "train_limit": train_limit, "test_limit": test_limit}
    with tracking.step_run(parent, "prepare_data", params=params) as t:
        splits = load_dataset(source, root=data_root or None, seed=recipe.seed,
                              calibration_size=recipe.calibration_size, validation_size=recipe.validation_size,
                              train_limit=train_limit or None, test_limit=test_limit or None)
        save_splits(splits, data.path)
        data.metadata.update({"source": dataset, **splits.describe()})
        t.log_recipe(recipe)
        t.log_dataset(splits.describe())
        print(f"data: {splits.name} {splits.describe()['sizes']} -> {data.path}", flush=True)
    outputs = namedtuple("PreparedData", ["recipe_json", "parent_run_id"])
    return outputs(artifacts.recipe_param(recipe), parent)
