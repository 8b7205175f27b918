"""Pipeline step 3 of the tune pipeline: a Ray Tune search over recipe settings; its winner goes on to compress."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.services.artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def search_compression(
    data: Input[Dataset],
    dense: Input[Model],
    recipe_json: str,
    parent_run_id: str,
    search_space: str,
    objective: str,
    reduction: str,
    num_samples: int,
    cpus_per_trial: int,
    ray_address: str,
    seed: int,
    measure_latency: bool,
    report: Output[Markdown],
    pareto: Output[Artifact],
    best_recipe: Output[Artifact],
    job_timeout_s: int = 86400,
) -> NamedTuple("SearchOutputs", [("recipe_json", str), ("winner", str)]):
    """Search ``search_space`` (YAML text or a path; "" = recipes/search/default.yaml) around the recipe.

    The pipeline's MLflow run is the search run: every trial is a nested run of it, and so are the compress
    steps that follow, so the registered model's lineage points at the search. ``objective`` / ``reduction``
    "" and ``num_samples`` 0 keep the space file's. ``ray_address``: "" = a local Ray inside this step;
    ``host:port`` / ``ray://`` = this step drives trials on that cluster; ``http://host:8265`` (the Jobs API) =
    the whole search runs as a Ray job on the cluster (components/services/ray_job: inputs and results through
    S3, at most ``job_timeout_s``). A retried local search resumes from its experiment directory.

    Returns:
        The winning recipe as JSON (the base recipe when no trial kept the budget) and the winner as JSON.
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from components.services import artifacts, mlflow_backend, ray_job, tune
    from components.services.search_space import SearchSpace
    from idap.bundle import load_bundle
    from idap.data import load_splits

    settings = mlflow_backend.configure()
    base = artifacts.recipe_from_json(recipe_json)
    space = SearchSpace.load(search_space).with_settings(
        objective=objective or None, reduction=reduction or None, num_samples=num_samples or None)
    exp_dir = settings.workdir / "tune" / (parent_run_id or "search")
    sources = {"dataset": data.uri, "model_dir": dense.uri}
    if ray_address.startswith(("http://", "https://")):  # the Jobs API: the search runs on the cluster
        result = ray_job.submit_search(
            ray_address, data=Path(data.path), dense=Path(dense.path), base=base, space=space,
            out_dir=exp_dir / "results", search_run_id=parent_run_id or None, sources=sources,
            cpus_per_trial=cpus_per_trial, seed=seed, measure_latency=measure_latency, timeout_s=job_timeout_s)
    else:
        result = tune.run_search(
            data=load_splits(data.path), dense=load_bundle(dense.path), base=base, space=space,
            experiment_dir=exp_dir, resume="auto", search_run_id=parent_run_id or None,
            address=ray_address or None, cpus_per_trial=cpus_per_trial, seed=seed,
            measure_latency=measure_latency, sources=sources)
    files = result.files
    Path(report.path).write_text(artifacts.embed_images(files["markdown"].read_text(), files["markdown"].parent))
    shutil.copyfile(files["json"], pareto.path)
    shutil.copyfile(files["best_recipe"], best_recipe.path)
    winner = result.winner or {}
    report.metadata.update({"winner": winner.get("trial_id", "none"), "front": len(result.front)})
    print(f"search: {result.summary['trials']} -> winner {winner.get('trial_id', 'none (base recipe)')}", flush=True)
    outputs = namedtuple("SearchOutputs", ["recipe_json", "winner"])
    return outputs(artifacts.recipe_param(result.winner_recipe), json.dumps(winner, default=str))
