"""Training-step throughput on Ray Train: 1 and 2 workers of one thread each, and where a step's time goes.

Each configuration is one ``TorchTrainer`` run (components/services/ray_train.py) whose workers time the same
data-parallel step idap's dense training takes (idap.prune.recovery's batches, DDP, SGD) at a global batch of
128, after warm-up steps:

* ``data``: drawing the rank's slice of the global batch (index, augment, slice);
* ``compute``: forward + backward + optimizer step with DDP's gradient all-reduce switched off (``no_sync``);
* ``step``: the real DDP step; ``step - compute`` is the all-reduce time the backward pass did not hide;
* ``allreduce``: one all-reduce of a flat tensor the size of the model's gradients, timed alone (bandwidth).

Ray Train's start-up (worker group, process group) is timed apart: it is paid once per fit.
The projection to 8 / 32 workers uses the measured per-sample compute, the data time and a ring all-reduce
model (2 (N-1)/N x gradient bytes / bandwidth + 2 (N-1) x latency); it is printed as a projection.

    python -m benchmarks.ray_train_speed --dataset fashion-mnist --steps 12 --out benchmarks/results/ray-train
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _measure_on_rank(payload: dict):
    """One worker: time data, compute (no all-reduce), the DDP step and a bare all-reduce."""
    import torch.distributed as dist
    from torch import nn

    from idap.measure.tokens import token_loss
    from idap.models import create_model
    from idap.prune.parallel import world
    from idap.prune.recovery import _Batches

    torch.set_num_threads(1)
    rank, size = world()
    torch.manual_seed(0)
    model = create_model(payload["model"], **payload["model_args"]).train()
    x, y = payload["x"], payload["y"]
    batches = _Batches(x, y, payload["batch_size"], 0, torch.device("cpu"), augment=True)
    ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if size > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    grad_numel = sum(p.numel() for p in model.parameters())

    def step(sync: bool) -> tuple[float, float]:
        t0 = time.perf_counter()
        xb, yb = batches.next()
        t1 = time.perf_counter()
        ctx = ddp.no_sync() if (size > 1 and not sync) else _Null()
        with ctx:
            loss = token_loss(ddp(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        return t1 - t0, time.perf_counter() - t1

    def barrier() -> None:
        if size > 1:
            dist.barrier()

    for _ in range(payload["warmup"]):
        step(True)
    barrier()
    data, compute, full = [], [], []
    for _ in range(payload["steps"]):
        d, c = step(False)
        data.append(d)
        compute.append(c)
        barrier()
    for _ in range(payload["steps"]):
        barrier()
        t0 = time.perf_counter()
        step(True)
        full.append(time.perf_counter() - t0)
    ar = []
    if size > 1:
        flat = torch.zeros(grad_numel)
        for _ in range(payload["steps"]):
            barrier()
            t0 = time.perf_counter()
            dist.all_reduce(flat)
            ar.append(time.perf_counter() - t0)
    med = lambda v: sorted(v)[len(v) // 2] if v else 0.0  # noqa: E731
    compute_at = {}
    if size == 1:  # one thread's compute at the slice 4 / 8 / 32 workers would each get (the projection's base)
        for local in payload["local_batches"]:
            times = []
            for _ in range(payload["steps"]):
                xb, yb = batches.next()
                t0 = time.perf_counter()
                loss = token_loss(model(xb[:local]), yb[:local])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            compute_at[local] = med(times)
    meta = {"data_s": med(data), "compute_s": med(compute), "step_s": med(full), "allreduce_s": med(ar),
            "grad_bytes": grad_numel * 4, "world": size, "local_batch": batches.batch_size // size,
            "compute_at_local_batch_s": compute_at}
    return {}, {k: json.dumps(v) for k, v in meta.items()}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def measure(workers: int, payload: dict) -> dict:
    from components.services.ray_train import run_data_parallel

    t0 = time.perf_counter()
    _, meta = run_data_parallel(_measure_on_rank, payload, workers=workers)
    out = {k: json.loads(v) for k, v in meta.items()}
    out["fit_s"] = time.perf_counter() - t0
    extra = len(payload["local_batches"]) * payload["steps"] if workers == 1 else 0
    out["startup_s"] = out["fit_s"] - (payload["warmup"] + 2 * payload["steps"] + extra) * out["step_s"]
    out["samples_per_s"] = payload["batch_size"] / out["step_s"]
    return out


def project(one: dict, two: dict, batch: int, workers: int, bandwidth: float, latency: float) -> dict:
    """Step time at ``workers`` workers: one thread's measured compute at the slice each would get
    (batch / workers), the measured data time, and a ring all-reduce of the gradients (none of it overlapped)."""
    compute = one["compute_at_local_batch_s"][str(batch // workers)]
    ring = 2 * (workers - 1) / workers * two["grad_bytes"] / bandwidth + 2 * (workers - 1) * latency
    step = compute + two["data_s"] + ring
    return {"workers": workers, "compute_s": compute, "step_s": step, "samples_per_s": batch / step, "allreduce_s": ring,
            "speedup_vs_1": one["step_s"] / step}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples", type=int, default=4096, help="training samples shipped to the workers")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/ray-train")
    args = p.parse_args(argv)

    from components.services.ray_connect import start_ray
    from idap.data import load_dataset

    data = load_dataset(args.dataset, train_limit=args.samples)
    shape = tuple(data.train_x.shape[1:])
    payload = {"model": args.model, "x": data.train_x, "y": data.train_y, "batch_size": args.batch_size,
               "steps": args.steps, "warmup": args.warmup,
               "local_batches": [args.batch_size // n for n in (4, 8, 32)],
               "model_args": {"num_classes": data.num_classes, "in_channels": shape[0], "image_size": shape[-1]}}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    import ray

    start_ray(num_cpus=2)
    try:
        runs = {n: measure(n, payload) for n in (1, 2)}
    finally:
        ray.shutdown()
    one, two = runs[1], runs[2]
    bandwidth = two["grad_bytes"] * 2 * (2 - 1) / 2 / max(two["allreduce_s"], 1e-9)  # measured, loopback
    proj = {f"loopback {bandwidth / 1e9:.2f} GB/s (measured)": [project(one, two, args.batch_size, n, bandwidth, 0)
                                                               for n in (8, 32)],
            "10 Gb/s network, 50 us latency (assumed)": [project(one, two, args.batch_size, n, 1.25e9, 50e-6)
                                                         for n in (8, 32)]}
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    doc = {"machine": {"cpu": cpu.split(":", 1)[-1].strip(), "cores": os.cpu_count(), "load_avg": load,
                       "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
           "config": {k: v for k, v in vars(args).items()}, "runs": runs, "ratio_2_over_1":
           two["samples_per_s"] / one["samples_per_s"], "allreduce_bandwidth_Bps": bandwidth, "projection": proj}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_train_speed.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
