"""Channel importance criteria behind one interface: IDAP++'s flow score and the peers' baselines.

Like Torch-Pruning's ``Importance``, a criterion is a small callable that scores the channels of a
dependency group (lower = removed first); ``prepare`` lets it look at the model and the calibration
split once per pruning step. The benchmark swaps criteria by name.

Example:
    >>> imp = create_importance("l1")
    >>> sorted(list_importances())[:3]
    ['fpgm', 'idap', 'l1']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

from idap.measure.tokens import token_loss
from idap.prune.divergence import FlowProfile, flow_profile
from idap.prune.surgery import ChannelGroup, attention_modules


@dataclass(frozen=True)
class ScoringContext:
    """What a criterion may use: the calibration tensors and run settings."""

    x: Tensor
    y: Tensor
    batch_size: int = 256
    seed: int = 0
    device: torch.device | None = None
    point: str = "pre"
    score_pointwise: bool = True


class Importance(ABC):
    """Scores the channels of one group; the global ranking compares scores across groups."""

    name = "base"

    def prepare(self, model: nn.Module, ctx: ScoringContext) -> None:  # noqa: B027 - optional hook
        """Collect whatever the criterion needs (activations, gradients) before groups are scored."""

    @abstractmethod
    def __call__(self, group: ChannelGroup) -> Tensor | None:
        """One score per root channel of ``group``, or None to leave the group out."""

    def head_scores(self, model: nn.Module) -> dict[str, Tensor]:
        """Per-head scores of every head-prunable attention module (default: weight L1 per head)."""
        out = {}
        for name, m in attention_modules(model).items():
            w = sum(p.weight.detach().abs().reshape(m.num_heads, -1).sum(dim=1) for p in (m.q_proj, m.k_proj, m.v_proj))
            out[name] = w.cpu().float()
        return out


_REGISTRY: dict[str, Callable[..., Importance]] = {}


def register_importance(name: str) -> Callable:
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"importance {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_importances() -> list[str]:
    return sorted(_REGISTRY)


def create_importance(name: str, **kwargs) -> Importance:
    if name not in _REGISTRY:
        raise ValueError(f"unknown importance {name!r}; valid: {list_importances()}")
    return _REGISTRY[name](**kwargs)


@register_importance("idap")
class FlowImportance(Importance):
    """IDAP++: a group scores the sum of its members' flow scores s_c (spec §1-2)."""

    def __init__(self, profile: FlowProfile | None = None):
        self.profile = profile
        self._by_module: dict[nn.Module, Tensor] = {}

    def prepare(self, model: nn.Module, ctx: ScoringContext) -> None:
        if self.profile is None:
            self.profile = flow_profile(model, ctx.x, point=ctx.point, score_pointwise=ctx.score_pointwise,
                                        batch_size=ctx.batch_size, device=ctx.device)
        named = dict(model.named_modules())
        self._by_module = {named[n]: s for n, s in self.profile.channel.items() if n in named}

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        total = torch.zeros(group.channels)
        seen = False
        for layer, idxs, root_idxs in group.members():
            scores = self._by_module.get(layer)
            if scores is None or any(r is None for r in root_idxs):
                continue
            total.scatter_add_(0, torch.tensor(root_idxs), scores[idxs].float())
            seen = True
        return total if seen else None

    def head_scores(self, model: nn.Module) -> dict[str, Tensor]:
        return dict(self.profile.heads) if self.profile is not None else {}

    def consume(self) -> None:
        """Scores are valid for one model state only: forget them after pruning."""
        self.profile = None
        self._by_module = {}


class _TorchPruningCriterion(Importance):
    """Adapter around a Torch-Pruning importance (the peers' criteria, as their library computes them)."""

    def __init__(self, criterion: tp.importance.Importance):
        self.criterion = criterion

    def __call__(self, group: ChannelGroup) -> Tensor | None:
        scores = self.criterion(group.group)
        return None if scores is None else scores.detach().float().cpu()


@register_importance("l1")
class L1Importance(_TorchPruningCriterion):
    def __init__(self):
        super().__init__(tp.importance.MagnitudeImportance(p=1))


@register_importance("lamp")
class LAMPImportance(_TorchPruningCriterion):
    def __init__(self):
        super().__init__(tp.importance.LAMPImportance(p=2))


@register_importance("fpgm")
class FPGMImportance(_TorchPruningCriterion):
    def __init__(self):
        super().__init__(tp.importance.FPGMImportance(p=2))


@register_importance("taylor")
class TaylorImportance(_TorchPruningCriterion):
    """First-order Taylor: gradients of the CE loss over the calibration split (eval mode, no BN drift); for a
    language model the next-token CE over every target token (``idap.measure.tokens.token_loss``)."""

    def __init__(self):
        super().__init__(tp.importance.TaylorImportance())

    def prepare(self, model: nn.Module, ctx: ScoringContext) -> None:
        device = ctx.device or next(model.parameters()).device
        was_training = model.training
        model.eval()
        model.zero_grad(set_to_none=True)
        try:
            with torch.enable_grad():
                for start in range(0, len(ctx.x), ctx.batch_size):
                    xb = ctx.x[start:start + ctx.batch_size].to(device)
                    yb = ctx.y[start:start + ctx.batch_size].to(device)
                    loss = token_loss(model(xb), yb, reduction="sum") / len(ctx.x)
                    loss.backward()
        finally:
            model.train(was_training)

    def head_scores(self, model: nn.Module) -> dict[str, Tensor]:
        """First-order Taylor per head (key-value group under grouped-query attention): the sum of
        ``|w * dL/dw|`` over the head's Q, K and V rows (weights and biases) and its O columns, from the
        gradients ``prepare`` left; weight magnitude where there are none."""
        out = {}
        for name, m in attention_modules(model).items():
            if any(p.weight.grad is None for p in (m.q_proj, m.k_proj, m.v_proj, m.out_proj)):
                return super().head_scores(model)
            score = torch.zeros(m.num_heads, device=m.out_proj.weight.device)
            for p in (m.q_proj, m.k_proj, m.v_proj):  # rows of a head are contiguous
                score += (p.weight * p.weight.grad).abs().reshape(m.num_heads, -1).sum(dim=1)
                if p.bias is not None and p.bias.grad is not None:
                    score += (p.bias * p.bias.grad).abs().reshape(m.num_heads, -1).sum(dim=1)
            o = m.out_proj.weight
            score += (o * o.grad).abs().reshape(o.shape[0], m.num_heads, -1).sum(dim=(0, 2))
            out[name] = score.detach().cpu().float()
        return out


@register_importance("random")
class RandomImportance(Importance):
    """Uniform random scores from a seeded generator (the sanity baseline)."""

    def __init__(self):
        self._gen = torch.Generator()

    def prepare(self, model: nn.Module, ctx: ScoringContext) -> None:
        self._gen.manual_seed(ctx.seed)

    def __call__(self, group: ChannelGroup) -> Tensor:
        return torch.rand(group.channels, generator=self._gen)

    def head_scores(self, model: nn.Module) -> dict[str, Tensor]:
        return {n: torch.rand(m.num_heads, generator=self._gen) for n, m in attention_modules(model).items()}
