"""The one check of data, and of data against a model, that every entry point runs before any work.

``idap train``, ``compress``, ``evaluate``, ``import`` and every pipeline step call :func:`check_data` and
:func:`check_model_fits`, so a bad dataset fails the same way everywhere: up front, as a ``DataError``
naming the dataset and what the model expects — never as a raw traceback, a run at chance accuracy or a
parity failure three stages later.

Example:
    >>> from idap.data.sources import load_dataset
    >>> from idap.models.registry import create_model
    >>> data = load_dataset("digits", calibration_size=64, validation_size=64)
    >>> check_data(data); check_model_fits(create_model("cnn_small", 10, 1, 8), data, source="cnn_small")
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from idap.data.splits import DataError, DataSplits
from idap.measure.metrics import is_streamed

_SPLITS = ("train", "calib", "val", "test")


def check_data(data: DataSplits, *, need_train: bool = True) -> None:
    """Refuse NaN/Inf values, labels outside ``[0, num_classes)`` and a training split with one class.

    Args:
        need_train: the caller trains or compresses (at least two classes must be present in train).
    """
    stats = [*getattr(data, "mean", ()), *getattr(data, "std", ())]
    if not all(math.isfinite(v) for v in stats):
        raise DataError(f"dataset {data.name}: its pixels hold NaN or Inf values (the normalization statistics "
                        f"came out as mean {data.mean}, std {data.std}); clean the data first")
    for split in _SPLITS:
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        # a streamed split decodes 8-bit image files: finite by construction, and not read here
        if not is_streamed(x) and x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            raise DataError(f"dataset {data.name}: {bad} {split} samples hold NaN or Inf values; "
                            "clean the data (or its normalization statistics) first")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= data.num_classes):
            raise DataError(f"dataset {data.name}: {split} labels span {int(y.min())}..{int(y.max())}, outside "
                            f"the dataset's classes 0..{data.num_classes - 1}")
    if need_train:
        present = int(torch.unique(data.train_y).numel())
        if data.num_classes < 2 or present < 2:
            raise DataError(f"dataset {data.name}: the training split holds {present} class(es) of "
                            f"{data.num_classes}; classification needs at least 2")


def model_expects(model: nn.Module, input_shape: Sequence[int] | None = None) -> dict:
    """What a model takes and predicts: ``{"in_channels", "image_size", "num_classes"}`` (None = unknown)."""
    arch = getattr(model, "idap_arch", None) or {}
    expects = {k: arch.get(k) for k in ("in_channels", "image_size", "num_classes")}
    if input_shape is not None and len(input_shape) == 3:
        expects["in_channels"], expects["image_size"] = int(input_shape[0]), int(input_shape[-1])
    return expects


def check_model_fits(model: nn.Module, data: DataSplits, *, source: str,
                     input_shape: Sequence[int] | None = None) -> None:
    """The model must take the dataset's channels and image size and predict exactly its classes.

    Args:
        source: how the user named the model (a path, a registry name), for the message.
        input_shape: the shape the model's bundle records, when it came from one (wins over ``idap_arch``).
    """
    expects = model_expects(model, input_shape)
    have = {"in_channels": data.in_channels, "image_size": data.image_size, "num_classes": data.num_classes}
    wrong = [k for k, v in expects.items() if v is not None and v != have[k]]
    if not wrong:
        return
    want = ", ".join(f"{k.replace('_', ' ')} {expects[k]}" for k in wrong)
    got = ", ".join(f"{k.replace('_', ' ')} {have[k]}" for k in wrong)
    hint = " (resize the images, or build the model for this size)" if "image_size" in wrong else ""
    raise DataError(f"model {source} expects {want}; dataset {data.name} has {got}{hint}")
