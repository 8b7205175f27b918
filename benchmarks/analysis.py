"""The analysis of a comparison's runs: rows (mean ± spread over seeds), goal verdicts, ablation winners,
the places where IDAP++ loses, the Pareto front and the checks on timings and budgets. Every figure comes
from the payload that ``benchmarks.compare`` measured; nothing here is a constant about the results.
"""

from __future__ import annotations

import statistics

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
        groups.setdefault((r["method"], r.get("target"), r.get("blocks"), r.get("budget")), []).append(r)
    rows = []
    for (name, target, blocks, budget), rs in groups.items():
        m = METHODS[name]
        point = (f"{budget:g} pp budget" if budget is not None else f"{target:g}x MACs" if target is not None
                 else f"{blocks} blocks" if blocks is not None else "-")
        rows.append({
            "method": name, "label": m.label, "family": m.family, "axis": m.axis, "target": target,
            "blocks": blocks, "budget": budget, "point": point, "seeds": sorted(r["seed"] for r in rs),
            "test_acc": _stats([r["test_acc"] for r in rs]), "val_acc": _stats([r["val_acc"] for r in rs]),
            "params": _mean(rs, "params"), "macs": _mean(rs, "macs"), "macs_reduction": _mean(rs, "macs_reduction"),
            "macs_reduction_stats": _stats([r.get("macs_reduction") for r in rs]),
            "params_reduction": _mean(rs, "params_reduction"),
            "ort_speedup_b1": _mean(rs, "ort_speedup_b1"),
            "reached_target": None if target is None else all(r["reached_target"] for r in rs),
            "blocks_removed": sorted({len(r.get("blocks_removed", [])) for r in rs}),
            "total_steps": sorted({r["total_steps"] for r in rs}),
            "latency_ms_b1": _mean(rs, "latency_ms_b1"), "speedup_b1": _stats([r.get("speedup_b1") for r in rs]),
            "throughput_b64": _mean(rs, "throughput_b64"), "throughput_gain_b64": _mean(rs, "throughput_gain_b64"),
            "compress_seconds": _mean(rs, "compress_seconds"),
        })
    return rows


def _row(rows: list[dict], method: str, target: float | None = None, blocks: int | None = None,
         budget: float | None = None) -> dict | None:
    for r in rows:
        if (r["method"] == method and r["target"] == target and r["blocks"] == blocks
                and r.get("budget") == budget):
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


def budget_goals(rows: list[dict], dense: dict, budget: float | None) -> list[dict]:
    """Budget mode's goal: within the budget, IDAP++ reaches a larger measured batch-1 speed-up and a larger
    MACs reduction than every Torch-Pruning criterion (means over seeds; the spread is shown)."""
    if budget is None:
        return []
    idap = _row(rows, IDAP, budget=budget)
    tp = [r for r in rows if r["family"] == "torch-pruning" and r.get("budget") == budget]
    if idap is None or not tp:
        return [_verdict(f"budget mode at {budget:g} pp", None, "IDAP++ or every Torch-Pruning criterion missing")]
    out = []
    for key, what in (("macs_reduction", "MACs reduction"), ("speedup", "measured batch-1 speed-up")):
        def value(r, key=key):
            return r["macs_reduction"] if key == "macs_reduction" else r["speedup_b1"]["mean"]

        if value(idap) is None or any(value(r) is None for r in tp):
            out.append(_verdict(f"budget {budget:g} pp: IDAP++ {what} above every criterion's", None, "not timed"))
            continue
        out.append(_verdict(
            f"budget {budget:g} pp: IDAP++ {what} above every Torch-Pruning criterion's",
            all(value(idap) > value(r) for r in tp),
            f"IDAP++ {value(idap):.2f}x: " + ", ".join(f"{r['method']} {value(r):.2f}x" for r in tp)))
    drops = ", ".join(f"{r['method']} {dense['val_acc'] - r['val_acc']['mean']:+.2f}" for r in [idap, *tp]
                      if r["val_acc"]["mean"] is not None)
    out.append(_verdict(f"budget {budget:g} pp: every final model within the budget on validation",
                        all(dense["val_acc"] - r["val_acc"]["mean"] <= budget + 1e-9 for r in [idap, *tp]),
                        f"validation drops (pp): {drops}"))
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
