"""Language modelling as a task the stages run: a plain text file as next-token windows, and perplexity.

A text file (or a dataset spec with ``kind: lm``) becomes :class:`LMSplits`, a :class:`idap.data.sources.DataSplits`
whose ``x`` are token windows (N, block_size) int64 and whose ``y`` are the next-token targets (N, block_size):
``y[i, t]`` is the token after ``x[i, t]``, windows are consecutive (stride ``block_size``), so every token of
the text is predicted once. The last ``test_fraction`` of the windows (the text's tail) is the test split;
calibration and validation are a seeded choice of windows from the part before it, the rest is train.
``num_classes`` is the model's vocabulary (a decoder's "classes" are its tokens, ``idap.models.text_family.llama_lm``).

How an LM is judged: the stages' metric is next-token top-1 accuracy in percent over all target tokens of
the validation windows (``idap.measure.metrics.accuracy`` on (N, T, V) logits), so the accuracy budget
(``max_accuracy_drop``, in percentage points), rollback and ε read in points of token accuracy, higher is
better, exactly as for a classifier. Perplexity (exp of the mean token cross-entropy) is the headline figure:
``idap.report.evaluate.evaluate_model`` adds ``val_ppl`` / ``test_ppl`` for an LM, so the report (JSON, Markdown),
``idap evaluate`` and the MLflow metrics (``dense_val_ppl`` ...) carry it beside the dense model's. It does
not gate a step.

A spec names everything itself (paths relative to the spec file)::

    kind: lm
    path: kjv.txt             # the plain text
    tokenizer: smollm2        # a model directory, a bundle (its tokenizer/) or a tokenizer.json
    block_size: 128           # tokens per window (default: the bundle's input length, else 128)
    max_tokens: 20000         # optional: only the text's first tokens
    test_fraction: 0.1        # optional

Example:
    >>> data = load_dataset("book.txt", tokenizer="bundles/llama")        # doctest: +SKIP
    >>> data.train_x.shape[1] == data.block_size, data.train_y.shape == data.train_x.shape   # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from idap.data.splits import DataError, DataSplits
from idap.data.text import (
    check_local,
    check_stored_hash,
    check_tokenizer,
    load_tokenizer,
    read_spec,
    read_spec_fields,
)

_SPEC_KEYS = {"kind", "path", "tokenizer", "block_size", "max_tokens", "test_fraction", "name"}
_SPEC_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, eq=False)
class LMSplits(DataSplits):
    """Next-token splits: x int64 (N, block_size) token windows, y int64 (N, block_size) their targets."""

    block_size: int = 128
    vocab_size: int = 0
    max_tokens: int | None = None
    test_fraction: float = 0.1

    task = "lm"  # not a field: what evaluate_model / the recovery loss look for

    @property
    def input_shape(self) -> tuple[int]:
        return (self.block_size,)

    def describe(self) -> dict:
        doc = super().describe()
        doc.update({"kind": "lm", "block_size": self.block_size, "vocab_size": self.vocab_size,
                    "max_tokens": self.max_tokens, "test_fraction": self.test_fraction,
                    "tokens": {s: int(getattr(self, f"{a}_y").numel()) for s, a in
                               (("train", "train"), ("calibration", "calib"), ("validation", "val"), ("test", "test"))}})
        for key in ("in_channels", "image_size", "normalization"):
            doc.pop(key, None)
        return doc






def is_lm_source(path: str | os.PathLike) -> bool:
    """A plain ``.txt`` file, or a dataset spec with ``kind: lm``."""
    p = Path(path)
    if not p.is_file():
        return False
    return p.suffix == ".txt" or (p.suffix in _SPEC_SUFFIXES and read_spec(p).get("kind") == "lm")


def token_windows(ids: list[int] | Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Consecutive windows (N, block_size) of ``ids`` and their next-token targets (the same shifted by one)."""
    if block_size < 2:
        raise DataError(f"block_size must be >= 2 tokens, got {block_size}")
    t = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = (len(t) - 1) // block_size
    x = t[:n * block_size].view(n, block_size)
    y = t[1:n * block_size + 1].view(n, block_size)
    return x, y


def _model_facts(model_dir: Path | None) -> tuple[int | None, int | None, Path | None]:
    """(vocabulary, input length, tokenizer.json) of a bundle or Hugging Face directory, where it says."""
    if model_dir is None or not model_dir.is_dir():
        return None, None, (model_dir if model_dir is not None and model_dir.is_file() else None)
    tok = next((f for f in (model_dir / "tokenizer.json", model_dir / "tokenizer" / "tokenizer.json") if f.is_file()), None)
    if (model_dir / "architecture.json").is_file():  # an idap bundle
        from idap.bundle.format import read_input_spec

        spec = read_input_spec(model_dir)
        vocab = (spec.get("tokens") or {}).get("vocab_size")
        return (int(vocab) if vocab else None), int(spec["shape"][0]), tok
    if (model_dir / "config.json").is_file():
        import json

        vocab = json.loads((model_dir / "config.json").read_text()).get("vocab_size")
        return (int(vocab) if vocab else None), None, tok
    return None, None, tok


def load_lm_dataset(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                    block_size: int | None = None, seed: int = 0, calibration_size: int = 128,
                    validation_size: int = 256, train_limit: int | None = None,
                    test_limit: int | None = None) -> LMSplits:
    """A text file or ``kind: lm`` spec as :class:`LMSplits` (what ``load_dataset`` returns for it).

    Args:
        tokenizer: the model being compressed (a bundle or Hugging Face directory: its tokenizer, vocabulary
            and input length) or a tokenizer.json. A spec's own ``tokenizer`` wins for tokenizing, and must
            then have the model's vocabulary; a file without either needs a ``tokenizer.json`` beside it.
        block_size: tokens per window when the spec does not say (default: the bundle's length, else 128).
        calibration_size, validation_size: windows drawn (seeded) from the training part, each at most a
            quarter of it.
        train_limit, test_limit: seeded subsamples of the train / test windows.
    """
    p = check_local(path)
    spec: dict = {}
    file = p
    if p.is_dir():
        raise DataError(f"{p}: expected a plain text file (or a kind: lm spec), got a folder")
    if p.suffix in _SPEC_SUFFIXES:
        spec, named = read_spec_fields(p, _SPEC_KEYS, "lm", "a plain text file")
        file = check_local(named)
    model_dir = Path(tokenizer) if tokenizer is not None else None
    vocab, length, model_tok = _model_facts(model_dir)
    tok_file = model_tok
    if spec.get("tokenizer"):
        t = Path(spec["tokenizer"])
        tok_file = t if t.is_absolute() else p.parent / t
    if tok_file is None:
        beside = file.parent / "tokenizer.json"
        if not beside.is_file():
            raise DataError(f"{path}: a text file needs the model's tokenizer: give the LM bundle (idap compress / "
                            f"evaluate --model-dir: its tokenizer is used), put a tokenizer.json beside the file, or "
                            f"write a spec with kind: lm and tokenizer: <model directory>")
        tok_file = beside
    tok = load_tokenizer(tok_file)
    if model_tok is not None and Path(tok_file) != model_tok:  # a spec's tokenizer: it must be the model's
        own = load_tokenizer(model_tok)
        if own.get_vocab(with_added_tokens=True) != tok.get_vocab(with_added_tokens=True):
            raise DataError(f"{tok_file}: its vocabulary differs from the tokenizer of the model {model_dir}: "
                            f"a tokenizer of another model")
    if vocab is not None:
        check_tokenizer(tok, vocab_size=vocab, where=f"model {model_dir}")
    size = int(spec.get("block_size") or block_size or length or 128)
    max_tokens = spec.get("max_tokens")
    test_fraction = float(spec.get("test_fraction", 0.1))
    if not 0 < test_fraction < 0.5:
        raise DataError(f"{p}: test_fraction must be in (0, 0.5), got {test_fraction}")
    raw = file.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"{file}: empty text")
    ids = _encode(tok, text, max_tokens)
    x, y = token_windows(ids, size)
    n = len(x)
    n_test = max(1, round(test_fraction * n))
    pool = np.random.default_rng(seed).permutation(n - n_test) if n > n_test else np.arange(0)
    n_calib, n_val = min(calibration_size, len(pool) // 4), min(validation_size, len(pool) // 4)
    if n_calib < 1 or n_val < 1:
        raise DataError(f"{file}: too few tokens ({len(ids)}) for train / calibration / validation / test windows of "
                        f"{size} tokens (got {n} windows, need at least {4 + n_test + 1}): use a longer text or a "
                        f"smaller block_size")
    calib, val, train = pool[:n_calib], pool[n_calib:n_calib + n_val], pool[n_calib + n_val:]
    test = np.arange(n - n_test, n)
    gen = np.random.default_rng(seed + 1)
    if train_limit is not None and train_limit < len(train):
        train = gen.permutation(train)[:train_limit]
    if test_limit is not None and test_limit < len(test):
        test = gen.permutation(test)[:test_limit]
    digest = hashlib.sha256(raw)
    digest.update(f"\0lm block={size} max_tokens={max_tokens} test_fraction={test_fraction}\0".encode())
    digest.update(hashlib.sha256(tok.to_str().encode()).digest())

    def take(idx) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(np.sort(np.asarray(idx)), dtype=torch.long)
        return x[idx].contiguous(), y[idx].contiguous()

    (trx, tr_y), (cx, cy), (vx, vy), (tx, ty) = take(train), take(calib), take(val), take(test)
    vocab_size = vocab or tok.get_vocab_size(with_added_tokens=True)
    return LMSplits(name=spec.get("name") or p.name, train_x=trx, train_y=tr_y, calib_x=cx, calib_y=cy, val_x=vx,
                    val_y=vy, test_x=tx, test_y=ty, num_classes=vocab_size, in_channels=1, image_size=size,
                    content_hash=digest.hexdigest(), seed=seed, block_size=size, vocab_size=vocab_size,
                    max_tokens=max_tokens, test_fraction=test_fraction)


def _encode(tok, text: str, max_tokens: int | None) -> list[int]:
    if max_tokens is not None:
        if int(max_tokens) < 2:
            raise DataError(f"max_tokens must be >= 2, got {max_tokens}")
        head = tok.encode(text[:16 * int(max_tokens)], add_special_tokens=False).ids  # most texts: < 16 chars a token
        if len(head) >= int(max_tokens):
            return head[:int(max_tokens)]
    return tok.encode(text, add_special_tokens=False).ids[:max_tokens]


def lm_splits_from(meta: dict, fields: dict[str, Tensor], *, stored_hash: str | None, where) -> LMSplits:
    """Rebuild :class:`LMSplits` from ``save_splits``' metadata and tensors (their hashes must agree)."""
    check_stored_hash(meta, stored_hash, where)
    size = int(meta["block_size"])
    return LMSplits(name=meta["name"], num_classes=int(meta["num_classes"]), in_channels=1, image_size=size,
                    content_hash=meta["content_hash"], seed=int(meta["seed"]), block_size=size,
                    vocab_size=int(meta["vocab_size"]), max_tokens=meta.get("max_tokens"),
                    test_fraction=float(meta.get("test_fraction", 0.1)), **fields)












__all__ = ["LMSplits", "is_lm_source", "lm_splits_from", "load_lm_dataset", "token_windows"]
