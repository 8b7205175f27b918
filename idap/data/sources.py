"""Datasets as in-memory tensors with seeded, disjoint train / calibration / validation / test splits.

Calibration and validation are held-out slices of the *training* set; the test split is the dataset's own
test set when it has one, otherwise a seeded 20% carve-out. Everything stays as tensors (no DataLoader
transforms) because per-sample transforms cost more than the training itself on small CPUs.

Example:
    >>> splits = load_dataset("digits", seed=0, calibration_size=128, validation_size=256)
    >>> tuple(splits.train_x.shape[1:]), splits.num_classes
    ((1, 8, 8), 10)
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from idap.atomic import write_file
from idap.data.builtin import BUILTIN_DATASETS, fetch_dataset, list_datasets
from idap.data.splits import (
    IMAGE_SUFFIXES,
    SPEC_SUFFIXES,
    SPLIT_FIELDS,
    TEST_FRACTION,
    DataError,
    DataSplits,
    RawArrays,
    clip_holdout,
    hash_arrays,
)

__all__ = ["DataError", "DataSplits", "fetch_dataset", "list_datasets", "load_dataset", "load_splits",
           "save_splits"]

_TENSORS_FILE, _META_FILE = "splits.safetensors", "splits.json"


def load_dataset(name_or_path: str, *, root: str | Path | None = None, seed: int = 0,
                 calibration_size: int = 2048, validation_size: int = 5000,
                 train_limit: int | None = None, test_limit: int | None = None,
                 tokenizer: str | Path | None = None, max_length: int | None = None) -> DataSplits:
    """Load a dataset and cut it into seeded, disjoint train / calibration / validation / test splits.

    Args:
        name_or_path: a builtin name (`list_datasets()`), a directory in ImageFolder layout (class
            subfolders, optionally under train/ and test/), or a .npz file with `x` (N,H,W), (N,H,W,C) or
            (N,C,H,W) and `y` (N,), optionally `x_test` and `y_test`.
        root: where builtin datasets are looked up (see `fetch_dataset`).
        calibration_size, validation_size: slices held out from the training set; clipped (with a
            warning) so that the train split keeps at least half of the training set.
        train_limit, test_limit: seeded subsamples of the train and test splits, for fast runs.
        tokenizer, max_length: for text (a folder of class subfolders of .txt files, or a spec with
            ``kind: text``): the model's tokenizer and tokens per text, see ``idap.data.text.load_text_dataset``;
            for language modelling (a plain .txt file, or a spec with ``kind: lm``): the model and the
            tokens per window, see ``idap.data.lm.load_lm_dataset``.
    """
    for arg, value in (("calibration_size", calibration_size), ("validation_size", validation_size)):
        if value < 0:
            raise DataError(f"{arg} must be >= 0, got {value}")
    for arg, value in (("train_limit", train_limit), ("test_limit", test_limit)):
        if value is not None and value < 1:
            raise DataError(f"{arg} must be >= 1 or None, got {value}")
    if name_or_path in BUILTIN_DATASETS:
        raw = BUILTIN_DATASETS[name_or_path](root)
    else:
        path = Path(name_or_path)
        from idap.data.lm import is_lm_source, load_lm_dataset  # a plain text file: next-token windows
        from idap.data.text import is_text_source, load_text_dataset  # text: token-id splits

        if is_lm_source(path):
            return load_lm_dataset(path, tokenizer=tokenizer, block_size=max_length, seed=seed,
                                   calibration_size=calibration_size, validation_size=validation_size,
                                   train_limit=train_limit, test_limit=test_limit)
        if is_text_source(path):
            return load_text_dataset(path, tokenizer=tokenizer, max_length=max_length, seed=seed,
                                     calibration_size=calibration_size, validation_size=validation_size,
                                     train_limit=train_limit, test_limit=test_limit)
        if path.is_file() and path.suffix in SPEC_SUFFIXES:  # a dataset spec: streamed (or decoded) images
            from idap.data.spec import load_spec, open_spec

            return open_spec(load_spec(path), root=root, seed=seed, calibration_size=calibration_size,
                             validation_size=validation_size, train_limit=train_limit, test_limit=test_limit)
        if path.is_dir():
            raw = _load_image_folder(path)
        elif path.is_file() and path.suffix == ".npz":
            raw = _load_npz(path)
        elif path.exists():
            raise DataError(f"{path}: expected a .npz file or an ImageFolder directory")
        else:
            raise DataError(f"{name_or_path!r}: no such file or directory; expected a builtin dataset "
                            f"{list_datasets()}, a .npz file or an ImageFolder directory")
    return _split(raw, str(name_or_path), seed, calibration_size, validation_size, train_limit, test_limit)


def save_splits(splits, directory: str | Path) -> None:
    """Write the splits pickle-free for another process (a pipeline step) to ``load_splits``.

    ``DataSplits``: tensors in one safetensors file, metadata (``describe()``) in JSON. Streamed splits
    (``idap.data.streaming.StreamedSplits``): the metadata and a reference, never the pixels — the files, each
    split's seeded assignment and the content digest (``idap.data.stream_reference``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not isinstance(splits, DataSplits):
        from idap.data.stream_reference import write_reference

        write_reference(splits, directory)
        (directory / _TENSORS_FILE).unlink(missing_ok=True)  # a reused directory must not keep stale tensors
    else:
        (directory / "stream.json").unlink(missing_ok=True)  # nor a stale reference of a streamed dataset
        tensors = {f"{attr}_{k}": getattr(splits, f"{attr}_{k}").contiguous() for attr in SPLIT_FIELDS.values()
                   for k in "xy"}
        write_file(directory / _TENSORS_FILE, lambda tmp: save_file(
            tensors, str(tmp), metadata={"content_hash": splits.content_hash}))
    text = json.dumps(splits.describe(), indent=2, sort_keys=True)
    write_file(directory / _META_FILE, lambda tmp: tmp.write_text(text))


def load_splits(directory: str | Path):
    """Read splits written by `save_splits`: ``DataSplits`` or, for a streamed dataset, ``StreamedSplits``
    over the same files and splits (checked against the recorded content digest)."""
    directory = Path(directory)
    meta_path, tensors_path = directory / _META_FILE, directory / _TENSORS_FILE
    if not meta_path.is_file():
        raise DataError(f"{directory}: expected {_META_FILE} written by save_splits")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{directory}: unreadable splits ({type(exc).__name__}: {exc})") from exc
    if isinstance(meta, dict) and meta.get("streamed"):
        from idap.data.stream_reference import read_reference

        splits = read_reference(directory)
        if splits.content_hash != meta.get("content_hash"):
            raise DataError(f"{directory}: the reference (hash {splits.content_hash}) and {_META_FILE} "
                            f"(hash {meta.get('content_hash')}) come from different datasets")
        return splits
    if not tensors_path.is_file():
        raise DataError(f"{directory}: expected {_META_FILE} and {_TENSORS_FILE} written by save_splits")
    try:
        with safe_open(str(tensors_path), framework="pt") as f:
            stored_hash = (f.metadata() or {}).get("content_hash")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        fields = {f"{attr}_{k}": tensors[f"{attr}_{k}"] for attr in SPLIT_FIELDS.values() for k in "xy"}
        if meta.get("kind") == "text":  # token-id splits
            from idap.data.text import text_splits_from

            return text_splits_from(meta, fields, stored_hash=stored_hash, where=directory)
        if meta.get("kind") == "lm":  # next-token windows
            from idap.data.lm import lm_splits_from

            return lm_splits_from(meta, fields, stored_hash=stored_hash, where=directory)
        norm = meta["normalization"]
        splits = DataSplits(name=meta["name"], num_classes=int(meta["num_classes"]),
                            in_channels=int(meta["in_channels"]), image_size=int(meta["image_size"]),
                            content_hash=meta["content_hash"], seed=int(meta["seed"]),
                            mean=tuple(norm["mean"]), std=tuple(norm["std"]), **fields)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise DataError(f"{directory}: unreadable splits ({type(exc).__name__}: {exc})") from exc
    if stored_hash != splits.content_hash:
        raise DataError(f"{directory}: {_TENSORS_FILE} (hash {stored_hash}) and {_META_FILE} "
                        f"(hash {splits.content_hash}) come from different datasets")
    return splits


# ---- splitting and normalization -------------------------------------------------------------------

def _split(raw: RawArrays, name: str, seed: int, calibration_size: int, validation_size: int,
           train_limit: int | None, test_limit: int | None) -> DataSplits:
    rng = np.random.default_rng(seed)
    if raw.x_test is None:
        perm = rng.permutation(len(raw.y))
        n_test = max(1, round(TEST_FRACTION * len(perm)))
        test_x_src, test_y_src, test_idx, pool = raw.x, raw.y, perm[:n_test], perm[n_test:]
    else:
        test_x_src, test_y_src, test_idx = raw.x_test, raw.y_test, np.arange(len(raw.y_test))
        pool = rng.permutation(len(raw.y))
    n_calib, n_val = clip_holdout(name, len(pool), calibration_size, validation_size)
    calib_idx, val_idx, train_idx = pool[:n_calib], pool[n_calib:n_calib + n_val], pool[n_calib + n_val:]
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"{name}: too few samples ({len(raw.y)}) for non-empty train and test splits")
    train_idx = train_idx[:train_limit]  # pool is already a seeded permutation
    test_idx = rng.permutation(test_idx)[:test_limit]
    mean, std = _channel_stats(raw.x[np.sort(pool)] if raw.x_test is None else raw.x)

    def take(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[Tensor, Tensor]:
        idx = np.sort(idx)
        xt = torch.from_numpy(x[idx].astype(np.float32))
        xt = (xt - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
        return xt.float().contiguous(), torch.from_numpy(y[idx].astype(np.int64))

    train_x, train_y = take(raw.x, raw.y, train_idx)
    calib_x, calib_y = take(raw.x, raw.y, calib_idx)
    val_x, val_y = take(raw.x, raw.y, val_idx)
    test_x, test_y = take(test_x_src, test_y_src, test_idx)
    return DataSplits(name=name, train_x=train_x, train_y=train_y, calib_x=calib_x, calib_y=calib_y,
                      val_x=val_x, val_y=val_y, test_x=test_x, test_y=test_y, num_classes=raw.num_classes,
                      in_channels=raw.x.shape[1], image_size=raw.x.shape[2], content_hash=raw.content_hash,
                      seed=seed, mean=mean, std=std)


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    means, stds = [], []
    for c in range(x.shape[1]):
        channel = x[:, c]
        if channel.dtype == np.uint8:  # exact and cheap via a histogram, no float copy of the data
            counts, values = np.bincount(channel.ravel(), minlength=256).astype(np.float64), np.arange(256.0)
            mean = counts @ values / counts.sum()
            var = counts @ (values - mean) ** 2 / counts.sum()
        else:
            mean, var = channel.astype(np.float64).mean(), channel.astype(np.float64).var()
        means.append(float(mean))
        stds.append(max(float(np.sqrt(var)), 1e-6))  # a constant channel must not divide by zero
    return tuple(means), tuple(stds)


# ---- loaders ---------------------------------------------------------------------------------------


def _load_npz(path: Path) -> RawArrays:
    expected = "expected arrays 'x' (N,H,W), (N,H,W,C) or (N,C,H,W) and 'y' (N,), optionally 'x_test', 'y_test'"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise DataError(f"{path}: cannot read .npz file ({exc}); {expected}") from exc
    if not {"x", "y"} <= arrays.keys() or ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: {expected}; found {sorted(arrays)}")
    x, y = _as_images(arrays["x"], path, "x"), _as_labels(arrays["y"], len(arrays["x"]), path, "y")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _as_images(arrays["x_test"], path, "x_test")
        y_test = _as_labels(arrays["y_test"], len(x_test), path, "y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test images {x_test.shape[1:]} differ from x images {x.shape[1:]}")
    labels = y if y_test is None else np.concatenate([y, y_test])
    digest = hash_arrays(*(a for a in (x, y, x_test, y_test) if a is not None))
    return RawArrays(x, y, x_test, y_test, int(labels.max()) + 1, digest)


def _as_images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3] or x.shape[2] < 1 or len(x) == 0:
        raise DataError(f"{path}: array {key!r} has shape {x.shape}; expected non-empty square images "
                        "(N,H,W), (N,H,W,C) or (N,C,H,W) with C in (1, 3)")
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{path}: array {key!r} has dtype {x.dtype}; expected integer or float pixels")
    return np.ascontiguousarray(x)


def _as_labels(y: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise DataError(f"{path}: array {key!r} has shape {y.shape} and dtype {y.dtype}; expected {n} "
                        "non-negative integer labels (N,) matching the images")
    return y.astype(np.int64)


def _load_image_folder(path: Path) -> RawArrays:
    from PIL import Image, UnidentifiedImageError

    has_split = (path / "train").is_dir() and (path / "test").is_dir()
    train_dir = path / "train" if has_split else path
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{train_dir}: expected ImageFolder layout, one subfolder of images per class")
    digest, size = hashlib.sha256(), None

    def read(directory: Path) -> tuple[np.ndarray, np.ndarray]:
        nonlocal size
        extra = sorted({d.name for d in directory.iterdir() if d.is_dir()} - set(classes))
        if extra:
            raise DataError(f"{directory}: class folders {extra} are not in the training classes {classes}")
        files = [(f, label) for label, cls in enumerate(classes) if (directory / cls).is_dir()
                 for f in sorted((directory / cls).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
        images = []
        for file, _ in files:
            try:
                with Image.open(file) as image:
                    images.append(image.convert("RGB") if image.mode not in ("L", "1") else image.convert("L"))
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"{file}: unreadable image ({exc})") from exc
            digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
        size = size or images[0].size
        if size[0] != size[1]:
            raise DataError(f"{files[0][0]}: image is {size[0]}x{size[1]}; expected square images")
        if any(im.size != size for im in images):
            warnings.warn(f"{directory}: images of different sizes, resized to {size[0]}x{size[1]}", stacklevel=4)
        mode = "RGB" if any(im.mode == "RGB" for im in images) else "L"
        arrays = [np.asarray(im.convert(mode).resize(size)) for im in images]
        x = np.stack(arrays)[:, None] if mode == "L" else np.stack(arrays).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x), np.array([label for _, label in files], dtype=np.int64)

    x, y = read(train_dir)
    x_test, y_test = read(path / "test") if has_split else (None, None)
    if x_test is not None and x_test.shape[1] != x.shape[1]:
        x, x_test = (a if a.shape[1] == 3 else np.repeat(a, 3, axis=1) for a in (x, x_test))
    return RawArrays(x, y, x_test, y_test, len(classes), digest.hexdigest())
