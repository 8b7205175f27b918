"""The text families in the registry: ``bert_classifier`` and ``llama_lm`` built by name from their shapes.

A bundle of a text model records one of these names and its shape fields; ``create_model`` rebuilds the
fresh model from them (``image_size`` is the token length the model is fed).
"""

from __future__ import annotations

from idap.models.lm import BertClassifier, BertShape, LlamaLM, LlamaShape, TextModelError
from idap.models.registry import register_model


def bert_classifier(num_classes: int, in_channels: int, image_size: int, **shape) -> BertClassifier:
    """``create_model("bert_classifier", num_classes, 1, max_length, **BertShape fields)``; ``image_size`` is
    the token length the model is fed (recorded, not a limit below ``max_positions``)."""
    _check_token_task(in_channels, image_size, shape.get("max_positions", 512))
    return BertClassifier(BertShape(**shape), num_classes)


def llama_lm(num_classes: int, in_channels: int, image_size: int, **shape) -> LlamaLM:
    """``create_model("llama_lm", vocab_size, 1, block_size, **LlamaShape fields)``: its "classes" are the
    vocabulary (next-token logits)."""
    _check_token_task(in_channels, image_size, shape.get("max_positions", 2048))
    s = LlamaShape(**shape)
    if num_classes != s.vocab_size:
        raise TextModelError(f"a decoder LM predicts its vocabulary: num_classes must be {s.vocab_size}, got {num_classes}")
    return LlamaLM(s)


def _check_token_task(in_channels: int, length: int, max_positions: int) -> None:
    if in_channels != 1:
        raise TextModelError(f"a text model takes one row of token ids per sample: in_channels must be 1, got {in_channels}")
    if length > max_positions:
        raise TextModelError(f"{length} tokens exceed the model's {max_positions} positions")


# Text models on token ids: "image_size" is the token length they are fed.
register_model("bert_classifier", task="text")(bert_classifier)
register_model("llama_lm", task="text")(llama_lm)
