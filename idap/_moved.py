"""Old module paths of the flat ``idap/`` (before the packages), kept importable for one release.

``import idap.filter_stage`` still works and gives :mod:`idap.prune.filter_stage` itself, with a
DeprecationWarning naming the new path. A package that used to be a module (``idap.report``, ``idap.data``,
...) forwards a name it does not export to the module that now holds it, also with a warning. To be removed
in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module -> the module(s) that now hold its names
MOVED: dict[str, tuple[str, ...]] = {
    "idap.activations": ("idap.prune.activations",),
    "idap.attention": ("idap.models.attention",),
    "idap.baseline": ("idap.dense.baseline",),
    "idap.bundle_changes": ("idap.bundle.changes",),
    "idap.bundle_format": ("idap.bundle.format",),
    "idap.checkpoint": ("idap.prune.checkpoint",),
    "idap.checks": ("idap.data.checks",),
    "idap.cifar10": ("idap.data.cifar10",),
    "idap.cifar_models": ("idap.models.cifar_models",),
    "idap.compress": ("idap.prune.compress",),
    "idap.config": ("idap.prune.config",),
    "idap.dataset_spec": ("idap.data.spec",),
    "idap.divergence": ("idap.prune.divergence",),
    "idap.filter_stage": ("idap.prune.filter_stage",),
    "idap.image_folder": ("idap.data.image_folder",),
    "idap.image_transforms": ("idap.data.transforms",),
    "idap.import_cli": ("idap.cli.import_cmd",),
    "idap.importance": ("idap.prune.importance",),
    "idap.importing": ("idap.dense.importing",),
    "idap.layer_stage": ("idap.prune.layer_stage",),
    "idap.lm": ("idap.models.lm",),
    "idap.lm_task": ("idap.data.lm", "idap.measure.tokens"),
    "idap.lm_weights": ("idap.models.lm_weights",),
    "idap.metrics": ("idap.measure.metrics",),
    "idap.onnx_export": ("idap.bundle.onnx_export",),
    "idap.prunable": ("idap.models.prunable",),
    "idap.recovery": ("idap.prune.recovery",),
    "idap.report_files": ("idap.report.files",),
    "idap.schedule": ("idap.prune.schedule",),
    "idap.speed": ("idap.measure.speed",),
    "idap.state": ("idap.prune.state",),
    "idap.stems": ("idap.models.stems",),
    "idap.stream_reference": ("idap.data.stream_reference",),
    "idap.streaming": ("idap.data.streaming",),
    "idap.surgery": ("idap.prune.surgery",),
    "idap.text": ("idap.data.text",),
    "idap.text_cli": ("idap.cli.text",),
    "idap.text_models": ("idap.dense.text_models",),
    "idap.torchvision_models": ("idap.models.torchvision_models",),
}
# packages that used to be one module: where the rest of that module's names live now
FORMER_MODULES: dict[str, tuple[str, ...]] = {
    "idap.data": ("idap.data.sources", "idap.data.splits"),
    "idap.models": ("idap.models.registry",),
    "idap.bundle": ("idap.bundle.store", "idap.bundle.format"),
    "idap.report": ("idap.report.evaluate",),
    "idap.cli": ("idap.cli.commands", "idap.cli.common", "idap.cli.compress_cmd"),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old name goes away in idap 0.3", DeprecationWarning, stacklevel=3)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module (or, for two, a merge) that holds its names now."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        homes = MOVED[spec.name]
        _warn(spec.name, " and ".join(homes))
        if len(homes) == 1:
            return importlib.import_module(homes[0])
        merged = types.ModuleType(spec.name, f"Deprecated: the names of {', '.join(homes)}.")
        for home in homes:
            module = importlib.import_module(home)
            merged.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        return merged

    def exec_module(self, module):
        pass  # the module is the new one, already executed


class _Forwarding(types.ModuleType):
    """An old module path whose name is also a name of ``idap`` itself (``idap.compress``, the function): it sits in
    ``sys.modules`` from the start, so importing it never rebinds ``idap.compress``; its names forward, warning."""

    def __init__(self, name: str, home: str):
        super().__init__(name, f"Deprecated: {home}.")
        self._home = home

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        _warn(self.__name__, self._home)
        return getattr(importlib.import_module(self._home), attr)


def install() -> None:
    """Make the old paths importable: the finder for most, a forwarding module where the name is taken."""
    root = sys.modules["idap"]
    for old, homes in MOVED.items():
        if hasattr(root, old.rpartition(".")[2]) and old not in sys.modules:
            sys.modules[old] = _Forwarding(old, homes[0])
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())


def forward(package: str):
    """A module ``__getattr__`` for ``package``: a name of its former module, from where it lives now."""

    def __getattr__(name: str):
        if not name.startswith("__"):
            for home in FORMER_MODULES[package]:
                module = importlib.import_module(home)
                if hasattr(module, name):
                    _warn(f"{package}.{name}", f"{home}.{name}")
                    return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
