"""BERT and Llama as idap text models: parity with Hugging Face, head / key-value group / FFN neuron / layer
pruning -> forward -> reload parity, ONNX, and the stages on a tiny encoder. Tiny random configs, no weights."""

import copy

import pytest
import torch

from idap.dense.hf_export import export_text_onnx, to_hf
from idap.dense.text_models import bert_from_hf, llama_from_hf, load_text_model, save_text_model
from idap.measure.metrics import count_macs
from idap.models.lm import BertClassifier, LlamaLM, TextModelError, perplexity
from idap.models.lm_weights import layer_shapes
from idap.models.prunable import block_candidates, prune_exclusions
from idap.prune.surgery import (
    attention_modules,
    channel_groups,
    dependency_graph,
    prune_channels,
    prune_heads,
    remove_block,
)

transformers = pytest.importorskip("transformers")

L = 10


@pytest.fixture(scope="module")
def hf_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=32)
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


@pytest.fixture(scope="module")
def hf_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=60, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                                   num_key_value_heads=2, intermediate_size=40, tie_word_embeddings=True,
                                   max_position_embeddings=64, rope_theta=10000.0)
    return transformers.LlamaForCausalLM(cfg).eval()


def ids(vocab=50, batch=3, pad_last=True, seed=0):
    x = torch.randint(1, vocab, (batch, L), generator=torch.Generator().manual_seed(seed))
    if pad_last:
        x[-1, 6:] = 0
    return x


def bert(hf_bert):
    return bert_from_hf(hf_bert, num_classes=3, seed=0)


def test_bert_matches_hugging_face_with_padding(hf_bert):
    model, x = bert(hf_bert), ids()
    with torch.no_grad():
        ref = hf_bert(input_ids=x, attention_mask=(x != 0).long()).last_hidden_state
        ours, keep = model.encode(x)
    assert torch.allclose(ours[keep], ref[keep], atol=1e-5)
    assert model(x).shape == (3, 3) and model(x.float()).allclose(model(x))  # float ids (the stages' probes) work


def test_llama_matches_hugging_face(hf_llama):
    model, x = llama_from_hf(hf_llama), ids(60, pad_last=False)
    with torch.no_grad():
        ref = hf_llama(input_ids=x).logits
        ours = model(x)
    assert ours.shape == (3, L, 60) and ours.std() > 0
    assert torch.allclose(ours, ref, atol=1e-5)
    assert model.lm_head.weight is model.embed_tokens.weight  # tied as in the config


def test_stages_see_heads_ffn_groups_and_layers_but_never_the_residual_stream(hf_bert):
    model = bert(hf_bert)
    assert sorted(attention_modules(model)) == [f"layers.{i}.attention" for i in range(3)]
    assert block_candidates(model) == ["layers.0", "layers.1", "layers.2"]
    groups = channel_groups(model, dependency_graph(model, (L,)))
    assert sorted(g.name for g in groups) == [f"layers.{i}.ffn_in" for i in range(3)]
    assert all(g.channels == 48 for g in groups)
    excluded = prune_exclusions(model)
    assert model.classifier in excluded and all(layer.ffn_out in excluded for layer in model.layers)


def test_head_pruning_equals_silencing_those_heads(hf_bert):
    model, x = bert(hf_bert), ids()
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.layers[1].attention.out_proj.weight[:, 8:16] = 0  # head 1 of 4, head_dim 8
        silenced.layers[1].attention.out_proj.weight[:, 24:32] = 0  # head 3
    prune_heads(model, {"layers.1.attention": [1, 3]})
    a = model.layers[1].attention
    assert (a.num_heads, a.q_proj.out_features, a.k_proj.out_features, a.v_proj.out_features, a.out_proj.in_features) \
        == (2, 16, 16, 16, 16)
    assert torch.allclose(model.eval()(x), silenced.eval()(x), atol=1e-5)


def test_ffn_neuron_pruning_equals_silencing_those_neurons(hf_bert):
    model, x = bert(hf_bert), ids()
    drop = [0, 5, 17, 40]
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.layers[2].ffn_out.weight[:, drop] = 0
    prune_channels(model, (L,), {"layers.2.ffn_in": drop})
    layer = model.layers[2]
    assert (layer.ffn_in.out_features, layer.ffn_out.in_features, layer.ffn_out.out_features) == (44, 44, 32)
    assert model.word_embeddings.embedding_dim == 32  # the residual stream is untouched
    assert torch.allclose(model.eval()(x), silenced.eval()(x), atol=1e-5)


def test_grouped_query_attention_prunes_a_kv_group_with_its_query_heads(hf_llama):
    model, x = llama_from_hf(hf_llama), ids(60, pad_last=False)
    attn = model.layers[0].attention
    assert (attn.num_heads, attn.queries_per_group, attn.head_dim) == (2, 3, 8)
    silenced = copy.deepcopy(model)
    with torch.no_grad():  # group 0 = query heads 0..2 = out_proj columns 0..23
        silenced.layers[0].attention.out_proj.weight[:, :24] = 0
    prune_heads(model, {"layers.0.attention": [0]})
    assert (attn.num_heads, attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features,
            attn.out_proj.in_features) == (1, 24, 8, 8, 24)
    assert torch.allclose(model(x), silenced(x), atol=1e-5)
    with pytest.raises(Exception, match="no head"):
        prune_heads(model, {"layers.0.attention": [0]})
    # gate, up and down are one dependency group: neurons leave all three
    groups = {g.name: g.channels for g in channel_groups(model, dependency_graph(model, (L,)))}
    assert set(groups) <= {f"layers.{i}.{p}" for i in range(3) for p in ("gate_proj", "up_proj")} and groups
    name = next(iter(groups))
    prune_channels(model, (L,), {name: [1, 2, 3]})
    layer = model.get_submodule(name.rsplit(".", 1)[0])
    assert (layer.gate_proj.out_features, layer.up_proj.out_features, layer.down_proj.in_features) == (37, 37, 37)
    assert model(x).shape == (3, L, 60)


def _prune_everything(model):
    prune_heads(model, {"layers.0.attention": [0] if isinstance(model, LlamaLM) else [0, 2]})
    first = "layers.1.ffn_in" if isinstance(model, BertClassifier) else next(
        g.name for g in channel_groups(model, dependency_graph(model, (L,))) if g.name.startswith("layers.1."))
    prune_channels(model, (L,), {first: [3, 4, 9]})
    remove_block(model, "layers.2")
    return model


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_pruned_model_saves_as_hugging_face_and_reloads_to_identical_outputs(kind, hf_bert, hf_llama, tmp_path):
    model = _prune_everything(bert(hf_bert) if kind == "bert" else llama_from_hf(hf_llama)).eval()
    x = ids(50 if kind == "bert" else 60, pad_last=kind == "bert")
    shapes = layer_shapes(model)
    assert shapes[2] is None and shapes[0]["heads"] == (2 if kind == "bert" else 1)
    directory = save_text_model(model, tmp_path / "m")
    config = __import__("json").loads((directory / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    again = load_text_model(directory)
    assert layer_shapes(again) == shapes
    assert torch.equal(again(x), model(x))
    hf = to_hf(model)  # a transformers model with the pruned shapes, same network
    with torch.no_grad():
        if kind == "bert":
            ours, keep = model.encode(x)
            theirs = hf(input_ids=x, attention_mask=(x != 0).long()).last_hidden_state
            assert torch.allclose(ours[keep], theirs[keep], atol=1e-5)
        else:
            assert torch.allclose(hf(input_ids=x).logits, model(x), atol=1e-5)


def test_reload_refuses_tampered_weights_and_unknown_architectures(hf_bert, tmp_path):
    from safetensors.torch import load_file, save_file

    directory = save_text_model(bert(hf_bert), tmp_path / "m")
    state = load_file(str(directory / "model.safetensors"))
    state["classifier.bias"] = state["classifier.bias"] + 1.0
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(TextModelError, match="differs from the saved one on the parity probe"):
        load_text_model(directory)
    meta = directory / "idap_text.json"
    meta.write_text(meta.read_text().replace('"bert_classifier"', '"os.system"'))
    with pytest.raises(TextModelError, match="unknown architecture 'os.system'"):
        load_text_model(directory)


def test_token_ids_beyond_the_positions_are_refused(hf_bert):
    with pytest.raises(TextModelError, match="exceed the model's 32 positions"):
        bert(hf_bert)(torch.ones(1, 40, dtype=torch.long))


def test_macs_count_attention_matmuls(hf_bert):
    model = bert(hf_bert)
    e, f, layers, c = 32, 48, 3, 3
    per_layer = 4 * L * e * e + 2 * L * e * f + 2 * L * L * e  # projections, FFN, Q·Kᵀ and P·V
    assert count_macs(model, (L,)) == layers * per_layer + e * c
    remove_block(model, "layers.0")
    assert count_macs(model, (L,)) == 2 * per_layer + e * c


def test_onnx_export_matches(hf_bert, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _prune_everything(bert(hf_bert)).eval()
    path = export_text_onnx(model, tmp_path / "m.onnx", length=L)
    x = ids()
    out = ort.InferenceSession(str(path)).run(None, {"input_ids": x.numpy()})[0]
    assert abs(out - model(x).detach().numpy()).max() < 1e-4


def test_perplexity_of_a_model_that_predicts_its_text_is_low(hf_llama):
    model = llama_from_hf(hf_llama)
    x = ids(60, pad_last=False)
    ppl = perplexity(model, x)
    assert 30 < ppl < 120  # random weights: near the vocabulary size
    with pytest.raises(TextModelError, match="0 windows"):
        perplexity(model, x[:0])


@pytest.mark.slow
@pytest.mark.outcome
def test_compress_prunes_heads_neurons_and_layers_of_a_tiny_encoder(tmp_path, margin):
    from idap import Recipe, compress
    from idap.data.text import load_text_folder
    from idap.prune.config import FilterStageConfig, LayerStageConfig, RecoveryConfig
    from idap.prune.recovery import recover
    from tests.idap.test_text import WORDS, word_tokenizer, write_corpus

    data = load_text_folder(write_corpus(tmp_path / "c", per_class=40), word_tokenizer(), max_length=16,
                            calibration_size=16, validation_size=24, vocab_size=len(WORDS), pad_id=0)
    from tests.conftest import base_seed

    torch.manual_seed(base_seed())
    cfg = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    model = bert_from_hf(transformers.BertModel(cfg, add_pooling_layer=False), 3)
    recover(model, None, data.train_x, data.train_y, steps=60, config=RecoveryConfig(batch_size=16, lr=3e-3, augment=False),
            seed=base_seed(), device=torch.device("cpu"))
    recipe = Recipe(max_accuracy_drop=10.0, target_macs_reduction=1.6, calibration_size=16, eval_batch_size=32, device="cpu",
                    filter=FilterStageConfig(steps=4, p0=0.2, min_channels=2),
                    layer=LayerStageConfig(max_removals=1, epsilon=10.0, target_share=0.5),
                    recovery=RecoveryConfig(step_budget=5, final_budget=5, batch_size=16, lr=1e-3, final_lr=1e-3,
                                            augment=False, lambda_kd=1.0, teacher="dense"))
    result = compress(model, data, recipe)
    actions = [(s.stage, s.action) for s in result.steps]
    assert ("filter", "prune") in actions and actions[-1] == ("finetune", "finetune")
    drops = [result.steps[0].val_acc - s.val_acc for s in result.steps if s.stage in ("filter", "layer")]
    margin("largest drop of a step (pp), budget 10", max(drops), 10.0, above=False)
    assert margin("MACs reduction, at least", result.steps[0].macs / result.steps[-1].macs, 1.6) >= 1.6
    pruned = result.model
    shapes = layer_shapes(pruned)
    assert any(s is None or s["heads"] < 4 for s in shapes) and any(s is None or s["ffn"] < 64 for s in shapes)
    again = load_text_model(save_text_model(pruned, tmp_path / "out"))
    assert torch.equal(again(data.test_x), pruned.eval()(data.test_x))
