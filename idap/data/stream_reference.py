"""Streamed splits between processes: a reference to the images, never the pixels.

``idap.data.sources.save_splits`` writes, for ``StreamedSplits``, ``stream.json`` beside ``splits.json``: where the images
are (the folder, or torchvision's CIFAR-10 batches), every listed file (relative to that folder) with its label,
each split's seeded assignment (pool + indices), the content digest, and what the transforms need (resolution,
crop, normalisation as measured, augmentation, workers). ``load_splits`` rebuilds the very same splits from it
(``idap.data.streaming.assemble``, the constructor opening a folder uses) without listing, re-splitting or measuring
anything, and refuses files whose digest is no longer the recorded one.

The files must be readable where the reference is read. A folder inside the cache (``idap.data.image_folder.cache_dir``:
extracted archives, s3:// downloads) is recorded relative to it, so steps that mount the same cache at another
path still find it.

Example:
    >>> save_splits(open_image_folder("photos/"), "out/data")   # doctest: +SKIP
    >>> load_splits("out/data").train_x                         # doctest: +SKIP
    StreamedSplit('photos/:train', 3412 images, 2 workers)
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from idap.atomic import write_file
from idap.data.image_folder import cache_dir, hash_files
from idap.data.splits import DataError
from idap.data.streaming import StreamedSplits, assemble
from idap.data.transforms import TransformConfig

__all__ = ["REFERENCE_FILE", "read_reference", "write_reference"]

REFERENCE_FILE = "stream.json"
FORMAT = "idap.streamed-splits"
VERSION = 1
_KINDS = ("folder", "cifar10-batches")


def write_reference(splits: StreamedSplits, directory: str | Path) -> Path:
    """Write ``directory/stream.json`` for ``splits`` (atomically) and return its path."""
    source = dict(splits.source)
    if source.get("kind") not in _KINDS:
        raise DataError(f"{splits.name}: streamed splits from {source.get('kind')!r} cannot be saved as a reference; "
                        f"known sources: {list(_KINDS)}")
    root = Path(source["root"])
    with contextlib.suppress(ValueError):
        source["in_cache"] = root.relative_to(cache_dir().resolve()).as_posix()
    if source["kind"] == "folder":
        pools = {name: {"files": [Path(f).relative_to(root).as_posix() for f in items],
                        "labels": np.asarray(labels).tolist()} for name, (items, labels) in splits.pools.items()}
    else:
        pools = {name: {"size": len(labels)} for name, (_, labels) in splits.pools.items()}
    spec = splits.spec
    reference = {
        "format": FORMAT, "version": VERSION, "name": splits.name, "classes": list(splits.classes),
        "mode": splits.mode, "image_size": splits.image_size, "mean": list(splits.mean), "std": list(splits.std),
        "crop_fraction": spec["crop_fraction"], "workers": spec["workers"], "train_transform": spec["train_transform"],
        "seed": splits.seed, "content_hash": splits.content_hash, "spec": spec, "source": source, "pools": pools,
        "pool_order": list(splits.pools),  # the order the content hash reads them in
        "assignments": {split: {"pool": pool, "indices": np.asarray(idx).tolist()}
                        for split, (pool, idx) in splits.assignments.items()},
    }
    path = Path(directory) / REFERENCE_FILE
    text = json.dumps(reference, separators=(",", ":"), sort_keys=True)
    write_file(path, lambda tmp: tmp.write_text(text))
    return path


def read_reference(directory: str | Path) -> StreamedSplits:
    """The streamed splits ``write_reference`` recorded in ``directory``; DataError when the images are missing
    or changed."""
    directory = Path(directory)
    path = directory / REFERENCE_FILE
    try:
        ref = json.loads(path.read_text())
        if ref.get("format") != FORMAT or ref.get("version") != VERSION:
            raise DataError(f"{path}: not an {FORMAT} v{VERSION} reference (format {ref.get('format')!r}, "
                            f"version {ref.get('version')!r})")
        source, name = ref["source"], ref["name"]
        root = _locate(directory, ref)
        if source["kind"] == "folder":
            pools = {pool: ([root / f for f in ref["pools"][pool]["files"]],
                            np.asarray(ref["pools"][pool]["labels"], dtype=np.int64)) for pool in ref["pool_order"]}
            try:
                digest = hash_files(root, [f for items, _ in pools.values() for f in items])
            except OSError as error:
                raise DataError(f"{directory}: the streamed dataset {name!r} lost files under {root} since it was "
                                f"saved ({error})") from error
        elif source["kind"] == "cifar10-batches":
            from idap.data.cifar10 import batch_pools  # only this source needs the CIFAR-10 reader

            pools, digest = batch_pools(root)
        else:
            raise DataError(f"{path}: unknown source kind {source['kind']!r}; known: {list(_KINDS)}")
        if digest != ref["content_hash"]:
            raise DataError(f"{directory}: the images of {name!r} under {root} changed since the splits were saved "
                            f"(content hash {digest[:12]}, recorded {ref['content_hash'][:12]}); prepare the data "
                            "again")
        assignments = {}
        for split, a in ref["assignments"].items():
            idx = np.asarray(a["indices"], dtype=np.int64)
            size = len(pools[a["pool"]][1])
            if len(idx) and (idx.min() < 0 or idx.max() >= size):
                raise DataError(f"{path}: split {split!r} indexes past its pool {a['pool']!r} of {size} images")
            assignments[split] = (a["pool"], idx)
        return assemble(pools, assignments, name=name, classes=ref["classes"], mode=ref["mode"],
                        size=int(ref["image_size"]), crop_fraction=float(ref["crop_fraction"]),
                        transform=TransformConfig(**ref["train_transform"]), mean=tuple(ref["mean"]),
                        std=tuple(ref["std"]), workers=int(ref["workers"]), content_hash=ref["content_hash"],
                        seed=int(ref["seed"]), spec=ref["spec"],
                        source={"kind": source["kind"], "root": str(root)})
    except (OSError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{directory}: unreadable streamed-splits reference ({type(error).__name__}: {error})") from error


def _locate(directory: Path, ref: dict) -> Path:
    """The folder the images are in on this machine: the cache's copy first (it may be mounted elsewhere)."""
    source = ref["source"]
    candidates = ([cache_dir() / source["in_cache"]] if source.get("in_cache") else []) + [Path(source["root"])]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        origin = ref.get("spec", {}).get("origin") or source["root"]
        raise DataError(f"{directory}: the images of the streamed dataset {ref['name']!r} are not on this machine "
                        f"(looked in {', '.join(map(str, candidates))}); they were read from {origin}. Streamed "
                        "splits travel as a reference, so every step must see the same files: give the steps the "
                        "same data volume or IDAP_CACHE_DIR")
    return found
