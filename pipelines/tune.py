"""The tune pipeline: data -> baseline -> Ray Tune search -> compress with the winner -> evaluate -> register.

The search step (``components.search_compression``) runs Ray Tune over a search space around the recipe
and hands its winning recipe (chosen on validation) to the compress pipeline's own tail
(:func:`pipelines.compress.compress_tail`): the same score -> filters -> layers -> finetune -> evaluate ->
register path, and the same promotion rule. The pipeline's MLflow run is the search run: the trials are its
nested runs, and the registered version's lineage tag points at it. (No ``from __future__ import
annotations`` here: KFP reads the annotations as types.)
"""

import json
from pathlib import Path
from typing import NamedTuple

import yaml
from kfp import dsl
from kfp.dsl import Markdown, Model

from components.prepare_data import prepare_data
from components.search_compression import search_compression
from components.train_baseline import train_baseline
from pipelines._platform import configure
from pipelines.compress import compress_tail

# The default search space, baked into the compiled pipeline as the parameter's default (the image holds no
# recipes/): the Kubeflow UI shows it, and a run can replace it with its own YAML or JSON text. One line of
# JSON: kfp writes parameter defaults into a comment header, where a multi-line string breaks the YAML.
_DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "recipes" / "search" / "default.yaml"
DEFAULT_SEARCH_SPACE = json.dumps(yaml.safe_load(_DEFAULT_SPACE.read_text())) if _DEFAULT_SPACE.is_file() else ""


def _step(task: dsl.PipelineTask, name: str, kind: str | None = None) -> dsl.PipelineTask:
    return configure(task.set_display_name(name), kind or name)


class TuneOutputs(NamedTuple):
    model: Model  # the compressed bundle, made with the winning recipe
    report: Markdown  # its compression report
    search_report: Markdown  # the search: trials, Pareto front and plot, winner vs default
    registration: str  # JSON: name, version, decision, reason...


@dsl.pipeline(name="idap-tune", description="Search IDAP++ compression settings with Ray Tune, compress with the "
              "winner, register it and promote it by rule")
def tune_pipeline(
    model_name: str = "cnn_small",
    dataset: str = "fashion-mnist",
    data_root: str = "",
    base_model_uri: str = "",
    train_epochs: float = 2.0,
    max_accuracy_drop: float = -1.0,
    recipe_json: str = "",
    search_space: str = DEFAULT_SEARCH_SPACE,
    objective: str = "",
    reduction: str = "",
    num_samples: int = 0,
    cpus_per_trial: int = 1,
    ray_address: str = "",
    search_job_timeout_s: int = 86400,
    search_seed: int = 0,
    seed: int = -1,
    registered_name: str = "",
    train_limit: int = 0,
    test_limit: int = 0,
    run_name: str = "",
    measure_latency: bool = True,
    promote_objective: str = "latency",
    promote_tolerance_pp: float = 0.1,
) -> TuneOutputs:
    """Search around ``recipe_json`` for ``model_name`` on ``dataset``, then compress and register the winner.

    Args:
        search_space: the space as YAML text (default: recipes/search/default.yaml's); ``objective``,
            ``reduction`` ("" = the space's) and ``num_samples`` (0 = the space's) override it.
        max_accuracy_drop: the budget Δ (negative = the recipe's); the search's constraint unless the space
            sets ``budget_pp``.
        ray_address: "" = a local Ray inside the search step; ``http://idap-ray-head-svc:8265`` = submit the
            search as a Ray job to the RayCluster (inputs and results through S3, the job stopped after
            ``search_job_timeout_s``); ``ray://idap-ray-head-svc:10001`` = the step drives the cluster's trials.
        Others as in the compress pipeline.
    """
    prep = _step(prepare_data(dataset=dataset, data_root=data_root, recipe_json=recipe_json, seed=seed,
                              max_accuracy_drop=max_accuracy_drop, target_macs_reduction=-1.0,
                              target_params_reduction=-1.0, train_limit=train_limit, test_limit=test_limit,
                              run_name=run_name), "prepare-data")
    recipe, parent = prep.outputs["recipe_json"], prep.outputs["parent_run_id"]
    base = _step(train_baseline(data=prep.outputs["data"], model_name=model_name, epochs=train_epochs,
                                base_model_uri=base_model_uri, recipe_json=recipe, parent_run_id=parent),
                 "train-baseline")
    search = _step(search_compression(data=prep.outputs["data"], dense=base.outputs["dense"], recipe_json=recipe,
                                      parent_run_id=parent, search_space=search_space, objective=objective,
                                      reduction=reduction, num_samples=num_samples, cpus_per_trial=cpus_per_trial,
                                      ray_address=ray_address, seed=search_seed, measure_latency=measure_latency,
                                      job_timeout_s=search_job_timeout_s),
                   "search-compression", "search")
    tail = compress_tail(data=prep.outputs["data"], dense=base.outputs["dense"],
                         recipe_json=search.outputs["recipe_json"], parent_run_id=parent,
                         registered_name=registered_name, base_model=base_model_uri,
                         measure_latency=measure_latency, promote_objective=promote_objective,
                         promote_tolerance_pp=promote_tolerance_pp)
    return TuneOutputs(model=tail.finetune.outputs["model"], report=tail.evaluate.outputs["report"],
                       search_report=search.outputs["report"], registration=tail.register.output)
