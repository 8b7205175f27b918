"""A pruned text model's per-layer shapes, and its weights under Hugging Face key names.

:func:`layer_shapes` says what each original layer kept (heads or key-value groups, head width, FFN width;
None for a removed layer) and :func:`reshape_layers` gives a fresh dense model those shapes before its
weights load; :func:`hf_state` / :func:`load_hf_state` translate between our parameter names and Hugging
Face's ``BertModel`` / ``LlamaForCausalLM`` ones, kept layers renumbered 0..n-1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from idap.models.lm import BertClassifier, BertLayer, LlamaLM, TextModelError

__all__ = ["hf_state", "layer_shapes", "load_hf_state", "reshape_layers"]


def layer_shapes(model: nn.Module) -> list[dict | None]:
    """Per original layer: its kept heads (key-value groups for Llama), head width and FFN width, or None
    when stage 2 removed it."""
    out: list[dict | None] = []
    for layer in model.layers:
        if isinstance(layer, nn.Identity):
            out.append(None)
            continue
        ffn = layer.ffn_in.out_features if isinstance(layer, BertLayer) else layer.gate_proj.out_features
        out.append({"heads": layer.attention.num_heads, "head_dim": layer.attention.head_dim, "ffn": ffn})
    return out


def reshape_layers(model: nn.Module, shapes: list[dict | None]) -> nn.Module:
    """Give a freshly built dense model the layer shapes of a pruned one (weights to be loaded after)."""
    if len(shapes) != len(model.layers):
        raise TextModelError(f"{len(shapes)} layer shapes for a model of {len(model.layers)} layers")
    for i, s in enumerate(shapes):
        if s is None:
            model.layers[i] = nn.Identity()
            continue
        layer = model.layers[i]
        attn = layer.attention
        attn.keep_heads(torch.arange(int(s["heads"])))
        if isinstance(layer, BertLayer):
            layer.ffn_in = nn.Linear(layer.ffn_in.in_features, int(s["ffn"]))
            layer.ffn_out = nn.Linear(int(s["ffn"]), layer.ffn_out.out_features)
        else:
            h = layer.gate_proj.in_features
            layer.gate_proj = nn.Linear(h, int(s["ffn"]), bias=False)
            layer.up_proj = nn.Linear(h, int(s["ffn"]), bias=False)
            layer.down_proj = nn.Linear(int(s["ffn"]), h, bias=False)
    return model


_BERT_LAYER_KEYS = {  # ours -> Hugging Face BertModel, inside encoder.layer.<i>.
    "attention.q_proj": "attention.self.query", "attention.k_proj": "attention.self.key",
    "attention.v_proj": "attention.self.value", "attention.out_proj": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm", "ffn_in": "intermediate.dense", "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_BERT_TOP_KEYS = {
    "word_embeddings": "embeddings.word_embeddings", "position_embeddings": "embeddings.position_embeddings",
    "token_type_embeddings": "embeddings.token_type_embeddings", "embedding_norm": "embeddings.LayerNorm",
}
_LLAMA_LAYER_KEYS = {
    "attention.q_proj": "self_attn.q_proj", "attention.k_proj": "self_attn.k_proj", "attention.v_proj": "self_attn.v_proj",
    "attention.out_proj": "self_attn.o_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
}
_LLAMA_TOP_KEYS = {"embed_tokens": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}


def _key_maps(model: nn.Module) -> tuple[dict, dict, str]:
    if isinstance(model, BertClassifier):
        return _BERT_TOP_KEYS, _BERT_LAYER_KEYS, "encoder.layer"
    if isinstance(model, LlamaLM):
        return _LLAMA_TOP_KEYS, _LLAMA_LAYER_KEYS, "model.layers"
    raise TextModelError(f"not an idap text model: {type(model).__name__}")


def _to_hf_key(key: str, top: dict, per_layer: dict, prefix: str, renumber: dict[int, int]) -> str | None:
    if key.startswith("layers."):
        _, idx, rest = key.split(".", 2)
        module, _, param = rest.rpartition(".")
        return f"{prefix}.{renumber[int(idx)]}.{per_layer[module]}.{param}"
    module, _, param = key.rpartition(".")
    return f"{top[module]}.{param}" if module in top else None


def hf_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights under Hugging Face key names, kept layers numbered 0..n-1 (the classifier of a
    :class:`BertClassifier` stays ``classifier.*``; a tied ``lm_head`` is left out)."""
    top, per_layer, prefix = _key_maps(model)
    kept = [i for i, layer in enumerate(model.layers) if not isinstance(layer, nn.Identity)]
    renumber = {old: new for new, old in enumerate(kept)}
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("classifier."):
            out[key] = value
            continue
        if key == "lm_head.weight" and getattr(model.shape, "tie_embeddings", False):
            continue
        out[_to_hf_key(key, top, per_layer, prefix, renumber)] = value
    return {k: v.detach().contiguous() for k, v in out.items()}


def load_hf_state(model: nn.Module, state: dict[str, Tensor], *, strict_extra: bool = False) -> nn.Module:
    """Load Hugging Face-named weights (as :func:`hf_state` writes them, or a stock checkpoint) into ``model``,
    whose layer shapes must already match (:func:`reshape_layers`). Missing weights are an error; extra ones
    (a pooler, position ids) are ignored unless ``strict_extra``."""
    expected = hf_state(model)
    missing = [k for k in expected if k not in state]
    # a stock encoder checkpoint may carry a "bert." prefix
    if missing and any(k.startswith("bert.") for k in state):
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        missing = [k for k in expected if k not in state]
    missing = [k for k in missing if not k.startswith("classifier.")] if isinstance(model, BertClassifier) else missing
    if missing:
        raise TextModelError(f"weights missing for {len(missing)} parameters, e.g. {missing[:3]}")
    if strict_extra:
        extra = sorted(set(state) - set(expected))
        if extra:
            raise TextModelError(f"unexpected weights {extra[:3]}")
    top, per_layer, prefix = _key_maps(model)
    kept = [i for i, layer in enumerate(model.layers) if not isinstance(layer, nn.Identity)]
    renumber = {old: new for new, old in enumerate(kept)}
    own = model.state_dict()
    with torch.no_grad():
        for key, param in own.items():
            hf_key = key if key.startswith("classifier.") else _to_hf_key(key, top, per_layer, prefix, renumber)
            if hf_key is None or hf_key not in state:
                continue  # a tied lm_head, or a classifier a bare encoder checkpoint does not have
            value = state[hf_key]
            if tuple(value.shape) != tuple(param.shape):
                raise TextModelError(f"{hf_key}: weight of shape {tuple(value.shape)} for a parameter of {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))
    return model
