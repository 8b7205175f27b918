"""idap text finetune -> compress -> evaluate on a tiny Hugging Face BERT directory and a class-folder corpus: the
fine-tuned model is a bundle, and compress / evaluate are idap compress / idap evaluate on it."""

import json

import pytest
import torch

from idap.cli import main
from tests.conftest import base_seed
from tests.idap.test_text import WORDS, word_tokenizer, write_corpus

transformers = pytest.importorskip("transformers")


@pytest.fixture
def hf_dir(tmp_path):
    torch.manual_seed(base_seed())
    cfg = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "hf")
    word_tokenizer().save(str(tmp_path / "hf" / "tokenizer.json"))
    return tmp_path / "hf"


@pytest.mark.slow
@pytest.mark.outcome
def test_finetune_compress_evaluate(hf_dir, tmp_path, capsys, margin):
    corpus = write_corpus(tmp_path / "corpus", per_class=40)
    common = ["--data", str(corpus), "--quiet"]
    assert main(["text", "finetune", "--model", str(hf_dir), *common, "--max-length", "16", "--steps", "60",
                 "--lr", "3e-3", "--calibration-size", "16", "--validation-size", "24", "--out", str(tmp_path / "dense")]) == 0
    dense = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert margin("fine-tuned val acc, above", dense["val_acc"], 60) > 60  # three word-distribution classes: learnable
    sets = ["filter.steps=3", "filter.p0=0.2", "filter.min_channels=2", "layer.max_removals=1", "layer.epsilon=20",
            "recovery.step_budget=3", "recovery.final_budget=3", "recovery.batch_size=16", "recovery.augment=false",
            "calibration_size=16", "eval_batch_size=32"]
    assert main(["text", "compress", "--model-dir", str(tmp_path / "dense"), *common, "--target-macs", "1.4",
                 "--max-drop", "20", *sum((["--set", s] for s in sets), []), "--out", str(tmp_path / "small")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "small" / "report.json").read_text())
    drops = [report["trajectory"][0]["val_acc"] - s["val_acc"] for s in report["trajectory"] if s["stage"] in ("filter", "layer")]
    margin("largest drop of a step (pp), budget 20", max(drops), 20.0, above=False)
    assert margin("MACs reduction, at least", out["macs_reduction"], 1.4) >= 1.4
    assert report["dense"]["macs"] > report["compressed"]["macs"] and report["trajectory"][0]["action"] == "dense"
    # no --recipe: the text settings (an encoder's learning rate, logit KD from the dense model), the --set items win
    used = report["recipe"]
    assert (used["recovery"]["lr"], used["recovery"]["lambda_kd"], used["recovery"]["teacher"]) == (5e-5, 1.0, "dense")
    assert (used["filter"]["steps"], used["recovery"]["step_budget"]) == (3, 3)
    # the saved model carries its tokenizer and data settings: evaluate cuts the same splits
    assert main(["text", "evaluate", "--model-dir", str(tmp_path / "small" / "model"), "--data", str(corpus)]) == 0
    again = json.loads(capsys.readouterr().out)  # idap evaluate's JSON
    assert again["test_acc"] == pytest.approx(report["compressed"]["test_acc"])
    # the common commands take the same bundles: idap compress --model-dir on the fine-tuned bundle
    assert (tmp_path / "dense" / "tokenizer" / "tokenizer.json").is_file()
    from idap.bundle import load_bundle

    assert load_bundle(tmp_path / "small" / "model").idap_arch["name"] == "bert_classifier"


def test_wrong_tokenizer_is_one_clear_error(hf_dir, tmp_path, capsys):
    big = word_tokenizer(WORDS + [f"x{i}" for i in range(100)])
    big.save(str(hf_dir / "tokenizer.json"))
    corpus = write_corpus(tmp_path / "corpus", per_class=5)
    code = main(["text", "finetune", "--model", str(hf_dir), "--data", str(corpus), "--steps", "1", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "tokenizer has 162 tokens but the model embeds only 62" in capsys.readouterr().err
