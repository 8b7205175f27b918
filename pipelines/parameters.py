"""The pipelines ``idap pipeline`` knows and their parameters: loading one by name, typed ``--param`` values and a
recipe file turned into its arguments, and a search space checked against the recipe before anything starts.
"""

import importlib

from components.services.artifacts import effective_recipe, recipe_param
from idap.prune.config import Recipe
from pipelines._cli_args import PipelineError

# Pipelines by name, imported on use so that a later one (a Ray Tune search) costs nothing until run.
PIPELINES = {"compress": "pipelines.compress:compress_pipeline", "tune": "pipelines.tune:tune_pipeline"}

RECIPE_OVERRIDES = ("seed", "max_accuracy_drop", "target_macs_reduction", "target_params_reduction")


# ---- pipelines and their parameters ------------------------------------------------------------
def load_pipeline(name: str):
    if name not in PIPELINES:
        raise PipelineError(f"unknown pipeline {name!r}; valid: {sorted(PIPELINES)}")
    module, attr = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def pipeline_parameters(pipeline) -> dict[str, tuple[str, object]]:
    """``{name: (type, default)}`` of a pipeline's parameters (type: String, Integer, Float, Boolean)."""
    return {name: (spec.type, spec.default) for name, spec in pipeline.component_spec.inputs.items()}


def _typed(name: str, kind: str, raw: str):
    try:
        if kind == "Integer":
            return int(raw)
        if kind == "Float":
            return float(raw)
        if kind == "Boolean":
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise PipelineError(f"parameter {name} must be {kind.lower()}, got {raw!r}") from None
    return raw


def pipeline_arguments(pipeline, params: list[str], recipe_file: str | None) -> dict:
    """``--param k=v`` (typed by the pipeline's signature) and ``--recipe FILE``, checked before anything runs."""
    spec = pipeline_parameters(pipeline)
    arguments: dict = {}
    for item in params:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise PipelineError(f"--param {item!r} must look like name=value")
        if key not in spec:
            raise PipelineError(f"unknown parameter {key!r} for pipeline {pipeline.name}; valid: {sorted(spec)}")
        arguments[key] = _typed(key, spec[key][0], raw)
    if recipe_file:
        if "recipe_json" in arguments:
            raise PipelineError("give the recipe either as --recipe FILE or as --param recipe_json=..., not both")
        arguments["recipe_json"] = recipe_param(Recipe.from_yaml(recipe_file))
    if "recipe_json" in spec:  # fail here, not three steps into a run, on a bad recipe or override
        values = {k: arguments.get(k, spec[k][1]) for k in spec}
        overrides = {k: values[k] for k in RECIPE_OVERRIDES if values.get(k) is not None}
        recipe = effective_recipe(values["recipe_json"] or "", **overrides, time_budget=values.get("time_budget") or "")
        if "search_space" in spec:
            check_search_space(values, recipe)
    return arguments


def check_search_space(values: dict, recipe: Recipe) -> None:
    """The tune pipeline's search space against its recipe, as its search step will read them (``idap tune``
    checks the same way): a bad space fails before any step, MLflow run or Ray starts."""
    from components.services.search_space import SearchSpace

    space = SearchSpace.load(values.get("search_space") or "").with_settings(
        objective=values.get("objective") or None, reduction=values.get("reduction") or None,
        num_samples=values.get("num_samples") or None)
    space.validate(recipe)

