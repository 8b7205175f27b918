"""register_model: a registered version with lineage, the promotion decision, the parent run closed."""

from components._artifacts import read_json, recipe_from_json


def test_version_registered_and_first_one_is_champion(chain, mlflow_client):
    reg = chain.out["registration"]
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
