"""The pages people read: the Markdown results page and the accuracy-vs-MACs plot of a comparison."""

from __future__ import annotations

from pathlib import Path

from benchmarks.analysis import (
    SPREAD,
    _acc,
    _row,
    ablations,
    aggregate,
    budget_check,
    budget_goals,
    goals,
    losses,
    pareto,
    timing_warnings,
)
from benchmarks.methods import CONTROL, METHODS


def _pm(s: dict, fmt: str = ".2f") -> str:
    if s["mean"] is None:
        return "n/a"
    return format(s["mean"], fmt) + (f" ± {format(s['std'], fmt)}" if s["std"] is not None else "")


def _f(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _modes(p: dict, payload: dict) -> str:
    """How the runs were held: at MACs targets (budget off), in budget mode (no target), or both."""
    out = []
    if p.get("targets"):
        out.append(f"At a MACs target the accuracy budget is off (Δ = ε = 100 pp) so every method reaches its target; "
                   f"IDAP++: stage 1 to target^{1 - p['target_share']:.2f}, then stage 2 (K ≤ {p['max_blocks']}): "
                   f"{payload.get('procedure', {}).get('stage2', 'blocks until the target')}.")
    if p.get("budget_pp") is not None:
        out.append(f"Budget mode ({p['budget_pp']:g} pp): no target; a pruning step that leaves validation accuracy more "
                   f"than {p['budget_pp']:g} pp below dense is rolled back and ends stage 1; IDAP++'s stage 2 keeps a "
                   "block only within its ε rule; IDAP++ ranks channels by raw scores (the spec's ranking).")
    return " ".join(out)


def _table(rows: list[dict], dense: dict) -> list[str]:
    lines = ["| method | point | seeds | test acc (%) | vs dense (pp) | val acc (%) | params | MACs | MACs ×fewer "
             "| reached | latency b1 (ms) | speed-up b1 | ORT speed-up b1 | img/s b64 | throughput gain | compress (s) | steps |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|---:|",
             f"| dense | - | - | {dense['test_acc']:.2f} | 0.00 | {dense['val_acc']:.2f} | {dense['params']:,} | "
             f"{dense['macs']:,} | 1.00 | - | {_f(dense.get('latency_ms_b1'), '.3f')} | 1.00 | 1.00 | "
             f"{_f(dense.get('throughput_b64'), ',.0f')} | 1.00 | {_f(dense.get('train_seconds'), '.0f')} (training) "
             f"| {dense.get('train_steps', 'n/a')} (training) |"]
    for r in rows:
        reached = {None: "-", True: "yes", False: "**no**"}[r["reached_target"]]
        lines.append(
            f"| {r['label']} | {r['point']} | {len(r['seeds'])} | {_pm(r['test_acc'])} | "
            f"{_acc(r) - dense['test_acc']:+.2f} | {_pm(r['val_acc'])} | {r['params']:,.0f} | {r['macs']:,.0f} | "
            f"{r['macs_reduction']:.2f} | {reached} | {_f(r['latency_ms_b1'], '.3f')} | {_pm(r['speedup_b1'])} | "
            f"{_f(r.get('ort_speedup_b1'), '.2f')} | {_f(r['throughput_b64'], ',.0f')} | {_f(r['throughput_gain_b64'], '.2f')} | "
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
        lines += [f"| {v['goal']} | **{v['status']}** | {v['detail']} |"
                  for v in budget_goals(rows, dense, p.get("budget_pp"))]
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
              f"{_modes(p, payload)} In-stage evaluations use {p['stage_val_size']} validation samples; the table "
              f"uses all {p['validation_size']} validation and the full test split.", ""]
    lines += _table(rows, dense)
    if dense.get("val_curve"):  # converged presets: did the dense model plateau before anyone pruned it
        pl = dense["plateau"]
        lines += ["", f"Dense validation accuracy after each training epoch (%): {', '.join(f'{v:.2f}' for v in dense['val_curve'])}"
                  f" — plateau (moved < {pl['within_pp']:g} pp over the last {pl['last_epochs']} epochs): "
                  f"**{'reached' if pl['reached'] else 'not reached'}** ({_f(pl['moved_pp'], '.2f')} pp)."]
    lines += published_lines(p, rows, dense)
    if _row(rows, CONTROL) is not None:
        lines += ["", "The dense control has the dense architecture: its speed-up and throughput gain show the timing "
                  "noise on this machine."]
    if image:
        lines += ["", f"![test accuracy vs MACs]({image})"]
    abl = ablations(rows)
    if abl:
        lines += ["", "## Ablations: IDAP++ as benchmarked against each alternative (decided on validation accuracy)", "",
                  "The advice is for the benchmarked configuration; the library's own defaults are in idap/prune/config.py.", "",
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
              f"{p['speed_rounds']} rounds × {p['speed_repeats']} repeats (idap.measure.speed.measure_speed)",
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
