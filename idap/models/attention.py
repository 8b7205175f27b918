"""Multi-head self-attention whose heads can be scored and physically removed.

``nn.MultiheadAttention`` packs Q, K and V into one ``in_proj_weight`` and ties the inner width to
``embed_dim``, so a head cannot be taken out of it. :class:`HeadPrunableAttention` is a drop-in
replacement for the batch-first calls torchvision's ViT makes, with separate projections whose rows
(and the output projection's columns) are grouped per head.

Example:
    >>> import torch
    >>> attn = HeadPrunableAttention(embed_dim=32, num_heads=4)
    >>> out, _ = attn(torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32))
    >>> attn.keep_heads(torch.tensor([0, 2]))
    >>> attn.num_heads, attn.q_proj.out_features
    (2, 16)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HeadPrunableAttention(nn.Module):
    """Batch-first multi-head attention with per-head Q/K/V rows and out_proj columns.

    Args:
        embed_dim: width of the input and output tokens.
        num_heads: number of heads.
        head_dim: width of one head; default ``embed_dim // num_heads`` (which must then divide).
        dropout: attention-probability dropout, applied in training mode only.
        bias: whether the four projections have a bias.
    """

    batch_first = True  # the only layout supported; mirrors nn.MultiheadAttention's flag

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}; pass head_dim"
                )
            head_dim = embed_dim // num_heads
        if head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {head_dim}")
        self.embed_dim, self.num_heads, self.head_dim = int(embed_dim), int(num_heads), int(head_dim)
        self.dropout = float(dropout)
        inner = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        # Same initialisation as nn.MultiheadAttention: Xavier projections, zero biases.
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> HeadPrunableAttention:
        """Build an equivalent module from a batch-first ``nn.MultiheadAttention``, copying its weights."""
        if not mha.batch_first:
            raise ValueError("from_multihead needs a batch_first=True nn.MultiheadAttention")
        if mha.in_proj_weight is None:
            raise ValueError("from_multihead needs kdim == vdim == embed_dim (packed in_proj_weight)")
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("from_multihead does not support add_bias_kv or add_zero_attn")
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=bias)
        new.to(device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            for proj, weight in zip(
                (new.q_proj, new.k_proj, new.v_proj), mha.in_proj_weight.chunk(3), strict=True
            ):
                proj.weight.copy_(weight)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                for proj, b in zip(
                    (new.q_proj, new.k_proj, new.v_proj), mha.in_proj_bias.chunk(3), strict=True
                ):
                    proj.bias.copy_(b)
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, dropout={self.dropout}"

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def _attend(
        self, query, key, value, attn_mask=None, key_padding_mask=None, is_causal=False
    ) -> torch.Tensor:
        if query.dim() != 3:
            raise ValueError(f"expected batch-first (B, N, E) input, got shape {tuple(query.shape)}")
        q, k, v = (
            self._heads(self.q_proj(query)),
            self._heads(self.k_proj(key)),
            self._heads(self.v_proj(value)),
        )
        mask = _additive_mask(attn_mask, key_padding_mask, q)
        dropout = self.dropout if self.training else 0.0
        # As in nn.MultiheadAttention, is_causal is a hint that attn_mask (when given) is the causal mask.
        causal = is_causal and mask is None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)

    def per_head_output(self, x: torch.Tensor, attn_mask=None, key_padding_mask=None) -> torch.Tensor:
        """Self-attention output of every head before ``out_proj``, shape (B, num_heads, N, head_dim)."""
        return self._attend(x, x, x, attn_mask, key_padding_mask)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        **unused,
    ) -> tuple[torch.Tensor, None]:
        """Attention over batch-first tensors; returns ``(output, None)`` like MHA with need_weights=False.

        ``unused`` swallows MHA-only options such as ``average_attn_weights``.
        """
        if need_weights:
            raise ValueError(
                "HeadPrunableAttention does not return attention weights; call with need_weights=False"
            )
        heads = self._attend(query, key, value, attn_mask, key_padding_mask, is_causal)
        b, _, n, _ = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)), None

    @torch.no_grad()
    def keep_heads(self, index: torch.Tensor) -> None:
        """Keep only the heads in ``index`` (in ascending order), shrinking the projections in place."""
        index = torch.as_tensor(index, dtype=torch.long, device="cpu").flatten()
        if index.numel() == 0:
            raise ValueError("keep_heads needs at least one head to keep; removing every head is not allowed")
        if int(index.min()) < 0 or int(index.max()) >= self.num_heads:
            raise ValueError(f"head index out of range [0, {self.num_heads}): {index.tolist()}")
        if index.unique().numel() != index.numel():
            raise ValueError(f"head index has duplicates: {index.tolist()}")
        index = index.sort().values
        rows = (index[:, None] * self.head_dim + torch.arange(self.head_dim)).flatten()
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            _keep_rows(proj, rows)
        _keep_columns(self.out_proj, rows)
        self.num_heads = int(index.numel())


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    rows = rows.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight[rows].clone(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias[rows].clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features = int(rows.numel())


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    columns = columns.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight[:, columns].clone(), requires_grad=linear.weight.requires_grad)
    linear.in_features = int(columns.numel())


def _additive_mask(attn_mask, key_padding_mask, q: torch.Tensor) -> torch.Tensor | None:
    """Turn nn.MultiheadAttention's masks (bool True = masked out, or additive float) into one SDPA mask."""
    if attn_mask is None and key_padding_mask is None:
        return None
    b, h = q.shape[0], q.shape[1]
    mask = None
    for m, kind in ((attn_mask, "attn"), (key_padding_mask, "padding")):
        if m is None:
            continue
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(m, float("-inf"))
        else:
            m = m.to(q.dtype)
        if kind == "padding":
            m = m.view(b, 1, 1, -1)
        elif m.dim() == 3:  # (B * num_heads, N, S) as MHA takes it
            m = m.view(b, h, m.shape[-2], m.shape[-1])
        mask = m if mask is None else mask + m
    return mask
