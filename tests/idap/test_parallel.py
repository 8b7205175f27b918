"""Data-parallel recovery, training and scoring on torch.distributed (idap.prune.parallel): no Ray here.

Two ranks are real processes (torch.multiprocessing, gloo on 127.0.0.1) and are compared with one process.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from idap.prune import parallel
from idap.prune.config import RecoveryConfig
from idap.prune.divergence import flow_profile
from idap.prune.recovery import _Batches, recover, train


def _net(seed: int = 0) -> nn.Module:
    """Conv-ReLU, a shape-preserving block, pool, linear; no batch norm (so 2 ranks equal 1 process exactly)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3),
    )


def _data(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


CONFIG = RecoveryConfig(batch_size=16, lr=1e-2, lambda_feat=0.5, lambda_kd=1.0, augment=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


JOBS = ("scores", "recover", "train")


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for job in JOBS:
            _job(rank, job, f"{out}/{job}")
    finally:
        dist.destroy_process_group()


def _job(rank: int, job: str, out: str) -> None:
    x, y = _data()
    if job == "scores":
        profile = flow_profile(_net(), x[:37], blocks=["2"], batch_size=8)  # 37: uneven split, ragged batches
        result = profile.to_json()
    elif job == "recover":
        student, teacher = _net(0), _net(5)
        stats = recover(student, teacher, x, y, steps=6, config=CONFIG, seed=3, device=torch.device("cpu"))
        result = {"loss": stats.final_loss, "state": {k: v.tolist() for k, v in student.state_dict().items()}}
    else:
        model = _net(0)
        loss = train(model, x, y, epochs=1, batch_size=16, lr=0.05, seed=3, device=torch.device("cpu"))
        result = {"loss": loss, "state": {k: v.tolist() for k, v in model.state_dict().items()}}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every job of :data:`JOBS` run once by two gloo ranks (one spawn: each process pays torch's import)."""
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(_free_port(), str(out)), nprocs=2, join=True)
    return {job: [json.loads((out / f"{job}.{r}").read_text()) for r in range(2)] for job in JOBS}


def test_each_epoch_every_sample_is_seen_once_across_two_ranks_and_the_global_batch_is_the_single_process_one():
    x, y = torch.zeros(48, 1, 4, 4), torch.arange(48)
    single = _Batches(x, y, 16, seed=7, device=torch.device("cpu"), augment=False)
    ranks = [_Batches(x, y, 16, seed=7, device=torch.device("cpu"), augment=False) for _ in range(2)]
    for r, b in enumerate(ranks):
        b.rank, b.world = r, 2
    for _epoch in range(2):
        seen = []
        for _ in range(3):  # 48 / 16 batches per epoch
            _, whole = single.next()
            parts = [b.next()[1] for b in ranks]
            assert len(parts[0]) == len(parts[1]) == 8
            assert not set(parts[0].tolist()) & set(parts[1].tolist())  # disjoint
            assert torch.equal(torch.cat(parts), whole)  # the single process's global batch, in its order
            seen += torch.cat(parts).tolist()
        assert sorted(seen) == list(range(48))  # every sample exactly once this epoch


def test_shard_helpers_refuse_an_uneven_batch_and_split_samples_evenly():
    with pytest.raises(ValueError, match="multiple of the worker count"):
        parallel.shard(torch.arange(10), 0, 3)
    assert [parallel.sample_range(37, r, 2) for r in range(2)] == [(0, 19), (19, 37)]
    assert parallel.world() == (0, 1) and parallel.executor_for(10**6) is None


@pytest.mark.slow  # two spawned processes importing torch: 10-25 s once for the module
def test_two_rank_flow_scores_equal_the_single_process_scores(two_ranks):
    x, _ = _data()
    one = flow_profile(_net(), x[:37], blocks=["2"], batch_size=8).to_json()
    both = two_ranks["scores"]
    assert both[0] == both[1]  # every rank holds the reduced scores
    two = both[0]
    assert two["samples"] == one["samples"] == 37
    for a, b in zip(one["layers"], two["layers"], strict=True):
        assert a["name"] == b["name"]
        assert torch.allclose(torch.tensor(a["scores"]), torch.tensor(b["scores"]), rtol=1e-5, atol=1e-9)
    assert two["blocks"]["2"] == pytest.approx(one["blocks"]["2"], rel=1e-6)


@pytest.mark.slow  # two spawned processes importing torch: 10-25 s once for the module
@pytest.mark.parametrize("job", ["recover", "train"])
def test_two_rank_training_equals_one_process_at_the_same_global_batch(two_ranks, job):
    """Distillation recovery (feature taps + adapters + KD, augmentation) and dense training: DDP over two
    shards of each global batch gives the single process's weights to float tolerance (no batch norm)."""
    x, y = _data()
    model = _net(0)
    if job == "recover":
        loss = recover(model, _net(5), x, y, steps=6, config=CONFIG, seed=3, device=torch.device("cpu")).final_loss
    else:
        loss = train(model, x, y, epochs=1, batch_size=16, lr=0.05, seed=3, device=torch.device("cpu"))
    ranks = two_ranks[job]
    assert ranks[0]["state"] == ranks[1]["state"]  # the replicas agree
    before = _net(0).state_dict()
    for name, value in model.state_dict().items():
        got = torch.tensor(ranks[0]["state"][name])
        assert not torch.equal(got, before[name])  # it trained
        assert torch.allclose(got, value, rtol=1e-4, atol=1e-5), name
    assert ranks[0]["loss"] == pytest.approx(loss, rel=1e-4)


def test_the_gpu_path_turns_batch_norm_into_sync_batch_norm_and_back_with_its_state():
    """SyncBatchNorm only runs on GPU here; the conversion round trip itself is checked on CPU."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    model[1].running_mean.add_(1.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    synced = parallel._bn_to_sync(model)
    assert isinstance(synced[1], nn.SyncBatchNorm) and isinstance(synced[2][0], nn.SyncBatchNorm)
    back = parallel._sync_to_bn(synced)
    assert [type(m) for m in back.modules()] == [type(m) for m in model.modules()]
    assert all(torch.equal(v, state[k]) for k, v in back.state_dict().items())
