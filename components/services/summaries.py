"""What a compression report says, in MLflow's terms: flat metrics, tags in words, Markdown descriptions.

One flattening of a report (``report_metrics``) serves the step runs, the pipeline's parent run and the
KFP Metrics artifact; ``summary_markdown`` is the parent run's description, ``version_description`` a
registered version's. Pure functions of the report: no MLflow calls here.
"""

from __future__ import annotations

from components.services.mlflow_backend import as_recipe, is_number


def report_metrics(report: dict) -> dict[str, float]:
    """Every number of a report, flat: ``dense_*`` / ``compressed_*``, the ratios, ``compress_seconds`` and
    ``target_met`` (1 / 0)."""
    out: dict[str, float] = {}
    for section in ("dense", "compressed"):
        out.update({f"{section}_{k}": float(v) for k, v in (report.get(section) or {}).items() if is_number(v)})
    out.update({k: float(v) for k, v in (report.get("ratios") or {}).items() if is_number(v)})
    if is_number(report.get("compress_seconds")):
        out["compress_seconds"] = float(report["compress_seconds"])
    if report.get("target_met") is not None:
        out["target_met"] = 1.0 if report["target_met"] else 0.0
    timing = report.get("time") or {}  # the time plan's estimate against the actual seconds
    out.update({f"time_{k}": float(v) for k in ("estimate_s", "actual_s", "budget_s", "estimate_error_pct")
                if is_number(v := timing.get(k))})
    return out


def report_tags(report: dict) -> dict:
    """What a report says in words, as run tags: the target verdict, what stopped the stages, the warnings."""
    tags = {}
    if report.get("target_met") is not None:
        tags["idap.target_met"] = str(report["target_met"]).lower()
    if report.get("target_met") is False:
        tags["idap.target_missed"] = next((w for w in report.get("warnings", []) if w.startswith("target not reached")),
                                          "target not reached")
    if report.get("stopped_by"):
        tags["idap.stopped_by"] = " | ".join(report["stopped_by"])
    if (report.get("time") or {}).get("budget_reached"):
        tags["idap.time_budget_reached"] = report["time"]["verdict"]
    if report.get("removed_blocks") is not None:
        tags["idap.removed_blocks"] = ", ".join(report["removed_blocks"]) or "none"
    if report.get("warnings"):
        tags["idap.report_warnings"] = " | ".join(report["warnings"])
    return tags


def summary_markdown(report: dict, recipe, registration: dict | None = None) -> str:
    """A few lines of Markdown: what was compressed, the headline changes, the verdict and the registry decision."""
    d, c, r = report["dense"], report["compressed"], report["ratios"]

    def x(v):
        return "n/a" if v is None else f"{v:.2f}x"

    lines = [f"**{report.get('model', '?')}** on **{(report.get('dataset') or {}).get('name', '?')}**, "
             f"recipe `{as_recipe(recipe).digest()[:12]}`: {x(r.get('macs_reduction'))} fewer MACs, "
             f"{x(r.get('params_reduction'))} fewer params, test accuracy {d['test_acc']:.2f}% → {c['test_acc']:.2f}% "
             f"({-r['test_acc_drop_pp']:+.2f} pp), validation {-r['val_acc_drop_pp']:+.2f} pp.", ""]
    if d.get("latency_ms_b1") is not None:
        lines += [f"Latency at batch 1: PyTorch {d['latency_ms_b1']:.3f} → {c['latency_ms_b1']:.3f} ms "
                  f"({x(r.get('speedup_b1'))})" + (
                      f", ONNX Runtime {d['ort_latency_ms_b1']:.3f} → {c['ort_latency_ms_b1']:.3f} ms "
                      f"({x(r.get('ort_speedup_b1'))})" if d.get("ort_latency_ms_b1") is not None else "") + ".", ""]
    removed = report.get("removed_blocks") or []
    lines += [f"Stage 2 removed {len(removed)} block(s)" + (f": {', '.join(removed)}." if removed else "."), ""]
    if report.get("target_met") is False:
        lines += [f"**Target not reached.** {next(w for w in report['warnings'] if w.startswith('target not'))}", ""]
    elif report.get("stopped_by"):
        lines += ["Stopped by: " + "; ".join(report["stopped_by"]) + ".", ""]
    if report.get("within_budget") is False:
        lines += ["**Over the accuracy budget.**", ""]
    if registration:
        lines += [f"Registered as `{registration.get('name')}` version {registration.get('version')}: "
                  f"**{registration.get('decision')}** — {registration.get('reason')}.", ""]
    return "\n".join(lines).strip() + "\n"


def version_description(*, report: dict, recipe, base_model: str, dataset: dict, decision: dict, objective: str,
                        tolerance_pp: float) -> str:
    """The registered version's Markdown description: what was compressed from which base, the changes in
    accuracy, params, MACs and measured latency, the recipe digest, and why it is champion or challenger."""
    d, c, r = report["dense"], report["compressed"], report["ratios"]

    def x(v):
        return "n/a" if v is None else f"{v:.2f}x"

    def ms(v):
        return "n/a" if v is None else f"{v:.3f} ms"

    verdict = {"champion": "**champion**", "challenger": "**challenger**", "rejected": "**rejected** (stays challenger)"}
    lines = [
        f"IDAP++ compression of **{report.get('model', '?')}** on **{dataset.get('name', '?')}**, from base "
        f"`{base_model}`.",
        "",
        f"Decision: {verdict.get(decision['decision'], decision['decision'])} — {decision['reason']} "
        f"(objective {objective}, tolerance {tolerance_pp:g} pp).",
        "",
        "| | dense | compressed | change |",
        "|---|---:|---:|---:|",
        f"| test accuracy | {d['test_acc']:.2f}% | {c['test_acc']:.2f}% | {-r['test_acc_drop_pp']:+.2f} pp |",
        f"| validation accuracy | {d['val_acc']:.2f}% | {c['val_acc']:.2f}% | {-r['val_acc_drop_pp']:+.2f} pp |",
        f"| params | {d['params']:,} | {c['params']:,} | {x(r.get('params_reduction'))} fewer |",
        f"| MACs | {d['macs']:,} | {c['macs']:,} | {x(r.get('macs_reduction'))} fewer |",
    ]
    if d.get("latency_ms_b1") is not None:
        lines.append(f"| latency b1, PyTorch | {ms(d['latency_ms_b1'])} | {ms(c.get('latency_ms_b1'))} "
                     f"| {x(r.get('speedup_b1'))} faster |")
    if d.get("ort_latency_ms_b1") is not None:
        lines.append(f"| latency b1, ONNX Runtime | {ms(d['ort_latency_ms_b1'])} | {ms(c.get('ort_latency_ms_b1'))} "
                     f"| {x(r.get('ort_speedup_b1'))} faster |")
    removed = report.get("removed_blocks") or []
    lines += ["", f"Blocks removed: {', '.join(f'`{b}`' for b in removed) if removed else 'none'}. "
                  f"Recipe digest `{as_recipe(recipe).digest()}` (budget {as_recipe(recipe).max_accuracy_drop:g} pp)."]
    if report.get("target_met") is False:
        lines += ["", "**Target not reached:** " + next(w for w in report["warnings"] if w.startswith("target not"))
                  .split(": ", 1)[1]]
    return "\n".join(lines) + "\n"
