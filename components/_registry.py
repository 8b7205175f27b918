"""MLflow model registry at the edge: log a bundle as a pickle-free model, register it, promote it by rule.

* ``register_and_promote``: logs the compressed model and its dense baseline as pickle-free pyfunc models
  (``components/mlflow_model.py``, models-from-code around the bundle), creates a registered version with
  its lineage tags, gives it ``challenger`` and, by rule, ``champion``.
* ``promote``: a manual decision, recorded on the version.

Runs, the MLflow configuration and the sqlite store lock come from ``components._tracking``; registration
runs as the pipeline's ``register`` step.

Promotion rule: a version may become ``champion`` only when (a) its validation accuracy drop from its own
dense baseline is within the recipe's ``max_accuracy_drop`` and (b) it beats the current champion on the
objective: ``latency`` (lower measured batch-1 latency at a test accuracy no worse than the champion's
minus ``tolerance_pp``), ``macs`` (fewer MACs, same accuracy condition) or ``accuracy`` (higher test
accuracy; a tie goes to the lower latency).

Concurrency: with the embedded sqlite store, registration and promotion hold an ``fcntl`` lock on a file
next to the database. A server (or a direct PostgreSQL store) offers no lock, so promotion is a
compare-and-set loop (the same loop runs under the sqlite lock): a version that passes the budget is
first tagged a *contender*; then, repeatedly, the champion is read, the best of {champion, contenders still
deciding, recent winners} is computed, and the alias is set to it unless it is already there. Whoever
writes the alias last re-reads and re-checks afterwards, and every contender tags itself before its first
read, so the last check sees every model a stale write could have displaced: the alias cannot end on the
worse of two racing models. Aliases are the truth; the ``idap.promotion*`` tags are the decision log.

Example:
    >>> parent = start_pipeline_run("compress cnn_small")                         # doctest: +SKIP
    >>> register_and_promote(parent_run_id=parent, model_dir="out/model", dense_dir="out/dense",
    ...                      report=report, recipe=recipe, dataset=data.describe(),
    ...                      registered_name="cnn-digits", base_model="out/dense")  # doctest: +SKIP
    >>> promote("cnn-digits", "3", force=True, reason="rollback")                  # doctest: +SKIP
    >>> finish_pipeline_run(parent)                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from components._tracking import (
    _as_recipe,
    _clear_errors,
    _client,
    _fail_fast,
    _is_number,
    _is_unreachable,
    _store_lock,
    _str_dict,
    _user,
    code_version,
    configure,
    step_run,
)

__all__ = ["PromotionError", "bundle_digest", "promote", "register_and_promote", "version_description"]

log = logging.getLogger("idap.tracking.registry")  # under idap.tracking: one logger tree for the edge

CHAMPION, CHALLENGER = "champion", "challenger"
OBJECTIVES = ("latency", "accuracy", "macs")
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
CONTENDER_GRACE_S = 600  # a contender stays visible to racing promotions this long
SETTLE_ATTEMPTS = 10
PARITY_ATOL = 1e-5
# Requirements of a logged model: idap's own imports (its code travels with the model, see _log_bundle_model).
MODEL_REQUIREMENTS = ("mlflow", "torch", "torchvision", "torch-pruning", "numpy", "safetensors", "pyyaml", "tqdm")


class PromotionError(ValueError):
    """A version cannot be registered or promoted; the message says which rule refused it."""


# --- registration -------------------------------------------------------------------------------------------


def register_and_promote(
    *,
    parent_run_id: str | None,
    model_dir,
    dense_dir,
    report: dict,
    recipe,
    dataset: dict,
    registered_name: str,
    base_model: str,
    objective: str = "latency",
    tolerance_pp: float = 0.1,
) -> dict:
    """Log the compressed model beside its dense baseline, register it, set ``challenger`` and, by the
    rule (module docstring), ``champion``.

    Called last, after every other step succeeded: it refuses a FAILED pipeline run. Nothing is half
    done: both bundles are loaded and parity-checked first, the logged model is loaded back from the store
    and compared with the bundle before a version is created, and aliases move only after the version
    exists. Registering the same bundle again returns the existing version (tag ``idap.bundle_digest``).

    Args:
        model_dir, dense_dir: bundles (local paths or s3:// URIs).
        report: ``idap.report.build_report`` output (dense / compressed / ratios).
        recipe: the ``Recipe`` (or its dict); ``max_accuracy_drop`` is the budget.
        dataset: ``DataSplits.describe()``.
        base_model: where the dense model came from (a path, an s3:// URI, ``models:/name/version``...).
        objective: ``latency`` | ``accuracy`` | ``macs``; tolerance_pp: accuracy slack for latency / macs.

    Returns:
        ``{"name", "version", "model_uri", "created", "decision", "champion", "reason",
        "previous_champion", "aliases", "run_id"}``.
    """
    from components._storage import resolve_input

    _check_rule_args(objective, tolerance_pp)
    settings = configure()
    client = _client(settings)
    recipe = _as_recipe(recipe)
    model_dir = resolve_input(os.fspath(model_dir), settings.workdir)
    dense_dir = resolve_input(os.fspath(dense_dir), settings.workdir)
    with _clear_errors(settings.tracking_uri):
        if parent_run_id:
            status = client.get_run(parent_run_id).info.status
            if status in ("FAILED", "KILLED"):
                raise PromotionError(f"pipeline run {parent_run_id} is {status}: a failed run never registers a model")
    checked = _check_bundle(model_dir)
    dense_checked = _check_bundle(dense_dir)
    figures = _report_figures(report, recipe)
    digest = bundle_digest(model_dir)
    with _clear_errors(settings.tracking_uri):
        existing = _find_version(client, registered_name, digest)
    if existing is not None and existing.tags.get("idap.promotion"):
        log.info("%s version %s already holds bundle %s: not registered again", registered_name, existing.version, digest)
        before = existing.tags.get("idap.champion_at_decision", "none")
        return _result(client, registered_name, existing.version, created=False, decision=existing.tags["idap.promotion"],
                       reason=existing.tags.get("idap.promotion_reason", "already registered"),
                       previous=None if before == "none" else before)

    with step_run(parent_run_id, "register", params={"registered_name": registered_name, "objective": objective,
                                                     "tolerance_pp": tolerance_pp}) as tracker:
        if existing is None:
            tracker.log_recipe(recipe)
            tracker.log_dataset(dataset)
            tracker.log_report(report, files=False)  # the files live in the evaluate step's run
            started = time.perf_counter()
            with _clear_errors(settings.tracking_uri):
                info = _log_bundle_model(tracker.run_id, model_dir, "model", checked)
                dense_info = _log_bundle_model(tracker.run_id, dense_dir, "dense_model", dense_checked)
                log_seconds = time.perf_counter() - started
                _check_logged(info.model_uri, checked)
            tracker.log_metrics({"log_model_seconds": log_seconds})
            tags = _version_tags(client, figures=figures, digest=digest, recipe=recipe, dataset=dataset, report=report,
                                 base_model=base_model, dense_uri=dense_info.model_uri, parent_run_id=parent_run_id,
                                 run_id=tracker.run_id, objective=objective, tolerance_pp=tolerance_pp)
            tags["idap.input"] = input_contract(checked)  # what to send the served model, in view on the version
        with _store_lock(settings), _clear_errors(settings.tracking_uri):
            version = _find_version(client, registered_name, digest) if existing is None else existing
            created = version is None
            if created:
                _ensure_registered_model(client, registered_name)
                version = client.create_model_version(registered_name, info.model_uri, run_id=tracker.run_id,
                                                      tags=tags, model_id=info.model_id)
            try:
                _set_alias(client, registered_name, CHALLENGER, version.version)
            except Exception:
                if created:  # no alias moved yet: leave no half-registered version behind
                    with contextlib.suppress(Exception), _fail_fast():
                        client.delete_model_version(registered_name, version.version)
                raise
            decision = _decide(client, registered_name, version.version, objective, tolerance_pp)
            if created or not (version.description or "").strip():
                client.update_model_version(registered_name, version.version, description=version_description(
                    report=report, recipe=recipe, base_model=base_model, dataset=dataset, decision=decision,
                    objective=objective, tolerance_pp=tolerance_pp))
        tracker.set_tags({"idap.registered_model": registered_name, "idap.registered_version": version.version,
                          "idap.promotion": decision["decision"]})
    return _result(client, registered_name, version.version, created=created, run_id=tracker.run_id, **decision)


def promote(name: str, version: str, *, force: bool = False, reason: str = "manual") -> dict:
    """Make ``name`` version ``version`` the champion by hand; the decision is recorded on the version.

    Without ``force`` the promotion rule must agree (budget and objective, as recorded on the version);
    otherwise a ``PromotionError`` says why. With ``force`` the alias moves regardless, and pending rule
    contenders are cleared so a racing registration cannot silently undo the decision.
    """
    settings = configure()
    client = _client(settings)
    version = str(version)
    with _store_lock(settings), _clear_errors(settings.tracking_uri):
        mv = _get_version(client, name, version)
        champion = _champion(client, name)
        previous = _version_of(champion)
        if previous == version:
            return _result(client, name, version, created=False, decision=CHAMPION, reason="already the champion",
                           previous=previous)
        if not force:
            objective = mv.tags.get("idap.objective", "latency")
            tolerance = float(mv.tags.get("idap.tolerance_pp", 0.1))
            ok, why = _eligible(_figures(mv), _figures(champion), objective, tolerance)
            if not ok:
                raise PromotionError(f"{name} version {version} is not promoted: {why}. "
                                     "Use force (idap promote --force) to promote it anyway.")
        _set_alias(client, name, CHAMPION, version)
        _tag_version(client, name, version, {
            "idap.promotion": "manual", "idap.promotion_forced": str(bool(force)).lower(),
            "idap.promotion_reason": reason, "idap.previous_champion": previous or "none",
            "idap.promoted_at": _now(), "idap.promoted_by": _user()})
        if force:
            _clear_contenders(client, name)
    return _result(client, name, version, created=False, decision="manual", reason=reason, previous=previous)


# --- the rule -----------------------------------------------------------------------------------------------


def _check_rule_args(objective: str, tolerance_pp: float) -> None:
    if objective not in OBJECTIVES:
        raise PromotionError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not (_is_number(tolerance_pp) and tolerance_pp >= 0):
        raise PromotionError(f"tolerance_pp must be a number >= 0 (percentage points), got {tolerance_pp!r}")


def _report_figures(report: dict, recipe) -> dict:
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
        raise PromotionError(f"the report lacks {error}: give idap.report.build_report output "
                             "(dense / compressed with val_acc, test_acc, params, macs)") from None
    bad = [k for k, v in figures.items() if v is not None and not _is_number(v)]
    if bad:
        raise PromotionError(f"the report holds non-numeric or non-finite values for {bad}")
    return figures


def _figures(mv) -> dict | None:
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


def _within_budget(f: dict) -> tuple[bool, str]:
    from idap.state import within_budget

    drop, budget = f.get("val_acc_drop_pp"), f.get("max_accuracy_drop")
    if drop is None or budget is None:
        return False, "its accuracy drop or budget is not recorded"
    if not within_budget(drop, budget):  # the rule the stages and the report use
        return False, f"validation accuracy drop {drop:.2f} pp exceeds the budget max_accuracy_drop={budget:g} pp"
    return True, f"validation accuracy drop {drop:.2f} pp within the budget {budget:g} pp"


def _beats(c: dict, champ: dict | None, objective: str, tolerance: float) -> tuple[bool, str]:
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


def _eligible(c: dict, champ: dict | None, objective: str, tolerance: float) -> tuple[bool, str]:
    ok, why = _within_budget(c)
    if not ok:
        return False, why
    return _beats(c, champ, objective, tolerance)


def _decide(client, name: str, version: str, objective: str, tolerance: float) -> dict:
    """Apply the rule to a freshly registered version; settle the champion alias; record the decision."""
    mv = client.get_model_version(name, version)
    ok, why = _within_budget(_figures(mv))
    if not ok:
        decision, against = "rejected", _champion(client, name)
    else:
        _tag_version(client, name, version, {"idap.contender_at": f"{time.time():.3f}"})
        champion, previous = _settle_champion(client, name, objective, tolerance)
        won = champion is not None and str(champion.version) == str(version)
        # A winner is judged against the champion it displaced, a loser against the one that stays.
        decision, against = (CHAMPION, previous) if won else (CHALLENGER, champion)
        _, why = _beats(_figures(mv), _figures(against), objective, tolerance)
    before = _version_of(against)
    if decision == CHALLENGER:
        why = f"stays challenger: {why} against champion version {before or 'none'}"
    tags = {"idap.promotion": decision, "idap.promotion_reason": why, "idap.champion_at_decision": before or "none"}
    if decision == CHAMPION:
        tags.update({"idap.promoted_at": _now(), "idap.previous_champion": before or "none"})
    _tag_version(client, name, version, tags)
    return {"decision": decision, "reason": why, "previous": before}


def _settle_champion(client, name: str, objective: str, tolerance: float):
    """Compare-and-set: move ``champion`` to the best of {champion, recent contenders} until a re-read finds
    it already there. Returns (final champion, champion seen first)."""
    first = None
    for attempt in range(SETTLE_ATTEMPTS):
        champion = _champion(client, name)
        if attempt == 0:
            first = champion
        best = champion
        for mv in _contenders(client, name):
            if best is not None and mv.version == best.version:
                continue
            if _eligible(_figures(mv), _figures(best), objective, tolerance)[0]:
                best = mv
        if best is None or (champion is not None and best.version == champion.version):
            return champion, first
        _set_alias(client, name, CHAMPION, best.version)
        time.sleep(random.uniform(0.05, 0.3))  # let a racing writer land before the re-read
    raise PromotionError(f"the champion alias of {name} did not settle after {SETTLE_ATTEMPTS} rounds; "
                         "concurrent promotions keep moving it: rerun the registration")


def _contenders(client, name: str) -> list:
    """Versions a racing promotion may have overwritten: those still deciding, and recent winners.

    A version that settled as challenger lost against the champion of its time and is never revived; a
    winner's objective value is strictly better than every earlier winner's, so reviving winners cannot
    walk the alias backwards. Contender tags older than CONTENDER_GRACE_S are ignored.
    """
    cutoff = time.time() - CONTENDER_GRACE_S
    out = []
    for mv in _search_versions(client, f"name = '{_quote(name)}'"):
        with contextlib.suppress(KeyError, ValueError):
            recent = float(mv.tags["idap.contender_at"]) >= cutoff
            if recent and mv.tags.get("idap.promotion") in (None, CHAMPION):
                out.append(mv)
    return sorted(out, key=lambda m: int(m.version))


def _clear_contenders(client, name: str) -> None:
    for mv in _search_versions(client, f"name = '{_quote(name)}'"):
        if "idap.contender_at" in mv.tags:
            client.delete_model_version_tag(name, mv.version, "idap.contender_at")


# --- registry helpers ---------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def _search_versions(client, filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _find_version(client, name: str, digest: str):
    found = _search_versions(client, f"name = '{_quote(name)}' and tags.`idap.bundle_digest` = '{digest}'")
    found = [mv for mv in found if mv.tags.get("idap.bundle_digest") == digest]
    return min(found, key=lambda m: int(m.version)) if found else None


def _get_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as error:
        if _is_unreachable(error):
            raise
        raise PromotionError(f"registered model {name!r} has no version {version!r}: {error.message}") from None


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if _is_unreachable(error):
            raise
        return None


def _version_of(mv) -> str | None:
    return str(mv.version) if mv is not None else None


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if _is_unreachable(error):
            raise
        try:
            client.create_registered_model(name, tags={"idap.kind": "compressed-model"},
                                           description="IDAP++ compressed models; aliases champion / challenger")
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile by a racing registration


def _set_alias(client, name: str, alias: str, version, attempts: int = 4) -> None:
    """Set an alias, retrying a write that lost a race (two first-time writers of one alias row collide on
    its primary key); the write is idempotent, so a retry is safe."""
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except Exception as error:
            if attempt == attempts - 1 or _is_unreachable(error) and "500" not in str(error):
                raise
            log.info("setting alias %s of %s to %s failed (%s); retrying", alias, name, version, error)
            time.sleep(random.uniform(0.1, 0.5))


def _tag_version(client, name: str, version: str, tags: dict) -> None:
    for key, value in _str_dict(tags).items():
        client.set_model_version_tag(name, version, key, value)


def _result(client, name: str, version: str, *, created: bool, decision: str, reason: str,
            previous: str | None = None, run_id: str | None = None) -> dict:
    mv = client.get_model_version(name, version)
    return {"name": name, "version": str(version), "model_uri": f"models:/{name}/{version}", "created": created,
            "decision": decision, "champion": CHAMPION in (mv.aliases or []), "reason": reason,
            "previous_champion": previous, "aliases": sorted(mv.aliases or []), "run_id": run_id or mv.run_id}


def _version_tags(client, *, figures: dict, digest: str, recipe, dataset: dict, report: dict, base_model: str,
                  dense_uri: str, parent_run_id: str | None, run_id: str, objective: str, tolerance_pp: float) -> dict:
    compressed = report.get("compressed") or {}
    tags = {f"idap.{k}": repr(float(v)) if isinstance(v, float) else v for k, v in figures.items() if v is not None}
    tags.update({
        "idap.bundle_digest": digest,
        "idap.model": report.get("model", "unknown"),
        "idap.base_model": base_model,
        "idap.base_model_version": _registry_version(client, base_model),
        "idap.dense_model_uri": dense_uri,
        "idap.dataset": dataset.get("name", "unknown"),
        "idap.dataset_hash": dataset.get("content_hash", "unknown"),
        "idap.recipe_digest": recipe.digest(),
        "idap.latency_device": f"{compressed.get('device', '?')}, {compressed.get('threads', '?')} threads",
        "idap.code_version": code_version(),
        "idap.pipeline_run_id": parent_run_id or "none",
        "idap.run_id": run_id,
        "idap.objective": objective,
        "idap.tolerance_pp": repr(float(tolerance_pp)),
    })
    return _str_dict(tags)


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
                  f"Recipe digest `{_as_recipe(recipe).digest()}` (budget {_as_recipe(recipe).max_accuracy_drop:g} pp)."]
    if report.get("target_met") is False:
        lines += ["", "**Target not reached:** " + next(w for w in report["warnings"] if w.startswith("target not"))
                  .split(": ", 1)[1]]
    return "\n".join(lines) + "\n"


def _registry_version(client, uri: str) -> str:
    """The version a ``models:/name/version`` or ``models:/name@alias`` base model resolves to, else "n/a"."""
    if not str(uri).startswith("models:/"):
        return "n/a"
    ref = str(uri)[len("models:/"):]
    with contextlib.suppress(Exception):
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return str(client.get_model_version_by_alias(name, alias).version)
        name, _, version = ref.rpartition("/")
        if name and version.isdigit():
            return version
    return "unknown"


# --- logging the model --------------------------------------------------------------------------------------


def _check_bundle(directory: Path) -> dict:
    """Load and parity-check a bundle; an example input and the model's output on it.

    The example is the parity probe's first row, given in the served model's input space: raw pixels
    where the bundle records a normalisation (``input_spec`` mean / std / scale; ``mlflow_model`` applies
    it inside), the probe itself otherwise."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    from idap.bundle import PARITY, load_bundle, read_bundle_info, read_input_spec

    model = load_bundle(directory, verify=True)
    info = read_bundle_info(directory)
    probe = np.ascontiguousarray(load_file(str(Path(directory) / PARITY))["input"][:1].astype(np.float32))
    with torch.no_grad():
        expected = model(torch.from_numpy(probe)).numpy()
    spec = read_input_spec(directory)
    example = probe
    if spec.get("mean") is not None and spec.get("std") is not None:
        shape = (1, probe.shape[1], 1, 1)
        mean = np.asarray(spec["mean"], dtype=np.float32).reshape(shape)
        std = np.asarray(spec["std"], dtype=np.float32).reshape(shape)
        example = np.ascontiguousarray((probe * std + mean) / float(spec.get("scale") or 1.0), dtype=np.float32)
    normalization = spec if spec.get("mean") is not None and spec.get("std") is not None else None
    return {"input_shape": tuple(info["architecture"]["input_shape"]), "num_classes": int(expected.shape[1]),
            "example": example, "expected": expected, "normalization": normalization}


def _log_bundle_model(run_id: str, bundle_dir: Path, name: str, checked: dict):
    """Log a bundle as a models-from-code pyfunc (no pickle) with explicit pip requirements (inference of
    requirements would take 9-19 s). idap's sources travel with the model (``code_paths``), so it loads where
    idap is not installed, with the code that built it.

    No tensor signature: MLflow enforces a tensor spec's dtype and rank strictly (float64 or one sample
    without the batch axis would be refused before the model sees it) and would infer one from an input
    example, so the served model checks its input itself (``components/mlflow_model.py``) and the contract
    is written in the model's metadata (``idap_input``) and the version's tags and description. The example
    request ships as the artifact ``input_example.json`` (``{"inputs": ...}``, raw pixels). Everything is
    logged from relative paths in a scratch directory, so MLmodel names no path of this machine's tree.
    """
    import json

    import mlflow
    from mlflow.models import Model

    import idap

    # MLflow 3 files a logged model under the *fluent* experiment, not the run's: align them.
    mlflow.set_experiment(experiment_id=_client().get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory(prefix="idap-model-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hint.*")
        root = Path(tmp)
        shutil.copytree(Path(idap.__file__).parent, root / "idap", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        local = Path("files") / Path(bundle_dir).name  # MLflow stores it as artifacts/<the bundle's name>
        shutil.copytree(bundle_dir, root / local)
        shutil.copyfile(MODEL_CODE, root / MODEL_CODE.name)
        (root / "input_example.json").write_text(json.dumps({"inputs": checked["example"].tolist()}))
        with contextlib.chdir(root):
            return Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                             python_model=MODEL_CODE.name, artifacts={"bundle": str(local), "input_example": "input_example.json"},
                             code_paths=["idap"], pip_requirements=_pip_requirements(),
                             metadata={"idap_bundle_digest": bundle_digest(bundle_dir), "idap_input": input_contract(checked)})


def input_contract(checked: dict) -> str:
    """What the served model takes, in one line (model metadata and the version's ``idap.input`` tag)."""
    shape = ", ".join(map(str, checked["input_shape"]))
    norm = checked.get("normalization")
    inside = (f"normalised inside with mean {norm['mean']} / std {norm['std']} (x scale {norm.get('scale') or 1:g})"
              if norm else "already normalised like the training data (the bundle records no statistics)")
    return (f"raw pixels, shape (N, {shape}) or one sample ({shape}), any real dtype; {inside}; "
            f"output float32 logits (N, {checked['num_classes']})")


def _check_logged(model_uri: str, checked: dict) -> None:
    """Load the logged model back from the store and compare it with the bundle before registering it."""
    import mlflow
    import numpy as np

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hint.*")
        got = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(checked["example"]))
    expected = checked["expected"]
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else math.inf
    if not diff <= PARITY_ATOL * max(1.0, float(np.abs(expected).max())):
        raise PromotionError(f"the logged model {model_uri} does not reproduce its bundle (max |diff| {diff:.3g}); "
                             "not registered")


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in MODEL_REQUIREMENTS:
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def bundle_digest(directory: str | os.PathLike) -> str:
    """sha256 over a bundle's defining files (architecture, weights, recipe, parity probe): equal digests,
    equal models. Metadata (timings) is left out, so the same model measured twice has one digest."""
    from idap.bundle import REQUIRED_FILES

    h = hashlib.sha256()
    for name in sorted(REQUIRED_FILES):
        path = Path(directory) / name
        h.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
