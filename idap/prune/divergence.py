"""Information-flow divergence scores (spec §1): channel, attention-head and block scores.

Scoring is pure: the model is put in eval mode for one pass over the calibration tensors, observed
through forward hooks that are always removed, and handed back unchanged (training flag restored).

Example:
    >>> profile = flow_profile(model, calib_x, blocks=["layer1.1"])          # doctest: +SKIP
    >>> profile.channel["layer1.0.conv1"].shape, profile.blocks["layer1.1"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from idap.prune.activations import forward_hooks
from idap.prune.parallel import all_reduce_sums, sample_range, world

EPS = 1e-8


def channels_first(z: Tensor, channel_last: bool) -> Tensor:
    """(B, C, positions...) view of an output: convs put channels on axis 1, linears on the last axis
    (token-shaped (B, N, C) and channels-last maps (B, H, W, C) as in ConvNeXt blocks)."""
    return z.movedim(-1, 1) if channel_last and z.dim() > 2 else z


# Elementwise temporaries of a hook are made for at most this many elements at once (a slice of the batch):
# a fresh buffer the size of a whole activation costs page faults on every call, and made scoring ~1.3x a
# forward pass on MobileNetV2; slices stay in cache and are reused (benchmarks/profile_cost.py).
CHUNK_ELEMENTS = 1 << 18


def _batch_slices(z: Tensor) -> list[Tensor] | tuple[Tensor]:
    per_sample = max(1, z[0].numel()) if len(z) else 1
    rows = max(1, CHUNK_ELEMENTS // per_sample)
    return z.split(rows) if len(z) > rows else (z,)


def positions_norm(z: Tensor, channel_last: bool = False) -> Tensor:
    """Per-sample, per-channel L2 norm over positions of φ(Z) = ReLU(Z): (B, C)."""
    z = channels_first(z, channel_last)
    if z.dim() == 2:
        return torch.relu(z.float())
    parts = [torch.linalg.vector_norm(torch.relu(c.float()).flatten(2), dim=2) for c in _batch_slices(z)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def num_positions(z: Tensor) -> int:
    """|P|: positions per channel (1 for a plain vector)."""
    return math.prod(z.shape[2:]) if z.dim() > 2 else 1


def channel_score(mean_norms: Tensor, weight: Tensor, positions: int) -> Tensor:
    """s_c = a_c · ||W_c||_2 / (C · |P|), with a_c the sample mean of the position norms."""
    channels = weight.shape[0]
    w_norm = weight.detach().float().flatten(1).norm(dim=1)
    return mean_norms * w_norm / (channels * positions)


def head_score(per_head: Tensor, q_weight: Tensor, k_weight: Tensor, v_weight: Tensor, num_heads: int) -> Tensor:
    """s_h = mean_b(||O_h||_F / N) · (||W_Q^h||_F + ||W_K^h||_F + ||W_V^h||_F).

    Args:
        per_head: (B, H, N, d) attention output per head, before the output projection.
    """
    tokens = per_head.shape[2]
    out_norm = per_head.float().flatten(2).norm(dim=2).mean(dim=0) / tokens  # (H,)
    return out_norm * _head_weight_norms(q_weight, k_weight, v_weight, num_heads)


def _head_weight_norms(q_weight: Tensor, k_weight: Tensor, v_weight: Tensor, num_heads: int) -> Tensor:
    return sum(w.detach().float().cpu().reshape(num_heads, -1).norm(dim=1) for w in (q_weight, k_weight, v_weight))


def block_divergence(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample D = ||y − x||_2 / (||y||_2 + ε): low means the block barely transforms its input."""
    x, y = x.flatten(1), y.flatten(1)
    diff = torch.cat([(b.float() - a.float()).norm(dim=1) for a, b in zip(_batch_slices(x), _batch_slices(y), strict=True)])
    return diff / (y.float().norm(dim=1) + EPS)


def block_influence(x: Tensor, y: Tensor) -> Tensor:
    """ShortGPT's block influence per sample: 1 − cos(x, y)."""
    return 1 - torch.nn.functional.cosine_similarity(x.flatten(1).float(), y.flatten(1).float(), dim=1, eps=EPS)


def _is_attention(m: nn.Module) -> bool:
    return hasattr(m, "per_head_output") and hasattr(m, "num_heads") and hasattr(m, "q_proj")


def _reads_out_proj(m: nn.Module) -> bool:
    """Whether an attention module's head outputs can be read at its out_proj's input: a Linear over
    (B, N, heads * width) tokens, as in idap's attention modules."""
    proj = getattr(m, "out_proj", None)
    return isinstance(proj, nn.Linear) and m.num_heads > 0 and proj.in_features % m.num_heads == 0


def _is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1


def _channel_last(layer: nn.Module, output: Tensor) -> bool:
    """Where the scored layer's channels sit in an observed output: last for linears; for convs axis 1, unless
    the observed module is a channels-last norm (ConvNeXt: Permute -> LayerNorm), told apart by the width."""
    if isinstance(layer, nn.Linear):
        return True
    width = layer.out_channels
    return output.dim() > 2 and output.shape[1] != width and output.shape[-1] == width


def _following_norms(model: nn.Module) -> dict[str, str]:
    """Map each conv/linear to the norm layer registered right after it (for score_point='post')."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    out = {}
    for (name, m), (next_name, nxt) in zip(leaves, leaves[1:], strict=False):
        width = getattr(m, "out_channels", getattr(m, "out_features", None))
        if isinstance(nxt, (nn.BatchNorm2d, nn.BatchNorm1d)) and nxt.num_features == width:
            out[name] = next_name
        elif isinstance(nxt, nn.LayerNorm) and tuple(nxt.normalized_shape) == (width,):
            out[name] = next_name
    return out


@dataclass
class FlowProfile:
    """Scores of one calibration pass, keyed by qualified module name."""

    channel: dict[str, Tensor] = field(default_factory=dict)  # s_c per conv/linear
    heads: dict[str, Tensor] = field(default_factory=dict)  # s_h per attention module
    blocks: dict[str, float] = field(default_factory=dict)  # block score (metric below)
    block_metric: str = "divergence"
    samples: int = 0

    def to_json(self) -> dict:
        return {
            "samples": self.samples,
            "block_metric": self.block_metric,
            "layers": [
                {"name": n, "channels": int(s.numel()), "mean": float(s.mean()), "min": float(s.min()),
                 "max": float(s.max()), "scores": [float(v) for v in s]}
                for n, s in self.channel.items()
            ],
            "heads": {n: [float(v) for v in s] for n, s in self.heads.items()},
            "blocks": dict(self.blocks),
        }

    @classmethod
    def from_json(cls, doc: dict) -> FlowProfile:
        """Rebuild a profile from :meth:`to_json` (float32 scores round-trip exactly through JSON floats)."""
        return cls(
            channel={layer["name"]: torch.tensor(layer["scores"], dtype=torch.float32) for layer in doc["layers"]},
            heads={name: torch.tensor(scores, dtype=torch.float32) for name, scores in doc.get("heads", {}).items()},
            blocks={name: float(score) for name, score in doc.get("blocks", {}).items()},
            block_metric=doc.get("block_metric", "divergence"),
            samples=int(doc.get("samples", 0)),
        )


# --- block scores: a registry, like the channel criteria of idap.prune.importance -------------------------------


@dataclass(frozen=True)
class BlockScore:
    """How stage 2 scores a candidate block (lower = removed first).

    Exactly one of: ``pair(x, y)``, one score per sample from the block's input and output, averaged over
    the calibration pass; or ``derive(profile, blocks, seed)``, scores computed from the finished profile.
    """

    pair: Callable[[Tensor, Tensor], Tensor] | None = None
    derive: Callable[[FlowProfile, list[str], int], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if (self.pair is None) == (self.derive is None):
            raise ValueError("a BlockScore needs exactly one of pair= or derive=")


_BLOCK_SCORES: dict[str, BlockScore] = {}


def register_block_score(name: str, score: BlockScore) -> BlockScore:
    """Make ``score`` available as ``layer.block_score: <name>`` in recipes."""
    if name in _BLOCK_SCORES:
        raise ValueError(f"block score {name!r} is already registered")
    _BLOCK_SCORES[name] = score
    return score


def list_block_scores() -> list[str]:
    return sorted(_BLOCK_SCORES)


def get_block_score(name: str, what: str = "block score") -> BlockScore:
    if name not in _BLOCK_SCORES:
        raise ValueError(f"unknown {what} {name!r}; valid: {list_block_scores()}")
    return _BLOCK_SCORES[name]


def _channel_mean(profile: FlowProfile, blocks: list[str], seed: int) -> dict[str, float]:
    """The authors' code: the mean of the channel scores inside the block."""
    out = {}
    for b in blocks:
        inner = [s.mean() for n, s in profile.channel.items() if n.startswith(b + ".")]
        out[b] = float(torch.stack(inner).mean()) if inner else 0.0
    return out


def _random_blocks(profile: FlowProfile, blocks: list[str], seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    return {b: float(v) for b, v in zip(blocks, torch.rand(len(blocks), generator=gen), strict=True)}


register_block_score("divergence", BlockScore(pair=block_divergence))  # IDAP++ D(f)
register_block_score("block_influence", BlockScore(pair=block_influence))  # ShortGPT's BI
register_block_score("channel_mean", BlockScore(derive=_channel_mean))
register_block_score("random", BlockScore(derive=_random_blocks))


@torch.no_grad()
def flow_profile(
    model: nn.Module,
    x: Tensor,
    *,
    blocks: Iterable[str] = (),
    block_metric: str = "divergence",
    point: str = "pre",
    score_pointwise: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> FlowProfile:
    """Channel, head and block scores from one forward pass over ``x`` (the calibration split).

    Args:
        blocks: names of shape-preserving blocks to score (stage 2 candidates).
        block_metric: a registered block score (``list_block_scores()``): divergence (IDAP++), block_influence
            (ShortGPT), channel_mean (authors' code), random.
        point: "pre" scores ReLU(raw conv/linear output) (parity); "post" the following norm's output.
        score_pointwise: when False, 1x1 convs score 0 (the authors' code never scored them).
    """
    block_score = get_block_score(block_metric, what="block_metric")
    if point not in ("pre", "post"):
        raise ValueError(f"point must be 'pre' or 'post', got {point!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    named = dict(model.named_modules())
    blocks = list(blocks)
    missing = [b for b in blocks if b not in named]
    if missing:
        raise ValueError(f"unknown block names {missing}")

    scored = {n: m for n, m in named.items() if isinstance(m, (nn.Conv2d, nn.Linear))}
    inside_attention = {f"{n}.{c}" for n, m in named.items() if _is_attention(m) for c, _ in m.named_modules() if c}
    scored = {n: m for n, m in scored.items() if n not in inside_attention}
    # which module's output is observed for each scored layer
    follow = _following_norms(model) if point == "post" else {}
    observe = {n: follow.get(n, n) for n in scored}
    by_observed: dict[str, list[str]] = {}
    for layer, obs in observe.items():
        by_observed.setdefault(obs, []).append(layer)

    sums: dict[str, Tensor] = {}
    positions: dict[str, int] = {}
    head_sums: dict[str, Tensor] = {}
    block_sums: dict[str, float] = dict.fromkeys(blocks, 0.0)
    attention = {n: m for n, m in named.items() if _is_attention(m)}

    # Head outputs are read where the forward already has them, at the input of out_proj (B, N, heads * width,
    # each head's columns contiguous): recomputing them with per_head_output cost a second attention pass.
    # An attention module without such an out_proj is asked for per_head_output.
    head_taps = {f"{n}.out_proj": n for n, m in attention.items() if _reads_out_proj(m)}
    recompute = {n for n in attention if n not in head_taps.values()}

    def add_heads(name: str, per_head: Tensor) -> None:  # (B, heads, N, width)
        s = per_head.float().flatten(2).norm(dim=2).sum(dim=0) / per_head.shape[2]
        head_sums[name] = head_sums.get(name, 0) + s

    def on_forward(name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        if name in by_observed and isinstance(output, Tensor):
            for layer in by_observed[name]:
                channel_last = _channel_last(scored[layer], output)
                sums[layer] = sums.get(layer, 0) + positions_norm(output, channel_last).sum(dim=0)
                positions[layer] = num_positions(channels_first(output, channel_last))
        if name in head_taps:
            z = inputs[0]
            heads = attention[head_taps[name]].num_heads
            add_heads(head_taps[name], z.view(*z.shape[:2], heads, z.shape[-1] // heads).transpose(1, 2))
        if name in recompute:
            add_heads(name, module.per_head_output(inputs[0]))
        if name in block_sums and block_score.pair is not None:
            y = output[0] if isinstance(output, tuple) else output
            block_sums[name] += float(block_score.pair(inputs[0], y).sum())

    hooked = set(by_observed) | recompute | set(head_taps) | set(blocks)
    was_training = model.training
    model.eval()
    total = 0
    # under a process group each rank scores its part of the samples and the additive sums are all-reduced
    rank, ranks = world()
    if 0 < len(x) < ranks:
        raise ValueError(f"{len(x)} calibration samples cannot be split over {ranks} workers")
    first, stop = sample_range(len(x), rank, ranks)
    try:
        with forward_hooks(((n, named[n]) for n in hooked), on_forward):
            for start in range(first, stop, batch_size):
                batch = x[start:min(start + batch_size, stop)].to(device, non_blocking=True)
                model(batch)
                total += len(batch)
    finally:
        model.train(was_training)
    if ranks > 1:
        sums, head_sums, block_sums = all_reduce_sums(sums), all_reduce_sums(head_sums), all_reduce_sums(block_sums)
        total = int(all_reduce_sums({"n": total})["n"])
    if total == 0:
        raise ValueError("the calibration split is empty")

    profile = FlowProfile(block_metric=block_metric, samples=total)
    for layer, module in scored.items():
        if layer not in sums:
            continue  # not reached by the forward pass (e.g. inside a removed branch)
        s = channel_score(sums[layer].cpu() / total, module.weight.cpu(), positions[layer])
        if not score_pointwise and _is_pointwise(module):
            s = torch.zeros_like(s)
        profile.channel[layer] = s
    for name, m in attention.items():
        if name in head_sums:
            w = _head_weight_norms(m.q_proj.weight, m.k_proj.weight, m.v_proj.weight, m.num_heads)
            profile.heads[name] = head_sums[name].cpu() / total * w
    if block_score.pair is not None:
        profile.blocks = {b: v / total for b, v in block_sums.items()}
    else:
        profile.blocks = block_score.derive(profile, blocks, seed)
    return profile
