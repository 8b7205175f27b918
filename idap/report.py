"""What a run produces besides the model: measured figures, report.json, report.md and plots (spec §5)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from idap.data import DataSplits
from idap.metrics import accuracy, count_macs, count_params, measure_latency, measure_throughput

# A measured speed-up below this fraction of the MACs reduction is flagged: MACs are only a proxy.
SPEEDUP_AGREEMENT = 0.8


def evaluate_model(model: nn.Module, data: DataSplits, *, batch_size: int = 512, device=None) -> dict:
    """Accuracy on validation and test (percent), params and MACs at the dataset's input size."""
    shape = (data.in_channels, data.image_size, data.image_size)
    return {
        "val_acc": accuracy(model, data.val_x, data.val_y, batch_size=batch_size, device=device),
        "test_acc": accuracy(model, data.test_x, data.test_y, batch_size=batch_size, device=device),
        "params": count_params(model),
        "macs": count_macs(model, shape),
    }


def measure_speed(models: dict[str, nn.Module], input_shape: Sequence[int], *, rounds: int = 3,
                  repeats: int = 30) -> dict[str, dict]:
    """Batch-1 latency and batch-64 throughput, models interleaved round by round, medians reported."""
    lat: dict[str, list[float]] = {k: [] for k in models}
    thr: dict[str, list[float]] = {k: [] for k in models}
    info: dict[str, dict] = {}
    for model in models.values():  # a discarded warm-up round: first calls pay allocator and kernel setup
        measure_latency(model, input_shape, repeats=3)
    for _ in range(rounds):
        for name, model in models.items():
            r1 = measure_latency(model, input_shape, repeats=repeats)
            r64 = measure_throughput(model, input_shape, repeats=max(5, repeats // 3))
            lat[name].append(r1["median_ms"])
            thr[name].append(r64["samples_per_s"])
            info[name] = {"threads": r1.get("threads"), "device": r1.get("device")}
    return {k: {"latency_ms_b1": statistics.median(lat[k]), "throughput_b64": statistics.median(thr[k]), **info[k]}
            for k in models}


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
            "val_acc_drop_pp": dense["val_acc"] - compressed["val_acc"],
            "test_acc_drop_pp": dense["test_acc"] - compressed["test_acc"],
        },
        "warnings": [],
        "trajectory": steps,
        "removed_blocks": list(removed_blocks),
        "recipe": recipe,
    }
    budget = recipe.get("max_accuracy_drop")
    report["within_budget"] = None if budget is None else report["ratios"]["val_acc_drop_pp"] <= budget + 1e-9
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
        "",
        f"Timings on {c.get('device', '?')} with {c.get('threads', '?')} threads, models interleaved, medians.",
        "",
    ]
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
                       batch_size: int = 512, device=None, extra: dict | None = None) -> dict:
    """Evaluate both models, time them interleaved, and build the report."""
    dense_m = evaluate_model(dense, data, batch_size=batch_size, device=device)
    comp_m = evaluate_model(compressed, data, batch_size=batch_size, device=device)
    if latency:
        speed = measure_speed({"dense": dense, "compressed": compressed}, (data.in_channels, data.image_size, data.image_size))
        dense_m.update(speed["dense"])
        comp_m.update(speed["compressed"])
    dense_w, comp_w = layer_widths(dense), layer_widths(compressed)
    removed = [n for n, m in compressed.named_modules() if isinstance(m, nn.Identity)
               and not isinstance(dict(dense.named_modules()).get(n), nn.Identity)]
    return build_report(
        dense=dense_m, compressed=comp_m, steps=steps, recipe=recipe, dataset=data.describe(),
        model_name=getattr(dense, "idap_arch", {}).get("name", type(dense).__name__), profile=profile,
        widths={"dense": dense_w, "compressed": {n: comp_w.get(n, 0) for n in dense_w}}, removed_blocks=removed,
        extra=extra)
