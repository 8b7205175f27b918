"""A compressed text bundle out to Hugging Face: the transformers model it equals, ONNX, and a Hugging Face
directory (``idap text export-hf``) checked against the bundle's logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from idap.dense.text_models import (
    META_FILE,
    _arch,
    _difference,
    _hf_config,
    load_text_model,
    probe_ids,
    save_text_model,
)
from idap.models.lm import BertClassifier, LlamaLM, TextModelError
from idap.models.lm_weights import hf_state, layer_shapes


def to_hf(model: nn.Module):
    """The same network as a ``transformers`` ``BertModel`` (encoder only; the classifier is ours) or
    ``LlamaForCausalLM``: built from the saved config, its linears resized to the pruned shapes, weights loaded."""
    import transformers

    config = _hf_config(model)
    if isinstance(model, BertClassifier):
        hf = transformers.BertModel(transformers.BertConfig(**config), add_pooling_layer=False)
        layers, names = hf.encoder.layer, {"q": "attention.self.query", "k": "attention.self.key",
                                            "v": "attention.self.value", "o": "attention.output.dense",
                                            "up": "intermediate.dense", "down": "output.dense"}
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
        layers, names = hf.model.layers, {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                                          "o": "self_attn.o_proj", "up": "mlp.up_proj", "gate": "mlp.gate_proj",
                                          "down": "mlp.down_proj"}
    kept = [layer for layer in model.layers if not isinstance(layer, nn.Identity)]
    for ours, theirs in zip(kept, layers, strict=True):
        attn = ours.attention
        pairs = {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "o": attn.out_proj}
        if isinstance(model, BertClassifier):
            pairs.update(up=ours.ffn_in, down=ours.ffn_out)
        else:
            pairs.update(up=ours.up_proj, gate=ours.gate_proj, down=ours.down_proj)
        for key, linear in pairs.items():
            parent_name, _, child = names[key].rpartition(".")
            parent = theirs.get_submodule(parent_name)
            setattr(parent, child, nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None))
    state = {k: v for k, v in hf_state(model).items() if not k.startswith("classifier.")}
    result = hf.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("lm_head.weight")]
    if missing or result.unexpected_keys:
        raise TextModelError(f"Hugging Face rebuild: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    if isinstance(model, LlamaLM) and model.shape.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def export_text_onnx(model: nn.Module, path: str | os.PathLike, *, length: int = 128, opset: int = 17) -> Path:
    """ONNX export on int64 token ids (input ``input_ids``, dynamic batch, fixed length), checked by onnx.checker."""
    import warnings

    import onnx

    path = Path(path)
    ids = probe_ids(model, length=length, batch=1).to(next(model.parameters()).device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (ids,), str(path), dynamo=False, input_names=["input_ids"],
                              output_names=["logits"], dynamic_axes={"input_ids": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset)
        onnx.checker.check_model(str(path))
    except Exception as error:
        raise TextModelError(f"{path}: ONNX export failed: {error}") from error
    finally:
        model.train(was)
    return path


def export_hf_directory(bundle: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write a text bundle (pruned or not) as a Hugging Face directory, whole or not at all.

    ``out`` gets Hugging Face key names and ``config.json`` (``num_hidden_layers`` = kept layers), the
    bundle's tokenizer files and ``idap_text.json`` (the per-layer heads / key-value groups and FFN widths, the
    removed layers, a parity probe). Pruned layers differ in width, which one Hugging Face config cannot say,
    so the way back into ``transformers`` is :func:`load_text_model` then :func:`to_hf`. The directory is
    staged and swapped in only after it reloads to the bundle's logits; a directory at ``out`` that is not an
    earlier export is never replaced.

    Returns what was written and, with ``transformers`` installed, the largest difference between the bundle
    and the rebuilt ``transformers`` model (BERT: last hidden states at real tokens; Llama: logits).
    """
    from idap.atomic import staged_directory
    from idap.bundle.store import load_bundle

    model = load_bundle(bundle)
    if not isinstance(model, (BertClassifier, LlamaLM)):
        raise TextModelError(f"{bundle}: architecture {model.idap_arch.get('name')!r} is not a text model; "
                             "only bert_classifier and llama_lm bundles export as Hugging Face directories")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / META_FILE).is_file())):
        raise TextModelError(f"{out}: exists and is not an earlier Hugging Face export (no {META_FILE}); "
                             "give a new or empty directory")
    with staged_directory(out) as stage:
        save_text_model(model, stage)
        for name, text in (getattr(model, "idap_tokenizer", None) or {}).items():
            (stage / name).write_text(text, encoding="utf-8")
        load_text_model(stage)  # the parity probe: what is swapped in reloads to the bundle's logits
    shapes = layer_shapes(model)
    return {"out": str(out), "architecture": _arch(model), "layers_kept": sum(s is not None for s in shapes),
            "removed_layers": [i for i, s in enumerate(shapes) if s is None],
            "tokenizer_files": sorted(getattr(model, "idap_tokenizer", None) or {}),
            "transformers_max_abs_diff": _rebuilt_difference(model)}


def _rebuilt_difference(model: nn.Module) -> float | None:
    import importlib.util

    return None if importlib.util.find_spec("transformers") is None else _difference(model, to_hf(model), probe_ids(model))

