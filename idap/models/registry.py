"""Model registry: every architecture IDAP++ compresses, built by name; who may name code in a model file.

A timm-style registry (``register_model`` / ``create_model`` / ``list_models``) instead of an if/elif
ladder. Models are always randomly initialised (no download, ever); seeding is the caller's job. Every
model remembers how it was built in ``model.idap_arch`` so a bundle can rebuild the fresh architecture with
``create_model(**arch)``. A name may also be an import path ``package.module:factory`` (a bundle may name
one only from a module the user trusted: ``trust_modules`` / ``check_trusted``) or
``torchvision.models.<builder>``.

The architectures live beside it and register themselves when the package is imported (``idap/models/__init__``):
``idap.models.cifar_models`` (cnn_small, resnet20/56, resnet_tiny), ``idap.models.torchvision_models`` (torchvision's,
stems adapted to small images) and ``idap.models.text_family`` (the text models of ``idap.models.lm``). ``idap.models.prunable`` tells the pruning stages
what they may touch.

Example:
    >>> import torch
    >>> model = create_model("resnet20", num_classes=10, in_channels=1, image_size=28)
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> create_model(**model.idap_arch).idap_arch == model.idap_arch
    True
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Callable, Iterable, Mapping

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}  # name -> "image" | "text"
# Modules whose factories a *file* (a bundle's architecture.json) may name: the user's explicit choice,
# never the file's. IDAP_TRUSTED_MODULES (comma-separated) adds to it for every process of a run.
TRUST_ENV = "IDAP_TRUSTED_MODULES"
_TRUSTED: set[str] = set()


class ModelError(ValueError):
    """A model name, import path or constructor argument that cannot be built."""


def register_model(name: str, *, task: str = "image") -> Callable:
    """Register ``factory(num_classes, in_channels, image_size, **kwargs) -> nn.Module`` under ``name``.

    ``task`` groups the listing: ``"image"`` models take (N, C, H, W) pixels, ``"text"`` models token ids.
    """
    if not name or ":" in name:
        raise ModelError(
            f"model names must be non-empty and without ':' (reserved for import paths), got {name!r}"
        )

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ModelError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        _TASKS[name] = task
        return factory

    return decorator


def trust_modules(*modules: str) -> None:
    """Allow bundles to name factories from these modules (or packages) for the rest of this process.

    A bundle naming ``package.module:factory`` loads only when ``package.module`` (or a parent package)
    was trusted here, through ``$IDAP_TRUSTED_MODULES`` or ``load_bundle(..., trust_modules=...)``.
    """
    for module in modules:
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise ModelError(f"a trusted module must be a dotted module name like 'mypkg.models', got {module!r}")
        _TRUSTED.add(module)


def trusted_modules(extra: Iterable[str] = ()) -> frozenset[str]:
    """The modules trusted now: ``trust_modules`` calls, ``$IDAP_TRUSTED_MODULES`` and ``extra``."""
    from_env = {m.strip() for m in os.environ.get(TRUST_ENV, "").split(",") if m.strip()}
    return frozenset(_TRUSTED | from_env | set(extra))


def check_trusted(name: str, extra: Iterable[str] = (), *, where: str = "") -> None:
    """Refuse an import-path model name whose module the user did not trust (registered names always pass)."""
    if name in _REGISTRY or ":" not in name:
        return
    module = name.partition(":")[0]
    trusted = trusted_modules(extra)
    if any(module == t or module.startswith(f"{t}.") for t in trusted):
        return
    raise ModelError(
        f"{where}model {name!r} names code in module {module!r}, which is not trusted: a model file may not "
        f"make idap import code. If you wrote or trust that module, allow it with --trust-module {module} "
        f"or {TRUST_ENV}={module}"
    )


def list_models(task: str = "image") -> list[str]:
    """Names of the registered models of a task (``"image"``, the default, or ``"text"``), sorted."""
    return sorted(n for n in _REGISTRY if _TASKS[n] == task)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, **kwargs
) -> nn.Module:
    """Build a randomly initialised model by registered name or ``"package.module:factory"`` path.

    Args:
        name: a name from ``list_models()`` or an import path whose factory takes the same arguments.
        num_classes, in_channels, image_size: the task's shape (image_size is the side of a square input).
        **kwargs: model-specific options (JSON-able). ``kwargs={...}`` is accepted too, so that
            ``create_model(**model.idap_arch)`` rebuilds the same architecture.

    Example:
        >>> create_model("cnn_small", num_classes=3, in_channels=3, image_size=8).idap_arch["num_classes"]
        3
    """
    nested = kwargs.pop("kwargs", None)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise ModelError(f"kwargs must be a mapping of model options, got {type(nested).__name__}")
        if clash := set(nested) & set(kwargs):
            raise ModelError(f"model options given twice: {sorted(clash)}")
        kwargs = {**nested, **kwargs}
    for arg, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("image_size", image_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{arg} must be a positive int, got {value!r}")
    for arg in ("weights", "pretrained"):
        if arg in kwargs:
            raise ModelError(
                f"models are always randomly initialised (nothing is downloaded); drop {arg}={kwargs[arg]!r}"
            )
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError) as err:
        raise ModelError(
            f"model options must be JSON-serialisable so a bundle can rebuild {name!r}: {err}"
        ) from None

    factory = _resolve(name)
    shape = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    try:
        signature = inspect.signature(factory)
    except ValueError:  # some callables (builtins, C extensions) have none: let the call itself complain
        signature = None
    try:
        if signature is not None:
            signature.bind(**shape, **kwargs)
    except TypeError as err:
        raise ModelError(f"model {name!r} does not take options {sorted(kwargs)}: {err}") from None
    model = factory(**shape, **kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory for {name!r} returned {type(model).__name__}, not an nn.Module")
    _no_inplace(model)
    model.idap_arch = {"name": name, **shape, "kwargs": dict(kwargs)}
    return model


def _resolve(name: str) -> Callable[..., nn.Module]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_classifier(name)
    if ":" not in name:
        raise ModelError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}; "
            "or give an import path 'package.module:factory'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"cannot import module {module_name!r} of model path {name!r}: {err}") from None
    factory = getattr(module, attr, None) if attr else None
    if not callable(factory):
        raise ModelError(f"model path {name!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _no_inplace(model: nn.Module) -> None:
    # Activation hooks keep references to module outputs; an in-place ReLU/Dropout downstream would
    # silently overwrite what a hook saved, so every in-place flag is switched off.
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False


# --- torchvision classification models by name (``idap import``) ------------------------------------------

TORCHVISION_PREFIX = "torchvision.models."


def _torchvision_classifier(name: str) -> Callable[..., nn.Module]:
    """A factory for ``torchvision.models.<builder>``: torchvision's own architecture, unmodified, random init.

    Library code, not a file's: such names need no trust. Only classification builders are accepted.
    """
    builder_name = name[len(TORCHVISION_PREFIX):]
    from torchvision import models as tvm

    available = tvm.list_models(module=tvm)
    if builder_name not in available:
        raise ModelError(f"unknown torchvision classification model {name!r}; valid: "
                         f"{', '.join(TORCHVISION_PREFIX + n for n in available)}")
    builder = tvm.get_model_builder(builder_name)

    def factory(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
        if in_channels != 3:
            raise ModelError(f"{name} takes 3-channel (RGB) images, got in_channels={in_channels}")
        return builder(weights=None, num_classes=num_classes, **kwargs)

    return factory
