"""register_model: a registered version with lineage, the promotion decision, the parent run closed."""

import pytest

from components.services.artifacts import read_json, recipe_from_json


@pytest.mark.outcome
def test_version_registered_and_first_one_is_champion(chain, mlflow_client, margin):
    reg = chain.out["registration"]
    drop = read_json(chain.out["report_json"].path)["ratios"]["val_acc_drop_pp"]
    margin("final val acc drop (pp), within the 5 pp budget a champion needs", drop, 5.0, above=False)
    assert reg["name"] == "idap-cnn_small-digits"
    mv = mlflow_client.get_model_version(reg["name"], reg["version"])
    assert reg["decision"] == "champion" and "champion" in mv.aliases
    assert mv.tags["idap.recipe_digest"] == recipe_from_json(chain.recipe_json).digest()
    assert mv.tags["idap.pipeline_run_id"] == chain.parent_run_id
    assert "trained by the pipeline" in mv.tags["idap.base_model"]
    report = read_json(chain.out["report_json"].path)
    assert float(mv.tags["idap.test_acc"]) == report["compressed"]["test_acc"]


def test_parent_run_is_finished(chain, mlflow_client):
    assert mlflow_client.get_run(chain.parent_run_id).info.status == "FINISHED"


def test_parent_run_holds_the_summary_and_the_version_a_description(chain, mlflow_client):
    """What a user opens first: the pipeline's parent run and the registered version say what the run did."""
    reg = chain.out["registration"]
    report = read_json(chain.out["report_json"].path)
    parent = mlflow_client.get_run(chain.parent_run_id)
    assert parent.data.metrics["compressed_test_acc"] == report["compressed"]["test_acc"]
    assert parent.data.metrics["macs_reduction"] == report["ratios"]["macs_reduction"]
    assert parent.data.params["recipe.max_accuracy_drop"] == "5.0" and parent.data.params["dataset"] == "digits"
    assert parent.data.params["model"] == "cnn_small"
    assert parent.data.tags["idap.registered_version"] == reg["version"]
    assert parent.data.tags["idap.promotion"] == reg["decision"] == "champion"
    assert "Registered as `idap-cnn_small-digits`" in parent.data.tags["mlflow.note.content"]
    children = mlflow_client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                         order_by=["attributes.run_name ASC"])
    assert [r.info.run_name for r in children] == [
        "01 prepare_data", "02 train_baseline", "03 score_divergence", "04 prune_filters", "05 prune_layers",
        "06 finetune", "07 evaluate", "08 register"]
    description = mlflow_client.get_model_version(reg["name"], reg["version"]).description
    assert "IDAP++ compression of **cnn_small** on **digits**" in description
    assert "Decision: **champion** — there is no champion yet" in description
    assert recipe_from_json(chain.recipe_json).digest() in description
