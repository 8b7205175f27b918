"""ONNX Runtime vs pruned channel widths: why pruned models ran slower there, and filter.round_to.

Each model is pruned by idap's filter stage (flow importance, one global ranking, no recovery: speed does
not depend on the weights' values) to the same MACs target twice -- kept widths as the ranking leaves them
(``filter.round_to=1``, the spec) and rounded to multiples of 8 -- exported with :func:`idap.export_onnx`,
and timed at batch 1 and 64 in PyTorch and ONNX Runtime (1 thread, all models interleaved round by round,
medians). ONNX Runtime is timed at its default optimisation level (ALL: NCHWc layout) and at EXTENDED
(no layout change), and per-node kernel times come from its profiler.

    python -m benchmarks.onnx_widths --out benchmarks/results/onnx-widths

Measured cause (see the results page): ONNX Runtime converts a conv to its blocked NCHWc layout only when
its channel counts are multiples of the CPU's block (8 with AVX2, 16 with AVX-512). Convs with other widths
stay in NCHW with ReorderInput / ReorderOutput nodes around them, and a depthwise conv with an odd group
count runs its generic grouped path, one group at a time -- the pruned MobileNetV2's depthwise convs
became its slowest nodes.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from idap.bundle.onnx_export import export_onnx
from idap.data import DataSplits
from idap.measure.metrics import count_macs, count_params, cpu_name
from idap.models import create_model
from idap.prune.config import Recipe
from idap.prune.filter_stage import run_filter_stage
from idap.prune.state import RunContext

MODELS = {"resnet20": (3, 32), "mobilenet_v2": (3, 32), "vgg16_bn": (3, 32)}


def _random_splits(channels: int, size: int, n: int = 128) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataSplits("random", x, y, x, y, x, y, x, y, 10, channels, size, "random", 0)


def pruned(dense: torch.nn.Module, data: DataSplits, target: float, round_to: int) -> torch.nn.Module:
    """``dense`` pruned by the filter stage to ``target``x fewer MACs, kept widths rounded to ``round_to``."""
    recipe = Recipe.from_dict({
        "calibration_size": len(data.calib_y), "eval_batch_size": 128, "device": "cpu", "max_accuracy_drop": 100.0,
        "target_macs_reduction": target, "filter": {"p0": 0.3, "steps": 8, "round_to": round_to},
        "layer": {"enabled": False}, "recovery": {"step_budget": 0, "final_budget": 0},
    })
    ctx = RunContext.create(copy.deepcopy(dense), data, recipe, dense_val_acc=100.0)
    out, _ = run_filter_stage(copy.deepcopy(dense), ctx, dense=dense)
    return out.eval()


def _session(path: Path, level: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def node_profile(path: Path, shape, runs: int = 50, top: int = 6) -> dict:
    """ONNX Runtime's profiler at level ALL: kernel time per op type and the slowest nodes, in us per run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: torch.randn(1, *shape).numpy()}
    for _ in range(runs):
        s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    by_op, by_node, kind = collections.Counter(), collections.Counter(), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            by_op[e["args"]["op_name"]] += e["dur"] / runs
            by_node[node] += e["dur"] / runs
            kind[node] = f"{e['args']['op_name']} {e['args'].get('output_type_shape')}"
    return {"op_us": {k: round(v, 1) for k, v in by_op.most_common()},
            "slowest_nodes": [(n, kind[n], round(v, 1)) for n, v in by_node.most_common(top)],
            "reorders": sum(1 for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                            and e["args"]["op_name"].startswith("Reorder")) // runs}


def odd_widths(model: torch.nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels % 8)


def measure(names, target: float, rounds: int, repeats: int, workdir: Path) -> dict:
    torch.set_num_threads(1)
    rows = {}
    for name in names:
        c, size = MODELS[name]
        shape = (c, size, size)
        torch.manual_seed(0)
        dense = create_model(name, 10, c, size).eval()
        data = _random_splits(c, size)
        variants = {"dense": dense, "round_to=1": pruned(dense, data, target, 1), "round_to=8": pruned(dense, data, target, 8)}
        timers = {}
        for label, model in variants.items():
            path = workdir / f"{name}-{label.replace('=', '')}.onnx"
            export_onnx(model, path, input_shape=shape)
            row = rows.setdefault(f"{name} {label}", {
                "model": name, "variant": label, "macs": count_macs(model, shape), "params": count_params(model),
                "odd_width_convs": odd_widths(model), "profile": node_profile(path, shape)})
            x1, x64 = torch.randn(1, *shape), torch.randn(64, *shape)
            sessions = {lvl: _session(path, lvl) for lvl in ("all", "extended")}
            row["_t"] = collections.defaultdict(list)

            def timer(model=model, sessions=sessions, x1=x1, x64=x64):
                out = {}
                with torch.no_grad():
                    out["torch_b1_ms"] = _median_ms(lambda: model(x1), repeats)
                    out["torch_b64_ms"] = _median_ms(lambda: model(x64), max(3, repeats // 6))
                for lvl, s in sessions.items():
                    f1, f64 = {"input": x1.numpy()}, {"input": x64.numpy()}
                    out[f"ort_{lvl}_b1_ms"] = _median_ms(lambda s=s, f1=f1: s.run(None, f1), repeats)
                    out[f"ort_{lvl}_b64_ms"] = _median_ms(lambda s=s, f64=f64: s.run(None, f64), max(3, repeats // 6))
                return out
            timers[f"{name} {label}"] = timer
        for _ in range(rounds):  # interleaved: every variant once per round, so load changes hit all alike
            for key, timer in timers.items():
                for k, v in timer().items():
                    rows[key]["_t"][k].append(v)
        for key in timers:
            t = rows[key].pop("_t")
            rows[key].update({k: round(statistics.median(v), 3) for k, v in t.items()})
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    out = ["# ONNX Runtime and pruned channel widths\n",
           f"Machine: {result['machine']}, 1 thread, onnxruntime {result['onnxruntime']}, torch {result['torch']}. "
           f"Filter stage to {result['target']}x fewer MACs (flow importance, no recovery), "
           f"{result['rounds']} interleaved rounds, medians; load average at the end "
           f"{result.get('load_average', 'not recorded')} on this shared machine. ORT all = default level (NCHWc layout), "
           "extended = no layout change.\n",
           "| model | widths | MACs | odd-width convs | reorders | torch b1 ms | ORT b1 ms | ORT ext b1 ms | "
           "torch b64 ms | ORT b64 ms | ORT b1 speed-up vs dense |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows.values():
        dense = rows[f"{r['model']} dense"]
        out.append(f"| {r['model']} | {r['variant']} | {r['macs'] / 1e6:.1f} M | {r['odd_width_convs']} | "
                   f"{r['profile']['reorders']} | {r['torch_b1_ms']:.2f} | {r['ort_all_b1_ms']:.2f} | "
                   f"{r['ort_extended_b1_ms']:.2f} | {r['torch_b64_ms']:.1f} | {r['ort_all_b64_ms']:.1f} | "
                   f"{dense['ort_all_b1_ms'] / r['ort_all_b1_ms']:.2f}x |")
    out.append("\nSlowest ONNX Runtime nodes (us per batch-1 run, profiler, level ALL):\n")
    for key, r in rows.items():
        nodes = "; ".join(f"{kind} {us}" for _, kind, us in r["profile"]["slowest_nodes"][:3])
        out.append(f"- {key}: {nodes}")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    import onnxruntime

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "mobilenet_v2"], choices=sorted(MODELS))
    p.add_argument("--target", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx-widths"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(a.models, a.target, a.rounds, a.repeats, Path(tmp))
    result = {"machine": cpu_name(), "load_average": [round(v, 2) for v in os.getloadavg()],
              "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
              "target": a.target, "rounds": a.rounds, "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(result, indent=1))
    (a.out / "results.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
