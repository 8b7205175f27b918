"""Ray Train at the edge (components/services/ray_train.py): idap's training on 2 workers of 1 CPU, real local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from components.services import ray_connect
from components.services.ray_train import RayTrainExecutor
from idap.prune import parallel
from idap.prune.recovery import train, train_on_rank
from tests.idap.factories import tiny_net

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_two_cpus():
    """One local Ray of 2 CPUs for the module; its workers import this repository's tests package too."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)
    owned = ray_connect.start_ray(num_cpus=2)
    yield
    if owned:
        ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _separable(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes that differ in the sign of the image's mean: learnable in a few dozen steps."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 1, 8, 8, generator=gen) + (y.float() * 2 - 1).view(-1, 1, 1, 1)
    return x, y


def _loss(model, x, y) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


def _dies_once(payload: dict):
    """Rank 1's first attempt dies after the process group is up (rank 0 is then waiting in DDP's all-reduce);
    the marker file makes the restarted attempt run through."""
    marker = Path(payload.pop("marker"))
    if torch.distributed.get_rank() == 1 and not marker.exists():
        marker.write_text("killed")
        os._exit(1)
    return train_on_rank(payload)


@pytest.mark.slow
@pytest.mark.outcome
def test_two_worker_fine_tune_through_ray_train_returns_the_model_trained(ray_two_cpus, margin):
    x, y = _separable()
    model = tiny_net(2, 1, 8)
    before = _loss(model, x, y)
    keys = {k: v.shape for k, v in model.state_dict().items()}
    with RayTrainExecutor(workers=2, min_steps=1) as executor, parallel.use_executor(executor):
        train(model, x, y, epochs=6, batch_size=32, lr=0.05, seed=0, device=torch.device("cpu"), augment=False)
    assert [c["fn"] for c in executor.calls] == ["train_on_rank"]  # handed to Ray Train, once
    assert {k: v.shape for k, v in model.state_dict().items()} == keys  # the same architecture, plain BatchNorm
    assert isinstance(model[1], torch.nn.BatchNorm2d) and not isinstance(model[1], torch.nn.SyncBatchNorm)
    assert model[1].num_batches_tracked.item() == 6 * 256 // 32  # every optimizer step ran on the worker
    after = _loss(model, x, y)
    assert margin("training cross-entropy after / before", after / before, 0.5, above=False) < 0.5


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_survived_through_failure_config(ray_two_cpus, tmp_path):
    x, y = _separable(64)
    model = tiny_net(2, 1, 8)
    payload = dict(model=model, x=x, y=y, epochs=1, batch_size=32, lr=0.05, weight_decay=5e-4, seed=0,
                   augment=False, device="cpu", marker=str(tmp_path / "killed"))
    executor = RayTrainExecutor(workers=2, max_failures=1, storage=str(tmp_path / "runs"))
    with executor:
        state, meta = executor.run(_dies_once, payload)
    # rank 1 of the first attempt died before it trained: a result exists only because the group was restarted
    assert (tmp_path / "killed").read_text() == "killed"
    assert set(state) == set(model.state_dict()) and float(meta["final_loss"]) > 0
    assert any((tmp_path / "runs").rglob("model.safetensors"))  # the checkpoint went to the run's storage


@pytest.mark.slow
def test_idap_train_workers_2_trains_on_ray_train_and_saves_the_bundle(ray_two_cpus, tmp_path, capsys):
    import json

    from idap.bundle import load_bundle
    from pipelines.cli import main

    out = tmp_path / "dense"
    rc = main(["train", "--model", "cnn_small", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
               "--workers", "2", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "data-parallel on 2 workers: train_on_rank" in captured.err  # the training ran on Ray Train
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    assert metrics["val_acc"] > 0 and load_bundle(out) is not None


def test_address_without_workers_is_refused_before_anything_starts(tmp_path, capsys):
    from pipelines.cli import main

    rc = main(["train", "--model", "cnn_small", "--dataset", "digits", "--address", "127.0.0.1:1",
               "--out", str(tmp_path / "x")])
    assert rc == 2 and "--address and --storage need --workers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_idap_tunes_own_address_is_not_read_as_the_workers():
    """idap tune has an --address of its own (the trials' cluster): it must pass the workers' check (it was refused
    as '--address ... need --workers' when both flags shared a name)."""
    from pipelines.cli import build_parser
    from pipelines.parallel_cli import data_parallel

    args = build_parser().parse_args(["tune", "--model-dir", "m", "--dataset", "digits", "--address", "127.0.0.1:1"])
    assert args.address == "127.0.0.1:1"
    with data_parallel(args) as executor:
        assert executor is None
