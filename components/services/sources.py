"""Where a base model comes from, resolved at the edge: a local path, an s3:// object or prefix, or a model
version in the MLflow registry (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``).

A registered version's *bundle artifact* is downloaded (``mlflow.artifacts.download_artifacts``) and handed
to ``idap.bundle.store.load_bundle`` like any bundle; the version is never loaded through MLflow's pyfunc, which
would run the logged model's code file. Downloads are cached under ``<workdir>/registry-cache/NAME/VERSION``
(a version's artifacts never change) and staged, then renamed, so a reader never sees half a bundle.

A dataset comes from a builtin name, a path, an s3:// object or prefix, or a dataset spec (``idap.data.spec``)
whose ``source`` may itself be on s3://: that source (an image folder or an archive of one) is downloaded once
into the cache (``idap.data.image_folder.cache_dir()/s3``), keyed by its content, and streamed from there.

Example:
    >>> resolve_model_source("models:/cnn-digits@champion", ".idap")   # doctest: +SKIP
    PosixPath('.idap/registry-cache/cnn-digits/3/bundle')
    >>> resolve_dataset("s3://data/photos.yaml", ".idap")              # doctest: +SKIP
    '.idap/dataset-specs/3f9c2a1b7d4e5f60.json'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from components.services import storage
from idap.atomic import write_file

__all__ = ["SourceError", "is_registry_uri", "parse_registry_uri", "registered_bundle", "resolve_dataset",
           "resolve_model_source"]

REGISTRY_PREFIX = "models:/"
CACHE_DIR = "registry-cache"
SPECS_DIR = "dataset-specs"  # specs whose s3:// source was replaced by its local copy
BUNDLE_ARTIFACT = "bundle"  # components.services.registry logs the bundle as the pyfunc's artifact "bundle"
_NAME = re.compile(r"^[^/@]+$")


class SourceError(ValueError):
    """A model source cannot be resolved; the message names it and what would be valid."""


def is_registry_uri(uri: str | os.PathLike) -> bool:
    return isinstance(uri, str) and uri.startswith(REGISTRY_PREFIX)


def parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name/3`` -> ``("name", "3", None)``; ``models:/name@champion`` -> ``("name", None, "champion")``."""
    ref = uri[len(REGISTRY_PREFIX):] if is_registry_uri(uri) else ""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if _NAME.match(name) and alias and "/" not in alias:
            return name, None, alias
    else:
        name, _, version = ref.rpartition("/")
        if name and _NAME.match(name) and version.isdigit():
            return name, version, None
    raise SourceError(f"{uri!r} is not a registry model URI; expected models:/NAME/VERSION or models:/NAME@ALIAS")


def registered_bundle(uri: str, workdir: str | os.PathLike) -> Path:
    """Download the bundle of a registered version (cached) and return its local directory."""
    from mlflow.exceptions import MlflowException

    from components.services.mlflow_backend import configure
    from components.services.mlflow_backend import get_client as _client

    name, version, alias = parse_registry_uri(uri)
    settings = configure()
    client = _client(settings)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as error:
        raise SourceError(f"{uri}: no such registered model version in {settings.tracking_uri} "
                          f"({error.error_code}: {str(error).splitlines()[0]})") from None
    dest = Path(workdir) / CACHE_DIR / name / str(mv.version)
    bundle = dest / BUNDLE_ARTIFACT
    if (bundle / "architecture.json").is_file():
        return bundle
    import mlflow

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{mv.version}-", dir=dest.parent))
    try:
        try:
            # Only the bundle artifact: the model's code file and environment are not needed to rebuild it.
            where = _bundle_path(name, mv.version, staging)
            found = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}/{where}",
                                                             dst_path=str(staging / "bundle-download")))
        except MlflowException as error:
            raise SourceError(f"{uri} (version {mv.version}) holds no '{BUNDLE_ARTIFACT}' artifact: it was not "
                              f"registered by idap ({str(error).splitlines()[0]})") from None
        if not (found / "architecture.json").is_file():
            raise SourceError(f"{uri} (version {mv.version}): the '{BUNDLE_ARTIFACT}' artifact is not an idap bundle")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            found.rename(bundle)
        except OSError:  # another process put it there first
            if not (bundle / "architecture.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle


def _bundle_path(name: str, version: str, staging: Path) -> str:
    """Where the logged model keeps its ``bundle`` artifact, from its MLmodel file (YAML, read as data)."""
    import mlflow
    import yaml

    mlmodel = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}/MLmodel",
                                                       dst_path=str(staging / "mlmodel")))
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    path = str(((flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT) or {}).get("path") or "")
    if not path or path.startswith("/") or ".." in Path(path).parts:
        raise SourceError(f"models:/{name}/{version} has no '{BUNDLE_ARTIFACT}' artifact in its MLmodel: it was not "
                          "registered by idap")
    return path


def resolve_model_source(uri: str | os.PathLike, workdir: str | os.PathLike) -> Path:
    """A local path for a model source: registry URIs and s3:// are downloaded (cached), paths returned as is."""
    text = os.fspath(uri)
    if is_registry_uri(text):
        return registered_bundle(text, workdir)
    return storage.resolve_input(text, workdir)


def _spec_path(value: str, dataset: str, local: Path) -> str:
    """A path a spec names, as a URI or an absolute path: relative ones are relative to the spec itself (its
    prefix in the bucket when the spec was read from s3://)."""
    if "://" in value or Path(value).is_absolute():
        return value
    return f"{dataset.rsplit('/', 1)[0]}/{value}" if storage.is_s3(dataset) else str((local.parent / value).resolve())


def _resolve_text_spec(dataset: str, local: Path, workdir: str | os.PathLike) -> str:
    """A ``kind: text`` / ``kind: lm`` spec whose ``path`` (the texts) or ``tokenizer`` is on s3://: each is
    fetched once by content and the spec rewritten with the local copies (``name`` kept, so the dataset reads
    the same as from a local copy); a spec naming local paths only is returned as it is."""
    from idap.data.image_folder import cache_dir
    from idap.data.text import read_spec

    spec = read_spec(local)
    named = {key: _spec_path(spec[key], dataset, local) for key in ("path", "tokenizer") if isinstance(spec.get(key), str)}
    if not any(storage.is_s3(value) for value in named.values()):
        return str(local)
    resolved = {**spec, "name": spec.get("name") or local.name}
    for key, value in named.items():
        resolved[key] = str(storage.fetch_by_content(value, cache_dir() / "s3")) if storage.is_s3(value) else value
    text = json.dumps(resolved, indent=2, sort_keys=True)
    path = Path(workdir) / SPECS_DIR / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    write_file(path, lambda tmp: tmp.write_text(text))
    return str(path)


def resolve_dataset(dataset: str, workdir: str | os.PathLike) -> str:
    """What ``idap.data.sources.load_dataset`` can open locally: s3:// datasets and s3:// spec sources are fetched.

    A spec (``.yaml`` / ``.yml`` / ``.json``, local or on s3://) whose ``source`` is on s3:// is rewritten as
    ``<workdir>/dataset-specs/<digest>.json`` with the local copy as ``source`` and the URI as ``origin``; a
    text or language-model spec likewise, for its ``path`` and ``tokenizer``.
    """
    from idap.data import SPEC_SUFFIXES

    if not storage.is_s3(dataset) and not (dataset.endswith(SPEC_SUFFIXES) and Path(dataset).is_file()):
        return dataset  # a builtin name or a local path: load_dataset says what is wrong with it
    local = storage.resolve_input(dataset, workdir) if storage.is_s3(dataset) else Path(dataset)
    if not local.name.endswith(SPEC_SUFFIXES) or not local.is_file():
        return str(local)
    from idap.data.lm import is_lm_source
    from idap.data.text import is_text_source

    if is_text_source(local) or is_lm_source(local):
        return _resolve_text_spec(dataset, local, workdir)
    from idap.data.image_folder import cache_dir
    from idap.data.spec import load_spec

    spec = load_spec(local)
    source = spec.source if spec.source == "cifar10" else _spec_path(spec.source, dataset, local)
    if not storage.is_s3(source):
        return str(local)
    fetched = storage.fetch_by_content(source, cache_dir() / "s3")
    resolved = replace(spec, source=str(fetched), origin=source).to_dict()
    text = json.dumps(resolved, indent=2, sort_keys=True)
    path = Path(workdir) / SPECS_DIR / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    write_file(path, lambda tmp: tmp.write_text(text))
    return str(path)
