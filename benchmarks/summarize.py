"""From the runs of a comparison to what people read: rows (mean ± spread over seeds), goal verdicts,
ablation winners, the places where IDAP++ loses, a Markdown page and a plot. Every figure comes from the
payload that ``benchmarks.compare`` measured; nothing here is a constant about the results.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from benchmarks.methods import CONTROL, IDAP, IDAP_STAGE1, METHODS

SPEEDUP_FRACTION = 0.8  # goal: measured speed-up >= 0.8 x the MACs reduction
ACCURACY_GAP_PP = 1.0  # goal: within 1 pp of the dense model
SPREAD = "sample standard deviation over seeds"
TIMING_NOISE = 0.1  # the dense control (dense architecture) timing more than 10 % off the dense model: noisy run


# ---- rows --------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "min": min(values), "max": max(values)}


def _mean(runs: list[dict], key: str):
    values = [r.get(key) for r in runs if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (method, point on its axis): seeds pooled into mean and spread."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r.get("target"), r.get("blocks")), []).append(r)
    rows = []
    for (name, target, blocks), rs in groups.items():
        m = METHODS[name]
        point = f"{target:g}x MACs" if target is not None else (f"{blocks} blocks" if blocks is not None else "-")
        rows.append({
            "method": name, "label": m.label, "family": m.family, "axis": m.axis, "target": target,
            "blocks": blocks, "point": point, "seeds": sorted(r["seed"] for r in rs),
            "test_acc": _stats([r["test_acc"] for r in rs]), "val_acc": _stats([r["val_acc"] for r in rs]),
            "params": _mean(rs, "params"), "macs": _mean(rs, "macs"), "macs_reduction": _mean(rs, "macs_reduction"),
            "reached_target": None if target is None else all(r["reached_target"] for r in rs),
            "blocks_removed": sorted({len(r.get("blocks_removed", [])) for r in rs}),
            "total_steps": sorted({r["total_steps"] for r in rs}),
            "latency_ms_b1": _mean(rs, "latency_ms_b1"), "speedup_b1": _stats([r.get("speedup_b1") for r in rs]),
            "throughput_b64": _mean(rs, "throughput_b64"), "throughput_gain_b64": _mean(rs, "throughput_gain_b64"),
            "compress_seconds": _mean(rs, "compress_seconds"),
        })
    return rows


def _row(rows: list[dict], method: str, target: float | None = None, blocks: int | None = None) -> dict | None:
    for r in rows:
        if r["method"] == method and r["target"] == target and r["blocks"] == blocks:
            return r
    return None


def _acc(row: dict) -> float:
    return row["test_acc"]["mean"]


def _spread(*rows: dict, key: str = "test_acc") -> float | None:
    stds = [r[key]["std"] for r in rows if r[key]["std"] is not None]
    return max(stds) if stds else None


# ---- verdicts ----------------------------------------------------------------------------------------
def _verdict(goal: str, met: bool | None, detail: str) -> dict:
    return {"goal": goal, "status": {True: "met", False: "not met", None: "not determined"}[met], "detail": detail}


def _stage1_speedup_at(rows: list[dict], acc: float) -> tuple[float | None, str]:
    """Stage 1 alone's speed-up at a given test accuracy, interpolated along its accuracy-vs-speed-up curve."""
    pts = sorted((_acc(r), r["speedup_b1"]["mean"]) for r in rows
                 if r["method"] == IDAP_STAGE1 and r["speedup_b1"]["mean"] is not None)
    if not pts:
        return None, "stage 1 alone was not run"
    if acc > pts[-1][0]:
        return pts[-1][1], (f"stage 1 alone never reached {acc:.2f}%; its most accurate point "
                            f"({pts[-1][0]:.2f}%) runs {pts[-1][1]:.2f}x, an upper bound")
    if acc < pts[0][0]:
        return None, f"stage 1 alone was not run at an accuracy as low as {acc:.2f}% (lowest: {pts[0][0]:.2f}%)"
    for (a0, s0), (a1, s1) in zip(pts, pts[1:], strict=False):
        if a0 <= acc <= a1:
            s = s0 if a1 == a0 else s0 + (s1 - s0) * (acc - a0) / (a1 - a0)
            return s, f"stage 1 alone, interpolated at {acc:.2f}%: {s:.2f}x"
    return pts[-1][1], f"stage 1 alone at {pts[-1][0]:.2f}%: {pts[-1][1]:.2f}x"


def goals(rows: list[dict], dense: dict, target: float) -> list[dict]:
    """The issue's goals at ``target`` x fewer MACs, each met / not met / not determined, with the numbers."""
    idap = _row(rows, IDAP, target)
    if idap is None:
        return [_verdict(f"goals at {target:g}x", None, f"IDAP++ was not run at {target:g}x in this run")]
    out = []
    tp = [r for r in rows if r["family"] == "torch-pruning" and r["target"] == target]
    margins = [f"{_acc(idap) - _acc(r):+.2f} pp vs {r['method']}" for r in tp]
    spread = _spread(idap, *tp)
    out.append(_verdict(
        f"IDAP++ test accuracy above every Torch-Pruning criterion's at {target:g}x",
        all(_acc(idap) > _acc(r) for r in tp) if tp else None,
        (f"IDAP++ {_acc(idap):.2f}%: " + ", ".join(margins) if tp else "no Torch-Pruning criterion was run")
        + (f" (largest seed spread {spread:.2f} pp)" if spread is not None else " (one seed: no spread)")))
    control = _row(rows, CONTROL)
    ref, ref_name = dense["test_acc"], "dense"
    if control is not None and _acc(control) > ref:
        ref, ref_name = _acc(control), "dense control"
    gap = ref - _acc(idap)
    out.append(_verdict(
        f"IDAP++ within {ACCURACY_GAP_PP:g} pp of the dense model at {target:g}x", gap <= ACCURACY_GAP_PP,
        f"{gap:.2f} pp below the {ref_name} ({ref:.2f}%; dense {dense['test_acc']:.2f}%"
        + (f", dense control {_acc(control):.2f}%" if control is not None else "") + ")"))
    sp, mr = idap["speedup_b1"]["mean"], idap["macs_reduction"]
    out.append(_verdict(
        f"IDAP++ measured CPU speed-up >= {SPEEDUP_FRACTION} x the MACs reduction at {target:g}x",
        None if sp is None else sp >= SPEEDUP_FRACTION * mr,
        "not timed" if sp is None else
        f"batch-1 speed-up {sp:.2f}x for {mr:.2f}x fewer MACs (ratio {sp / mr:.2f}); batch-64 throughput "
        f"gain {idap['throughput_gain_b64']:.2f}x"))
    if sp is None:
        out.append(_verdict("stage 2 adds speed-up that stage 1 alone does not reach at the same accuracy", None,
                            "not timed"))
    else:
        s1, how = _stage1_speedup_at(rows, _acc(idap))
        same = _row(rows, IDAP_STAGE1, target)
        extra = "" if same is None or same["speedup_b1"]["mean"] is None else (
            f"; at equal MACs stage 1 alone: {_acc(same):.2f}% at {same['speedup_b1']['mean']:.2f}x")
        out.append(_verdict(
            "stage 2 adds speed-up that stage 1 alone does not reach at the same accuracy",
            None if s1 is None else sp > s1,
            f"IDAP++ {_acc(idap):.2f}% at {sp:.2f}x; {how}{extra}"))
    return out


def losses(rows: list[dict]) -> list[str]:
    """Every comparison at equal MACs (or equal depth) where IDAP++ is not ahead."""
    out = []
    for idap in (r for r in rows if r["method"] == IDAP):
        for r in rows:
            if r["axis"] != "macs" or r["method"] == IDAP or r["target"] != idap["target"]:
                continue
            if _acc(r) >= _acc(idap):
                out.append(f"at {idap['point']}: {r['label']} is as accurate or more ({_acc(r):.2f}% vs "
                           f"{_acc(idap):.2f}%, {_acc(r) - _acc(idap):+.2f} pp)")
            s, si = r["speedup_b1"]["mean"], idap["speedup_b1"]["mean"]
            if s is not None and si is not None and s > si and r["family"] == "torch-pruning":
                out.append(f"at {idap['point']}: {r['label']} runs faster ({s:.2f}x vs {si:.2f}x batch-1 speed-up)")
    for ours in (r for r in rows if r["method"] == "depth-divergence"):
        for r in rows:
            if r["axis"] == "blocks" and r["method"] != ours["method"] and r["blocks"] == ours["blocks"]:
                if _acc(r) >= _acc(ours):
                    out.append(f"at {ours['point']} removed: {r['label']} is as accurate or more "
                               f"({_acc(r):.2f}% vs {_acc(ours):.2f}%)")
    return out


def pareto(rows: list[dict]) -> list[str]:
    """Accuracy against measured batch-1 speed-up, the trade users buy: for each IDAP++ point, the Torch-Pruning
    points it dominates (at least as fast and as accurate, better in one) and those that dominate it."""
    out = []
    peers = [r for r in rows if r["family"] == "torch-pruning" and r["speedup_b1"]["mean"] is not None]
    for ours in (r for r in rows if r["method"] == IDAP and r["speedup_b1"]["mean"] is not None):
        s, a = ours["speedup_b1"]["mean"], _acc(ours)

        def name(r):
            return f"{r['label']} {r['point']} ({_acc(r):.2f}%, {r['speedup_b1']['mean']:.2f}x)"

        beats = [name(r) for r in peers if s >= r["speedup_b1"]["mean"] and a >= _acc(r)
                 and (s > r["speedup_b1"]["mean"] or a > _acc(r))]
        beaten = [name(r) for r in peers if r["speedup_b1"]["mean"] >= s and _acc(r) >= a
                  and (r["speedup_b1"]["mean"] > s or _acc(r) > a)]
        faster = [r for r in peers if r["speedup_b1"]["mean"] > s]
        line = f"IDAP++ {ours['point']} ({a:.2f}%, {s:.2f}x): "
        line += (f"dominated by {'; '.join(beaten)}" if beaten else "no Torch-Pruning point is both as fast and as "
                 "accurate")
        line += f"; it dominates {len(beats)} of {len(peers)} Torch-Pruning points"
        if not faster:
            line += " and is faster than all of them"
        out.append(line)
    return out


def ablations(rows: list[dict]) -> list[dict]:
    """Each spec choice vs its alternative flag, decided on validation accuracy (never on test)."""
    out = []
    for r in rows:
        m = METHODS[r["method"]]
        if m.ablates is None:
            continue
        base = _row(rows, IDAP, r["target"])
        if base is None:
            continue
        field, parity, alt = m.ablates
        diff = r["val_acc"]["mean"] - base["val_acc"]["mean"]
        spread = _spread(r, base, key="val_acc")
        if spread is None or abs(diff) <= spread:
            winner = "tie (within spread)" if spread is not None else "undecided (one seed)"
            advice = (f"keep {field}={parity}: the difference is within the seed spread" if spread is not None
                      else f"run more seeds; {'the alternative' if diff > 0 else 'the default'} is ahead")
        else:
            winner = alt if diff > 0 else parity
            advice = f"make {field}={alt} the default" if diff > 0 else f"keep {field}={parity}"
        out.append({"choice": field, "spec_default": parity, "alternative": alt, "point": r["point"],
                    "val_default": base["val_acc"]["mean"], "val_alternative": r["val_acc"]["mean"],
                    "val_diff_pp": diff, "test_diff_pp": _acc(r) - _acc(base), "spread_pp": spread,
                    "winner": winner, "advice": advice})
    return out


def timing_warnings(rows: list[dict]) -> list[str]:
    """The control has the dense architecture, so its speed-up should be 1: how far it is off says how noisy timing was."""
    control = _row(rows, CONTROL)
    sp = None if control is None else control["speedup_b1"]["mean"]
    gain = None if control is None else control["throughput_gain_b64"]
    out = []
    for what, v in (("batch-1 speed-up", sp), ("batch-64 throughput gain", gain)):
        if v is not None and abs(v - 1) > TIMING_NOISE:
            out.append(f"the dense control has the dense architecture but timed a {what} of {v:.2f}x: timings in "
                       f"this run are noisy by that much (shared machine?); rerun the timing before trusting "
                       f"speed-up verdicts")
    return out


def budget_check(runs: list[dict], total_budget: int) -> list[str]:
    return [f"{r['key']}: {r['total_steps']} steps ({r['recovery_steps']} recovery + {r['finetune_steps']} fine-tune)"
            for r in runs if r["total_steps"] != total_budget]


# ---- Markdown --------------------------------------------------------------------------------------
def _pm(s: dict, fmt: str = ".2f") -> str:
    if s["mean"] is None:
        return "n/a"
    return format(s["mean"], fmt) + (f" ± {format(s['std'], fmt)}" if s["std"] is not None else "")


def _f(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _table(rows: list[dict], dense: dict) -> list[str]:
    lines = ["| method | point | seeds | test acc (%) | vs dense (pp) | val acc (%) | params | MACs | MACs ×fewer "
             "| reached | latency b1 (ms) | speed-up b1 | img/s b64 | throughput gain | compress (s) | steps |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|",
             f"| dense | - | - | {dense['test_acc']:.2f} | 0.00 | {dense['val_acc']:.2f} | {dense['params']:,} | "
             f"{dense['macs']:,} | 1.00 | - | {_f(dense.get('latency_ms_b1'), '.3f')} | 1.00 | "
             f"{_f(dense.get('throughput_b64'), ',.0f')} | 1.00 | {_f(dense.get('train_seconds'), '.0f')} (training) "
             f"| {dense.get('train_steps', 'n/a')} (training) |"]
    for r in rows:
        reached = {None: "-", True: "yes", False: "**no**"}[r["reached_target"]]
        lines.append(
            f"| {r['label']} | {r['point']} | {len(r['seeds'])} | {_pm(r['test_acc'])} | "
            f"{_acc(r) - dense['test_acc']:+.2f} | {_pm(r['val_acc'])} | {r['params']:,.0f} | {r['macs']:,.0f} | "
            f"{r['macs_reduction']:.2f} | {reached} | {_f(r['latency_ms_b1'], '.3f')} | {_pm(r['speedup_b1'])} | "
            f"{_f(r['throughput_b64'], ',.0f')} | {_f(r['throughput_gain_b64'], '.2f')} | "
            f"{_f(r['compress_seconds'], '.0f')} | {'/'.join(map(str, r['total_steps']))} |")
    return lines


def _where(payload: dict) -> list[tuple[str, str]]:
    """Which hardware trained the dense model and ran the jobs, when the results record it (jobs can run on a
    GPU machine and be timed on the CPU machine named above; the compression wall times are that machine's)."""
    places = sorted({r["compressed_on"] for r in payload["runs"] if r.get("compressed_on")})
    out = []
    if payload["dense"].get("trained_on"):
        out.append(("dense model trained on", payload["dense"]["trained_on"]))
    if places:
        out.append(("compression, recovery and accuracy measured on", "; ".join(places)
                     + " (compression wall times are that machine's)"))
    return out


def published_lines(preset: dict, rows: list[dict], dense: dict) -> list[str]:
    """Published figures for the preset's setting (``preset.extra["published"]``) beside ours at that target."""
    pub = (preset.get("extra") or {}).get("published")
    if not pub:
        return []
    lines = ["", f"## Beside published figures ({pub['source']})", "", pub["caveat"], "",
             "| method | dense test acc (%) | compressed test acc (%) | drop (pp) | MACs ×fewer |",
             "|---|---:|---:|---:|---:|"]
    for row in pub["rows"]:
        lines.append(f"| {row['method']} — published | {pub['dense']:.2f} | {row['acc']:.2f} | "
                     f"{row['acc'] - pub['dense']:+.2f} | {row['macs_reduction']:.2f} |")
    for method in pub.get("ours", ()):
        r = _row(rows, method, pub["target"])
        if r is not None:
            lines.append(f"| {r['label']} — this run | {dense['test_acc']:.2f} | {_acc(r):.2f} | "
                         f"{_acc(r) - dense['test_acc']:+.2f} | {_f(r['macs_reduction'], '.2f')} |")
    return lines


def render_markdown(payload: dict, image: str | None) -> str:
    p, m, dense = payload["preset"], payload["machine"], payload["dense"]
    rows = aggregate(payload["runs"])
    lines = [f"# Peer comparison — `{payload['stem']}`", "",
             f"{p['note']}.", "",
             f"Reproduce: `{payload.get('command') or 'python -m benchmarks.compare --preset ' + p['name']}`", "",
             f"Status: **{payload['status']}**.", ""]
    if payload["status"] == "complete":
        g = goals(rows, dense, p["goal_target"])
        lines += [f"## Goals ({p['model']} on {p['dataset']}, judged at {p['goal_target']:g}x fewer MACs)", "",
                  "| goal | verdict | numbers |", "|---|---|---|"]
        lines += [f"| {v['goal']} | **{v['status']}** | {v['detail']} |" for v in g]
        lines += [""] + [f"> **Timing warning:** {w}" for w in timing_warnings(rows)]
        lost = losses(rows)
        lines += ["", "### Where IDAP++ loses", ""] + ([f"- {s}" for s in lost] or ["- nowhere in this run"])
        front = pareto(rows)
        if front:
            lines += ["", "### Accuracy vs measured speed-up (batch 1, both better or equal = dominates)", ""]
            lines += [f"- {s}" for s in front]
    lines += ["", "## Results", "",
              f"Test accuracy: mean ± {SPREAD} ({len(p['seeds'])} seed(s): {', '.join(map(str, p['seeds']))}). Every method: the same dense "
              f"model, schedule (p0={p['p0']}, T={p['filter_steps']}, α={p['alpha']}), {p['step_budget']} recovery "
              f"steps per pruning step and **{p['total_budget']} optimizer steps in all** (recovery + final fine-tune, "
              f"batch {p['batch_size']}); the dense control trains {p['total_budget']} steps with plain CE. "
              f"Accuracy budget off (Δ = ε = 100 pp) so every method reaches its target. IDAP++: stage 1 to "
              f"target^{1 - p['target_share']:.2f}, then stage 2 (K ≤ {p['max_blocks']}): "
              f"{payload.get('procedure', {}).get('stage2', 'blocks until the target')}. In-stage "
              f"evaluations use {p['stage_val_size']} validation samples; the table uses all "
              f"{p['validation_size']} validation and the full test split.", ""]
    lines += _table(rows, dense)
    lines += published_lines(p, rows, dense)
    if _row(rows, CONTROL) is not None:
        lines += ["", "The dense control has the dense architecture: its speed-up and throughput gain show the timing "
                  "noise on this machine."]
    if image:
        lines += ["", f"![test accuracy vs MACs]({image})"]
    abl = ablations(rows)
    if abl:
        lines += ["", "## Ablations: IDAP++ as benchmarked against each alternative (decided on validation accuracy)", "",
                  "The advice is for the benchmarked configuration; the library's own defaults are in idap/config.py.", "",
                  "| choice | at | benchmarked | alternative | val benchmarked (%) | val alternative (%) | Δ val (pp) "
                  "| Δ test (pp) | seed spread (pp) | winner | advice |", "|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
        lines += [f"| `{a['choice']}` | {a['point']} | {a['spec_default']} | {a['alternative']} | "
                  f"{a['val_default']:.2f} | {a['val_alternative']:.2f} | {a['val_diff_pp']:+.2f} | "
                  f"{a['test_diff_pp']:+.2f} | {_f(a['spread_pp'], '.2f')} | {a['winner']} | {a['advice']} |"
                  for a in abl]
    over = budget_check(payload["runs"], p["total_budget"])
    lines += ["", "## Budget parity", "",
              f"Every run must spend exactly {p['total_budget']} optimizer steps. "
              + ("All did." if not over else "These did not (recovery alone exceeded the total): " + "; ".join(over))]
    plan = payload.get("plan", {})
    est = plan.get("estimated_seconds", {})
    lines += ["", "## Machine and run", "",
              f"- CPU: {m['cpu']} ({m['cores']} cores), torch {m['torch']} with {m['torch_threads']} thread(s), "
              f"torch-pruning {m['torch_pruning']}, Python {m['python']}; training on `{m['device']}`"
              + (f" ({m['gpu']})" if m.get("gpu") else ""),
              *[f"- {what}: {where}" for what, where in _where(payload)],
              f"- date {m['date']}, git commit `{m['git_commit']}`" + (" (idap/ or benchmarks/ modified)"
                                                                      if m.get("git_dirty") else ""),
              f"- load average at start {m['load_average']}" + (f", around the timing {m['load_average_during_timing']}"
                                                                 if m.get("load_average_during_timing") else "")
              + " — other work on the machine slows and blurs timings",
              f"- latency: batch 1, throughput: batch 64, all final models timed together, interleaved, median of "
              f"{p['speed_rounds']} rounds × {p['speed_repeats']} repeats (idap.report.measure_speed)",
              f"- dense: {p['train_epochs']} epochs on {dense.get('settings', {}).get('train_limit') or 'all'} train "
              f"samples, {_f(dense.get('train_seconds'), '.0f')} s (cached between runs)",
              f"- plan: {plan.get('jobs', '?')} jobs, {plan.get('optimizer_steps_to_run', '?')} compression steps to "
              f"run, estimated {_f(est.get('total') and est['total'] / 60, '.0f')} min; this invocation took "
              f"{_f(payload.get('wall_seconds') and payload['wall_seconds'] / 60, '.1f')} min; all runs together "
              f"(cached ones included) {sum(r['compress_seconds'] + r['eval_seconds'] for r in payload['runs']) / 60:.1f}"
              f" min of compression and evaluation", ""]
    return "\n".join(lines)


# ---- plot --------------------------------------------------------------------------------------------
def plot_accuracy_vs_macs(payload: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, dense = aggregate(payload["runs"]), payload["dense"]
    timed = all(r["speedup_b1"]["mean"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(15 if timed else 8, 5.5), squeeze=False)
    names = list(dict.fromkeys(r["method"] for r in rows))
    colours = dict(zip(names, plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2], strict=False))
    panels = [(axes[0][0], lambda r: r["macs"] / 1e6, dense["macs"] / 1e6, "MACs per sample (millions)", "MACs")]
    if timed:
        panels.append((axes[0][1], lambda r: r["speedup_b1"]["mean"], 1.0,
                       "measured CPU speed-up at batch 1 (x, dense = 1)", "measured speed-up"))
    for ax, x_of, dense_x, xlabel, what in panels:
        for name in names:
            rs = sorted((r for r in rows if r["method"] == name), key=lambda r: -r["macs"])
            m = METHODS[name]
            if m.axis == "control":
                ax.axhline(_acc(rs[0]), color="grey", ls=":", lw=1, label=f"{m.label} ({_acc(rs[0]):.2f}%)")
                continue
            style = {"idap": "-", "torch-pruning": "-", "depth": "--", "ablation": ":"}[m.family]
            marker = "s" if m.family == "depth" else ("D" if m.family == "idap" else "o")
            ax.errorbar([x_of(r) for r in rs], [_acc(r) for r in rs],
                        yerr=[r["test_acc"]["std"] or 0 for r in rs], ls=style, marker=marker, capsize=3,
                        lw=2.2 if m.family == "idap" else 1.2, color=colours[name], label=m.label)
        ax.plot([dense_x], [dense["test_acc"]], "k*", ms=12, label="dense")
        # a collapsed run (tens of pp down) would squash every other line: cut the axis, say what is below it
        floor = dense["test_acc"] - 8
        below = [r for r in rows if _acc(r) < floor]
        if below:
            ax.set_ylim(bottom=floor - 0.5)
            ax.text(0.99, 0.01, "below the axis: " + "; ".join(f"{r['label']} {r['point']} {_acc(r):.1f}%"
                                                              for r in below),
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=6, color="dimgrey")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{payload['stem']}: test accuracy vs {what}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(payload: dict, out: Path, stem: str, *, plot: bool = True) -> dict[str, Path]:
    """``<out>/<stem>.json``, ``.md`` and (with ``plot``) ``.png``; rows, goals and ablations are in the JSON too."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    rows = aggregate(payload["runs"])
    image = None
    if plot and rows:
        paths["plot"] = plot_accuracy_vs_macs(payload, out / f"{stem}.png")
        image = paths["plot"].name
    full = {**payload, "rows": rows, "ablations": ablations(rows)}
    if payload["status"] == "complete":
        full["goals"] = goals(rows, payload["dense"], payload["preset"]["goal_target"])
        full["losses"] = losses(rows)
        full["pareto"] = pareto(rows)
        full["timing_warnings"] = timing_warnings(rows)
    full["budget_violations"] = budget_check(payload["runs"], payload["preset"]["total_budget"])
    _atomic(paths["json"], json.dumps(full, indent=2, default=str))
    _atomic(paths["markdown"], render_markdown(payload, image))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Re-render the Markdown and the plot of a results JSON (after a change here; nothing is re-measured)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.summarize", description=main.__doc__)
    p.add_argument("results", nargs="+", type=Path, help="benchmarks/results/<stem>.json")
    args = p.parse_args(argv)
    for path in args.results:
        payload = json.loads(path.read_text())
        payload = {k: v for k, v in payload.items() if k not in ("rows", "ablations", "goals", "losses", "pareto",
                                                                  "timing_warnings", "budget_violations")}
        written = write_results(payload, path.parent, payload["stem"], plot=payload["status"] == "complete")
        print(" ".join(str(v) for v in written.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
