"""MLflow model registry at the edge: log a bundle as a pickle-free model, register it, promote it by rule.

* ``register_and_promote``: logs the compressed model and its dense baseline as pickle-free pyfunc models
  (``components/mlflow_model.py``, models-from-code around the bundle), creates a registered version with
  its lineage tags, gives it ``challenger`` and, by rule, ``champion``.
* ``promote``: a manual decision, recorded on the version.

The promotion rule itself is ``components.services.promotion`` (pure); logging a bundle as an MLflow model is
``components.services.logged_model``; runs come from ``components.services.tracking`` and the MLflow connection and the
sqlite store lock from ``components.services.mlflow_backend``. Registration runs as the pipeline's ``register`` step.

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
import logging
import os
import random
import time

from components.services.logged_model import (
    bundle_digest,
    check_bundle,
    check_logged,
    input_contract,
    log_bundle_model,
)
from components.services.mlflow_backend import (
    as_recipe,
    clear_errors,
    configure,
    fail_fast,
    get_client,
    store_lock,
    user,
)
from components.services.promotion import (
    CHALLENGER,
    CHAMPION,
    PromotionError,
    beats,
    budget_verdict,
    check_rule_args,
    eligible,
    report_figures,
    version_figures,
)
from components.services.registry_versions import (
    current_champion,
    ensure_registered_model,
    find_version,
    get_version,
    now,
    quote,
    result,
    search_versions,
    set_alias,
    tag_version,
    version_of,
    version_tags,
)
from components.services.summaries import version_description
from components.services.tracking import step_run

__all__ = ["promote", "register_and_promote"]

log = logging.getLogger("idap.tracking.registry")  # under idap.tracking: one logger tree for the edge

CONTENDER_GRACE_S = 600  # a contender stays visible to racing promotions this long
SETTLE_ATTEMPTS = 10


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
        report: ``idap.report.evaluate.build_report`` output (dense / compressed / ratios).
        recipe: the ``Recipe`` (or its dict); ``max_accuracy_drop`` is the budget.
        dataset: ``DataSplits.describe()``.
        base_model: where the dense model came from (a path, an s3:// URI, ``models:/name/version``...).
        objective: ``latency`` | ``accuracy`` | ``macs``; tolerance_pp: accuracy slack for latency / macs.

    Returns:
        ``{"name", "version", "model_uri", "created", "decision", "champion", "reason",
        "previous_champion", "aliases", "run_id"}``.
    """
    from components.services.storage import resolve_input

    check_rule_args(objective, tolerance_pp)
    settings = configure()
    client = get_client(settings)
    recipe = as_recipe(recipe)
    model_dir = resolve_input(os.fspath(model_dir), settings.workdir)
    dense_dir = resolve_input(os.fspath(dense_dir), settings.workdir)
    with clear_errors(settings.tracking_uri):
        if parent_run_id:
            status = client.get_run(parent_run_id).info.status
            if status in ("FAILED", "KILLED"):
                raise PromotionError(f"pipeline run {parent_run_id} is {status}: a failed run never registers a model")
    checked = check_bundle(model_dir)
    dense_checked = check_bundle(dense_dir)
    figures = report_figures(report, recipe)
    digest = bundle_digest(model_dir)
    with clear_errors(settings.tracking_uri):
        existing = find_version(client, registered_name, digest)
    if existing is not None and existing.tags.get("idap.promotion"):
        log.info("%s version %s already holds bundle %s: not registered again", registered_name, existing.version, digest)
        before = existing.tags.get("idap.champion_at_decision", "none")
        return result(client, registered_name, existing.version, created=False, decision=existing.tags["idap.promotion"],
                       reason=existing.tags.get("idap.promotion_reason", "already registered"),
                       previous=None if before == "none" else before)

    with step_run(parent_run_id, "register", params={"registered_name": registered_name, "objective": objective,
                                                     "tolerance_pp": tolerance_pp}) as tracker:
        if existing is None:
            tracker.log_recipe(recipe)
            tracker.log_dataset(dataset)
            tracker.log_report(report, files=False)  # the files live in the evaluate step's run
            started = time.perf_counter()
            with clear_errors(settings.tracking_uri):
                info = log_bundle_model(tracker.run_id, model_dir, "model", checked)
                dense_info = log_bundle_model(tracker.run_id, dense_dir, "dense_model", dense_checked)
                log_seconds = time.perf_counter() - started
                check_logged(info.model_uri, checked)
            tracker.log_metrics({"log_model_seconds": log_seconds})
            tags = version_tags(client, figures=figures, digest=digest, recipe=recipe, dataset=dataset, report=report,
                                 base_model=base_model, dense_uri=dense_info.model_uri, parent_run_id=parent_run_id,
                                 run_id=tracker.run_id, objective=objective, tolerance_pp=tolerance_pp)
            tags["idap.input"] = input_contract(checked)  # what to send the served model, in view on the version
        with store_lock(settings), clear_errors(settings.tracking_uri):
            version = find_version(client, registered_name, digest) if existing is None else existing
            created = version is None
            if created:
                ensure_registered_model(client, registered_name)
                version = client.create_model_version(registered_name, info.model_uri, run_id=tracker.run_id,
                                                      tags=tags, model_id=info.model_id)
            try:
                set_alias(client, registered_name, CHALLENGER, version.version)
            except Exception:
                if created:  # no alias moved yet: leave no half-registered version behind
                    with contextlib.suppress(Exception), fail_fast():
                        client.delete_model_version(registered_name, version.version)
                raise
            decision = _decide(client, registered_name, version.version, objective, tolerance_pp)
            if created or not (version.description or "").strip():
                client.update_model_version(registered_name, version.version, description=version_description(
                    report=report, recipe=recipe, base_model=base_model, dataset=dataset, decision=decision,
                    objective=objective, tolerance_pp=tolerance_pp))
        tracker.set_tags({"idap.registered_model": registered_name, "idap.registered_version": version.version,
                          "idap.promotion": decision["decision"]})
    return result(client, registered_name, version.version, created=created, run_id=tracker.run_id, **decision)


def promote(name: str, version: str, *, force: bool = False, reason: str = "manual") -> dict:
    """Make ``name`` version ``version`` the champion by hand; the decision is recorded on the version.

    Without ``force`` the promotion rule must agree (budget and objective, as recorded on the version);
    otherwise a ``PromotionError`` says why. With ``force`` the alias moves regardless, and pending rule
    contenders are cleared so a racing registration cannot silently undo the decision.
    """
    settings = configure()
    client = get_client(settings)
    version = str(version)
    with store_lock(settings), clear_errors(settings.tracking_uri):
        mv = get_version(client, name, version)
        champion = current_champion(client, name)
        previous = version_of(champion)
        if previous == version:
            return result(client, name, version, created=False, decision=CHAMPION, reason="already the champion",
                           previous=previous)
        if not force:
            objective = mv.tags.get("idap.objective", "latency")
            tolerance = float(mv.tags.get("idap.tolerance_pp", 0.1))
            ok, why = eligible(version_figures(mv), version_figures(champion), objective, tolerance)
            if not ok:
                raise PromotionError(f"{name} version {version} is not promoted: {why}. "
                                     "Use force (idap promote --force) to promote it anyway.")
        set_alias(client, name, CHAMPION, version)
        tag_version(client, name, version, {
            "idap.promotion": "manual", "idap.promotion_forced": str(bool(force)).lower(),
            "idap.promotion_reason": reason, "idap.previous_champion": previous or "none",
            "idap.promoted_at": now(), "idap.promoted_by": user()})
        if force:
            _clear_contenders(client, name)
    return result(client, name, version, created=False, decision="manual", reason=reason, previous=previous)


def _decide(client, name: str, version: str, objective: str, tolerance: float) -> dict:
    """Apply the rule to a freshly registered version; settle the champion alias; record the decision."""
    mv = client.get_model_version(name, version)
    ok, why = budget_verdict(version_figures(mv))
    if not ok:
        decision, against = "rejected", current_champion(client, name)
    else:
        tag_version(client, name, version, {"idap.contender_at": f"{time.time():.3f}"})
        champion, previous = _settle_champion(client, name, objective, tolerance)
        won = champion is not None and str(champion.version) == str(version)
        # A winner is judged against the champion it displaced, a loser against the one that stays.
        decision, against = (CHAMPION, previous) if won else (CHALLENGER, champion)
        _, why = beats(version_figures(mv), version_figures(against), objective, tolerance)
    before = version_of(against)
    if decision == CHALLENGER:
        why = f"stays challenger: {why} against champion version {before or 'none'}"
    tags = {"idap.promotion": decision, "idap.promotion_reason": why, "idap.champion_at_decision": before or "none"}
    if decision == CHAMPION:
        tags.update({"idap.promoted_at": now(), "idap.previous_champion": before or "none"})
    tag_version(client, name, version, tags)
    return {"decision": decision, "reason": why, "previous": before}


def _settle_champion(client, name: str, objective: str, tolerance: float):
    """Compare-and-set: move ``champion`` to the best of {champion, recent contenders} until a re-read finds
    it already there. Returns (final champion, champion seen first)."""
    first = None
    for attempt in range(SETTLE_ATTEMPTS):
        champion = current_champion(client, name)
        if attempt == 0:
            first = champion
        best = champion
        for mv in _contenders(client, name):
            if best is not None and mv.version == best.version:
                continue
            if eligible(version_figures(mv), version_figures(best), objective, tolerance)[0]:
                best = mv
        if best is None or (champion is not None and best.version == champion.version):
            return champion, first
        set_alias(client, name, CHAMPION, best.version)
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
    for mv in search_versions(client, f"name = '{quote(name)}'"):
        with contextlib.suppress(KeyError, ValueError):
            recent = float(mv.tags["idap.contender_at"]) >= cutoff
            if recent and mv.tags.get("idap.promotion") in (None, CHAMPION):
                out.append(mv)
    return sorted(out, key=lambda m: int(m.version))


def _clear_contenders(client, name: str) -> None:
    for mv in search_versions(client, f"name = '{quote(name)}'"):
        if "idap.contender_at" in mv.tags:
            client.delete_model_version_tag(name, mv.version, "idap.contender_at")


# --- registry helpers ---------------------------------------------------------------------------------------


