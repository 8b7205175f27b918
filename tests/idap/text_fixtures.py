"""Tiny text fixtures shared by the text tests: a word-level tokenizer, a learnable corpus of class folders,
and randomly initialised Hugging Face BERT / Llama directories (transformers config classes, no weights)."""

import json
import random
from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(60)]


def word_tokenizer(words=WORDS):
    import tokenizers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return tok


def write_corpus(root: Path, classes: int = 3, per_class: int = 30, seed: int = 0) -> Path:
    """Class c mostly uses words w{20c}..w{20c+19}: learnable by a tiny model."""
    rng = random.Random(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for j in range(per_class):
            words = [f"w{rng.randrange(20 * c, 20 * c + 20) if rng.random() < 0.7 else rng.randrange(60)}"
                     for _ in range(rng.randrange(4, 24))]
            (root / f"class{c}" / f"{j:03d}.txt").write_text(" ".join(words))
    return root


def hf_bert_dir(path: Path, *, vocab: int = 64, layers: int = 3, heads: int = 4, hidden: int = 32,
                ffn: int = 48, seed: int = 0, tokenizer=True) -> Path:
    """A randomly initialised ``transformers.BertModel`` saved as a Hugging Face directory with a tokenizer."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=ffn, max_position_embeddings=64,
                                  pad_token_id=0)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(str(path))
    if tokenizer:
        word_tokenizer().save(str(path / "tokenizer.json"))
    return path


def hf_llama_dir(path: Path, *, vocab: int = 64, seed: int = 0) -> Path:
    """A randomly initialised ``transformers.LlamaForCausalLM`` (grouped-query attention) with a tokenizer."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                   num_key_value_heads=2, intermediate_size=40, tie_word_embeddings=True,
                                   max_position_embeddings=64)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path))
    word_tokenizer().save(str(path / "tokenizer.json"))
    return path


def text_spec(path: Path, corpus: Path, tokenizer: Path, max_length: int = 16) -> Path:
    """A dataset spec (``kind: text``) naming the corpus and the tokenizer, as the pipeline's dataset."""
    path.write_text(json.dumps({"kind": "text", "path": str(corpus), "tokenizer": str(tokenizer),
                                "max_length": max_length}))
    return path


def tiny_recipe(path: Path, *, final_budget: int = 5) -> Path:
    """A seconds-long compress recipe for tiny text models: 1.3x fewer MACs in 2 filter steps, short recoveries."""
    path.write_text(
        "calibration_size: 16\nvalidation_size: 16\neval_batch_size: 64\ndevice: cpu\nmax_accuracy_drop: 50\n"
        "target_macs_reduction: 1.3\nfilter: {steps: 2, p0: 0.2}\n"
        f"recovery: {{step_budget: 5, final_budget: {final_budget}, batch_size: 16, augment: false}}\n")
    return path
