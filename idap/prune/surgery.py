"""The only code in idap that mutates models: channel removal, head removal, block removal.

Channel removal is physical and dependency-aware: Torch-Pruning's DependencyGraph couples channels
joined by residual adds, concatenation, depthwise/grouped convs and norms, and a group is removed from
every member at once. Attention heads are removed by slicing the projections of
:class:`idap.models.attention.HeadPrunableAttention`; blocks are replaced by ``nn.Identity``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from idap.models.prunable import prune_exclusions


class SurgeryError(RuntimeError):
    """A requested structural change is impossible (unknown module, nothing left to keep...)."""


class _AttentionLeafPruner(tp.pruner.function.BasePruningFunc):
    """Makes Torch-Pruning treat an attention module as one leaf whose width is the residual stream.

    IDAP++ never narrows the residual stream of a ViT (its writers are excluded), so these functions
    only declare the coupling; heads are removed by :func:`prune_heads`.
    """

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        raise SurgeryError("the embedding width of an attention module is not prunable; prune heads instead")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim


def _attention_types() -> tuple[type, ...]:
    from idap.models.attention import HeadPrunableAttention
    from idap.models.lm import GroupedQueryAttention, TokenAttention

    # Torch-Pruning looks customized pruners up by exact class: every subclass is named
    return (HeadPrunableAttention, TokenAttention, GroupedQueryAttention)


def dependency_graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Trace ``model`` on one zero input of ``input_shape`` (C, H, W), in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model,
                example_inputs=torch.zeros(1, *input_shape, device=device),
                customized_pruners={t: _AttentionLeafPruner() for t in _attention_types()},
                verbose=False,
            )
    finally:
        model.train(was_training)


@dataclass
class ChannelGroup:
    """A set of coupled channels, named after its root layer (whose output channels index it)."""

    name: str
    root: nn.Module
    group: tp.Group
    channels: int

    def members(self) -> Iterator[tuple[nn.Module, list[int], list[int]]]:
        """(layer, its channel indices, root indices) for every member whose *output* is cut."""
        dg = self.group._DG
        for item in self.group:
            if dg.is_out_channel_pruning_fn(item.dep.handler) and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear)):
                yield item.dep.target.module, list(item.idxs), list(item.root_idxs)

    def macs_per_channel(self, layer_macs: dict[nn.Module, int]) -> float:
        """MACs saved per root channel removed: every conv/linear the group cuts, on its input or output side."""
        dg = self.group._DG
        seen, total = set(), 0.0
        for item in self.group:
            module = item.dep.target.module
            out_side = dg.is_out_channel_pruning_fn(item.dep.handler)
            if module not in layer_macs or (module, out_side) in seen:
                continue
            if not out_side and not dg.is_in_channel_pruning_fn(item.dep.handler):
                continue
            seen.add((module, out_side))
            if isinstance(module, nn.Conv2d):
                size = module.out_channels if out_side else module.in_channels
            else:
                size = module.out_features if out_side else module.in_features
            total += layer_macs[module] * len(item.idxs) / max(1, size)
        return total / max(1, self.channels)


def channel_groups(model: nn.Module, graph: tp.DependencyGraph) -> list[ChannelGroup]:
    """Every prunable group of ``model`` (classifier and model-specific exclusions left out)."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in graph.get_all_groups(ignored_layers=prune_exclusions(model), root_module_types=(nn.Conv2d, nn.Linear)):
        root = group[0].dep.target.module
        out.append(ChannelGroup(names[root], root, group, len(group[0].idxs)))
    return out


def channel_floor(original: int, min_channels: int, min_fraction: float) -> int:
    """Channels a group must keep: max(min_channels, ceil(min_fraction · original)), never 0, never above original."""
    return min(original, max(1, min_channels, math.ceil(min_fraction * original)))


def prune_channels(model: nn.Module, input_shape: Sequence[int], removals: dict[str, Sequence[int]]) -> int:
    """Physically remove channels: ``removals`` maps a group's root-layer name to root channel indices.

    Returns the number of root channels removed. The graph is traced once; Torch-Pruning refreshes
    concatenation offsets before each group, so groups can be cut one after another.
    """
    removals = {k: sorted(set(int(i) for i in v)) for k, v in removals.items() if len(v)}
    if not removals:
        return 0
    named = dict(model.named_modules())
    unknown = [k for k in removals if k not in named]
    if unknown:
        raise SurgeryError(f"unknown layers {unknown}")
    graph = dependency_graph(model, input_shape)
    removed = 0
    for name, idxs in removals.items():
        layer = named[name]
        width = graph.get_out_channels(layer)
        if max(idxs) >= width or len(idxs) >= width:
            raise SurgeryError(f"cannot remove {len(idxs)} of {width} channels of {name} (indices {idxs[:5]}...)")
        pruner = graph.get_pruner_of_module(layer)
        group = graph.get_pruning_group(layer, pruner.prune_out_channels, idxs)
        if not graph.check_pruning_group(group):
            raise SurgeryError(f"removing channels {idxs[:5]}... of {name} would empty a coupled layer")
        group.prune()
        removed += len(idxs)
    return removed


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    types = _attention_types()
    return {n: m for n, m in model.named_modules() if isinstance(m, types)}


def prune_heads(model: nn.Module, removals: dict[str, Sequence[int]]) -> int:
    """Remove attention heads: ``removals`` maps an attention module name to head indices."""
    attention = attention_modules(model)
    removed = 0
    for name, heads in removals.items():
        if name not in attention:
            raise SurgeryError(f"{name!r} is not a head-prunable attention module; known: {sorted(attention)}")
        m = attention[name]
        drop = set(int(h) for h in heads)
        keep = [h for h in range(m.num_heads) if h not in drop]
        if not keep:
            raise SurgeryError(f"removing heads {sorted(drop)} would leave {name} with no head")
        if len(keep) < m.num_heads:
            m.keep_heads(torch.tensor(keep, dtype=torch.long))
            removed += len(drop)
    return removed


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    if not name:
        raise SurgeryError("cannot replace the whole model")
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        getattr(parent, child)
    except AttributeError as exc:
        raise SurgeryError(f"no module named {name!r}") from exc
    return parent, child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name``; returns the module that was there (to restore it later)."""
    parent, child = _parent(model, name)
    old = getattr(parent, child)
    if child.isdigit():
        parent[int(child)] = new  # type: ignore[index]
    else:
        setattr(parent, child, new)
    return old


def remove_block(model: nn.Module, name: str) -> nn.Module:
    """Replace a shape-preserving block by ``nn.Identity``; returns the removed block."""
    return replace_module(model, name, nn.Identity())
