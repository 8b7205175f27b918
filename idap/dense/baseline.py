"""The dense baseline: a registered architecture trained from random initialisation on a dataset.

Used by ``idap train``, by ``idap compress --model`` (no bundle given), by the pipeline's baseline step and
by the benchmark, so every dense model of the project is trained the same way.

Example:
    >>> from idap.data.sources import load_dataset                                                # doctest: +SKIP
    >>> model, metrics = train_dense("cnn_small", load_dataset("digits"), epochs=1, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import time

import torch
from torch import nn

from idap.data.checks import check_data
from idap.measure.metrics import resolve_device
from idap.models.registry import create_model
from idap.prune.recovery import train
from idap.report.evaluate import evaluate_model


def train_dense(model_name: str, data, *, epochs: float, seed: int, device: str = "auto", lr: float = 0.05,
                batch_size: int = 128, progress: bool = True) -> tuple[nn.Module, dict]:
    """Train a dense baseline from random init (the data checked first); returns ``(model on CPU, metrics)``.

    Args:
        epochs: passes over the training split (fractions allowed); lr: SGD learning rate (cosine decay).
    """
    check_data(data)
    torch.manual_seed(seed)
    model = create_model(model_name, data.num_classes, data.in_channels, data.image_size)
    dev = resolve_device(device)
    started = time.perf_counter()
    train(model, data.train_x, data.train_y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=dev,
          progress=progress)
    metrics = evaluate_model(model, data, device=dev)
    metrics.update({"epochs": epochs, "seed": seed, "train_seconds": round(time.perf_counter() - started, 1),
                    "dataset": data.describe()})
    return model.cpu().eval(), metrics
