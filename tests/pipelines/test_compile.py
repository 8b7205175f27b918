"""Every pipeline compiles to IR YAML, and the compress DAG has the steps, order and artifact types it should."""

import os
import subprocess
import sys

import pytest
import yaml

from components.services.artifacts import component_image
from pipelines.cli import PIPELINES, load_pipeline, main

COMPRESS_ORDER = ["prepare-data", "train-baseline", "score-divergence", "prune-filters", "prune-layers", "finetune",
                  "evaluate", "register-model"]
# (consumer, input) -> (producer, output, artifact type)
COMPRESS_EDGES = {
    ("train-baseline", "data"): ("prepare-data", "data", "system.Dataset"),
    ("score-divergence", "dense"): ("train-baseline", "dense", "system.Model"),
    ("prune-filters", "profile"): ("score-divergence", "profile", "system.Artifact"),
    ("prune-filters", "dense"): ("train-baseline", "dense", "system.Model"),
    ("prune-layers", "in_model"): ("prune-filters", "model", "system.Model"),
    ("prune-layers", "in_trajectory"): ("prune-filters", "trajectory", "system.Artifact"),
    ("finetune", "in_model"): ("prune-layers", "model", "system.Model"),
    ("finetune", "in_trajectory"): ("prune-layers", "trajectory", "system.Artifact"),
    ("evaluate", "model"): ("finetune", "model", "system.Model"),
    ("evaluate", "trajectory"): ("finetune", "trajectory", "system.Artifact"),
    ("evaluate", "profile"): ("score-divergence", "profile", "system.Artifact"),
    ("evaluate", "data"): ("prepare-data", "data", "system.Dataset"),
    ("register-model", "model"): ("finetune", "model", "system.Model"),
    ("register-model", "dense"): ("train-baseline", "dense", "system.Model"),
    ("register-model", "report_json"): ("evaluate", "report_json", "system.Artifact"),
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("ir")
    assert main(["pipeline", "compile", "--out", str(out)]) == 0
    # the pipeline spec is the first document; the second is the Kubernetes platform spec (test_platform.py)
    return {name: next(yaml.safe_load_all((out / f"{name}.yaml").read_text())) for name in PIPELINES}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipeline_compiles_with_the_project_image_and_no_installs(compiled, name):
    spec = compiled[name]
    assert spec["pipelineInfo"]["name"] == load_pipeline(name).name
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor["container"]
        assert container["image"] == component_image()
        assert "pip install" not in " ".join(container["command"])  # the image has everything
    for task in spec["root"]["dag"]["tasks"].values():
        assert not task.get("cachingOptions", {}).get("enableCache"), "steps log to MLflow: never cached"


def _artifact_type(spec, producer, output):
    component = spec["root"]["dag"]["tasks"][producer]["componentRef"]["name"]
    return spec["components"][component]["outputDefinitions"]["artifacts"][output]["artifactType"]["schemaTitle"]


def test_compress_dag_order_and_artifact_types(compiled):
    spec = compiled["compress"]
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(COMPRESS_ORDER)
    position = {name: i for i, name in enumerate(COMPRESS_ORDER)}
    for name, task in tasks.items():
        for upstream in task.get("dependentTasks", []):
            assert position[upstream] < position[name], f"{name} depends on later {upstream}"
    # each step waits for the one before it (the chain is linear)
    for before, after in zip(COMPRESS_ORDER, COMPRESS_ORDER[1:], strict=False):
        assert before in tasks[after]["dependentTasks"], f"{after} does not wait for {before}"
    for (consumer, key), (producer, output, kind) in COMPRESS_EDGES.items():
        ref = tasks[consumer]["inputs"]["artifacts"][key]["taskOutputArtifact"]
        assert (ref["producerTask"], ref["outputArtifactKey"]) == (producer, output), (consumer, key)
        assert _artifact_type(spec, producer, output) == kind, (producer, output)
    for name in COMPRESS_ORDER[1:]:  # the effective recipe and the MLflow parent run come from prepare-data
        params = tasks[name]["inputs"]["parameters"]
        for key in ("recipe_json", "parent_run_id"):
            assert params[key]["taskOutputParameter"] == {"outputParameterKey": key, "producerTask": "prepare-data"}
    assert _artifact_type(spec, "evaluate", "report") == "system.Markdown"
    assert _artifact_type(spec, "evaluate", "metrics") == "system.Metrics"
    assert _artifact_type(spec, "score-divergence", "profile_view") == "system.Markdown"


def test_compress_pipeline_parameters_and_outputs(compiled):
    spec = compiled["compress"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"model_name", "dataset", "data_root", "base_model_uri", "train_epochs", "max_accuracy_drop",
            "target_macs_reduction", "target_params_reduction", "recipe_json", "seed", "registered_name",
            "train_limit", "test_limit", "run_name"} <= set(params)
    assert params["model_name"]["defaultValue"] == "cnn_small" and params["dataset"]["defaultValue"] == "fashion-mnist"
    outputs = spec["root"]["dag"]["outputs"]
    assert outputs["artifacts"]["model"]["artifactSelectors"][0] == {"outputArtifactKey": "model",
                                                                      "producerSubtask": "finetune"}
    assert outputs["parameters"]["registration"]["valueFromParameter"]["producerSubtask"] == "register-model"


def test_image_is_chosen_at_compile_time(tmp_path):
    code = "from pipelines.compress import compress_pipeline; import kfp.compiler as c; c.Compiler().compile(compress_pipeline, 'p.yaml')"
    env = {**os.environ, "IDAP_IMAGE": "registry.example/idap:test"}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True)
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {"registry.example/idap:test"}
