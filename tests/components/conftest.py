"""The pipeline's steps called in order through ``.python_func`` on temporary artifacts: digits, cnn_small,
a tiny recipe, MLflow in a sqlite file under the test's work directory. Runs once for the package."""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kfp import dsl

TINY_RECIPE = {
    "calibration_size": 128, "validation_size": 256, "eval_batch_size": 256, "device": "cpu", "max_accuracy_drop": 5.0,
    "filter": {"steps": 2, "p0": 0.05},  # per-MAC ranking cuts MAC-heavy channels first: 0.2 collapses cnn_small
    "recovery": {"step_budget": 10, "final_budget": 10, "batch_size": 64},
}
TRAIN_EPOCHS = 10.0


@dataclass
class Chain:
    """Every step's outputs, by step name, as the artifact objects the steps wrote into."""

    root: Path
    recipe_json: str = ""
    parent_run_id: str = ""
    out: dict = field(default_factory=dict)

    def artifact(self, cls, name: str):
        return cls(name=name, uri=str(self.root / name))


@pytest.fixture(scope="package")
def tracking_env(tmp_path_factory):
    """IDAP_WORKDIR and a sqlite MLflow store private to this package's tests."""
    work = tmp_path_factory.mktemp("components-work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IDAP_WORKDIR", str(work))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        mp.setenv("IDAP_EXPERIMENT", "idap-component-tests")
        yield work


def run_chain(root: Path, recipe_json: str, **prepare_overrides) -> Chain:
    from components.evaluate import evaluate
    from components.finetune import finetune
    from components.prepare_data import prepare_data
    from components.prune_filters import prune_filters
    from components.prune_layers import prune_layers
    from components.register_model import register_model
    from components.score_divergence import score_divergence
    from components.train_baseline import train_baseline

    c = Chain(root)
    o = c.out
    o["data"] = c.artifact(dsl.Dataset, "data")
    prepare = {"dataset": "digits", "data_root": "", "recipe_json": recipe_json, "seed": -1, "max_accuracy_drop": -1.0,
               "target_macs_reduction": -1.0, "target_params_reduction": -1.0, "train_limit": 0, "test_limit": 0,
               "run_name": "component-tests", **prepare_overrides}
    prepared = prepare_data.python_func(data=o["data"], **prepare)
    c.recipe_json, c.parent_run_id = prepared.recipe_json, prepared.parent_run_id
    common = {"recipe_json": c.recipe_json, "parent_run_id": c.parent_run_id}

    o["dense"], o["baseline_metrics"] = c.artifact(dsl.Model, "dense"), c.artifact(dsl.Metrics, "baseline_metrics")
    train_baseline.python_func(data=o["data"], model_name="cnn_small", epochs=TRAIN_EPOCHS, base_model_uri="",
                               dense=o["dense"], metrics=o["baseline_metrics"], **common)
    o["profile"], o["profile_view"] = c.artifact(dsl.Artifact, "profile.json"), c.artifact(dsl.Markdown, "profile.md")
    score_divergence.python_func(data=o["data"], dense=o["dense"], profile=o["profile"], profile_view=o["profile_view"],
                                 **common)
    o["filters"], o["filters_trajectory"] = c.artifact(dsl.Model, "filters"), c.artifact(dsl.Artifact, "filters.json")
    prune_filters.python_func(data=o["data"], dense=o["dense"], profile=o["profile"], model=o["filters"],
                              trajectory=o["filters_trajectory"], **common)
    o["layers"], o["layers_trajectory"] = c.artifact(dsl.Model, "layers"), c.artifact(dsl.Artifact, "layers.json")
    prune_layers.python_func(data=o["data"], dense=o["dense"], in_model=o["filters"],
                             in_trajectory=o["filters_trajectory"], model=o["layers"],
                             trajectory=o["layers_trajectory"], **common)
    o["final"], o["final_trajectory"] = c.artifact(dsl.Model, "final"), c.artifact(dsl.Artifact, "final.json")
    finetune.python_func(data=o["data"], dense=o["dense"], in_model=o["layers"], in_trajectory=o["layers_trajectory"],
                         model=o["final"], trajectory=o["final_trajectory"], **common)
    o["metrics"], o["report"] = c.artifact(dsl.Metrics, "metrics"), c.artifact(dsl.Markdown, "report.md")
    o["report_json"] = c.artifact(dsl.Artifact, "report.json")
    evaluate.python_func(data=o["data"], dense=o["dense"], model=o["final"], trajectory=o["final_trajectory"],
                         profile=o["profile"], measure_latency=False, metrics=o["metrics"], report=o["report"],
                         report_json=o["report_json"], **common)
    o["registration"] = json.loads(register_model.python_func(
        model=o["final"], dense=o["dense"], report_json=o["report_json"], data=o["data"], registered_name="",
        base_model="", objective="latency", tolerance_pp=0.1, **common))
    return c


@pytest.fixture(scope="package")
def chain(tracking_env, tmp_path_factory) -> Chain:
    """All eight steps, in pipeline order, once."""
    root = tmp_path_factory.mktemp("chain")
    return run_chain(root, json.dumps(TINY_RECIPE))


@pytest.fixture
def mlflow_client(tracking_env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
