"""Tensors in memory vs streamed batches (idap.data.streaming) for training on a small image dataset.

Measures, on a CIFAR-10 subset (the JPEG copy) at a chosen resolution: the time to open the data (decode
everything into tensors vs list files), and the training speed of ``idap.prune.recovery.train`` (optimizer steps per
second) from tensors and from a DataLoader with 0, 1 or 2 workers. The loaders are interleaved round by
round so that a busy machine slows all of them alike; medians are reported.

    python -m benchmarks.streaming_speed --train 5000 --resolution 32 --steps 30 --rounds 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from idap.data.cifar10 import open_cifar10
from idap.models import create_model
from idap.prune.recovery import train


def _steps_per_second(data_x, data_y, model_name: str, num_classes: int, size: int, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes, 3, size)
    epochs = steps * batch / len(data_y)
    started = time.perf_counter()
    train(model, data_x, data_y, epochs=epochs, batch_size=batch, lr=0.05, seed=0, device=torch.device("cpu"))
    return steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=5000, help="training images (a seeded CIFAR-10 subset)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", default="0,1,2", help="comma list of DataLoader worker counts")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",")]
    common = {"resolution": args.resolution, "calibration_size": 64, "validation_size": 64, "train_limit": args.train,
              "test_limit": 64, "normalization": "imagenet"}
    started = time.perf_counter()
    streams = {w: open_cifar10(None, workers=w, **common) for w in workers}
    open_stream_s = (time.perf_counter() - started) / len(workers)
    started = time.perf_counter()
    memory = streams[workers[0]].to_memory()
    to_memory_s = time.perf_counter() - started
    runs: dict[str, list[float]] = {"tensors": [], **{f"stream, {w} workers": [] for w in workers}}
    for _ in range(args.rounds):
        runs["tensors"].append(_steps_per_second(memory.train_x, memory.train_y, args.model, 10, args.resolution,
                                                 args.steps, args.batch))
        for w, data in streams.items():
            runs[f"stream, {w} workers"].append(_steps_per_second(data.train_x, data.train_y, args.model, 10,
                                                                  args.resolution, args.steps, args.batch))
    result = {"train_images": len(memory.train_y), "resolution": args.resolution, "model": args.model,
              "batch": args.batch, "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
              "cpu": platform.processor() or platform.machine(),
              "open_seconds": {"list files (stream)": round(open_stream_s, 2),
                               "decode into tensors (from the listing)": round(to_memory_s, 2)},
              "steps_per_second_median": {k: round(statistics.median(v), 3) for k, v in runs.items()},
              "steps_per_second_all": {k: [round(x, 3) for x in v] for k, v in runs.items()}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
