"""Reading a user's weights file without unpickling it (safetensors, or torch.load(weights_only=True)), and
loading it into a model strictly, with every mismatch named.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

_SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
LISTED_KEYS = 12  # keys named per kind in a mismatch message

STATE_DICT_HOWTO = (
    "save the weights as a state dict instead: torch.save(model.state_dict(), 'weights.pt'), or "
    "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
)


class ModelImportError(ValueError):
    """Weights or a source model cannot be imported; the message names the file and what would work."""


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a weights file: safetensors, or a state dict saved with ``torch.save`` (``weights_only=True``).

    A checkpoint dict holding the state dict under ``state_dict`` or ``model`` is unwrapped. Anything that
    needs unpickling code (a whole ``nn.Module``, custom classes) is refused without running it.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"{path}: weights file not found")
    if path.suffix.lower() in _SAFETENSORS_SUFFIXES:
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelImportError(f"{path}: not a readable safetensors file: {error}") from error
    try:
        # weights_only=True: the unpickler admits tensors and plain containers only, and refuses any
        # global (class or function) before calling it, so a hostile file cannot execute code here.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelImportError(
            f"{path}: holds Python objects other than tensors (for example a whole pickled model, "
            f"torch.save(model)); idap never unpickles code. In the environment that has the model's code, "
            f"{STATE_DICT_HOWTO}. ({_refused_global(error)})"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelImportError(f"{path}: not a PyTorch state dict or safetensors file: {error}") from error
    return _as_state_dict(loaded, path)


def _as_state_dict(loaded: object, path: Path) -> dict[str, Tensor]:
    if isinstance(loaded, Mapping) and not _all_tensors(loaded):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(loaded.get(key), Mapping) and _all_tensors(loaded[key]):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded or not _all_tensors(loaded):
        kind = type(loaded).__name__
        raise ModelImportError(f"{path}: expected a state dict (a mapping of names to tensors), got a {kind}; "
                               f"{STATE_DICT_HOWTO}")
    state = {str(k): v for k, v in loaded.items()}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _refused_global(error: Exception) -> str:
    """The line of torch's refusal that names what the file wanted to import (not its advice to unsafe-load)."""
    lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return lines[0] if lines else "refused by torch.load(weights_only=True)"


def _all_tensors(mapping: Mapping) -> bool:
    return all(isinstance(v, Tensor) for v in mapping.values())


def load_strict(model: nn.Module, state: Mapping[str, Tensor], *, where: str, skip: Iterable[str] = ()) -> None:
    """``load_state_dict(strict=True)`` with one message listing missing, unexpected and mis-shaped keys.

    Args:
        skip: keys the model must have but ``state`` must not supply (a replaced head).
    """
    skip = set(skip)
    own = model.state_dict()
    expected = set(own) - skip
    given = {k: v for k, v in state.items() if k not in skip}
    missing = sorted(expected - set(given))
    unexpected = sorted(set(given) - expected)
    shapes = sorted(f"{k}: file {tuple(given[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in expected & set(given) if tuple(given[k].shape) != tuple(own[k].shape))
    problems = [f"{len(keys)} {kind} key(s): {', '.join(keys[:LISTED_KEYS])}{' …' if len(keys) > LISTED_KEYS else ''}"
                for kind, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]
    if problems:
        raise ModelImportError(f"{where}: the weights do not fit the architecture ({'; '.join(problems)}). "
                               "Check the model name and options (--option), or the number of classes the weights "
                               "were trained for")
    with torch.no_grad():
        model.load_state_dict({**{k: own[k] for k in skip}, **given}, strict=True)

