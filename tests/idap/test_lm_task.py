"""Language modelling as a task: a plain text file as next-token windows through load_dataset / save_splits,
token-level accuracy and perplexity, recovery on (N, T, V) logits, and `idap compress` / `idap evaluate` on a
tiny random Llama bundle (transformers config classes, no weights), seconds each."""

import json
import math
import random

import pytest
import torch

from idap.data import DataError, load_dataset, load_splits, save_splits
from idap.data.lm import LMSplits, token_windows
from idap.measure.metrics import accuracy
from idap.measure.tokens import mean_token_ce, token_loss
from idap.prune.config import RecoveryConfig
from idap.prune.recovery import recover
from tests.conftest import base_seed

from .text_fixtures import WORDS, hf_llama_dir, tiny_recipe, word_tokenizer

pytest.importorskip("transformers")
T = 16


def write_book(path, n_words=2400, seed=0, noise=0.1):
    """A learnable text: a cycle of 12 words with 10 % noise (``noise=0.5``: no two windows alike)."""
    rng = random.Random(seed)
    words = [f"w{i % 12}" if rng.random() > noise else f"w{rng.randrange(12, 60)}" for i in range(n_words)]
    path.write_text(" ".join(words))
    return path


@pytest.fixture(scope="module")
def llama_bundle(tmp_path_factory):
    from idap.cli import main

    root = tmp_path_factory.mktemp("llama")
    assert main(["import", "--model", str(hf_llama_dir(root / "hf")), "--max-length", str(T),
                 "--out", str(root / "bundle")]) == 0
    return root


def test_text_file_becomes_next_token_splits_from_the_training_part(llama_bundle, tmp_path):
    book = write_book(tmp_path / "book.txt", noise=0.5)
    data = load_dataset(str(book), tokenizer=llama_bundle / "bundle", calibration_size=10, validation_size=12, seed=3)
    assert isinstance(data, LMSplits) and data.input_shape == (T,) and data.num_classes == len(WORDS)
    assert data.train_x.dtype == torch.long and data.train_y.shape == data.train_x.shape
    ids = word_tokenizer().encode(book.read_text()).ids
    n = (len(ids) - 1) // T
    x, y = token_windows(ids, T)
    assert torch.equal(x[:, 1:], y[:, :-1]) and y[-1, -1].item() == ids[n * T]  # targets: the next token
    n_test = round(0.1 * n)
    assert torch.equal(data.test_x, x[n - n_test:])  # the text's tail is test
    sizes = {s: len(getattr(data, f"{s}_x")) for s in ("train", "calib", "val", "test")}
    assert sizes == {"train": n - n_test - 22, "calib": 10, "val": 12, "test": n_test}
    rows = {s: {tuple(r.tolist()) for r in getattr(data, f"{s}_x")} for s in ("train", "calib", "val", "test")}
    head = {tuple(r.tolist()) for r in x[:n - n_test]}
    assert len(head) == n - n_test  # every window distinct: set operations compare windows
    assert rows["calib"] <= head and rows["val"] <= head and not rows["calib"] & rows["val"]
    assert not (rows["calib"] | rows["val"]) & rows["train"]
    other = load_dataset(str(book), tokenizer=llama_bundle / "bundle", calibration_size=10, validation_size=12, seed=4)
    assert not torch.equal(other.val_x, data.val_x) and other.content_hash == data.content_hash  # seeded choice
    save_splits(data, tmp_path / "splits")
    back = load_splits(tmp_path / "splits")
    assert isinstance(back, LMSplits) and back.content_hash == data.content_hash and back.block_size == T
    assert torch.equal(back.val_y, data.val_y) and back.describe() == data.describe()
    assert data.describe()["tokens"]["test"] == n_test * T
    shorter = load_dataset(str(book), tokenizer=llama_bundle / "bundle", max_length=8)  # block size given
    assert shorter.input_shape == (8,) and shorter.content_hash != data.content_hash


def test_spec_names_tokenizer_block_size_and_max_tokens(llama_bundle, tmp_path):
    write_book(tmp_path / "book.txt")
    spec = tmp_path / "lm.yaml"
    spec.write_text(f"kind: lm\npath: book.txt\ntokenizer: {llama_bundle / 'hf'}\nblock_size: 8\nmax_tokens: 401\n")
    data = load_dataset(str(spec), tokenizer=llama_bundle / "bundle", calibration_size=4, validation_size=4)
    assert data.input_shape == (8,) and sum(len(getattr(data, f"{s}_x")) for s in ("train", "calib", "val", "test")) == 50
    from components.services.sources import resolve_dataset

    # what idap compress and the pipeline's data step do first: a local lm spec is read as it is
    assert resolve_dataset(str(spec), tmp_path / "work") == str(spec)
    (tmp_path / "bad.yaml").write_text("kind: lm\npath: book.txt\nblocksize: 8\n")
    with pytest.raises(DataError, match=r"unknown lm dataset fields \['blocksize'\]"):
        load_dataset(str(tmp_path / "bad.yaml"), tokenizer=llama_bundle / "bundle")


def test_bad_text_files_and_tokenizers_are_named(llama_bundle, tmp_path):
    bundle = llama_bundle / "bundle"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty text"):
        load_dataset(str(tmp_path / "empty.txt"), tokenizer=bundle)
    (tmp_path / "short.txt").write_text("w1 w2 w3 " * 20)
    with pytest.raises(DataError, match="too few tokens \\(60\\)"):
        load_dataset(str(tmp_path / "short.txt"), tokenizer=bundle)
    book = write_book(tmp_path / "book.txt")
    with pytest.raises(DataError, match="needs the model's tokenizer"):
        load_dataset(str(book))
    big = word_tokenizer(WORDS + [f"x{i}" for i in range(10)])  # 74 tokens for a model of 64
    big.save(str(tmp_path / "big.json"))
    (tmp_path / "other.yaml").write_text(f"kind: lm\npath: book.txt\ntokenizer: {tmp_path / 'big.json'}\n")
    with pytest.raises(DataError, match="another model"):
        load_dataset(str(tmp_path / "other.yaml"), tokenizer=bundle)
    with pytest.raises(DataError, match="too few tokens"):  # windows longer than the text allows
        load_dataset(str(book), tokenizer=bundle, max_length=600)


def test_token_accuracy_and_loss_on_token_logits():
    logits = torch.zeros(2, 3, 5)
    y = torch.tensor([[1, 2, 3], [4, 3, 1]])
    logits[0, 0, 1] = logits[0, 1, 2] = logits[1, 2, 1] = 5.0  # 3 of 6 tokens right

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[: len(x)]

    assert accuracy(Fixed(), torch.zeros(2, 3), y) == 50.0
    assert token_loss(logits, y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits.reshape(6, 5), y.reshape(6)).item())


@pytest.mark.outcome
def test_recovery_lowers_token_cross_entropy(llama_bundle, tmp_path, margin):
    from idap.bundle import load_bundle

    data = load_dataset(str(write_book(tmp_path / "book.txt")), tokenizer=llama_bundle / "bundle",
                        calibration_size=8, validation_size=16)
    student, teacher = load_bundle(llama_bundle / "bundle"), load_bundle(llama_bundle / "bundle")
    before = mean_token_ce(student, data.val_x, data.val_y)
    cfg = RecoveryConfig(lr=3e-3, batch_size=16, augment=False, lambda_kd=0.5, lambda_feat=0.1)
    stats = recover(student, teacher, data.train_x, data.train_y, steps=30, config=cfg, seed=base_seed(),
                    device=torch.device("cpu"))
    after = mean_token_ce(student, data.val_x, data.val_y)
    assert stats.taps and math.isfinite(stats.final_loss)  # feature taps on the FFN activations, as for BERT
    margin("cross-entropy fall (nats), above", before - after, 0.5)
    assert after < before - 0.5, (before, after)


def test_idap_compress_and_evaluate_on_a_llama_bundle_and_a_text_file(llama_bundle, tmp_path, capsys):
    from idap.bundle import load_bundle
    from idap.cli import main
    from idap.measure.metrics import count_params

    book = write_book(tmp_path / "book.txt")
    tiny_recipe(tmp_path / "r.yaml", final_budget=10)
    assert main(["compress", "--model-dir", str(llama_bundle / "bundle"), "--dataset", str(book), "--recipe",
                 str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--quiet", "--no-latency"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "out/report.json").read_text())
    d, c = report["dense"], report["compressed"]
    assert report["ratios"]["macs_reduction"] >= 1.3 and report["dataset"]["kind"] == "lm"
    assert all(k in d and k in c and math.isfinite(c[k]) for k in ("val_ppl", "test_ppl"))
    assert report["ratios"]["test_ppl_ratio"] == pytest.approx(c["test_ppl"] / d["test_ppl"])
    assert printed["test_ppl_ratio"] == report["ratios"]["test_ppl_ratio"]
    md = (tmp_path / "out/report.md").read_text()
    assert f"| test perplexity | {d['test_ppl']:.3f} | {c['test_ppl']:.3f} |" in md
    assert f"| test next-token accuracy (%) | {d['test_acc']:.2f} | {c['test_acc']:.2f} |" in md
    model = load_bundle(tmp_path / "out/model")  # parity-checked on reload
    assert count_params(model) < count_params(load_bundle(llama_bundle / "bundle"))
    assert set(model.idap_tokenizer) == {"tokenizer.json"}
    for layer in model.layers:  # grouped-query attention stays consistent: K/V rows per kept group
        if hasattr(layer, "attention"):
            a = layer.attention
            assert a.k_proj.out_features == a.num_heads * a.head_dim == a.v_proj.out_features
            assert a.q_proj.out_features == a.num_heads * a.queries_per_group * a.head_dim == a.out_proj.in_features
    from components.services.summaries import report_metrics  # what the pipeline logs to MLflow

    flat = report_metrics(report)
    assert flat["dense_test_ppl"] == d["test_ppl"] and flat["compressed_val_ppl"] == c["val_ppl"]
    assert "val_ppl_ratio" in flat
    assert main(["evaluate", "--model-dir", str(tmp_path / "out/model"), "--dataset", str(book), "--no-latency"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_ppl"] == pytest.approx(c["test_ppl"], rel=1e-6)  # the same splits, the same outputs
    assert evaluated["val_acc"] == c["val_acc"]


def test_idap_compress_removes_decoder_layers_and_prunes_kv_groups_on_the_lm_task(llama_bundle, tmp_path):
    from idap import Recipe, compress
    from idap.bundle import load_bundle, save_bundle
    from idap.report import evaluate_model

    data = load_dataset(str(write_book(tmp_path / "book.txt")), tokenizer=llama_bundle / "bundle",
                        calibration_size=16, validation_size=16)
    dense = load_bundle(llama_bundle / "bundle")
    base = {"device": "cpu", "calibration_size": 16, "validation_size": 16, "max_accuracy_drop": 100,
            "recovery": {"step_budget": 3, "final_budget": 5, "batch_size": 16, "augment": False}}
    layers = compress(dense, data, Recipe.from_dict({**base, "filter": {"enabled": False},
                                                     "layer": {"max_removals": 1, "epsilon": 100}}))
    removed = [s for s in layers.steps if s.action == "remove_block"]
    assert len(removed) == 1 and sum(isinstance(m, torch.nn.Identity) for m in layers.model.layers) == 1
    heads = compress(dense, data, Recipe.from_dict({**base, "target_macs_reduction": 1.6, "layer": {"enabled": False},
                                                    "filter": {"steps": 3, "p0": 0.3, "round_to": 1}}))
    kept = [m.attention.num_heads for m in heads.model.layers]
    assert sum(kept) < 2 * 3 and all(m.gate_proj.out_features < 40 for m in heads.model.layers)  # groups and neurons
    for m in heads.model.layers:  # a key-value group goes with its query heads
        a = m.attention
        assert (a.k_proj.out_features, a.q_proj.out_features) == (a.num_heads * 8, a.num_heads * 3 * 8)
    for model in (layers.model, heads.model):  # the compressed LM saves and reloads to identical outputs
        save_bundle(model, tmp_path / "b", input_shape=(T,))
        again = load_bundle(tmp_path / "b")
        with torch.inference_mode():
            assert torch.equal(again(data.test_x), model(data.test_x))
        metrics = evaluate_model(again, data)
        assert metrics["test_ppl"] == pytest.approx(evaluate_model(model, data)["test_ppl"])
        assert metrics["test_ppl"] == pytest.approx(math.exp(mean_token_ce(model, data.test_x, data.test_y)))


@pytest.mark.parametrize("importance", ["taylor", "l1"])
def test_peer_criteria_prune_a_language_model(llama_bundle, tmp_path, importance):
    """Torch-Pruning's criteria on the LM task: Taylor's gradients come from the next-token loss over every token."""
    from idap import Recipe, compress
    from idap.bundle import load_bundle
    from idap.measure.metrics import count_macs

    data = load_dataset(str(write_book(tmp_path / "book.txt")), tokenizer=llama_bundle / "bundle",
                        calibration_size=16, validation_size=16)
    dense = load_bundle(llama_bundle / "bundle")
    result = compress(dense, data, Recipe.from_dict({
        "device": "cpu", "calibration_size": 16, "validation_size": 16, "max_accuracy_drop": 100,
        "target_macs_reduction": 1.3, "layer": {"enabled": False},
        "filter": {"importance": importance, "steps": 2, "p0": 0.3, "round_to": 1},
        "recovery": {"step_budget": 1, "final_budget": 1, "batch_size": 16, "augment": False}}))
    assert count_macs(dense, (T,)) / count_macs(result.model, (T,)) >= 1.3
    assert sum(m.gate_proj.out_features for m in result.model.layers) < sum(
        m.gate_proj.out_features for m in dense.layers)
