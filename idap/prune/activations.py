"""Forward hooks that are always removed: the only way idap observes activations."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Tanh, nn.Softplus,
)


@contextmanager
def forward_hooks(
    modules: Iterable[tuple[str, nn.Module]],
    hook: Callable[[str, nn.Module, tuple, object], None],
) -> Iterator[None]:
    """Call ``hook(name, module, inputs, output)`` after each forward of the given modules.

    The hooks are removed when the block exits, also on error.
    """
    handles = []
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(lambda m, i, o, _n=name: hook(_n, m, i, o)))
        yield
    finally:
        for h in handles:
            h.remove()


class FeatureTaps:
    """Records the latest output of named modules (used as distillation taps).

    A module called several times per forward (torchvision reuses one ReLU per block) keeps its last
    output, which corresponds between a student and a teacher of the same structure.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        self.names = list(names)
        self.features: dict[str, torch.Tensor] = {}
        lookup = dict(model.named_modules())
        self._modules = [(n, lookup[n]) for n in self.names]
        self._ctx = None

    def _record(self, name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            self.features[name] = output

    def __enter__(self) -> FeatureTaps:
        self._ctx = forward_hooks(self._modules, self._record)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.features.clear()
        self._ctx.__exit__(*exc)


def activation_modules(model: nn.Module) -> list[str]:
    """Names of activation modules in registration (≈ forward) order."""
    return [n for n, m in model.named_modules() if isinstance(m, ACTIVATION_TYPES)]
