"""`idap train --workers 2 --address` on the RayCluster-shaped local cluster (head + worker node on 127.0.0.1,
1 CPU each, as tests/integration/test_ray_cluster.py starts it), Ray Train's storage on (moto) S3."""

from __future__ import annotations

import json
import warnings

import boto3
import pytest

from tests.integration.test_ray_cluster import edge_env  # noqa: F401 (the fixture)


@pytest.mark.slow
@pytest.mark.integration
def test_idap_train_workers_2_runs_across_the_clusters_two_nodes(cluster, edge_env, moto_s3, capsys):  # noqa: F811
    """Two workers of 1 CPU on a cluster of two 1-CPU nodes: one on each node by construction. Rank 0's
    checkpoint goes to S3 and the driver reads the weights back from there."""
    from idap.bundle import load_bundle
    from pipelines.cli import main

    assert len(cluster.node_ids()) == 2
    out = edge_env / "dense"
    rc = main(["train", "--model", "cnn_small", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
               "--workers", "2", "--address", cluster.gcs, "--storage", f"s3://{moto_s3.bucket}/ray-train",
               "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert "data-parallel on 2 workers: train_on_rank" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["val_acc"] > 0 and load_bundle(out) is not None
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=moto_s3.bucket, Prefix="ray-train/").get("Contents", [])]
    assert any(k.endswith("model.safetensors") for k in keys), keys  # the checkpoint went through S3


@pytest.mark.slow
@pytest.mark.integration
def test_the_pipelines_finetune_step_runs_its_fine_tune_across_the_clusters_two_nodes(cluster, edge_env, capsys):  # noqa: F811
    """The compress pipeline's finetune step with workers=2 and ray_address = the cluster's GCS: its fine-tune is
    one Ray Train fit on the head and worker node; the step's outputs are those of a single-process step (a
    bundle of the same architecture, the run state's last record the fine-tune with every planned step)."""
    from kfp import dsl

    from components.finetune import finetune
    from components.services.artifacts import load_state, recipe_param, save_state
    from idap.bundle import load_bundle, save_bundle
    from idap.cli import train_dense
    from idap.data import load_dataset, save_splits
    from idap.prune.compress import start_run
    from idap.prune.config import Recipe
    from idap.prune.timing import StepCosts, plan_run

    recipe = Recipe.from_dict({"calibration_size": 128, "validation_size": 256, "eval_batch_size": 256, "device": "cpu",
                               "recovery": {"final_budget": 12, "batch_size": 64}})
    data = load_dataset("digits", seed=0, calibration_size=128, validation_size=256)
    with warnings.catch_warnings():  # a short-trained teacher ("near chance") is all this test needs
        warnings.simplefilter("ignore")
        dense, _ = train_dense("cnn_small", data, epochs=1, seed=0, device="cpu", progress=False, min_steps=20)
    shape = (data.in_channels, data.image_size, data.image_size)
    save_bundle(dense, edge_env / "dense", input_shape=shape)
    save_splits(data, edge_env / "data")
    ctx = start_run(dense, data, recipe)  # the state a prune-layers step hands on: planned, at the fine-tune
    ctx.state.plan = plan_run(recipe, StepCosts(0.01, 0.1, 0.1, 128), blocks=0).to_json()
    ctx.state.advance("finetune")
    save_state(edge_env / "in.json", ctx.state)
    finetune.python_func(
        data=dsl.Dataset(uri=str(edge_env / "data")), dense=dsl.Model(uri=str(edge_env / "dense")),
        in_model=dsl.Model(uri=str(edge_env / "dense")), in_trajectory=dsl.Artifact(uri=str(edge_env / "in.json")),
        recipe_json=recipe_param(recipe), parent_run_id="", model=dsl.Model(uri=str(edge_env / "final")),
        trajectory=dsl.Artifact(uri=str(edge_env / "out.json")), workers=2, ray_address=cluster.gcs)
    out = capsys.readouterr().out
    assert "data-parallel on 2 workers: recover_on_rank" in out, out[-3000:]
    last = load_state(edge_env / "out.json").trajectory[-1]
    assert last.action == "finetune" and last.recovery_steps == 12
    final = load_bundle(edge_env / "final")
    assert {k: v.shape for k, v in final.state_dict().items()} == {k: v.shape for k, v in dense.state_dict().items()}
