"""Hugging Face text models in and out of idap: load pretrained weights, save a pruned model as a Hugging
Face directory with its per-layer shapes, reload it to identical outputs, rebuild it as a ``transformers``
model, export it to ONNX.

A saved directory holds ``config.json`` (the Hugging Face config, ``num_hidden_layers`` = kept layers),
``model.safetensors`` (Hugging Face key names, plus ``classifier.*`` for an encoder classifier), the
tokenizer files, and ``idap_text.json``: the architecture (``bert_classifier`` or ``llama_lm``, the only
two — no code is named or imported from a file), the dense shape, the per-layer kept heads / key-value
groups and FFN widths, the removed layers, and a parity probe (token ids and the logits they gave).

:func:`import_hf_model` (``idap import --model <HF dir>``) turns a Hugging Face directory into an
:mod:`idap.bundle.store` bundle instead — the format every later step (``idap compress``, the pipeline, the
registry) takes — with the tokenizer files kept in the bundle.

Example:
    >>> model = load_bert_classifier("minilm_dir", num_classes=5)                 # doctest: +SKIP
    >>> save_text_model(model, "out/minilm", tokenizer_dir="minilm_dir")          # doctest: +SKIP
    >>> same = load_text_model("out/minilm")                                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from idap.models.lm import BertClassifier, BertShape, LlamaLM, LlamaShape, TextModelError
from idap.models.lm_weights import hf_state, layer_shapes, load_hf_state, reshape_layers

META_FILE, WEIGHTS_FILE, CONFIG_FILE = "idap_text.json", "model.safetensors", "config.json"
FORMAT = 1
PARITY_ATOL = 1e-4
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _read_config(model_dir: Path) -> dict:
    file = model_dir / CONFIG_FILE
    if not file.is_file():
        raise TextModelError(f"{model_dir}: no {CONFIG_FILE} (expected a Hugging Face model directory)")
    return json.loads(file.read_text())


def _read_weights(model_dir: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    file = model_dir / WEIGHTS_FILE
    if not file.is_file():
        raise TextModelError(f"{model_dir}: no {WEIGHTS_FILE} (pickled .bin checkpoints are not read)")
    return load_file(str(file))


def load_bert_classifier(model_dir: str | os.PathLike, num_classes: int, *, seed: int = 0) -> BertClassifier:
    """A pretrained BERT encoder (Hugging Face directory: config.json + model.safetensors) with a new,
    seeded linear classifier over masked mean pooling."""
    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    if config.get("model_type") != "bert":
        raise TextModelError(f"{model_dir}: model_type {config.get('model_type')!r} is not 'bert'")
    torch.manual_seed(seed)
    model = BertClassifier(BertShape.from_hf(config), num_classes)
    return load_hf_state(model, _read_weights(model_dir)).eval()


def bert_from_hf(hf_model, num_classes: int, *, seed: int = 0) -> BertClassifier:
    """Our :class:`BertClassifier` from a ``transformers.BertModel`` instance (its weights copied)."""
    torch.manual_seed(seed)
    model = BertClassifier(BertShape.from_hf(hf_model.config), num_classes)
    return load_hf_state(model, hf_model.state_dict()).eval()


def llama_from_hf(hf_model) -> LlamaLM:
    """Our :class:`LlamaLM` from a ``transformers.LlamaForCausalLM`` instance (its weights copied, float32)."""
    model = LlamaLM(LlamaShape.from_hf(hf_model.config))
    return load_hf_state(model, {k: v.float() for k, v in hf_model.state_dict().items()}).eval()


def load_llama_gguf(gguf_file: str | os.PathLike) -> tuple[LlamaLM, object]:
    """A Llama decoder and its tokenizer (``tokenizers.Tokenizer``) from a GGUF file, dequantized by
    ``transformers`` (needs the ``gguf`` package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_file)
    if not path.is_file():
        raise TextModelError(f"{path}: no such GGUF file")
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return llama_from_hf(hf), tok.backend_tokenizer


def _hf_config(model: nn.Module) -> dict:
    kept = sum(not isinstance(layer, nn.Identity) for layer in model.layers)
    s = model.shape
    if isinstance(model, BertClassifier):
        return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": s.vocab_size, "hidden_size": s.hidden,
                "num_hidden_layers": kept, "num_attention_heads": s.heads, "intermediate_size": s.ffn,
                "hidden_act": "gelu", "hidden_dropout_prob": s.dropout, "attention_probs_dropout_prob": s.dropout,
                "max_position_embeddings": s.max_positions, "type_vocab_size": s.type_vocab, "layer_norm_eps": s.eps,
                "pad_token_id": s.pad_id, "position_embedding_type": "absolute", "add_pooling_layer": False}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": s.vocab_size, "hidden_size": s.hidden,
            "num_hidden_layers": kept, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
            "head_dim": s.head_dim, "intermediate_size": s.ffn, "hidden_act": "silu", "rms_norm_eps": s.eps,
            "rope_theta": s.rope_theta, "tie_word_embeddings": s.tie_embeddings, "max_position_embeddings": s.max_positions,
            "attention_bias": False, "mlp_bias": False}


def _arch(model: nn.Module) -> str:
    if isinstance(model, BertClassifier):
        return "bert_classifier"
    if isinstance(model, LlamaLM):
        return "llama_lm"
    raise TextModelError(f"not an idap text model: {type(model).__name__}")


def probe_ids(model: nn.Module, length: int = 16, batch: int = 2, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.shape.vocab_size, (batch, length), generator=gen)


@torch.no_grad()
def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    was = model.training
    model.eval()
    try:
        return model(ids.to(next(model.parameters()).device)).float().cpu()
    finally:
        model.train(was)


def save_text_model(model: nn.Module, directory: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None,
                    extra: dict | None = None) -> Path:
    """Save ``model`` as a Hugging Face directory + ``idap_text.json`` (shapes, removed layers, parity probe)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ids = probe_ids(model)
    shapes = layer_shapes(model)
    meta = {"format": FORMAT, "architecture": _arch(model), "shape": model.shape.to_json(),
            "num_classes": getattr(model, "num_classes", None), "layers": shapes,
            "removed_layers": [i for i, s in enumerate(shapes) if s is None],
            "probe": {"ids": ids.tolist(), "logits_sum": float(_logits(model, ids).double().sum())}, **(extra or {})}
    state = {k: v.cpu() for k, v in hf_state(model).items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    save_file({"probe_logits": _logits(model, ids).contiguous()}, str(directory / "idap_probe.safetensors"))
    (directory / CONFIG_FILE).write_text(json.dumps(_hf_config(model), indent=2))
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    if tokenizer_dir is not None:
        for name in _TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, directory / name)
    return directory


def load_text_model(directory: str | os.PathLike, *, check_parity: bool = True) -> nn.Module:
    """Rebuild a model saved by :func:`save_text_model`; with ``check_parity`` its probe logits must match."""
    from safetensors.torch import load_file

    directory = Path(directory)
    file = directory / META_FILE
    if not file.is_file():
        raise TextModelError(f"{directory}: no {META_FILE} (not saved by idap.dense.text_models.save_text_model)")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise TextModelError(f"{file}: format {meta.get('format')!r}, this idap reads {FORMAT}")
    arch = meta.get("architecture")
    if arch == "bert_classifier":
        model = BertClassifier(BertShape(**meta["shape"]), int(meta["num_classes"]))
    elif arch == "llama_lm":
        model = LlamaLM(LlamaShape(**meta["shape"]))
    else:
        raise TextModelError(f"{file}: unknown architecture {arch!r}; known: ['bert_classifier', 'llama_lm']")
    reshape_layers(model, meta["layers"])
    load_hf_state(model, _read_weights(directory), strict_extra=True)
    model.eval()
    if check_parity:
        ids = torch.tensor(meta["probe"]["ids"])
        expected = load_file(str(directory / "idap_probe.safetensors"))["probe_logits"]
        got = _logits(model, ids)
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=PARITY_ATOL, rtol=1e-4):
            raise TextModelError(f"{directory}: reloaded model differs from the saved one on the parity probe "
                                 f"(max |diff| {float((got - expected).abs().max()):.3g})")
    return model


# --- Hugging Face directory -> idap bundle (``idap import``) ------------------------------------------


def tokenizer_files(model_dir: str | os.PathLike) -> dict[str, str]:
    """The tokenizer files of a model directory, as text (a bundle keeps them in ``tokenizer/``)."""
    d = Path(model_dir)
    return {name: (d / name).read_text(encoding="utf-8") for name in _TOKENIZER_FILES if (d / name).is_file()}


def hf_bundle_model(model_dir: str | os.PathLike, *, num_classes: int | None = None, max_length: int = 128,
                    seed: int = 0) -> tuple[nn.Module, dict]:
    """A registry-built text model (``bert_classifier`` / ``llama_lm``, so it carries ``idap_arch``) with the
    weights and tokenizer of a Hugging Face directory, and a description of what was done.

    BERT gets a new seeded classifier over masked mean pooling (``num_classes`` required); a directory written
    by :func:`save_text_model` keeps its own. Llama becomes a decoder LM (its "classes" are the vocabulary).
    """
    from idap.data.text import check_tokenizer, load_tokenizer
    from idap.models.registry import create_model

    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    kind = config.get("model_type")
    ours = (model_dir / META_FILE).is_file()
    meta = json.loads((model_dir / META_FILE).read_text()) if ours else {}
    weights = _read_weights(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "bert":
            shape = BertShape(**meta["shape"]) if ours else BertShape.from_hf(config)  # ours: the dense shape
            if ours:
                num_classes = int(meta["num_classes"])
            if num_classes is None:
                raise TextModelError(f"{model_dir}: a BERT encoder needs --num-classes for its new classification head")
            model = create_model("bert_classifier", num_classes, 1, max_length, **shape.to_json())
            if not ours:  # a stock checkpoint's classifier (over the pooler) is not ours: a fresh head
                weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
            pad_id = shape.pad_id
        elif kind == "llama":
            shape = LlamaShape(**meta["shape"]) if ours else LlamaShape.from_hf(config)
            if num_classes not in (None, shape.vocab_size):
                raise TextModelError(f"{model_dir}: a decoder LM predicts its {shape.vocab_size} tokens; "
                                     f"--num-classes {num_classes} does not apply")
            model = create_model("llama_lm", shape.vocab_size, 1, max_length, **shape.to_json())
            weights = {k: v.float() for k, v in weights.items()}
            pad_id = None
        else:
            raise TextModelError(f"{model_dir}: model_type {kind!r} cannot be imported; supported: 'bert', 'llama'")
    if ours:  # pruned by idap.data.text: give the fresh model its saved layer shapes first
        reshape_layers(model, meta["layers"])
    load_hf_state(model, weights)
    files = tokenizer_files(model_dir)
    if "tokenizer.json" not in files:
        raise TextModelError(f"{model_dir}: no tokenizer.json; a text bundle keeps the model's own tokenizer "
                             f"(save it with tokenizer.save_pretrained(...) beside the weights)")
    check_tokenizer(load_tokenizer(model_dir), vocab_size=shape.vocab_size, pad_id=pad_id, where=str(model_dir))
    model.idap_tokenizer = files
    head = kind == "bert" and not ours
    return model.eval(), {"model_type": kind, "head_replaced": head, "num_classes": int(model.idap_arch["num_classes"]),
                          "notes": [f"new classification head for {num_classes} classes (seed {seed}); fine-tune "
                                    "before use"] if head else []}


def import_hf_model(model_dir: str | os.PathLike, out: str | os.PathLike, *, num_classes: int | None = None,
                    max_length: int = 128, seed: int = 0):
    """Write a Hugging Face text model directory as an idap bundle and check it reloads to the same logits.

    Returns an :class:`idap.dense.importing.ImportReport`. With ``transformers`` installed, the imported network is
    also compared with Hugging Face's own forward pass (BERT: last hidden states; Llama: logits) and the
    largest difference is added to the report's notes.
    """
    from idap.bundle.store import load_bundle, save_bundle
    from idap.dense.importing import ImportReport, ModelImportError
    from idap.measure.metrics import count_macs, count_params

    model, how = hf_bundle_model(model_dir, num_classes=num_classes, max_length=max_length, seed=seed)
    shape = (int(max_length),)
    record = {"hugging_face": str(model_dir), **{k: how[k] for k in ("model_type", "head_replaced", "notes")}}
    save_bundle(model, out, input_shape=shape, recipe={"import": record}, metadata={"import": record})
    ids = model.probe_input(4, shape, torch.Generator().manual_seed(1234))
    with torch.inference_mode():
        expected, got = model(ids), load_bundle(out)(ids)
    diff = float((expected - got).abs().max())
    if not diff <= 1e-6 * max(1.0, float(expected.abs().max())):
        raise ModelImportError(f"{out}: the bundle does not reproduce the imported model (logits differ by {diff:.3g})")
    notes = list(how["notes"])
    hf_diff = _hf_difference(model, model_dir, ids)
    if hf_diff is not None:
        notes.append(f"max |idap - transformers| {hf_diff:.3g} "
                     f"({'last hidden states' if how['model_type'] == 'bert' else 'logits'})")
    return ImportReport(str(out), model.idap_arch["name"], str(model_dir), how["num_classes"], how["num_classes"],
                        how["head_replaced"], list(shape), None, None, None, count_params(model),
                        count_macs(model, shape), diff, "logits", notes)


def _hf_difference(model: nn.Module, model_dir, ids: Tensor) -> float | None:
    import importlib.util

    if importlib.util.find_spec("transformers") is None or (Path(model_dir) / META_FILE).is_file():
        return None
    import transformers

    if isinstance(model, BertClassifier):
        hf = transformers.BertModel.from_pretrained(str(model_dir), add_pooling_layer=False)
    else:
        hf = transformers.LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return _difference(model, hf.eval(), ids)


def _difference(model: nn.Module, hf, ids: Tensor) -> float:
    """Largest |ours - transformers'|: BERT's last hidden states at real tokens, Llama's logits."""
    with torch.inference_mode():
        if isinstance(model, BertClassifier):
            ours, keep = model.encode(ids)
            theirs = hf(input_ids=ids, attention_mask=keep.long()).last_hidden_state
            return float((ours[keep] - theirs[keep]).abs().max())
        return float((hf(input_ids=ids).logits - model(ids)).abs().max())
