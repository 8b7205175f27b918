"""Checkpoints of a run: the current model and its :class:`RunState`, saved as one bundle after every step.

The state travels inside the bundle's metadata, so model and state are replaced together in one atomic
rename: a kill at any moment leaves either the previous checkpoint or the new one, never a model from one
step with the state of another. A checkpoint names the run it belongs to (digests of the dense model's
weights, the recipe and the data); loading it for another run raises :class:`CheckpointMismatch`.

Example:
    >>> saver = Checkpoint("out/.partial/checkpoint", dense, recipe, data)   # doctest: +SKIP
    >>> result = compress(dense, data, recipe, checkpoint_dir=saver.directory)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from idap.bundle.store import load_bundle, read_bundle_info, save_bundle
from idap.data.splits import DataSplits, sample_shape
from idap.prune.config import Recipe
from idap.prune.state import RunState

MODEL = "model"


class CheckpointMismatch(ValueError):
    """The checkpoint found belongs to another run (other dense model, recipe or data)."""


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, shapes, dtypes and bytes), independent of the device."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Checkpoint:
    """Where one run saves ``(model, state)`` after each completed step, and reads them back to resume."""

    def __init__(self, directory: str | os.PathLike, dense: nn.Module, recipe: Recipe, data: DataSplits) -> None:
        self.directory = Path(directory)
        self.recipe = recipe
        self.input_shape = sample_shape(data)
        self.key = {"dense": weights_digest(dense), "recipe": recipe.digest(), "data": data.content_hash}
        name = getattr(dense, "idap_arch", {}).get("name", "")
        # the dense model's own factory is already imported and trusted by whoever built it
        self.trust = [name.partition(":")[0]] if ":" in name else []

    @property
    def exists(self) -> bool:
        return (self.directory / MODEL / "architecture.json").is_file()

    def save(self, model: nn.Module, state: RunState) -> None:
        save_bundle(model, self.directory / MODEL, input_shape=self.input_shape, recipe=self.recipe.to_dict(),
                    metadata={"run_state": state.to_json(), "run_key": self.key})

    def load(self) -> tuple[nn.Module, RunState] | None:
        """The saved model and state, or ``None`` when there is no checkpoint yet.

        Raises:
            CheckpointMismatch: the checkpoint was written by a run with another dense model, recipe or data.
        """
        if not self.exists:
            return None
        path = self.directory / MODEL
        metadata = read_bundle_info(path)["metadata"]
        saved = metadata.get("run_key", {})
        differs = [k for k in self.key if saved.get(k) != self.key[k]]
        if differs:
            raise CheckpointMismatch(
                f"{path}: checkpoint of another run (its {', '.join(differs)} differ from this run's)")
        return load_bundle(path, trust_modules=self.trust), RunState.from_json(metadata["run_state"])
