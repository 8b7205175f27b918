"""The dense baseline: a registered architecture trained from random initialisation on a dataset.

Used by ``idap train``, by ``idap compress --model`` (no bundle given), by the pipeline's baseline step and
by the benchmark, so every dense model of the project is trained the same way.

Example:
    >>> from idap.data.sources import load_dataset                                                # doctest: +SKIP
    >>> model, metrics = train_dense("cnn_small", load_dataset("digits"), epochs=1, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch import nn

from idap.data.checks import check_data
from idap.measure.metrics import resolve_device
from idap.models.registry import create_model
from idap.prune.recovery import train
from idap.report.evaluate import chance_warning, evaluate_model

# Fewer optimizer steps than this leave a small dataset's model at chance (digits, 2 epochs of 9 steps: 9.98 %
# validation; 10 epochs, 90 steps: 89.8 %): the schedule is stretched to at least this many steps.
MIN_TRAIN_STEPS = 200


def scheduled_epochs(epochs: float, n_train: int, batch_size: int, min_steps: int = MIN_TRAIN_STEPS) -> float:
    """``epochs``, or more when they give fewer than ``min_steps`` optimizer steps on ``n_train`` samples."""
    steps_per_epoch = max(1, math.ceil(n_train / max(1, min(batch_size, n_train))))
    if epochs <= 0 or epochs * steps_per_epoch >= min_steps:
        return epochs
    return math.ceil(min_steps / steps_per_epoch * 10) / 10


def train_dense(model_name: str, data, *, epochs: float, seed: int, device: str = "auto", lr: float = 0.05,
                batch_size: int = 128, progress: bool = True, min_steps: int = MIN_TRAIN_STEPS) -> tuple[nn.Module, dict]:
    """Train a dense baseline from random init (the data checked first); returns ``(model on CPU, metrics)``.

    Args:
        epochs: passes over the training split (fractions allowed); lr: SGD learning rate (cosine decay).
        min_steps: a small dataset's epochs are stretched to at least this many optimizer steps (0: never);
            ``metrics["epochs"]`` is what ran, ``metrics["epochs_requested"]`` what was asked.
    A model that ends within a few points of chance is named in a warning and in ``metrics["warning"]``.
    """
    check_data(data)
    torch.manual_seed(seed)
    model = create_model(model_name, data.num_classes, data.in_channels, data.image_size)
    dev = resolve_device(device)
    ran = scheduled_epochs(epochs, len(data.train_y), batch_size, min_steps)
    if ran != epochs:
        warnings.warn(f"{epochs:g} epochs of {len(data.train_y)} samples are too few optimizer steps to learn from; "
                      f"training {ran:g} epochs (at least {min_steps} steps; min_steps=0 keeps {epochs:g})", stacklevel=2)
    started = time.perf_counter()
    train(model, data.train_x, data.train_y, epochs=ran, batch_size=batch_size, lr=lr, seed=seed, device=dev,
          progress=progress)
    metrics = evaluate_model(model, data, device=dev)
    metrics.update({"epochs": ran, "epochs_requested": epochs, "seed": seed,
                    "train_seconds": round(time.perf_counter() - started, 1), "dataset": data.describe()})
    warning = chance_warning(metrics, data.num_classes, what=f"the dense {model_name}")
    if warning:
        warnings.warn(warning, stacklevel=2)
        metrics["warning"] = warning
    return model.cpu().eval(), metrics
