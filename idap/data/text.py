"""Text datasets as token-id tensors: class folders of ``.txt`` files (classification) or one plain text
file (language modelling), tokenized once with the model's own tokenizer.

A classification corpus becomes :class:`TextSplits`, a :class:`idap.data.sources.DataSplits` whose ``x`` tensors
hold token ids (N, L) as int64 and whose ``input_shape`` is ``(L,)``; everything the stages do with image
splits (calibration, validation, recovery batches, MACs probes) works on it. The test split is held out
first; calibration and validation come from the training pool only. Local paths only: an ``s3://`` URI
is fetched at the edge (``components/_storage``) before it reaches the library.

Where an image dataset goes (``idap.data.sources.load_dataset``, so ``idap compress --dataset`` and the pipeline's
``dataset``), a text dataset is either a folder of class subfolders of ``.txt`` files, tokenized with the
model's tokenizer (``tokenizer=``: the bundle being compressed, or a ``tokenizer.json`` in the folder), or a
dataset spec (YAML), which names everything itself::

    kind: text
    path: bbcnews/data        # class folders (relative to the spec file)
    tokenizer: minilm         # a model directory, a bundle (its tokenizer/) or a tokenizer.json
    max_length: 128
    per_class_limit: 200      # optional

Example:
    >>> tok = load_tokenizer("path/to/model_dir")                                   # doctest: +SKIP
    >>> data = load_text_folder("bbcnews/data", tok, max_length=128, seed=0)        # doctest: +SKIP
    >>> data.train_x.shape[1], data.input_shape                                     # doctest: +SKIP
    (128, (128,))
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from idap.data.splits import TEST_FRACTION, DataError, DataSplits


@dataclass(frozen=True, eq=False)
class TextSplits(DataSplits):
    """Token-id splits: x int64 (N, max_length) padded with ``pad_id``; ``classes`` names the labels."""

    max_length: int = 128
    pad_id: int = 0
    vocab_size: int = 0
    classes: tuple[str, ...] = ()
    per_class_limit: int | None = None  # texts kept per class (a seeded choice), None: all

    @property
    def input_shape(self) -> tuple[int]:
        return (self.max_length,)

    def describe(self) -> dict:
        doc = super().describe()
        doc.update({"kind": "text", "max_length": self.max_length, "classes": list(self.classes),
                    "pad_id": self.pad_id, "vocab_size": self.vocab_size, "per_class_limit": self.per_class_limit})
        for key in ("in_channels", "image_size", "normalization"):
            doc.pop(key, None)
        return doc


def load_tokenizer(path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` from a model directory's ``tokenizer.json`` (or the file itself)."""
    from tokenizers import Tokenizer

    p = Path(path)
    file = p
    if p.is_dir():  # a model directory, or a bundle (which keeps its tokenizer in tokenizer/)
        file = p / "tokenizer.json" if (p / "tokenizer.json").is_file() else p / "tokenizer" / "tokenizer.json"
    if not file.is_file():
        raise DataError(f"{path}: no tokenizer.json (a Hugging Face model directory or a text bundle has one)")
    return Tokenizer.from_file(str(file))


def check_local(path: str | os.PathLike) -> Path:
    """``path`` as a local Path that exists (a URI or a missing path is a DataError naming it)."""
    text = str(path)
    if "://" in text:
        raise DataError(f"{text}: the library reads local paths; fetch remote data first (idap's CLI does this "
                        f"for s3:// URIs through components/_storage)")
    p = Path(text)
    if not p.exists():
        raise DataError(f"{text}: no such file or directory")
    return p


def read_text_folder(root: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """Texts, labels and class names of a folder of class subfolders holding ``.txt`` files (sorted)."""
    root = check_local(root)
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder of class subfolders with .txt files, got a file")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{root}: expected at least 2 class subfolders, found {classes}")
    texts, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((root / name).glob("*.txt"))
        if not files:
            raise DataError(f"{root / name}: class folder without .txt files")
        for f in files:
            text = f.read_bytes().decode("utf-8", errors="replace").strip()
            if not text:
                raise DataError(f"{f}: empty text")
            texts.append(text)
            labels.append(label)
    return texts, labels, classes


def encode(tokenizer, texts: list[str], max_length: int, *, pad_id: int | None = None) -> Tensor:
    """Token ids (N, max_length) int64: each text truncated (special tokens kept) and right-padded."""
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 tokens, got {max_length}")
    if pad_id is None:
        pad_id = _pad_id(tokenizer)
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length, pad_id=pad_id)
    try:
        rows = [e.ids for e in tokenizer.encode_batch(texts)]
    finally:
        tokenizer.no_truncation()
        tokenizer.no_padding()
    return torch.tensor(rows, dtype=torch.long)


def _pad_id(tokenizer) -> int:
    for token in ("[PAD]", "<pad>", "<|endoftext|>"):
        i = tokenizer.token_to_id(token)
        if i is not None:
            return int(i)
    return 0


def check_tokenizer(tokenizer, *, vocab_size: int, pad_id: int | None = None, where: str = "model") -> None:
    """The tokenizer must fit the model's embedding: same vocabulary size (ids beyond it would index past
    the embedding) and, for an encoder, the model's padding id. Raises DataError naming the mismatch."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise DataError(f"the tokenizer has {size} tokens but the {where} embeds only {vocab_size}: "
                        f"a tokenizer of another model (use the model directory's own tokenizer.json)")
    if pad_id is not None and _pad_id(tokenizer) != pad_id:
        raise DataError(f"the tokenizer pads with id {_pad_id(tokenizer)} but the {where} masks id {pad_id}: "
                        f"a tokenizer of another model")


def load_text_folder(root: str | os.PathLike, tokenizer, *, max_length: int = 128, seed: int = 0,
                     calibration_size: int = 128, validation_size: int = 256, per_class_limit: int | None = None,
                     vocab_size: int | None = None, pad_id: int | None = None, name: str | None = None) -> TextSplits:
    """Tokenize a class-folder corpus once and cut seeded, disjoint, stratified splits.

    Args:
        per_class_limit: keep at most this many texts per class (a seeded choice; for reduced runs).
        vocab_size, pad_id: the model's; when given, the tokenizer is checked against them first.
        calibration_size, validation_size: taken from the training pool (test is held out first, 20 %).
    """
    if vocab_size is not None:
        check_tokenizer(tokenizer, vocab_size=vocab_size, pad_id=pad_id)
    texts, labels, classes = read_text_folder(root)
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    chosen = []
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(y == c))
        chosen.append(idx[:per_class_limit] if per_class_limit else idx)
    test, pool = [], []
    for idx in chosen:  # stratified: each class gives 20 % to test
        n_test = max(1, round(TEST_FRACTION * len(idx)))
        test.extend(idx[:n_test])
        pool.extend(idx[n_test:])
    pool = rng.permutation(np.asarray(pool))
    n_calib = min(calibration_size, len(pool) // 4)
    n_val = min(validation_size, len(pool) // 4)
    calib, val, train = pool[:n_calib], pool[n_calib:n_calib + n_val], pool[n_calib + n_val:]
    if len(train) == 0 or len(test) == 0 or n_val == 0 or n_calib == 0:
        raise DataError(f"{root}: too few texts ({len(texts)}) for non-empty train/calibration/validation/test splits")
    pad = _pad_id(tokenizer) if pad_id is None else pad_id
    ids = encode(tokenizer, texts, max_length, pad_id=pad)
    labels_t = torch.as_tensor(y, dtype=torch.long)
    digest = hashlib.sha256()
    for t, label in zip(texts, labels, strict=True):
        digest.update(f"{label}\0".encode())
        digest.update(t.encode("utf-8", errors="replace"))

    def take(idx) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(np.sort(np.asarray(idx)), dtype=torch.long)
        return ids[idx].contiguous(), labels_t[idx].contiguous()

    (trx, tr_y), (cx, cy), (vx, vy), (tx, ty) = take(train), take(calib), take(val), take(test)
    return TextSplits(name=name or Path(root).name, train_x=trx, train_y=tr_y, calib_x=cx, calib_y=cy, val_x=vx, val_y=vy,
                      test_x=tx, test_y=ty, num_classes=len(classes), in_channels=1, image_size=max_length,
                      content_hash=digest.hexdigest(), seed=seed, max_length=max_length, pad_id=pad,
                      vocab_size=vocab_size or tokenizer.get_vocab_size(with_added_tokens=True), classes=tuple(classes),
                      per_class_limit=per_class_limit)


def load_text_file(path: str | os.PathLike, tokenizer, *, block_size: int = 128, max_tokens: int | None = None,
                   test_fraction: float = 0.1, vocab_size: int | None = None) -> dict[str, Tensor]:
    """A plain text file for language modelling: token windows (N, block_size), contiguous train / validation
    / test parts (the last ``test_fraction`` of the text is test, the ``test_fraction`` before it validation)."""
    p = check_local(path)
    if p.is_dir():
        raise DataError(f"{p}: expected a plain text file, got a folder")
    if vocab_size is not None:
        check_tokenizer(tokenizer, vocab_size=vocab_size)
    text = p.read_bytes().decode("utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"{p}: empty text")
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:max_tokens]
    n = len(ids) // block_size
    if n < 3:
        raise DataError(f"{p}: {len(ids)} tokens make fewer than 3 windows of {block_size}")
    windows = torch.tensor(ids[:n * block_size], dtype=torch.long).view(n, block_size)
    n_test = max(1, round(test_fraction * n))
    return {"train": windows[:n - 2 * n_test], "validation": windows[n - 2 * n_test:n - n_test], "test": windows[n - n_test:]}


# --- text datasets where image datasets go (``idap.data.sources.load_dataset``) --------------------------------

_SPEC_KEYS = {"kind", "path", "tokenizer", "max_length", "per_class_limit", "name"}


def is_text_source(path: str | os.PathLike) -> bool:
    """A folder of class subfolders holding ``.txt`` files, or a dataset spec with ``kind: text``."""
    p = Path(path)
    if p.is_dir():
        return any(p.glob("*/*.txt"))
    return p.is_file() and p.suffix in (".yaml", ".yml", ".json") and read_spec(p).get("kind") == "text"


def read_spec(path: Path) -> dict:
    """A YAML / JSON dataset spec as a dict (``{}`` when it is not a mapping; unreadable: DataError)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable dataset spec: {error}") from error
    return doc if isinstance(doc, dict) else {}


def read_spec_fields(path: Path, keys: set[str], kind: str, names: str) -> tuple[dict, Path]:
    """A ``kind`` dataset spec's fields (unknown ones refused, listing the valid ones) and the data path it
    names (``names`` says what it should be), relative to the spec's folder unless absolute."""
    spec = read_spec(path)
    unknown = sorted(set(spec) - keys)
    if unknown:
        raise DataError(f"{path}: unknown {kind} dataset fields {unknown}; valid: {sorted(keys)}")
    if not spec.get("path"):
        raise DataError(f"{path}: a {kind} dataset spec needs 'path' ({names})")
    target = Path(spec["path"])
    return spec, target if target.is_absolute() else path.parent / target


def load_text_dataset(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                      max_length: int | None = None, seed: int = 0, calibration_size: int = 128,
                      validation_size: int = 256, train_limit: int | None = None,
                      test_limit: int | None = None) -> TextSplits:
    """A text folder or text dataset spec as :class:`TextSplits` (what ``load_dataset`` returns for text).

    Args:
        tokenizer: the model's tokenizer (a model directory, a bundle or a tokenizer.json); a spec's own
            ``tokenizer`` wins, and a folder without either must hold a ``tokenizer.json``.
        max_length: tokens per text when the spec does not say (default 128).
        train_limit, test_limit: seeded subsamples of the train / test splits.
    """
    import dataclasses

    p = Path(path)
    spec: dict = {}
    root = p
    if p.is_file():
        spec, root = read_spec_fields(p, _SPEC_KEYS, "text", "a folder of class subfolders of .txt files")
        if spec.get("tokenizer"):
            t = Path(spec["tokenizer"])
            tokenizer = t if t.is_absolute() else p.parent / t
    if tokenizer is None:
        if not (root / "tokenizer.json").is_file():
            raise DataError(f"{path}: a text folder needs the model's tokenizer: give a text bundle (idap compress / "
                            f"evaluate --model-dir: its tokenizer is used), put a tokenizer.json in the folder, or "
                            f"write a spec with kind: text and tokenizer: <model directory>")
        tokenizer = root
    if max_length is None and (Path(tokenizer) / "architecture.json").is_file():  # a bundle: the length it takes
        from idap.bundle.format import read_input_spec

        max_length = int(read_input_spec(tokenizer)["shape"][0])
    length = int(spec.get("max_length") or max_length or 128)
    data = load_text_folder(root, load_tokenizer(tokenizer), max_length=length, seed=seed,
                            calibration_size=calibration_size, validation_size=validation_size,
                            per_class_limit=spec.get("per_class_limit"), name=spec.get("name") or p.name)
    gen = torch.Generator().manual_seed(seed)
    changes = {}
    for split, limit in (("train", train_limit), ("test", test_limit)):
        n = len(getattr(data, f"{split}_y"))
        if limit is not None and limit < n:
            keep = torch.randperm(n, generator=gen)[:limit].sort().values
            changes.update({f"{split}_x": getattr(data, f"{split}_x")[keep], f"{split}_y": getattr(data, f"{split}_y")[keep]})
    return dataclasses.replace(data, **changes) if changes else data


def check_stored_hash(meta: dict, stored_hash: str | None, where) -> None:
    """Saved token splits: the tensors' recorded content hash must be the metadata's."""
    if stored_hash != meta["content_hash"]:
        raise DataError(f"{where}: the token tensors (hash {stored_hash}) and the metadata (hash "
                        f"{meta['content_hash']}) come from different datasets")


def text_splits_from(meta: dict, fields: dict[str, Tensor], *, stored_hash: str | None, where) -> TextSplits:
    """Rebuild :class:`TextSplits` from ``save_splits``' metadata (``describe()``) and tensors, whose recorded
    content hash must be the metadata's."""
    check_stored_hash(meta, stored_hash, where)
    length = int(meta["max_length"])
    return TextSplits(name=meta["name"], num_classes=int(meta["num_classes"]), in_channels=1, image_size=length,
                      content_hash=meta["content_hash"], seed=int(meta["seed"]), max_length=length,
                      pad_id=int(meta["pad_id"]), vocab_size=int(meta["vocab_size"]), classes=tuple(meta["classes"]),
                      per_class_limit=meta.get("per_class_limit"), **fields)
