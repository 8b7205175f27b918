"""What a bundle records of a pruned model beyond its architecture's name, and how loading applies it back.

``describe_changes`` compares a pruned model with a fresh ``create_model`` instance: the module attributes
that differ (pruned widths, head counts, normalised shapes) and the blocks replaced by ``nn.Identity``.
``apply_changes`` sets them on a fresh model, ``reshape_to`` gives its tensors the saved shapes so
``load_state_dict`` can copy into them, and ``check_structure`` proves the weights agree with the widths.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from idap.bundle.format import ARCHITECTURE, BundleError

__all__ = ["apply_changes", "check_structure", "describe_changes", "reshape_to"]

# Attribute values a bundle records: what pruning changes (widths, head counts, normalised shapes).
_SCALARS = (bool, int, float, str)
_SKIPPED_ATTRIBUTES = frozenset({"training"})


def describe_changes(model: nn.Module, fresh: nn.Module, directory: Path) -> dict:
    """The module attributes that differ from a fresh instance, and the blocks replaced by nn.Identity."""
    fresh_modules = dict(fresh.named_modules())
    modules: dict[str, dict] = {}
    removed: list[str] = []
    seen = set()
    for name, module in model.named_modules():
        seen.add(name)
        original = fresh_modules.get(name)
        if original is None:
            raise BundleError(
                f"{directory}: module {name!r} ({type(module).__name__}) does not exist in a fresh "
                f"{model.idap_arch['name']!r}; a bundle records only reshaped modules and nn.Identity "
                "replacements"
            )
        if isinstance(module, nn.Identity) and not isinstance(original, nn.Identity):
            removed.append(name)
            continue
        if type(module) is not type(original):
            raise BundleError(
                f"{directory}: module {name!r} is {type(module).__name__} but the architecture builds "
                f"{type(original).__name__}; a bundle records only reshaped modules and nn.Identity "
                "replacements"
            )
        changed = _changed_attributes(module, original, f"{directory}: module {name!r}")
        if changed:
            modules[name] = changed
    missing = [
        name
        for name in fresh_modules
        if name not in seen and not any(name.startswith(f"{r}.") for r in removed)
    ]
    if missing:
        raise BundleError(
            f"{directory}: modules {missing[:5]} of a fresh {model.idap_arch['name']!r} are missing from "
            "the model; only replacement by nn.Identity can be recorded"
        )
    return {"modules": modules, "removed": removed}


def _changed_attributes(module: nn.Module, original: nn.Module, where: str) -> dict:
    changed = {}
    for attr, value in vars(module).items():
        if attr.startswith("_") or attr in _SKIPPED_ATTRIBUTES or not _recordable(value):
            continue
        if hasattr(original, attr) and _same(value, getattr(original, attr)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise BundleError(f"{where}: attribute {attr}={value} cannot be written to JSON")
        changed[attr] = list(value) if isinstance(value, tuple | list) else value
    return changed


def _recordable(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, tuple | list) and all(isinstance(v, bool | int | float) for v in value)


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return list(a) == list(b)
    return type(a) is type(b) and a == b


def apply_changes(model: nn.Module, architecture: dict, directory: Path) -> None:
    where = directory / ARCHITECTURE
    for name in architecture["removed"]:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            model.get_submodule(name)
        except AttributeError as error:
            raise BundleError(
                f"{where}: removed module {name!r} does not exist in the architecture"
            ) from error
        setattr(parent, child, nn.Identity())
    for name, attributes in architecture["modules"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError as error:
            raise BundleError(f"{where}: module {name!r} does not exist in the architecture") from error
        if not isinstance(attributes, dict):
            raise BundleError(f"{where}: modules[{name!r}] must be an object, got {attributes!r}")
        for attr, value in attributes.items():
            if attr.startswith("_") or not _recordable(value):
                raise BundleError(f"{where}: modules[{name!r}].{attr} = {value!r} is not a recordable value")
            current = getattr(module, attr, None)
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
            setattr(module, attr, value)


def reshape_to(model: nn.Module, weights: dict[str, Tensor], path: Path) -> None:
    """Give every parameter/buffer the saved shape and dtype, so load_state_dict can copy into it."""
    replaced: dict[int, Tensor] = {}  # tied tensors stay tied
    for key, saved in weights.items():
        module_name, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue  # reported as an unexpected key by load_state_dict(strict=True)
        slots = module._parameters if attr in module._parameters else module._buffers
        current = slots.get(attr)
        if current is None or (current.shape == saved.shape and current.dtype == saved.dtype):
            continue
        if id(current) not in replaced:
            empty = torch.empty(saved.shape, dtype=saved.dtype, device=current.device)
            if isinstance(current, nn.Parameter):
                empty = nn.Parameter(empty, requires_grad=current.requires_grad)
            replaced[id(current)] = empty
        slots[attr] = replaced[id(current)]


def check_structure(model: nn.Module, path: Path) -> None:
    """Weight shapes must agree with the modules' recorded widths (a reshaped tensor is not a pruned layer)."""
    for name, module in model.named_modules():
        problem = _structure_problem(module)
        if problem:
            raise BundleError(
                f"{path}: weights of {name or 'the model'!r} ({type(module).__name__}) {problem}"
            )


def _structure_problem(module: nn.Module) -> str | None:
    def shape(tensor: Tensor | None) -> tuple[int, ...] | None:
        return None if tensor is None else tuple(tensor.shape)

    if isinstance(module, nn.modules.conv._ConvNd):
        w = shape(module.weight)
        if module.transposed:
            expected = (module.in_channels, module.out_channels // module.groups, *module.kernel_size)
        else:
            expected = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        if w != expected:
            return f"have shape {w}, but in/out channels, groups and kernel size need {expected}"
        if module.bias is not None and shape(module.bias) != (module.out_channels,):
            return f"have bias shape {shape(module.bias)}, need ({module.out_channels},)"
    elif isinstance(module, nn.Linear):
        if shape(module.weight) != (module.out_features, module.in_features):
            return (
                f"have shape {shape(module.weight)}, but in/out features need "
                f"{(module.out_features, module.in_features)}"
            )
        if module.bias is not None and shape(module.bias) != (module.out_features,):
            return f"have bias shape {shape(module.bias)}, need ({module.out_features},)"
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        n = (module.num_features,)
        for tensor_name in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(module, tensor_name, None)
            if tensor is not None and shape(tensor) != n:
                return f"have {tensor_name} shape {shape(tensor)}, but num_features needs {n}"
    elif isinstance(module, nn.LayerNorm | nn.GroupNorm):
        n = tuple(module.normalized_shape) if isinstance(module, nn.LayerNorm) else (module.num_channels,)
        for tensor_name in ("weight", "bias"):
            tensor = getattr(module, tensor_name, None)
            if tensor is not None and shape(tensor) != n:
                return f"have {tensor_name} shape {shape(tensor)}, but the normalised shape needs {n}"
    return None
