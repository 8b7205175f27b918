"""What scoring costs: ``flow_profile`` over the calibration split vs a plain forward pass of the same data.

Spec goal: scoring costs about one forward pass (<= 1.3x). Per model: median seconds of a plain eval forward
over ``--samples`` inputs (batch 256, no_grad) and of ``flow_profile`` (score_point=post, the library
default, every block candidate scored), interleaved round by round, one thread.

    python -m benchmarks.profile_cost --out benchmarks/results/profile-cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from idap.measure.metrics import cpu_name
from idap.models import create_model
from idap.models.prunable import block_candidates
from idap.prune.divergence import flow_profile

MODELS = ("resnet20", "mobilenet_v2", "vit_small")


def _forward(model, x, batch_size):
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])


def measure(names, samples: int, rounds: int, batch_size: int = 256, shape=(1, 28, 28)) -> dict:
    torch.set_num_threads(1)
    x = torch.randn(samples, *shape, generator=torch.Generator().manual_seed(0))
    models = {}
    for name in names:
        torch.manual_seed(0)
        models[name] = create_model(name, 10, shape[0], shape[1]).eval()
    times = {n: {"forward": [], "flow_profile": []} for n in names}
    for m in models.values():  # warm-up
        _forward(m, x[:batch_size], batch_size)
        flow_profile(m, x[:batch_size], blocks=block_candidates(m), point="post", batch_size=batch_size)
    for _ in range(rounds):
        for n, m in models.items():
            started = time.perf_counter()
            _forward(m, x, batch_size)
            times[n]["forward"].append(time.perf_counter() - started)
            started = time.perf_counter()
            flow_profile(m, x, blocks=block_candidates(m), point="post", batch_size=batch_size)
            times[n]["flow_profile"].append(time.perf_counter() - started)
    out = {}
    for n, t in times.items():
        ratios = [p / f for f, p in zip(t["forward"], t["flow_profile"], strict=True)]
        out[n] = {"forward_s": statistics.median(t["forward"]), "flow_profile_s": statistics.median(t["flow_profile"]),
                  "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    rows = measure(a.models, a.samples, a.rounds)
    lines = ["| model | forward s | flow_profile s | ratio (median, min-max) | goal <= 1.3x |", "|---|---:|---:|---|---|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['forward_s']:.3f} | {r['flow_profile_s']:.3f} | {r['ratio']:.2f}x "
                     f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {'met' if r['ratio'] <= 1.3 else 'NOT met'} |")
    table = "\n".join(lines)
    print(table)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        doc = {"machine": cpu_name(), "threads": 1, "samples": a.samples, "rounds": a.rounds,
               "input_shape": [1, 28, 28], "torch": torch.__version__, "rows": rows}
        (a.out / "results.json").write_text(json.dumps(doc, indent=1))
        (a.out / "results.md").write_text(
            f"# flow_profile cost vs a plain forward pass\n\nMachine: {doc['machine']}, 1 thread, {a.samples} "
            f"samples of 1x28x28, batch 256, {a.rounds} interleaved rounds (ratio per round, median).\n\n{table}\n")


if __name__ == "__main__":
    main()
