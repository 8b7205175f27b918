"""Transformer language models the stages can prune: a BERT encoder classifier and a Llama decoder.

Both are plain PyTorch re-implementations of the Hugging Face ``BertModel`` / ``LlamaForCausalLM``
forward passes, built so that IDAP++'s scores and surgery apply unchanged:

- attention modules are :class:`idap.models.attention.HeadPrunableAttention` subclasses, so a head (BERT) or a
  key-value group with its query heads (Llama's grouped-query attention) is scored and removed with
  Q, K, V and O kept consistent;
- the FFN is plain ``nn.Linear`` layers: Torch-Pruning's dependency graph couples the intermediate
  neurons (BERT: dense in/out; Llama: gate, up and down), while the residual stream is never narrowed
  (its writers are returned by ``residual_writers`` and excluded);
- every encoder/decoder layer is a shape-preserving block (``idap_block``) that stage 2 may replace by
  ``nn.Identity``.

The models take token ids (B, L) — as int64, or as floats that hold integers, so the stages' probes of
``torch.zeros(1, L)`` (all padding) work. Weights come from and go back to Hugging Face's key names
(:mod:`idap.models.lm_weights`); :mod:`idap.dense.text_models` saves a pruned model as a Hugging Face directory plus
the per-layer shapes. ``transformers`` is imported only where a Hugging Face
object is built.

Example:
    >>> cfg = BertShape(vocab_size=100, hidden=32, layers=2, heads=4, ffn=64)
    >>> model = BertClassifier(cfg, num_classes=3)
    >>> model(torch.randint(1, 100, (2, 7))).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idap.models.attention import HeadPrunableAttention, _keep_columns, _keep_rows


class TextModelError(ValueError):
    """A text model, its weights or its tokenizer do not fit together; the message names the mismatch."""


@dataclass(frozen=True)
class BertShape:
    """The dense shape of a BERT encoder (Hugging Face ``BertConfig`` names in comments)."""

    vocab_size: int  # vocab_size
    hidden: int  # hidden_size
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    ffn: int  # intermediate_size
    max_positions: int = 512  # max_position_embeddings
    type_vocab: int = 2  # type_vocab_size
    eps: float = 1e-12  # layer_norm_eps
    dropout: float = 0.1  # hidden_dropout_prob (attention dropout is taken equal)
    pad_id: int = 0  # pad_token_id

    def __post_init__(self):
        if self.hidden % self.heads:
            raise TextModelError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_hf(cls, config) -> BertShape:
        """From a ``transformers.BertConfig`` (or its dict)."""
        c = config if isinstance(config, dict) else config.to_dict()
        if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
            raise TextModelError(f"only BERT with gelu and absolute positions is supported, got "
                                 f"hidden_act={c.get('hidden_act')!r}, position_embedding_type={c.get('position_embedding_type')!r}")
        return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c["intermediate_size"], c.get("max_position_embeddings", 512), c.get("type_vocab_size", 2),
                   c.get("layer_norm_eps", 1e-12), c.get("hidden_dropout_prob", 0.1), c.get("pad_token_id", 0) or 0)

    def to_json(self) -> dict:
        return asdict(self)


class TokenInput:
    """What a bundle needs of a model on token ids: a parity probe of real ids and the input it records."""

    shape: BertShape | LlamaShape

    def probe_input(self, batch: int, input_shape, generator: torch.Generator) -> Tensor:
        """Random token ids (batch, length) in ``[1, vocab)``, never padding (a padded probe proves little)."""
        return torch.randint(1, self.shape.vocab_size, (batch, *input_shape), generator=generator)

    def token_input(self) -> dict:
        """The bundle's record of the input: int64 token ids, the vocabulary and the padding id."""
        return {"vocab_size": self.shape.vocab_size, "pad_id": getattr(self.shape, "pad_id", None)}


# --- BERT ------------------------------------------------------------------------------------------


class TokenAttention(HeadPrunableAttention):
    """BERT self-attention over (B, N, E) tokens with an additive padding mask.

    The mask of the latest forward pass is kept, so that head scoring, which calls
    ``per_head_output(x)`` from a forward hook, sees the same padding as the forward it observes.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__(embed_dim, num_heads, head_dim=head_dim, dropout=dropout, bias=True)
        self._mask: Tensor | None = None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        self._mask = mask
        out, _ = super().forward(x, x, x, attn_mask=mask)
        return out

    def per_head_output(self, x: Tensor, attn_mask=None, key_padding_mask=None) -> Tensor:
        if attn_mask is None and key_padding_mask is None and self._mask is not None and self._mask.shape[0] == x.shape[0]:
            attn_mask = self._mask
        return self._attend(x, x, x, attn_mask, key_padding_mask)


class BertLayer(nn.Module):
    """Post-norm encoder layer: x = LN(x + Attn(x)); x = LN(x + W2 GELU(W1 x))."""

    idap_block = True  # stage 2 may replace it by nn.Identity

    def __init__(self, hidden: int, heads: int, head_dim: int, ffn: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.attention = TokenAttention(hidden, heads, head_dim, dropout)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))

    def residual_writers(self) -> list[nn.Module]:
        return [self.ffn_out]


class BertClassifier(TokenInput, nn.Module):
    """BERT encoder + masked mean pooling + a linear classifier, on token ids (B, L); pad tokens are masked."""

    def __init__(self, shape: BertShape, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise TextModelError(f"num_classes must be >= 2, got {num_classes}")
        self.shape, self.num_classes = shape, int(num_classes)
        self.word_embeddings = nn.Embedding(shape.vocab_size, shape.hidden, padding_idx=shape.pad_id)
        self.position_embeddings = nn.Embedding(shape.max_positions, shape.hidden)
        self.token_type_embeddings = nn.Embedding(shape.type_vocab, shape.hidden)
        self.embedding_norm = nn.LayerNorm(shape.hidden, eps=shape.eps)
        self.dropout = nn.Dropout(shape.dropout)
        self.layers = nn.ModuleList(
            BertLayer(shape.hidden, shape.heads, shape.head_dim, shape.ffn, shape.eps, shape.dropout)
            for _ in range(shape.layers))
        self.classifier = nn.Linear(shape.hidden, num_classes)

    def encode(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Last hidden states (B, L, E) and the token mask (B, L)."""
        ids = _token_ids(ids, self.shape.vocab_size, self.shape.max_positions)
        keep = ids != self.shape.pad_id
        positions = torch.arange(ids.shape[1], device=ids.device)
        h = self.word_embeddings(ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings.weight[0]
        h = self.dropout(self.embedding_norm(h))
        # Hugging Face's extended mask: 0 where attended, the dtype's minimum where padded (no NaN when all padded)
        mask = (~keep)[:, None, None, :].to(h.dtype) * torch.finfo(h.dtype).min
        for layer in self.layers:
            h = layer(h) if isinstance(layer, nn.Identity) else layer(h, mask)
        return h, keep

    def forward(self, ids: Tensor) -> Tensor:
        h, keep = self.encode(ids)
        w = keep.to(h.dtype)[..., None]
        pooled = (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        return self.classifier(self.dropout(pooled))


def _token_ids(ids: Tensor, vocab_size: int, max_positions: int | None) -> Tensor:
    if ids.dim() != 2:
        raise TextModelError(f"expected token ids of shape (batch, length), got {tuple(ids.shape)}")
    if max_positions is not None and ids.shape[1] > max_positions:
        raise TextModelError(f"{ids.shape[1]} tokens exceed the model's {max_positions} positions")
    if ids.is_floating_point():
        # the library's shape-only probes (MACs, latency) feed zeros or random normals: round them to ids in
        # range; real token ids are int64 and pass through untouched
        return ids.round().clamp(0, vocab_size - 1).long()
    return ids.long()


# --- Llama (grouped-query attention) ---------------------------------------------------------------


@dataclass(frozen=True)
class LlamaShape:
    """The dense shape of a Llama decoder (Hugging Face ``LlamaConfig`` names in comments)."""

    vocab_size: int  # vocab_size
    hidden: int  # hidden_size
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads
    ffn: int  # intermediate_size
    head_dim: int = 0  # head_dim (0: hidden // heads)
    eps: float = 1e-5  # rms_norm_eps
    rope_theta: float = 10000.0  # rope_theta
    tie_embeddings: bool = True  # tie_word_embeddings
    max_positions: int = 2048  # max_position_embeddings

    def __post_init__(self):
        if self.heads % self.kv_heads:
            raise TextModelError(f"{self.heads} query heads are not a multiple of {self.kv_heads} key-value heads")
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @classmethod
    def from_hf(cls, config) -> LlamaShape:
        c = config if isinstance(config, dict) else config.to_dict()
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        if rope.get("rope_type", "default") not in ("default", None):
            raise TextModelError(f"only Llama with default rotary embeddings is supported, got {rope!r}")
        theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        if c.get("attention_bias") or c.get("mlp_bias") or c.get("hidden_act", "silu") != "silu":
            raise TextModelError("only Llama without attention/MLP biases and with silu is supported")
        return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                   c.get("num_key_value_heads") or c["num_attention_heads"], c["intermediate_size"],
                   c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"], c.get("rms_norm_eps", 1e-5),
                   float(theta), bool(c.get("tie_word_embeddings", False)), c.get("max_position_embeddings", 2048))

    def to_json(self) -> dict:
        return asdict(self)


def _rotate_half(x: Tensor) -> Tensor:
    """(a, b) -> (-b, a) on the last axis, as a roll and a sign: a concatenation here would be taken by
    Torch-Pruning's dependency graph for a channel concat it cannot size."""
    half = x.shape[-1] // 2
    sign = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    sign[:half] = -1
    return torch.roll(x, shifts=half, dims=-1) * sign


class GroupedQueryAttention(HeadPrunableAttention):
    """Causal grouped-query attention with rotary positions; the prunable unit is a key-value group.

    ``num_heads`` counts key-value groups; each holds ``queries_per_group`` query heads (rows of
    ``q_proj`` contiguous per group, as Hugging Face's ``repeat_kv`` assigns them), so removing a group
    removes its K and V rows, its query rows and their ``out_proj`` columns together.
    """

    def __init__(self, hidden: int, kv_heads: int, queries_per_group: int, head_dim: int, rope_theta: float) -> None:
        nn.Module.__init__(self)  # the projections differ from HeadPrunableAttention's (no bias, fewer K/V rows)
        self.embed_dim, self.num_heads, self.head_dim, self.dropout = hidden, kv_heads, head_dim, 0.0
        self.queries_per_group, self.rope_theta = queries_per_group, float(rope_theta)
        self.q_proj = nn.Linear(hidden, kv_heads * queries_per_group * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False)
        self.out_proj = nn.Linear(kv_heads * queries_per_group * head_dim, hidden, bias=False)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, kv_groups={self.num_heads}, queries_per_group={self.queries_per_group}, "
                f"head_dim={self.head_dim}")

    def _rotary(self, n: int, device, dtype) -> tuple[Tensor, Tensor]:
        inv = 1.0 / (self.rope_theta ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32) / self.head_dim))
        freqs = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _grouped(self, x: Tensor) -> Tensor:
        """Attention output per query head, (B, groups * queries_per_group, N, d), before out_proj."""
        b, n, _ = x.shape
        g, q_per, d = self.num_heads, self.queries_per_group, self.head_dim
        q = self.q_proj(x).view(b, n, g * q_per, d).transpose(1, 2)
        k = self.k_proj(x).view(b, n, g, d).transpose(1, 2)
        v = self.v_proj(x).view(b, n, g, d).transpose(1, 2)
        cos, sin = self._rotary(n, x.device, q.dtype)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(q_per, dim=1), v.repeat_interleave(q_per, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def per_head_output(self, x: Tensor, attn_mask=None, key_padding_mask=None) -> Tensor:
        """Output per key-value group: (B, groups, N, queries_per_group * d)."""
        heads = self._grouped(x)
        b, _, n, d = heads.shape
        g = self.num_heads
        return heads.view(b, g, self.queries_per_group, n, d).transpose(2, 3).reshape(b, g, n, self.queries_per_group * d)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        heads = self._grouped(x)
        b, h, n, d = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(b, n, h * d))

    @torch.no_grad()
    def keep_heads(self, index: Tensor) -> None:
        """Keep only the key-value groups in ``index`` (with their query heads)."""
        index = torch.as_tensor(index, dtype=torch.long, device="cpu").flatten()
        if index.numel() == 0:
            raise ValueError("keep_heads needs at least one key-value group to keep")
        if int(index.min()) < 0 or int(index.max()) >= self.num_heads or index.unique().numel() != index.numel():
            raise ValueError(f"bad key-value group index for {self.num_heads} groups: {index.tolist()}")
        index = index.sort().values
        d, qd = self.head_dim, self.queries_per_group * self.head_dim
        kv_rows = (index[:, None] * d + torch.arange(d)).flatten()
        q_rows = (index[:, None] * qd + torch.arange(qd)).flatten()
        _keep_rows(self.q_proj, q_rows)
        _keep_rows(self.k_proj, kv_rows)
        _keep_rows(self.v_proj, kv_rows)
        _keep_columns(self.out_proj, q_rows)
        self.num_heads = int(index.numel())


class _RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm``, written out while exporting to ONNX (opset 17 has no ``aten::rms_norm``)."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaLayer(nn.Module):
    """Pre-norm decoder layer: x += Attn(RMS(x)); x += W_down(SiLU(W_gate RMS(x)) * W_up RMS(x))."""

    idap_block = True

    def __init__(self, s: LlamaShape) -> None:
        super().__init__()
        self.attention_norm = _RMSNorm(s.hidden, eps=s.eps)
        self.attention = GroupedQueryAttention(s.hidden, s.kv_heads, s.heads // s.kv_heads, s.head_dim, s.rope_theta)
        self.ffn_norm = _RMSNorm(s.hidden, eps=s.eps)
        self.gate_proj = nn.Linear(s.hidden, s.ffn, bias=False)
        self.up_proj = nn.Linear(s.hidden, s.ffn, bias=False)
        self.act = nn.SiLU()
        self.down_proj = nn.Linear(s.ffn, s.hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        h = self.ffn_norm(x)
        return x + self.down_proj(self.act(self.gate_proj(h)) * self.up_proj(h))

    def residual_writers(self) -> list[nn.Module]:
        return [self.down_proj]


class LlamaLM(TokenInput, nn.Module):
    """Llama decoder on token ids (B, L) -> next-token logits (B, L, vocab)."""

    def __init__(self, shape: LlamaShape) -> None:
        super().__init__()
        self.shape = shape
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden)
        self.layers = nn.ModuleList(LlamaLayer(shape) for _ in range(shape.layers))
        self.norm = _RMSNorm(shape.hidden, eps=shape.eps)
        self.lm_head = nn.Linear(shape.hidden, shape.vocab_size, bias=False)
        if shape.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, ids: Tensor) -> Tensor:
        h = self.embed_tokens(_token_ids(ids, self.shape.vocab_size, None))
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.norm(h))


@torch.no_grad()
def perplexity(model: LlamaLM, windows: Tensor, *, batch_size: int = 4) -> float:
    """exp(mean next-token cross-entropy) over token windows (N, L), in eval mode."""
    if len(windows) == 0:
        raise TextModelError("perplexity of no text is undefined: got 0 windows")
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(windows), batch_size):
            ids = windows[i:i + batch_size].long()
            logits = model(ids)[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
            count += ids[:, 1:].numel()
    finally:
        model.train(was)
    return math.exp(total / count)
