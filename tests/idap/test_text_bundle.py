"""Text models as bundles: `idap import` of a Hugging Face directory, pruned shapes recorded and reloaded without
user code, the tokenizer kept beside the weights, text datasets through `load_dataset`, `idap compress` on text.
Tiny random BERT / Llama (transformers config classes, no weights), a word-level tokenizer, seconds each."""

import json

import pytest
import torch

from idap.bundle import load_bundle, save_bundle
from idap.bundle.format import BundleError, read_input_spec
from idap.cli import main
from idap.data import DataError, load_dataset, load_splits, save_splits
from idap.dense.text_models import import_hf_model
from idap.models import create_model, list_models
from idap.models.lm import TextModelError
from idap.prune.surgery import channel_groups, dependency_graph, prune_channels, prune_heads, remove_block

from .text_fixtures import WORDS, hf_bert_dir, hf_llama_dir, text_spec, tiny_recipe, write_corpus

pytest.importorskip("transformers")
L = 16
VOCAB = len(WORDS)


@pytest.fixture(scope="module")
def bert_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    report = import_hf_model(hf_bert_dir(root / "hf"), root / "bundle", num_classes=3, max_length=L)
    return root, report


def ids(vocab=VOCAB, batch=3, seed=0):
    return torch.randint(1, vocab, (batch, L), generator=torch.Generator().manual_seed(seed))


def test_import_of_a_bert_directory_is_a_checked_bundle_with_its_tokenizer(bert_bundle):
    root, report = bert_bundle
    assert report.architecture == "bert_classifier" and report.head_replaced and report.input_shape == [L]
    assert report.parity_max_abs_diff == 0.0
    # the imported encoder computes what transformers' BertModel computes on the same directory
    hf_note = next(n for n in report.notes if "transformers" in n)
    assert float(hf_note.split("|")[-1].split()[0]) < 1e-5
    model = load_bundle(root / "bundle")
    assert model(ids()).shape == (3, 3)
    assert (root / "bundle/tokenizer/tokenizer.json").read_text() == (root / "hf/tokenizer.json").read_text()
    assert read_input_spec(root / "bundle")["tokens"] == {"vocab_size": len(WORDS), "pad_id": 0}
    assert "bert_classifier" in list_models("text") and "bert_classifier" not in list_models()


def test_pruned_heads_neurons_and_layers_reload_without_user_code(tmp_path):
    torch.manual_seed(0)
    model = create_model("bert_classifier", 3, 1, L, vocab_size=len(WORDS), hidden=32, layers=3, heads=4, ffn=48,
                         max_positions=32).eval()
    prune_heads(model, {"layers.0.attention": [1, 2], "layers.2.attention": [0]})
    group = next(g for g in channel_groups(model, dependency_graph(model, (L,))) if g.name == "layers.2.ffn_in")
    prune_channels(model, (L,), {group.name: list(range(10))})
    remove_block(model, "layers.1")
    save_bundle(model, tmp_path / "b", input_shape=(L,), onnx=True)
    arch = json.loads((tmp_path / "b/architecture.json").read_text())
    assert arch["modules"]["layers.0.attention"] == {"num_heads": 2}
    assert arch["modules"]["layers.2.attention"] == {"num_heads": 3}
    assert arch["modules"]["layers.2.ffn_in"] == {"out_features": 38} and arch["removed"] == ["layers.1"]
    loaded = load_bundle(tmp_path / "b")
    with torch.inference_mode():
        assert torch.equal(loaded(ids()), model(ids()))
    assert loaded.layers[0].attention.num_heads == 2 and isinstance(loaded.layers[1], torch.nn.Identity)


def test_llama_directory_imports_and_keeps_grouped_query_attention_consistent(tmp_path):
    report = import_hf_model(hf_llama_dir(tmp_path / "hf"), tmp_path / "b", max_length=L)
    assert report.architecture == "llama_lm" and not report.head_replaced
    assert "max |idap - transformers| 0 (logits)" in report.notes or any("e-" in n for n in report.notes)
    model = load_bundle(tmp_path / "b")
    prune_heads(model, {"layers.1.attention": [0]})  # one key-value group with its 3 query heads
    attn = model.layers[1].attention
    assert (attn.num_heads, attn.q_proj.out_features, attn.k_proj.out_features, attn.out_proj.in_features) == (1, 24, 8, 24)
    save_bundle(model, tmp_path / "pruned", input_shape=(L,))
    again = load_bundle(tmp_path / "pruned")
    with torch.inference_mode():
        assert torch.equal(again(ids()), model(ids()))
    assert again.lm_head.weight is again.embed_tokens.weight  # tied embeddings stay tied


def test_import_refuses_a_tokenizer_of_another_model(tmp_path):
    hf = hf_bert_dir(tmp_path / "hf", vocab=40)  # the tokenizer has 64 tokens
    with pytest.raises(DataError, match="64 tokens but .* embeds only 40"):
        import_hf_model(hf, tmp_path / "b", num_classes=3, max_length=L)
    with pytest.raises(TextModelError, match="no tokenizer.json"):
        import_hf_model(hf_bert_dir(tmp_path / "hf2", tokenizer=False), tmp_path / "b2", num_classes=3, max_length=L)
    with pytest.raises(TextModelError, match="needs --num-classes"):
        import_hf_model(hf_bert_dir(tmp_path / "hf3"), tmp_path / "b3", max_length=L)


def test_text_folder_and_spec_load_where_images_do(bert_bundle, tmp_path):
    root, _ = bert_bundle
    corpus = write_corpus(tmp_path / "corpus")
    data = load_dataset(str(corpus), tokenizer=root / "bundle", calibration_size=8, validation_size=12)
    assert data.input_shape == (L,) and data.train_x.dtype == torch.long  # the length the bundle takes
    save_splits(data, tmp_path / "splits")
    back = load_splits(tmp_path / "splits")
    assert type(back).__name__ == "TextSplits" and back.classes == data.classes
    assert torch.equal(back.val_x, data.val_x) and back.input_shape == (L,)
    spec = text_spec(tmp_path / "spec.json", corpus, root / "hf", max_length=12)
    assert load_dataset(str(spec), train_limit=10).train_x.shape == (10, 12)
    with pytest.raises(DataError, match="needs the model's tokenizer"):
        load_dataset(str(corpus))
    (tmp_path / "bad.json").write_text(json.dumps({"kind": "text", "path": str(corpus), "tokeniser": "x"}))
    with pytest.raises(DataError, match="unknown text dataset fields \\['tokeniser'\\]"):
        load_dataset(str(tmp_path / "bad.json"))


def test_bundle_refuses_a_bad_token_input_record(tmp_path):
    model = create_model("bert_classifier", 3, 1, L, vocab_size=len(WORDS), hidden=32, layers=1, heads=4, ffn=48)
    with pytest.raises(BundleError, match="input_spec tokens must be"):
        save_bundle(model, tmp_path / "b", input_shape=(L,), input_spec={"tokens": {"vocab_size": "many"}})


def test_idap_import_and_compress_on_a_text_bundle(bert_bundle, tmp_path, capsys):
    root, _ = bert_bundle
    assert main(["import", "--model", str(root / "hf"), "--num-classes", "3", "--max-length", str(L),
                 "--out", str(tmp_path / "dense")]) == 0
    corpus = write_corpus(tmp_path / "corpus")  # a plain text folder: tokenized with the bundle's own tokenizer
    tiny_recipe(tmp_path / "r.yaml")
    assert main(["compress", "--model-dir", str(tmp_path / "dense"), "--dataset", str(corpus), "--recipe",
                 str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--quiet", "--no-latency"]) == 0
    model = load_bundle(tmp_path / "out/model")  # parity-checked
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["ratios"]["macs_reduction"] >= 1.3
    assert sum(layer.attention.num_heads for layer in model.layers if hasattr(layer, "attention")) < 12 or \
        any(layer.ffn_in.out_features < 48 for layer in model.layers if hasattr(layer, "ffn_in"))
    assert set(model.idap_tokenizer) == {"tokenizer.json"} and (tmp_path / "out/model.onnx").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--model-dir", str(tmp_path / "out/model"), "--dataset", str(corpus), "--no-latency"]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == report["compressed"]["test_acc"]  # the same splits


def test_taylor_scores_heads_by_gradient_times_weight():
    from idap.prune.importance import ScoringContext, create_importance

    torch.manual_seed(0)
    model = create_model("bert_classifier", 3, 1, L, vocab_size=VOCAB, hidden=32, layers=2, heads=4, ffn=48).eval()
    attn = model.layers[0].attention
    with torch.no_grad():
        attn.out_proj.weight[:, 8:16] = 0  # head 1 writes nothing: its Q/K/V get no gradient either
    taylor = create_importance("taylor")
    taylor.prepare(model, ScoringContext(ids(batch=8), torch.randint(0, 3, (8,)), batch_size=4))
    scores = taylor.head_scores(model)["layers.0.attention"]
    assert scores[1] == 0 and (scores[[0, 2, 3]] > 0).all()
    magnitude = create_importance("l1").head_scores(model)["layers.0.attention"]
    assert magnitude[1] > 0  # weight magnitude still ranks the silent head like any other
    q = attn.q_proj
    by_hand = (q.weight * q.weight.grad)[:8].abs().sum() + (q.bias * q.bias.grad)[:8].abs().sum()
    for p in (attn.k_proj, attn.v_proj):
        by_hand += (p.weight * p.weight.grad)[:8].abs().sum() + (p.bias * p.bias.grad)[:8].abs().sum()
    by_hand += (attn.out_proj.weight * attn.out_proj.weight.grad)[:, :8].abs().sum()
    assert torch.isclose(scores[0], by_hand.float(), rtol=1e-5)


def test_a_pruned_idap_text_directory_imports_with_its_shapes_and_head(tmp_path):
    from idap.dense.text_models import save_text_model
    from idap.models.lm import BertClassifier, BertShape

    torch.manual_seed(0)
    model = BertClassifier(BertShape(vocab_size=VOCAB, hidden=32, layers=3, heads=4, ffn=48, max_positions=32), 3).eval()
    prune_heads(model, {"layers.1.attention": [0, 3]})
    remove_block(model, "layers.2")
    (tmp_path / "tok").mkdir()
    from .text_fixtures import word_tokenizer

    word_tokenizer().save(str(tmp_path / "tok" / "tokenizer.json"))
    save_text_model(model, tmp_path / "text_dir", tokenizer_dir=tmp_path / "tok")
    report = import_hf_model(tmp_path / "text_dir", tmp_path / "b", max_length=L)
    assert not report.head_replaced and report.num_classes == 3  # its own trained head, kept
    loaded = load_bundle(tmp_path / "b")
    with torch.inference_mode():
        assert torch.equal(loaded(ids()), model(ids()))
    assert json.loads((tmp_path / "b/architecture.json").read_text())["removed"] == ["layers.2"]


def test_a_pruned_text_bundle_exports_as_a_hugging_face_directory_whole_or_not_at_all(tmp_path, bert_bundle, capsys):
    from idap.dense.hf_export import to_hf
    from idap.dense.text_models import load_text_model

    root, _ = bert_bundle
    model = load_bundle(root / "bundle")
    prune_heads(model, {"layers.0.attention": [1, 2]})
    remove_block(model, "layers.1")
    save_bundle(model, tmp_path / "pruned", input_shape=(L,))
    assert main(["text", "export-hf", "--model-dir", str(tmp_path / "pruned"), "--out", str(tmp_path / "hf")]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["layers_kept"] == 2 and said["removed_layers"] == [1] and said["transformers_max_abs_diff"] < 1e-5
    assert json.loads((tmp_path / "hf/config.json").read_text())["num_hidden_layers"] == 2
    assert (tmp_path / "hf/tokenizer.json").read_text() == (root / "hf/tokenizer.json").read_text()
    again = load_text_model(tmp_path / "hf")
    x = ids()
    with torch.inference_mode():
        assert torch.equal(again(x), model(x))
        ours, keep = model.encode(x)
        theirs = to_hf(again)(input_ids=x, attention_mask=keep.long()).last_hidden_state
    assert torch.allclose(ours[keep], theirs[keep], atol=1e-5)
    (tmp_path / "hf/stale.txt").write_text("from before")  # an earlier export is replaced whole
    assert main(["text", "export-hf", "--model-dir", str(tmp_path / "pruned"), "--out", str(tmp_path / "hf")]) == 0
    assert not (tmp_path / "hf/stale.txt").exists() and (tmp_path / "hf/idap_text.json").is_file()
    # a directory that is not an earlier export is refused and left as it was; an image bundle is not a text model
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    assert main(["text", "export-hf", "--model-dir", str(tmp_path / "pruned"), "--out", str(tmp_path / "mine")]) == 2
    assert "not an earlier Hugging Face export" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    save_bundle(create_model("resnet_tiny", 10, 1, 28), tmp_path / "image", input_shape=(1, 28, 28))
    assert main(["text", "export-hf", "--model-dir", str(tmp_path / "image"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a text model" in capsys.readouterr().err and not (tmp_path / "x").exists()
