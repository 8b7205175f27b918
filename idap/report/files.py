"""A report on disk and on the console: report.json, report.md, the plots, the summary lines.

``write_report`` writes each file whole (``idap.atomic``): a reader never sees half a report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from idap.atomic import write_text
from idap.report.evaluate import TARGETS, fmt


def write_report(report: dict, directory: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and the plots into ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / "report.json", "markdown": directory / "report.md"}
    paths.update(write_plots(report, directory))
    write_text(paths["json"], json.dumps(report, indent=2, default=_json_default))
    write_text(paths["markdown"], render_markdown(report, {k: p.name for k, p in paths.items()}))
    return paths


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _accuracy(report: dict) -> str:
    """What the accuracy rows measure: top-1 accuracy, or for a language model next-token top-1 accuracy."""
    return "next-token accuracy" if report.get("dataset", {}).get("kind") == "lm" else "accuracy"


def render_markdown(report: dict, images: dict[str, str] | None = None) -> str:
    d, c, r = report["dense"], report["compressed"], report["ratios"]
    lines = [
        f"# IDAP++ compression report — {report['model']} on {report['dataset'].get('name', '?')}",
        "",
        "| | dense | compressed | change |",
        "|---|---:|---:|---:|",
        f"| validation {_accuracy(report)} (%) | {d['val_acc']:.2f} | {c['val_acc']:.2f} | {-r['val_acc_drop_pp']:+.2f} pp |",
        f"| test {_accuracy(report)} (%) | {d['test_acc']:.2f} | {c['test_acc']:.2f} | {-r['test_acc_drop_pp']:+.2f} pp |",
        *[f"| {name} perplexity | {d[k]:.3f} | {c[k]:.3f} | {fmt(r.get(k + '_ratio'), '.3f')}x |"  # a language model
          for name, k in (("validation", "val_ppl"), ("test", "test_ppl")) if k in d and k in c],
        f"| params | {fmt(d['params'])} | {fmt(c['params'])} | {fmt(r['params_reduction'], '.2f')}x fewer |",
        f"| MACs | {fmt(d['macs'])} | {fmt(c['macs'])} | {fmt(r['macs_reduction'], '.2f')}x fewer |",
        f"| latency, batch 1 (ms) | {fmt(d.get('latency_ms_b1'), '.3f')} | {fmt(c.get('latency_ms_b1'), '.3f')} "
        f"| {fmt(r['speedup_b1'], '.2f')}x faster |",
        f"| throughput, batch 64 (img/s) | {fmt(d.get('throughput_b64'))} | {fmt(c.get('throughput_b64'))} "
        f"| {fmt(r['throughput_gain_b64'], '.2f')}x |",
    ]
    if c.get("ort_latency_ms_b1") is not None:
        lines += [
            f"| ONNX Runtime latency, batch 1 (ms) | {fmt(d.get('ort_latency_ms_b1'), '.3f')} "
            f"| {fmt(c.get('ort_latency_ms_b1'), '.3f')} | {fmt(r.get('ort_speedup_b1'), '.2f')}x faster |",
            f"| ONNX Runtime throughput, batch 64 (img/s) | {fmt(d.get('ort_throughput_b64'))} "
            f"| {fmt(c.get('ort_throughput_b64'))} | {fmt(r.get('ort_throughput_gain_b64'), '.2f')}x |",
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
        asked = ", ".join(f"{t['target']:g}x fewer {TARGETS['target_' + k][1]} (reached {fmt(t['reached'], '.2f')}x)"
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
        (f"validation {_accuracy(report)} (%)", num(d["val_acc"], ".2f"), num(c["val_acc"], ".2f"),
         f"{-r['val_acc_drop_pp']:+.2f} pp"),
        (f"test {_accuracy(report)} (%)", num(d["test_acc"], ".2f"), num(c["test_acc"], ".2f"),
         f"{-r['test_acc_drop_pp']:+.2f} pp"),
        *[(f"{name} perplexity", num(d[k], ".3f"), num(c[k], ".3f"), f"{num(r.get(k + '_ratio'), '.3f')}x")
          for name, k in (("validation", "val_ppl"), ("test", "test_ppl")) if k in d and k in c],
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
