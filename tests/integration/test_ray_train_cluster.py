"""`idap train --workers 2 --address` on the RayCluster-shaped local cluster (head + worker node on 127.0.0.1,
1 CPU each, as tests/integration/test_ray_cluster.py starts it), Ray Train's storage on (moto) S3."""

from __future__ import annotations

import json

import boto3
import pytest

from tests.integration.test_ray_cluster import cluster, edge_env  # noqa: F401 (the fixtures)


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
