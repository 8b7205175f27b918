"""What a run produces besides the model: measured figures, report.json, report.md and plots (spec §5)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from idap.data.splits import DataSplits, sample_shape
from idap.measure.metrics import (
    accuracy,
    count_macs,
    count_params,
    uncounted_modules,
)
from idap.measure.speed import measure_speed
from idap.prune.state import within_budget
from idap.prune.timing import TIME_BUDGET_REACHED

# A measured speed-up below this fraction of the MACs reduction is flagged: MACs are only a proxy.
SPEEDUP_AGREEMENT = 0.8


def evaluate_model(model: nn.Module, data: DataSplits, *, batch_size: int = 512, device=None) -> dict:
    """Accuracy on validation and test (percent), params and MACs at the dataset's input size; for a language
    model (``idap.data.lm``) the accuracy is next-token top-1 and ``val_ppl`` / ``test_ppl`` are added."""
    from idap.measure.tokens import eval_batch_size, is_lm, lm_metrics

    shape, batch_size = sample_shape(data), eval_batch_size(data, batch_size)
    if is_lm(data):  # accuracy and perplexity from the same forward pass over each split
        out = lm_metrics(model, data, batch_size=batch_size, device=device)
    else:
        out = {"val_acc": accuracy(model, data.val_x, data.val_y, batch_size=batch_size, device=device),
               "test_acc": accuracy(model, data.test_x, data.test_y, batch_size=batch_size, device=device)}
    return {**out, "params": count_params(model), "macs": count_macs(model, shape)}


# A classifier within this many points of chance (100 / classes) has learned next to nothing: say so.
CHANCE_MARGIN_PP = 5.0


def chance_warning(metrics: dict, num_classes: int, *, what: str = "the model") -> str | None:
    """A sentence when ``metrics["val_acc"]`` is within CHANCE_MARGIN_PP of chance (a classifier), else None."""
    acc = metrics.get("val_acc")
    if acc is None or num_classes < 2 or "val_ppl" in metrics:  # a language model's token accuracy has no chance line
        return None
    chance = 100.0 / num_classes
    if acc > chance + CHANCE_MARGIN_PP:
        return None
    return (f"{what} reaches {acc:.2f} % validation accuracy, within {CHANCE_MARGIN_PP:g} pp of chance "
            f"({chance:.1f} % for {num_classes} classes): it has learned next to nothing; train longer "
            f"(more epochs or data) before compressing it")


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
            **{f"{s}_ppl_ratio": ratio(compressed[f"{s}_ppl"], dense[f"{s}_ppl"]) for s in ("val", "test")
               if f"{s}_ppl" in dense and f"{s}_ppl" in compressed},  # a language model: perplexity, x dense
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
    timing = report.get("time") or {}
    if timing.get("budget_reached"):
        report["warnings"].append(timing["verdict"])
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
    elif layer[-1]["action"] == "stop" and TIME_BUDGET_REACHED in layer[-1].get("note", ""):
        out.append(f"stage 2 (blocks): the time budget — no time left for another block after {removed} removed")
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
    if last["action"] == "stop" and TIME_BUDGET_REACHED in note:
        return f"the time budget — no time left for another step after {done} step(s)"
    if last["action"] == "stop" and "target reached" in note:
        return f"the target was reached after {done} step(s)"
    if n_steps is not None and done >= n_steps:
        return f"the schedule — all filter.steps={n_steps} steps were taken"
    return f"{done} step(s) kept, last: {last['action']} {note}".rstrip()


def fmt(v, spec=",.0f", none="n/a") -> str:
    """``v`` formatted with ``spec``; ``none`` for a missing value."""
    return none if v is None else format(v, spec)


def missed_target_message(report: dict) -> str:
    """One sentence: what was asked, what was reached, which limits stopped the run."""
    missed = [f"{t['target']:g}x fewer {TARGETS['target_' + key][1]} (reached {fmt(t['reached'], '.2f')}x)"
              for key, t in report.get("targets", {}).items() if not t["met"]]
    budget = report["recipe"].get("max_accuracy_drop")
    limits = "; ".join(report.get("stopped_by") or []) or "unknown"
    return (f"target not reached: asked for {' and '.join(missed)} within {budget} pp; stopped by: {limits}")


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
    from idap.bundle.format import BundleError
    from idap.bundle.onnx_export import export_onnx

    try:
        return {name: export_onnx(m.cpu(), directory / f"{name}.onnx", input_shape=shape) for name, m in models.items()}
    except (BundleError, ImportError) as error:
        notes.append(f"ONNX Runtime not timed: {error}")
        return {}
