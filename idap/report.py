"""What a run produces besides the model: measured figures, report.json, report.md and plots (spec §5)."""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from idap.data import DataSplits, sample_shape
from idap.metrics import (
    accuracy,
    count_macs,
    count_params,
    measure_latency,
    measure_throughput,
    uncounted_modules,
)
from idap.state import within_budget

# A measured speed-up below this fraction of the MACs reduction is flagged: MACs are only a proxy.
SPEEDUP_AGREEMENT = 0.8


def evaluate_model(model: nn.Module, data: DataSplits, *, batch_size: int = 512, device=None) -> dict:
    """Accuracy on validation and test (percent), params and MACs at the dataset's input size."""
    shape = sample_shape(data)
    return {
        "val_acc": accuracy(model, data.val_x, data.val_y, batch_size=batch_size, device=device),
        "test_acc": accuracy(model, data.test_x, data.test_y, batch_size=batch_size, device=device),
        "params": count_params(model),
        "macs": count_macs(model, shape),
    }


def measure_speed(models: dict[str, nn.Module], input_shape: Sequence[int], *, rounds: int = 3,
                  repeats: int = 30, onnx: dict[str, str | os.PathLike] | None = None) -> dict[str, dict]:
    """Batch-1 latency and batch-64 throughput, models interleaved round by round, medians reported.

    Args:
        onnx: ``{name: path of the model's ONNX export}`` for some or all of ``models``: these are timed in
            ONNX Runtime too (CPU, as many intra-op threads as torch uses), interleaved with the PyTorch
            timings, as ``ort_latency_ms_b1`` / ``ort_throughput_b64``.

    Example:
        >>> measure_speed({"m": nn.Linear(4, 2)}, (4,), rounds=1, repeats=3)["m"]["latency_ms_b1"] > 0
        True
    """
    sessions = {name: _ort_session(path) for name, path in (onnx or {}).items() if name in models}
    lat: dict[str, list[float]] = {k: [] for k in models}
    thr: dict[str, list[float]] = {k: [] for k in models}
    ort_lat: dict[str, list[float]] = {k: [] for k in sessions}
    ort_thr: dict[str, list[float]] = {k: [] for k in sessions}
    info: dict[str, dict] = {}
    for name, model in models.items():  # a discarded warm-up round: first calls pay allocator and kernel setup
        measure_latency(model, input_shape, repeats=3)
        if name in sessions:
            _time_ort(sessions[name], input_shape, 1, 3)
    for _ in range(rounds):
        for name, model in models.items():
            r1 = measure_latency(model, input_shape, repeats=repeats)
            r64 = measure_throughput(model, input_shape, repeats=max(5, repeats // 3))
            lat[name].append(r1["median_ms"])
            thr[name].append(r64["samples_per_s"])
            info[name] = {"threads": r1.get("threads"), "device": r1.get("device")}
            if name in sessions:
                ort_lat[name].append(1e3 * _time_ort(sessions[name], input_shape, 1, repeats))
                ort_thr[name].append(64 / _time_ort(sessions[name], input_shape, 64, max(5, repeats // 3)))
    out = {k: {"latency_ms_b1": statistics.median(lat[k]), "throughput_b64": statistics.median(thr[k]), **info[k]}
           for k in models}
    for k in sessions:
        out[k].update({"ort_latency_ms_b1": statistics.median(ort_lat[k]),
                       "ort_throughput_b64": statistics.median(ort_thr[k]), "ort_threads": torch.get_num_threads(),
                       "ort_version": _ort_version()})
    return out


def _ort_session(path):
    """An ONNX Runtime CPU session with torch's thread count, so both runtimes get the same cores."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def _time_ort(session, input_shape: Sequence[int], batch_size: int, repeats: int) -> float:
    """Median seconds of one ``session.run`` on a random batch (after two untimed runs)."""
    x = torch.randn(batch_size, *input_shape).numpy()
    if session.get_inputs()[0].type == "tensor(int64)":  # a text model's token ids (timing ignores their values)
        x = torch.ones((batch_size, *input_shape), dtype=torch.long).numpy()
    feed = {session.get_inputs()[0].name: x}
    for _ in range(2):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear (and heads of attention modules), by qualified name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
        elif hasattr(m, "num_heads") and hasattr(m, "q_proj"):
            out[f"{name}#heads"] = m.num_heads
    return out


def build_report(*, dense: dict, compressed: dict, steps: list[dict], recipe: dict, dataset: dict,
                 model_name: str, profile: dict | None = None, widths: dict | None = None,
                 removed_blocks: Sequence[str] = (), extra: dict | None = None) -> dict:
    """The report as a JSON-able dict; ``dense`` / ``compressed`` hold evaluate_model + measure_speed figures."""
    def ratio(a, b):
        return None if a in (None, 0) or b in (None, 0) else a / b

    macs_red = ratio(dense["macs"], compressed["macs"])
    speedup = ratio(dense.get("latency_ms_b1"), compressed.get("latency_ms_b1"))
    report = {
        "model": model_name,
        "dataset": dataset,
        "dense": dense,
        "compressed": compressed,
        "ratios": {
            "params_reduction": ratio(dense["params"], compressed["params"]),
            "macs_reduction": macs_red,
            "speedup_b1": speedup,
            "throughput_gain_b64": ratio(compressed.get("throughput_b64"), dense.get("throughput_b64")),
            "ort_speedup_b1": ratio(dense.get("ort_latency_ms_b1"), compressed.get("ort_latency_ms_b1")),
            "ort_throughput_gain_b64": ratio(compressed.get("ort_throughput_b64"), dense.get("ort_throughput_b64")),
            "val_acc_drop_pp": dense["val_acc"] - compressed["val_acc"],
            "test_acc_drop_pp": dense["test_acc"] - compressed["test_acc"],
        },
        "warnings": [],
        "trajectory": steps,
        "removed_blocks": list(removed_blocks),
        "recipe": recipe,
    }
    budget = recipe.get("max_accuracy_drop")
    report["within_budget"] = None if budget is None else within_budget(report["ratios"]["val_acc_drop_pp"], budget)
    report["targets"] = target_status(recipe, report["ratios"])
    report["target_met"] = None if not report["targets"] else all(t["met"] for t in report["targets"].values())
    report["stopped_by"] = stopping_limits(steps, recipe)
    if report["target_met"] is False:
        report["warnings"].append(missed_target_message(report))
    if report["within_budget"] is False:
        report["warnings"].append(
            f"validation accuracy dropped {report['ratios']['val_acc_drop_pp']:.2f} pp, more than the budget of "
            f"{budget} pp (the stages may spend stage_slack={recipe.get('stage_slack', 0)} pp beyond it in "
            "anticipation of the final fine-tune, which did not recover enough)")
    if speedup is not None and macs_red is not None and speedup < SPEEDUP_AGREEMENT * macs_red:
        report["warnings"].append(
            f"measured batch-1 speed-up {speedup:.2f}x is below {SPEEDUP_AGREEMENT} x the MACs reduction "
            f"{macs_red:.2f}x on this machine: MACs overstate the real gain here")
    if profile is not None:
        report["divergence_profile"] = profile
    if widths is not None:
        report["widths"] = widths
    if extra:
        report.update(extra)
    return report


TARGETS = {"target_macs_reduction": ("macs_reduction", "MACs"), "target_params_reduction": ("params_reduction", "params")}


def target_status(recipe: dict, ratios: dict) -> dict[str, dict]:
    """Every target the recipe set: ``{"macs_reduction": {"target": 2.0, "reached": 1.34, "met": False}}``."""
    out = {}
    for field_name, (key, _) in TARGETS.items():
        target = recipe.get(field_name)
        if target is None:
            continue
        reached = ratios.get(key)
        out[key] = {"target": target, "reached": reached, "met": reached is not None and reached >= target * (1 - 1e-6)}
    return out


def stopping_limits(steps: Sequence[dict], recipe: dict) -> list[str]:
    """Which limit ended each stage, read from the trajectory: the accuracy budget, the schedule (all
    ``filter.steps`` taken), the per-layer floors, K (``layer.max_removals``), ε, the candidates running out,
    or the target being reached. One plain sentence per stage that ran."""
    out = []
    n_steps = (recipe.get("filter") or {}).get("steps")
    first_layer = next((i for i, s in enumerate(steps) if s["stage"] == "layer"), len(steps))
    for where, part in (("stage 1 (filters)", steps[:first_layer]), ("top-up (filters after stage 2)", steps[first_layer:])):
        filt = [s for s in part if s["stage"] == "filter"]
        if filt:
            out.append(f"{where}: {_filter_limit(filt, n_steps)}")
    layer = [s for s in steps if s["stage"] == "layer"]
    cfg = recipe.get("layer") or {}
    if not cfg.get("enabled", True):
        return out
    removed = sum(1 for s in layer if s["action"] == "remove_block")
    k = cfg.get("max_removals")
    reverted = [s for s in layer if s["action"] == "revert_block"]
    overshoot = [s for s in layer if s["action"] in ("skip_block", "stop") and "overshoot" in s.get("note", "")]
    if k is not None and k > 0 and removed >= k or k == 0:
        out.append(f"stage 2 (blocks): K — layer.max_removals={k} block(s) removed")
    elif not layer:
        out.append("stage 2 (blocks): nothing to remove — the model has no stride-1, same-width residual block")
    elif layer[-1]["action"] == "stop" and "target reached" in layer[-1].get("note", ""):
        out.append(f"stage 2 (blocks): the target was reached after {removed} block(s)")
    else:
        why = []
        if reverted:
            why.append(f"{len(reverted)} essential (accuracy fell more than ε={cfg.get('epsilon')} pp or the budget)")
        if overshoot:
            why.append(f"{len(overshoot)} would overshoot the target")
        out.append(f"stage 2 (blocks): the candidates ran out — {removed} removed" + (f", {', '.join(why)}" if why else ""))
    return out


def _filter_limit(filt: list[dict], n_steps: int | None) -> str:
    last, done = filt[-1], sum(1 for s in filt if s["action"] == "prune")
    note = last.get("note", "")
    if last["action"] == "rollback":
        drop = re.search(r"accuracy drop [\d.]+ pp > budget [\d.]+ pp", note)
        return (f"the accuracy budget — step {last['index']} was rolled back ({drop.group(0) if drop else note}), "
                f"{done} step(s) kept")
    if last["action"] == "stop" and "floors" in note:
        return f"the per-layer floors — nothing left above filter.min_channels / min_fraction after {done} step(s)"
    if last["action"] == "stop" and "target reached" in note:
        return f"the target was reached after {done} step(s)"
    if n_steps is not None and done >= n_steps:
        return f"the schedule — all filter.steps={n_steps} steps were taken"
    return f"{done} step(s) kept, last: {last['action']} {note}".rstrip()


def missed_target_message(report: dict) -> str:
    """One sentence: what was asked, what was reached, which limits stopped the run."""
    missed = [f"{t['target']:g}x fewer {TARGETS['target_' + key][1]} (reached {_fmt(t['reached'], '.2f')}x)"
              for key, t in report.get("targets", {}).items() if not t["met"]]
    budget = report["recipe"].get("max_accuracy_drop")
    limits = "; ".join(report.get("stopped_by") or []) or "unknown"
    return (f"target not reached: asked for {' and '.join(missed)} within {budget} pp; stopped by: {limits}")


def write_report(report: dict, directory: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and the plots into ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "markdown": directory / "report.md"}
    paths.update(write_plots(report, directory))
    _atomic_write(paths["json"], json.dumps(report, indent=2, default=_json_default))
    _atomic_write(paths["markdown"], render_markdown(report, {k: p.name for k, p in paths.items()}))
    return paths


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _fmt(v, spec=",.0f", none="n/a") -> str:
    return none if v is None else format(v, spec)


def render_markdown(report: dict, images: dict[str, str] | None = None) -> str:
    d, c, r = report["dense"], report["compressed"], report["ratios"]
    lines = [
        f"# IDAP++ compression report — {report['model']} on {report['dataset'].get('name', '?')}",
        "",
        "| | dense | compressed | change |",
        "|---|---:|---:|---:|",
        f"| validation accuracy (%) | {d['val_acc']:.2f} | {c['val_acc']:.2f} | {-r['val_acc_drop_pp']:+.2f} pp |",
        f"| test accuracy (%) | {d['test_acc']:.2f} | {c['test_acc']:.2f} | {-r['test_acc_drop_pp']:+.2f} pp |",
        f"| params | {_fmt(d['params'])} | {_fmt(c['params'])} | {_fmt(r['params_reduction'], '.2f')}x fewer |",
        f"| MACs | {_fmt(d['macs'])} | {_fmt(c['macs'])} | {_fmt(r['macs_reduction'], '.2f')}x fewer |",
        f"| latency, batch 1 (ms) | {_fmt(d.get('latency_ms_b1'), '.3f')} | {_fmt(c.get('latency_ms_b1'), '.3f')} "
        f"| {_fmt(r['speedup_b1'], '.2f')}x faster |",
        f"| throughput, batch 64 (img/s) | {_fmt(d.get('throughput_b64'))} | {_fmt(c.get('throughput_b64'))} "
        f"| {_fmt(r['throughput_gain_b64'], '.2f')}x |",
    ]
    if c.get("ort_latency_ms_b1") is not None:
        lines += [
            f"| ONNX Runtime latency, batch 1 (ms) | {_fmt(d.get('ort_latency_ms_b1'), '.3f')} "
            f"| {_fmt(c.get('ort_latency_ms_b1'), '.3f')} | {_fmt(r.get('ort_speedup_b1'), '.2f')}x faster |",
            f"| ONNX Runtime throughput, batch 64 (img/s) | {_fmt(d.get('ort_throughput_b64'))} "
            f"| {_fmt(c.get('ort_throughput_b64'))} | {_fmt(r.get('ort_throughput_gain_b64'), '.2f')}x |",
        ]
    runtimes = "PyTorch eager" + (f" and ONNX Runtime {c['ort_version']}" if c.get("ort_version") else "")
    lines += [
        "",
        f"Timings ({runtimes}) on {c.get('device', '?')} with {c.get('threads', '?')} threads, models and runtimes "
        "interleaved, medians.",
        "",
    ]
    if report.get("target_met") is not None:
        verdict = "**reached**" if report["target_met"] else "**NOT reached**"
        asked = ", ".join(f"{t['target']:g}x fewer {TARGETS['target_' + k][1]} (reached {_fmt(t['reached'], '.2f')}x)"
                          for k, t in report["targets"].items())
        lines += [f"Target {verdict}: {asked}.", ""]
    if report.get("stopped_by"):
        lines += ["What stopped each stage:", ""] + [f"- {why}" for why in report["stopped_by"]] + [""]
    for w in report.get("warnings", []):
        lines += [f"> **Warning:** {w}", ""]
    if report.get("removed_blocks"):
        lines += ["Blocks removed: " + ", ".join(f"`{b}`" for b in report["removed_blocks"]), ""]
    lines += ["## Trajectory", "", "| stage | step | action | params | MACs | val acc | note |", "|---|---:|---|---:|---:|---:|---|"]
    for s in report["trajectory"]:
        lines.append(f"| {s['stage']} | {s['index']} | {s['action']} | {s['params']:,} | {s['macs']:,} | "
                     f"{s['val_acc']:.2f} | {s.get('note', '')} |")
    for key, title in (("trajectory", "Accuracy vs MACs"), ("profile", "Per-layer divergence profile"),
                       ("widths", "Layer widths before / after")):
        if images and key in images:
            lines += ["", f"## {title}", "", f"![{title}]({images[key]})"]
    lines += ["", "## Recipe", "", "```json", json.dumps(report["recipe"], indent=2), "```", ""]
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    """The report as a short plain-text table for a console: dense vs compressed (accuracy, params, MACs,
    latency and throughput in PyTorch and ONNX Runtime), what stage 2 removed, the target and the limits.

    Example:
        >>> print("\\n".join(summary_lines(report)))          # doctest: +SKIP
    """
    d, c, r = report["dense"], report["compressed"], report["ratios"]

    def num(v, spec):
        return "n/a" if v is None else format(v, spec)

    rows = [
        ("validation accuracy (%)", num(d["val_acc"], ".2f"), num(c["val_acc"], ".2f"), f"{-r['val_acc_drop_pp']:+.2f} pp"),
        ("test accuracy (%)", num(d["test_acc"], ".2f"), num(c["test_acc"], ".2f"), f"{-r['test_acc_drop_pp']:+.2f} pp"),
        ("params", num(d["params"], ","), num(c["params"], ","), f"{num(r['params_reduction'], '.2f')}x fewer"),
        ("MACs", num(d["macs"], ","), num(c["macs"], ","), f"{num(r['macs_reduction'], '.2f')}x fewer"),
    ]
    if d.get("latency_ms_b1") is not None:
        rows += [("PyTorch latency, batch 1 (ms)", num(d["latency_ms_b1"], ".3f"), num(c.get("latency_ms_b1"), ".3f"),
                  f"{num(r['speedup_b1'], '.2f')}x faster"),
                 ("PyTorch throughput, b64 (img/s)", num(d.get("throughput_b64"), ",.0f"),
                  num(c.get("throughput_b64"), ",.0f"), f"{num(r['throughput_gain_b64'], '.2f')}x")]
    if d.get("ort_latency_ms_b1") is not None:
        rows += [("ONNX Runtime latency, b1 (ms)", num(d["ort_latency_ms_b1"], ".3f"),
                  num(c.get("ort_latency_ms_b1"), ".3f"), f"{num(r.get('ort_speedup_b1'), '.2f')}x faster"),
                 ("ONNX Runtime throughput, b64", num(d.get("ort_throughput_b64"), ",.0f"),
                  num(c.get("ort_throughput_b64"), ",.0f"), f"{num(r.get('ort_throughput_gain_b64'), '.2f')}x")]
    widths = [max(len(row[i]) for row in [("", "dense", "compressed", "change"), *rows]) for i in range(4)]

    def fmt(row):
        return f"  {row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"

    lines = [fmt(("", "dense", "compressed", "change")), *map(fmt, rows)]
    if d.get("latency_ms_b1") is not None:
        lines.append(f"  (timed on {c.get('device', '?')}, {c.get('threads', '?')} threads, models interleaved, medians)")
    blocks = (report.get("divergence_profile") or {}).get("blocks")
    removed = report.get("removed_blocks") or []
    if blocks is not None and not blocks:
        lines.append("stage 2 removed nothing: the model has no removable (stride-1, same-width residual) blocks")
    else:
        of = f" of {len(blocks)} removable" if blocks else ""
        lines.append(f"stage 2 removed {len(removed)}{of} blocks" + (f": {', '.join(removed)}" if removed else ""))
    if report.get("target_met") is False:
        missed = ", ".join(f"{t['target']:g}x fewer {TARGETS['target_' + k][1]} (reached {num(t['reached'], '.2f')}x)"
                           for k, t in report["targets"].items() if not t["met"])
        lines.append(f"TARGET NOT REACHED: asked for {missed} within {report['recipe'].get('max_accuracy_drop')} pp")
    elif report.get("target_met"):
        lines.append("target reached: " + ", ".join(f"{t['target']:g}x fewer {TARGETS['target_' + k][1]}"
                                                    for k, t in report["targets"].items()))
    lines += [f"stopped by {why}" for why in report.get("stopped_by") or []]
    if report.get("within_budget") is False:
        lines.append(f"OVER BUDGET: validation accuracy fell {r['val_acc_drop_pp']:.2f} pp "
                     f"(max_accuracy_drop {report['recipe'].get('max_accuracy_drop')} pp)")
    return lines


def write_plots(report: dict, directory: Path) -> dict[str, Path]:
    """Accuracy-vs-MACs trajectory, per-layer divergence profile, before/after widths (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    steps = [s for s in report["trajectory"] if s.get("accepted", True)]
    if steps:
        fig, ax = plt.subplots(figsize=(6, 4))
        for stage, marker in (("dense", "*"), ("filter", "o"), ("layer", "s"), ("finetune", "D")):
            pts = [(s["macs"] / 1e6, s["val_acc"]) for s in steps if s["stage"] == stage]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, label=stage)
        ax.set_xlabel("MMACs")
        ax.set_ylabel("validation accuracy (%)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("Pruning trajectory")
        out["trajectory"] = _save(fig, directory / "trajectory.png", plt)
    prof = report.get("divergence_profile")
    if prof and prof.get("layers"):
        fig, axes = plt.subplots(1, 2 if prof.get("blocks") else 1, figsize=(11, 4), squeeze=False)
        names = [layer["name"] for layer in prof["layers"]]
        axes[0][0].bar(range(len(names)), [layer["mean"] for layer in prof["layers"]])
        axes[0][0].set_yscale("log")
        axes[0][0].set_title("mean channel flow score per layer")
        axes[0][0].set_xlabel("layer (forward order)")
        if prof.get("blocks"):
            blocks = prof["blocks"]
            axes[0][1].barh(list(blocks), list(blocks.values()))
            axes[0][1].set_title(f"block score ({prof.get('block_metric', 'divergence')})")
        out["profile"] = _save(fig, directory / "divergence_profile.png", plt)
    widths = report.get("widths")
    if widths and widths.get("dense"):
        names = list(widths["dense"])
        fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.12), 4))
        ax.bar(range(len(names)), [widths["dense"][n] for n in names], label="dense", alpha=0.5)
        ax.bar(range(len(names)), [widths["compressed"].get(n, 0) for n in names], label="compressed", alpha=0.8)
        ax.set_xlabel("layer (forward order; 0 = removed)")
        ax.set_ylabel("output channels")
        ax.legend()
        out["widths"] = _save(fig, directory / "widths.png", plt)
    return out


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compression_report(dense: nn.Module, compressed: nn.Module, data: DataSplits, *, recipe: dict,
                       steps: list[dict], profile: dict | None = None, latency: bool = True,
                       onnx_runtime: bool = True, batch_size: int = 512, device=None, extra: dict | None = None) -> dict:
    """Evaluate both models, time them interleaved (PyTorch and, with ``onnx_runtime``, ONNX Runtime on
    fresh exports of both), and build the report."""
    dense_m = evaluate_model(dense, data, batch_size=batch_size, device=device)
    comp_m = evaluate_model(compressed, data, batch_size=batch_size, device=device)
    shape = sample_shape(data)
    notes = []
    if latency:
        with tempfile.TemporaryDirectory(prefix="idap-onnx-") as tmp:
            onnx = _export_pair({"dense": dense, "compressed": compressed}, shape, Path(tmp), notes) if onnx_runtime else {}
            speed = measure_speed({"dense": dense, "compressed": compressed}, shape, onnx=onnx)
        dense_m.update(speed["dense"])
        comp_m.update(speed["compressed"])
    dense_w, comp_w = layer_widths(dense), layer_widths(compressed)
    removed = [n for n, m in compressed.named_modules() if isinstance(m, nn.Identity)
               and not isinstance(dict(dense.named_modules()).get(n), nn.Identity)]
    report = build_report(
        dense=dense_m, compressed=comp_m, steps=steps, recipe=recipe, dataset=data.describe(),
        model_name=getattr(dense, "idap_arch", {}).get("name", type(dense).__name__), profile=profile,
        widths={"dense": dense_w, "compressed": {n: comp_w.get(n, 0) for n in dense_w}}, removed_blocks=removed,
        extra=extra)
    report["warnings"] += notes
    uncounted = uncounted_modules(dense, shape)
    report["uncounted_modules"] = uncounted
    if uncounted:  # their work is missing from both MAC counts: the reduction claimed would be false
        report["ratios"]["macs_reduction"] = None
        report["warnings"].append(
            f"MACs of {', '.join(uncounted[:5])}{' ...' if len(uncounted) > 5 else ''} could not be counted (no counter "
            "sees their work): no MACs reduction is claimed; measured latency is the figure to trust")
    return report


def _export_pair(models: dict[str, nn.Module], shape, directory: Path, notes: list[str]) -> dict[str, Path]:
    """ONNX exports of both models for timing; on a failed export, a report warning and no ONNX timings."""
    from idap.bundle import BundleError, export_onnx

    try:
        return {name: export_onnx(m.cpu(), directory / f"{name}.onnx", input_shape=shape) for name, m in models.items()}
    except (BundleError, ImportError) as error:
        notes.append(f"ONNX Runtime not timed: {error}")
        return {}
