"""Every registered model builds, runs on 8/28/32-pixel images and tells the stages what they may prune."""

import copy
import json

import pytest
import torch
import torch_pruning as tp
from torch import nn

from idap import models
from idap.models import ModelError, create_model, list_models
from idap.models.attention import HeadPrunableAttention
from idap.models.prunable import block_candidates, classifier, prune_exclusions

MODELS = list_models()
NUM_CLASSES = 7
# How many blocks stage 2 may remove: residual blocks minus the stage-opening (downsampling) ones.
EXPECTED_BLOCKS = {
    "cnn_small": 0, "resnet20": 7, "resnet56": 25, "resnet18": 5, "resnet50": 12, "vgg11_bn": 0,
    "vgg16_bn": 0, "mobilenet_v2": 10, "densenet121": 0, "efficientnet_b0": 9, "convnext_tiny": 18,
    "vit_small": 6, "resnet_tiny": 3, "resnet14_half": 4,
}  # fmt: skip
SLOW_GRAPH = {"convnext_tiny", "resnet50"}  # dependency tracing takes seconds on 2 cores


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Batch-2 forwards of small maps are dominated by OpenMP start-up; on a shared 2-core machine one
    # thread runs this module several times faster. Restored for the modules that follow.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str, image_size: int = 28, in_channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES, in_channels=in_channels, image_size=image_size).eval()


@pytest.fixture(scope="module", params=MODELS)
def model28(request) -> tuple[str, nn.Module]:
    return request.param, _build(request.param)


def test_every_model_has_an_expected_block_count():
    assert sorted(EXPECTED_BLOCKS) == MODELS


def _assert_logits(model: nn.Module, image_size: int, in_channels: int) -> None:
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    assert not [m for m in model.modules() if getattr(m, "inplace", False) is True]


def test_forward_gives_one_logit_per_class_at_28(model28):
    _assert_logits(model28[1], 28, 1)


@pytest.mark.parametrize("image_size,in_channels", [(8, 1), (32, 3)])
@pytest.mark.parametrize("name", MODELS)
def test_forward_gives_one_logit_per_class(name, image_size, in_channels):
    _assert_logits(_build(name, image_size, in_channels), image_size, in_channels)


def test_arch_round_trips_through_json(model28):
    name, model = model28
    arch = json.loads(json.dumps(model.idap_arch))
    assert arch == {
        "name": name,
        "num_classes": NUM_CLASSES,
        "in_channels": 1,
        "image_size": 28,
        "kwargs": {},
    }
    rebuilt = create_model(**arch)
    assert rebuilt.idap_arch == arch
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_block_candidates_preserve_shape_in_forward_order(model28):
    name, model = model28
    modules = dict(model.named_modules())
    names = block_candidates(model)
    assert len(names) == EXPECTED_BLOCKS[name]
    seen: list[tuple[str, torch.Size, torch.Size]] = []
    hooks = [
        modules[n].register_forward_hook(lambda m, args, out, n=n: seen.append((n, args[0].shape, out.shape)))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(torch.randn(2, 1, 28, 28))
    finally:
        for hook in hooks:
            hook.remove()
    assert [n for n, _, _ in seen] == names
    assert all(shape_in == shape_out for _, shape_in, shape_out in seen)


def test_removing_every_candidate_keeps_the_model_running(model28):
    name, model = model28
    if not block_candidates(model):
        pytest.skip(f"{name} has no removable blocks")
    model = copy.deepcopy(model)
    for qualified in block_candidates(model):
        parent, _, child = qualified.rpartition(".")
        setattr(model.get_submodule(parent), child, nn.Identity())
    assert block_candidates(model) == []
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, NUM_CLASSES)


def test_classifier_is_the_head_and_is_excluded(model28):
    name, model = model28
    head = classifier(model)
    assert isinstance(head, nn.Linear) and head.out_features == NUM_CLASSES
    excluded = prune_exclusions(model)
    assert any(m is head for m in excluded)
    if name == "vit_small":
        attentions = [m for m in model.modules() if isinstance(m, HeadPrunableAttention)]
        assert len(attentions) == 6
        assert all(any(m is a for m in excluded) for a in attentions)
        assert any(m is model.conv_proj for m in excluded)
        assert all(any(m is layer.mlp[3] for m in excluded) for layer in model.encoder.layers)
    else:
        assert len(excluded) == 1


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_GRAPH else n for n in MODELS]
)
def test_dependency_graph_builds_and_respects_exclusions(name):
    model = _build(name)
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.randn(1, 1, 28, 28), verbose=False
    )
    excluded = {id(m) for m in prune_exclusions(model)}
    groups = list(graph.get_all_groups(ignored_layers=prune_exclusions(model)))
    assert groups, f"{name}: nothing prunable"
    for group in groups:
        for dep, _ in group:
            prunes_outputs = graph.is_out_channel_pruning_fn(dep.handler)
            assert not (prunes_outputs and id(dep.target.module) in excluded), (
                f"{name}: {dep} prunes an exclusion"
            )


def test_unknown_name_lists_every_model():
    with pytest.raises(ModelError) as err:
        create_model("resnet_nonexistent")
    assert all(name in str(err.value) for name in MODELS)


@pytest.mark.parametrize("path", ["no_such_package_idap:factory", "json:no_such_factory", "json:"])
def test_bad_import_path_is_named(path):
    with pytest.raises(ModelError, match=path.split(":")[0]):
        create_model(path)


def test_user_factory_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "idap_user_zoo.py").write_text(
        "from torch import nn\n"
        "def tiny(num_classes, in_channels, image_size, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(width, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("idap_user_zoo:tiny", num_classes=3, in_channels=2, image_size=8, width=5)
    assert model(torch.randn(2, 2, 8, 8)).shape == (2, 3)
    assert model.idap_arch["kwargs"] == {"width": 5}
    assert create_model(**model.idap_arch)[0].out_channels == 5
    assert classifier(model) is model[3]
    with pytest.raises(ModelError, match="depth"):
        create_model("idap_user_zoo:tiny", depth=3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "resnet20", "depth": 8}, "does not take options"),
        ({"name": "resnet18", "weights": "DEFAULT"}, "randomly initialised"),
        ({"name": "cnn_small", "num_classes": 0}, "num_classes"),
        ({"name": "resnet18", "norm_layer": nn.BatchNorm2d}, "JSON"),
        ({"name": "vit_small", "patch_size": 5}, "patch_size"),
        ({"name": "vit_small", "kwargs": {"num_layers": 2}, "num_layers": 3}, "given twice"),
    ],
)
def test_bad_options_raise_model_error(kwargs, message):
    with pytest.raises(ModelError, match=message):
        create_model(**kwargs)


def test_registry_rejects_duplicates_and_lists_new_names(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    with pytest.raises(ModelError, match="already registered"):
        models.register_model("cnn_small")(lambda **_: nn.Identity())
    models.register_model("a_new_model")(
        lambda num_classes, in_channels, image_size: nn.Linear(1, num_classes)
    )
    assert "a_new_model" in list_models() and list_models() == sorted(list_models())


def test_small_images_get_cifar_stems_and_large_keep_imagenet_ones():
    small, large = _build("resnet18", 28), _build("resnet18", 96, 3)
    assert (small.conv1.kernel_size, small.conv1.stride, small.conv1.in_channels) == ((3, 3), (1, 1), 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert (large.conv1.kernel_size, large.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(large.maxpool, nn.MaxPool2d)
    assert [_build("vit_small", s).patch_size for s in (8, 28, 32)] == [4, 4, 4]


# --- HeadPrunableAttention -------------------------------------------------------------------------


def _mha(embed_dim: int = 32, num_heads: int = 4) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True).eval()
    with torch.no_grad():  # non-zero biases so that copying them is tested too
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    return mha


def test_from_multihead_matches_torch():
    mha = _mha()
    attn = HeadPrunableAttention.from_multihead(mha).eval()
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    padding = torch.tensor([[False, False, True], [False, False, False]])
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    cases = [
        ((x, x, x), {}),
        ((x, memory, memory), {"key_padding_mask": padding}),
        ((x, x, x), {"attn_mask": causal}),
    ]
    for args, masks in cases:
        expected, _ = mha(*args, need_weights=False, **masks)
        out, weights = attn(*args, need_weights=False, **masks)
        assert weights is None
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    causal_out, _ = attn(x, x, x, is_causal=True)
    torch.testing.assert_close(
        causal_out, mha(x, x, x, need_weights=False, attn_mask=causal)[0], atol=1e-5, rtol=1e-5
    )


def test_keep_heads_shrinks_and_keeps_the_kept_heads_exact():
    attn = HeadPrunableAttention.from_multihead(_mha())
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        heads = attn.per_head_output(x)
        kept = torch.tensor([1, 3])
        masked = torch.zeros_like(heads)
        masked[:, kept] = heads[:, kept]
        expected = attn.out_proj(masked.transpose(1, 2).reshape(2, 5, 32))
    params = sum(p.numel() for p in attn.parameters())
    attn.keep_heads(torch.tensor([3, 1]))
    assert (attn.num_heads, attn.head_dim) == (2, 8)
    assert (attn.q_proj.out_features, attn.v_proj.out_features, attn.out_proj.in_features) == (16, 16, 16)
    assert sum(p.numel() for p in attn.parameters()) < params
    with torch.no_grad():
        torch.testing.assert_close(attn.per_head_output(x), heads[:, kept])
        torch.testing.assert_close(attn(x, x, x)[0], expected)


@pytest.mark.parametrize("index", [[], [4], [1, 1], [-1]])
def test_keep_heads_refuses_bad_indices(index):
    attn = HeadPrunableAttention(32, 4)
    with pytest.raises(ValueError):
        attn.keep_heads(torch.tensor(index, dtype=torch.long))
    assert attn.num_heads == 4


def test_explicit_head_dim_and_vit_after_head_pruning():
    attn = HeadPrunableAttention(32, 2, head_dim=8)
    assert attn(torch.randn(2, 5, 32), torch.randn(2, 5, 32), torch.randn(2, 5, 32))[0].shape == (2, 5, 32)
    vit = _build("vit_small", 8)
    for layer in vit.encoder.layers:
        assert isinstance(layer.self_attention, HeadPrunableAttention)
        layer.self_attention.keep_heads(torch.tensor([0, 2]))
    with torch.no_grad():
        assert vit(torch.randn(2, 1, 8, 8)).shape == (2, NUM_CLASSES)
