"""The promotion rule, as pure functions of a version's figures (no MLflow calls).

A version may become ``champion`` only when (a) its validation accuracy drop from its own dense baseline
is within the recipe's ``max_accuracy_drop`` (``idap.prune.state.within_budget``, the rule the stages and the
report use) and (b) it beats the current champion on the objective: ``latency`` (lower measured batch-1
latency at a test accuracy no worse than the champion's minus ``tolerance_pp``), ``macs`` (fewer MACs,
same accuracy condition) or ``accuracy`` (higher test accuracy; a tie goes to the lower latency).

Figures come from a compression report (``report_figures``) when a version is registered and back from the
version's ``idap.*`` tags (``version_figures``) when the rule is applied later; ``components.services.registry``
applies the rule against the registry.
"""

from __future__ import annotations

from components.services.mlflow_backend import is_number

CHAMPION, CHALLENGER = "champion", "challenger"
OBJECTIVES = ("latency", "accuracy", "macs")


class PromotionError(ValueError):
    """A version cannot be registered or promoted; the message says which rule refused it."""


def check_rule_args(objective: str, tolerance_pp: float) -> None:
    if objective not in OBJECTIVES:
        raise PromotionError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not (is_number(tolerance_pp) and tolerance_pp >= 0):
        raise PromotionError(f"tolerance_pp must be a number >= 0 (percentage points), got {tolerance_pp!r}")


def report_figures(report: dict, recipe) -> dict:
    try:
        dense, compressed = report["dense"], report["compressed"]
        figures = {"val_acc": compressed["val_acc"], "test_acc": compressed["test_acc"], "params": compressed["params"],
                   "macs": compressed["macs"], "latency_ms_b1": compressed.get("latency_ms_b1"),
                   "throughput_b64": compressed.get("throughput_b64"), "dense_val_acc": dense["val_acc"],
                   "dense_test_acc": dense["test_acc"], "dense_params": dense["params"], "dense_macs": dense["macs"],
                   "dense_latency_ms_b1": dense.get("latency_ms_b1"),
                   "val_acc_drop_pp": dense["val_acc"] - compressed["val_acc"],
                   "max_accuracy_drop": recipe.max_accuracy_drop}
    except (KeyError, TypeError) as error:
        raise PromotionError(f"the report lacks {error}: give idap.report.evaluate.build_report output "
                             "(dense / compressed with val_acc, test_acc, params, macs)") from None
    bad = [k for k, v in figures.items() if v is not None and not is_number(v)]
    if bad:
        raise PromotionError(f"the report holds non-numeric or non-finite values for {bad}")
    return figures


def version_figures(mv) -> dict | None:
    """A version's figures back from its tags (missing or unparsable -> None); None for no version."""
    if mv is None:
        return None
    tags, out = mv.tags, {}
    for key in ("val_acc", "test_acc", "params", "macs", "latency_ms_b1", "dense_val_acc", "val_acc_drop_pp",
                "max_accuracy_drop"):
        try:
            out[key] = float(tags[f"idap.{key}"])
        except (KeyError, TypeError, ValueError):
            out[key] = None
    return out


def budget_verdict(f: dict) -> tuple[bool, str]:
    from idap.prune.state import within_budget

    drop, budget = f.get("val_acc_drop_pp"), f.get("max_accuracy_drop")
    if drop is None or budget is None:
        return False, "its accuracy drop or budget is not recorded"
    if not within_budget(drop, budget):  # the rule the stages and the report use
        return False, f"validation accuracy drop {drop:.2f} pp exceeds the budget max_accuracy_drop={budget:g} pp"
    return True, f"validation accuracy drop {drop:.2f} pp within the budget {budget:g} pp"


def beats(c: dict, champ: dict | None, objective: str, tolerance: float) -> tuple[bool, str]:
    """Does candidate ``c`` beat champion ``champ`` on ``objective``? With the reason, in words."""
    if champ is None:
        return True, "there is no champion yet"
    ca, ha = c.get("test_acc"), champ.get("test_acc")
    if ca is None:
        return False, "its test accuracy is not recorded"
    acc_ok = ha is None or ca >= ha - tolerance
    acc = f"test accuracy {ca:.2f}% vs {ha:.2f}%" if ha is not None else f"test accuracy {ca:.2f}%"
    if objective == "accuracy":
        if ha is None or ca > ha:
            return True, f"{acc} (objective accuracy)"
        cl, hl = c.get("latency_ms_b1"), champ.get("latency_ms_b1")
        if ca == ha and cl is not None and hl is not None and cl < hl:
            return True, f"{acc}, tie broken by latency {cl:.3f} ms < {hl:.3f} ms"
        return False, f"{acc}: not higher (objective accuracy)"
    key, unit = ("latency_ms_b1", "ms") if objective == "latency" else ("macs", "MACs")
    cv, hv = c.get(key), champ.get(key)
    if cv is None:
        return False, f"its {key} is not recorded (objective {objective})"
    better = hv is None or cv < hv
    what = f"{key} {cv:.4g} {unit} vs {hv:.4g} {unit}" if hv is not None else f"{key} {cv:.4g} {unit}"
    verdict = better and acc_ok
    why = f"{what}, {acc} (tolerance {tolerance:g} pp, objective {objective})"
    if not better:
        why = f"not lower: {why}"
    elif not acc_ok:
        why = f"accuracy too low: {why}"
    return verdict, why


def eligible(c: dict, champ: dict | None, objective: str, tolerance: float) -> tuple[bool, str]:
    ok, why = budget_verdict(c)
    if not ok:
        return False, why
    return beats(c, champ, objective, tolerance)
