"""The language-model task's measures: token-level cross-entropy, next-token accuracy and perplexity.

A language model's splits carry ``task = "lm"`` (:class:`idap.data.lm.LMSplits`); the recovery loss, the
flow scores' loss, the stages' evaluation and the report read it through :func:`is_lm` without importing the
data loaders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idap.measure.metrics import eval_mode, model_device

__all__ = ["eval_batch_size", "is_lm", "lm_metrics", "mean_token_ce", "token_loss", "token_scores"]

_LOGITS_PER_BATCH = 2**25  # float32 logits held at once when scoring (128 MiB): batches shrink for a big vocab


def is_lm(data) -> bool:
    """Whether ``data`` is a language-modelling task (targets are next tokens)."""
    return getattr(data, "task", None) == "lm"


def eval_batch_size(data, batch_size: int) -> int:
    """``batch_size``, made smaller for a language model so one batch's logits (B, T, V) stay near 128 MiB."""
    if not is_lm(data):
        return batch_size
    return max(1, min(batch_size, _LOGITS_PER_BATCH // max(1, data.block_size * data.vocab_size)))


def token_loss(logits: Tensor, y: Tensor, *, reduction: str = "mean") -> Tensor:
    """Cross-entropy of (N, C) logits on (N,) labels, or of (N, T, V) token logits on (N, T) targets."""
    if logits.dim() == 3:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def token_scores(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 32, device=None) -> tuple[float, float]:
    """(next-token top-1 accuracy in percent, mean token cross-entropy in nats) of ``model`` over windows ``x``
    with targets ``y``, in one pass, in eval mode."""
    if len(x) == 0:
        raise ValueError("cross-entropy of no text is undefined: got 0 windows")
    target = torch.device(device) if device is not None else model_device(model)
    vocab = getattr(getattr(model, "shape", None), "vocab_size", 1)
    step = max(1, min(batch_size, _LOGITS_PER_BATCH // max(1, x.shape[1] * vocab)))
    total, correct = 0.0, 0
    with eval_mode(model), torch.inference_mode():
        for i in range(0, len(x), step):
            logits = model(x[i:i + step].to(target))
            labels = y[i:i + step].to(logits.device)
            total += float(token_loss(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == labels).sum())
    return 100.0 * correct / y.numel(), total / y.numel()


def mean_token_ce(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 32, device=None) -> float:
    """Mean next-token cross-entropy (nats) of ``model`` over windows ``x`` with targets ``y``, in eval mode."""
    return token_scores(model, x, y, batch_size=batch_size, device=device)[1]


def lm_metrics(model: nn.Module, data, *, batch_size: int = 32, device=None) -> dict:
    """``val_acc`` / ``test_acc`` (next-token top-1, percent) and ``val_ppl`` / ``test_ppl`` (exp of the mean
    token cross-entropy) on the validation and test windows: one forward pass per split."""
    out = {}
    for s in ("val", "test"):
        acc, ce = token_scores(model, getattr(data, f"{s}_x"), getattr(data, f"{s}_y"), batch_size=batch_size,
                               device=device)
        out.update({f"{s}_acc": acc, f"{s}_ppl": math.exp(ce)})
    return out

