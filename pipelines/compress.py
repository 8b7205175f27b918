"""The IDAP++ compression pipeline: data -> baseline -> score -> filters -> layers -> finetune -> evaluate -> register.

The part after the baseline (:func:`compress_tail`) takes task outputs, so another pipeline (a Ray Tune
search that picks the recipe) feeds its winner into the same compress -> evaluate -> register path.

Every task gets the Kubernetes platform config of its kind (``pipelines._platform.configure``: env from
the cluster's ConfigMaps and Secrets, resources, GPUs when ``gpus`` > 0 on the training and recovery steps,
retries, caching off); the local runner ignores it. (No ``from __future__ import annotations`` here: KFP
reads the annotations as types.)
"""

from dataclasses import dataclass
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Model

from components.evaluate import evaluate
from components.finetune import finetune
from components.prepare_data import prepare_data
from components.prune_filters import prune_filters
from components.prune_layers import prune_layers
from components.register_model import register_model
from components.score_divergence import score_divergence
from components.train_baseline import train_baseline
from pipelines._platform import configure


def _step(task: dsl.PipelineTask, name: str, gpus=0) -> dsl.PipelineTask:
    return configure(task.set_display_name(name), name, gpus=gpus)


@dataclass
class CompressTail:
    """The tasks of the compress -> evaluate -> register path, for wiring outputs further."""

    score: dsl.PipelineTask
    filters: dsl.PipelineTask
    layers: dsl.PipelineTask
    finetune: dsl.PipelineTask
    evaluate: dsl.PipelineTask
    register: dsl.PipelineTask


def compress_tail(*, data, dense, recipe_json, parent_run_id, registered_name, base_model, measure_latency=True,
                  promote_objective="latency", promote_tolerance_pp=0.1, gpus=0, workers=1, ray_address="",
                  ray_storage="") -> CompressTail:
    """Add the score -> filters -> layers -> finetune -> evaluate -> register tasks to the current pipeline.

    Args:
        data: a ``system.Dataset`` output (``save_splits`` directory).
        dense: a ``system.Model`` output (the dense baseline bundle).
        recipe_json, parent_run_id: string outputs or pipeline parameters (the recipe to run, the MLflow
            parent run the steps log into).
        base_model: where the dense model came from, for lineage ("" = what the dense bundle records).
        gpus: GPUs for the recovery steps (filters, layers, finetune): an int or a pipeline parameter.
        workers, ray_address, ray_storage: the final fine-tune on Ray Train (``components.finetune``).
    """
    common = {"recipe_json": recipe_json, "parent_run_id": parent_run_id}
    score = _step(score_divergence(data=data, dense=dense, **common), "score-divergence")
    filters = _step(prune_filters(data=data, dense=dense, profile=score.outputs["profile"], **common), "prune-filters",
                    gpus)
    layers = _step(prune_layers(data=data, dense=dense, in_model=filters.outputs["model"],
                                in_trajectory=filters.outputs["trajectory"], **common), "prune-layers", gpus)
    tuned = _step(finetune(data=data, dense=dense, in_model=layers.outputs["model"],
                           in_trajectory=layers.outputs["trajectory"], workers=workers, ray_address=ray_address,
                           ray_storage=ray_storage, **common), "finetune", gpus)
    report = _step(evaluate(data=data, dense=dense, model=tuned.outputs["model"], trajectory=tuned.outputs["trajectory"],
                            profile=score.outputs["profile"], measure_latency=measure_latency, **common), "evaluate")
    register = _step(register_model(model=tuned.outputs["model"], dense=dense, report_json=report.outputs["report_json"],
                                     data=data, registered_name=registered_name, base_model=base_model,
                                     objective=promote_objective, tolerance_pp=promote_tolerance_pp, **common),
                     "register-model")
    return CompressTail(score, filters, layers, tuned, report, register)


class CompressOutputs(NamedTuple):
    model: Model  # the compressed bundle
    report: Markdown  # report.md with its plots embedded
    registration: str  # JSON: name, version, champion_version, promoted, reason


@dsl.pipeline(name="idap-compress", description="IDAP++ divergence-based structured pruning of a dense model, "
              "tracked in MLflow and registered with a promotion rule")
def compress_pipeline(
    model_name: str = "cnn_small",
    dataset: str = "fashion-mnist",
    data_root: str = "",
    base_model_uri: str = "",
    train_epochs: float = 2.0,
    max_accuracy_drop: float = -1.0,
    target_macs_reduction: float = -1.0,
    target_params_reduction: float = -1.0,
    recipe_json: str = "",
    seed: int = -1,
    registered_name: str = "",
    train_limit: int = 0,
    test_limit: int = 0,
    run_name: str = "",
    measure_latency: bool = True,
    promote_objective: str = "latency",
    promote_tolerance_pp: float = 0.1,
    gpus: int = 0,
    time_budget: str = "",
    workers: int = 1,
    ray_address: str = "",
    ray_storage: str = "",
) -> CompressOutputs:
    """Compress ``model_name`` on ``dataset`` with IDAP++ and register the result.

    Args:
        model_name: a registered architecture (``idap.list_models()``), trained for ``train_epochs`` unless
            ``base_model_uri`` (a bundle directory, an s3:// URI or ``models:/NAME/VERSION|@ALIAS``) gives
            the dense baseline.
        dataset: a builtin dataset, a path or an s3:// URI (.npz, an image folder or archive, class folders of
            .txt for a text bundle), or a dataset spec (.yaml / .json, local or s3://, whose ``source`` may be
            on s3://): image folders stream between the steps as a reference, never as pixels.
        recipe_json: the recipe as JSON ("" = defaults). ``seed``, ``max_accuracy_drop`` and the targets
            override its fields; a negative value keeps the recipe's, a target of 0 means none.
        registered_name: MLflow registered model ("" = idap-<model_name>-<dataset>).
        train_limit, test_limit: subsample the train / test splits (0 = all).
        gpus: GPUs for each training and recovery step on a cluster (0 = CPU only; the local runner ignores it).
        time_budget: wall time for the compression steps, e.g. "20m" (``recovery.time_budget``: the recovery
            budgets are sized to fit from the step times measured on the cluster's machine); "" = the recipe's.
        workers: data-parallel Ray Train workers for the final fine-tune (1 = in the step's process);
            ray_address: their Ray cluster ("" = a local Ray in the step; on Kubeflow the RayCluster's GCS
            address, e.g. idap-ray-head-svc:6379); ray_storage: Ray Train's checkpoint storage, an s3:// prefix
            when the workers are other machines ("" = a local temporary directory).
    """
    prep = _step(prepare_data(dataset=dataset, data_root=data_root, recipe_json=recipe_json, seed=seed,
                              max_accuracy_drop=max_accuracy_drop, target_macs_reduction=target_macs_reduction,
                              target_params_reduction=target_params_reduction, train_limit=train_limit,
                              test_limit=test_limit, run_name=run_name, time_budget=time_budget), "prepare-data")
    recipe, parent = prep.outputs["recipe_json"], prep.outputs["parent_run_id"]
    base = _step(train_baseline(data=prep.outputs["data"], model_name=model_name, epochs=train_epochs,
                                base_model_uri=base_model_uri, recipe_json=recipe, parent_run_id=parent),
                 "train-baseline", gpus)
    tail = compress_tail(data=prep.outputs["data"], dense=base.outputs["dense"], recipe_json=recipe,
                         parent_run_id=parent, registered_name=registered_name, base_model=base_model_uri,
                         measure_latency=measure_latency, promote_objective=promote_objective,
                         promote_tolerance_pp=promote_tolerance_pp, gpus=gpus, workers=workers,
                         ray_address=ray_address, ray_storage=ray_storage)
    return CompressOutputs(model=tail.finetune.outputs["model"], report=tail.evaluate.outputs["report"],
                           registration=tail.register.output)
