"""The data package's shared types: what every loader returns and what the method reads.

``DataSplits`` (four disjoint splits as tensors), ``DataError`` (a dataset that cannot be found, read or split),
``RawArrays`` (a dataset as loaded, before splitting) and the small helpers every loader uses: the holdout
clip, the content hash of arrays, a sample's shape and a bundle's input spec. It imports no loader, so the
method (:mod:`idap.prune`) may use it without reaching any data source.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
from torch import Tensor

__all__ = ["DataError", "DataSplits", "RawArrays", "clip_holdout", "hash_arrays", "input_spec", "sample_shape"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")  # a dataset spec file (idap.data.spec)
# a split's name in describe() -> the prefix of its tensors (train_x, calib_x, ...)
SPLIT_FIELDS = {"train": "train", "calibration": "calib", "validation": "val", "test": "test"}
TEST_FRACTION = 0.2  # the seeded test carve-out of a dataset that ships no test set


class DataError(ValueError):
    """A dataset could not be found, read or split; the message names the path and what was expected."""


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class DataSplits:
    """Four disjoint splits as tensors: x float32 (N, C, H, W) normalized per channel, y int64 (N,)."""

    name: str
    train_x: Tensor
    train_y: Tensor
    calib_x: Tensor
    calib_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_channels: int
    image_size: int
    content_hash: str  # sha256 of the raw (uncompressed) dataset content, for lineage
    seed: int
    mean: tuple[float, ...] = ()  # per-channel statistics in raw units: x = (raw - mean) / std
    std: tuple[float, ...] = ()

    def describe(self) -> dict:
        """JSON-able summary: name, hash, seed, split sizes, shape facts and normalization."""
        return {
            "name": self.name, "content_hash": self.content_hash, "seed": self.seed,
            "sizes": {size: int(getattr(self, f"{attr}_y").shape[0]) for size, attr in SPLIT_FIELDS.items()},
            "num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size,
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
        }


@dataclass
class RawArrays:
    """A dataset as loaded from disk, before splitting: x (N, C, H, W) in raw units, y int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    content_hash: str


def sample_shape(data) -> tuple[int, ...]:
    """One sample's shape: ``(C, H, W)`` for images, ``(tokens,)`` for text splits (their ``input_shape``)."""
    shape = getattr(data, "input_shape", None)
    return tuple(shape) if shape is not None else (data.in_channels, data.image_size, data.image_size)


def input_spec(data) -> dict | None:
    """What a model trained on ``data`` expects of raw pixels, for its bundle (``save_bundle(input_spec=)``):
    ``{"mean", "std", "scale"}`` with ``x = (raw * scale - mean) / std``; None when the data records none."""
    norm = data.describe().get("normalization") or {}
    if not norm.get("mean") or not norm.get("std"):
        return None
    return {"mean": list(norm["mean"]), "std": list(norm["std"]), "scale": float(norm.get("scale", 1.0))}


def clip_holdout(name: str, n_pool: int, n_calib: int, n_val: int) -> tuple[int, int]:
    """Shrink calibration/validation proportionally so that train keeps at least half of the pool."""
    budget = n_pool // 2
    if n_calib + n_val <= budget:
        return n_calib, n_val
    calib = n_calib * budget // (n_calib + n_val)
    warnings.warn(f"{name}: calibration/validation sizes {n_calib}/{n_val} clipped to {calib}/{budget - calib} "
                  f"so that the train split keeps at least half of the {n_pool} training samples", stacklevel=4)
    return calib, budget - calib


def hash_arrays(*arrays: np.ndarray) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes: the content hash of data that came as arrays."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
