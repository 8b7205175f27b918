"""Model versions in the MLflow registry, looked up and written: search, find by content digest, the champion, aliases
and tags (with retries where concurrent promotions race), the result a registration returns.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import random
import time

from components.services.mlflow_backend import (
    code_version,
    is_unreachable,
    str_dict,
)
from components.services.promotion import (
    CHAMPION,
    PromotionError,
)

log = logging.getLogger("idap.tracking.registry")


def quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def search_versions(client, filter_string: str) -> list:
    out, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def find_version(client, name: str, digest: str):
    found = search_versions(client, f"name = '{quote(name)}' and tags.`idap.bundle_digest` = '{digest}'")
    found = [mv for mv in found if mv.tags.get("idap.bundle_digest") == digest]
    return min(found, key=lambda m: int(m.version)) if found else None


def get_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as error:
        if is_unreachable(error):
            raise
        raise PromotionError(f"registered model {name!r} has no version {version!r}: {error.message}") from None


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if is_unreachable(error):
            raise
        return None


def version_of(mv) -> str | None:
    return str(mv.version) if mv is not None else None


def ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if is_unreachable(error):
            raise
        try:
            client.create_registered_model(name, tags={"idap.kind": "compressed-model"},
                                           description="IDAP++ compressed models; aliases champion / challenger")
        except MlflowException:
            client.get_registered_model(name)  # created meanwhile by a racing registration


def set_alias(client, name: str, alias: str, version, attempts: int = 4) -> None:
    """Set an alias, retrying a write that lost a race (two first-time writers of one alias row collide on
    its primary key); the write is idempotent, so a retry is safe."""
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except Exception as error:
            if attempt == attempts - 1 or is_unreachable(error) and "500" not in str(error):
                raise
            log.info("setting alias %s of %s to %s failed (%s); retrying", alias, name, version, error)
            time.sleep(random.uniform(0.1, 0.5))


def tag_version(client, name: str, version: str, tags: dict) -> None:
    for key, value in str_dict(tags).items():
        client.set_model_version_tag(name, version, key, value)


def result(client, name: str, version: str, *, created: bool, decision: str, reason: str,
            previous: str | None = None, run_id: str | None = None) -> dict:
    mv = client.get_model_version(name, version)
    return {"name": name, "version": str(version), "model_uri": f"models:/{name}/{version}", "created": created,
            "decision": decision, "champion": CHAMPION in (mv.aliases or []), "reason": reason,
            "previous_champion": previous, "aliases": sorted(mv.aliases or []), "run_id": run_id or mv.run_id}


def version_tags(client, *, figures: dict, digest: str, recipe, dataset: dict, report: dict, base_model: str,
                  dense_uri: str, parent_run_id: str | None, run_id: str, objective: str, tolerance_pp: float) -> dict:
    compressed = report.get("compressed") or {}
    tags = {f"idap.{k}": repr(float(v)) if isinstance(v, float) else v for k, v in figures.items() if v is not None}
    tags.update({
        "idap.bundle_digest": digest,
        "idap.model": report.get("model", "unknown"),
        "idap.base_model": base_model,
        "idap.base_model_version": registry_version(client, base_model),
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
    return str_dict(tags)


def registry_version(client, uri: str) -> str:
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


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

