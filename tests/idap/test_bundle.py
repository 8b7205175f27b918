"""Pickle-free bundles: round trips of pruned models, fresh-process loading, every way a bundle can be bad."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from safetensors.torch import load_file, save_file
from torch import nn

from idap.bundle import load_bundle, read_bundle_info, save_bundle
from idap.bundle.format import BundleError
from idap.bundle.onnx_export import check_onnx, export_onnx
from idap.models import create_model, list_models
from idap.models.prunable import block_candidates, classifier, prune_exclusions

REPO = Path(__file__).resolve().parents[2]
SHAPE = (1, 8, 8)
HEAVY = {"convnext_tiny", "densenet121"}  # several seconds per round trip on a shared CPU


def _prune_first_conv(model: nn.Module, n: int = 2) -> str:
    """Physically remove ``n`` output channels of the first prunable full conv, with Torch-Pruning."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *SHAPE))
    excluded = {id(m) for m in prune_exclusions(model)}
    name, conv = next(
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and id(m) not in excluded and m.groups == 1 and m.out_channels > 2 * n
    )
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(n))).prune()
    return name


def _replace_by_identity(model: nn.Module, name: str) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Identity())


def _prune_vit(model: nn.Module) -> None:
    """Keep heads 0 and 2 of every layer, halve every MLP, and drop the second encoder block."""
    for layer in model.encoder.layers:
        layer.self_attention.keep_heads(torch.tensor([0, 2]))
        fc1, fc2 = layer.mlp[0], layer.mlp[3]
        keep = torch.arange(0, fc1.out_features, 2)
        fc1.weight = nn.Parameter(fc1.weight[keep].clone())
        fc1.bias = nn.Parameter(fc1.bias[keep].clone())
        fc1.out_features = len(keep)
        fc2.weight = nn.Parameter(fc2.weight[:, keep].clone())
        fc2.in_features = len(keep)
    _replace_by_identity(model, block_candidates(model)[1])


def _pruned(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1, image_size=SHAPE[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning warns about ConvNeXt's layer_scale parameters
        if name == "vit_small":
            _prune_vit(model)
        else:
            _prune_first_conv(model)
            blocks = block_candidates(model)
            if blocks:
                _replace_by_identity(model, blocks[0])
    # Non-initial BN statistics, so a bundle that dropped buffers would be caught; and a random head,
    # since torchvision's ViT starts with a zero classifier whose outputs would all compare equal.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    nn.init.normal_(classifier(model).weight, std=0.5)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, *SHAPE)).std() > 1e-3, f"{name} gives constant outputs"
    return model


def _outputs_equal(a: nn.Module, b: nn.Module, shape=SHAPE) -> float:
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


@pytest.fixture
def cnn_bundle(tmp_path) -> tuple[nn.Module, Path]:
    model = _pruned("cnn_small")
    return model, save_bundle(model, tmp_path / "cnn", input_shape=SHAPE, recipe={"p0": 0.05})


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]
)
def test_round_trip_of_every_registered_model(tmp_path, name):
    model = _pruned(name)
    path = save_bundle(model, tmp_path / name, input_shape=SHAPE, recipe={"model": name})
    architecture = json.loads((path / "architecture.json").read_text())
    assert architecture["modules"], "pruning changed widths, so some attributes must be recorded"
    loaded = load_bundle(path)
    assert not loaded.training
    assert _outputs_equal(model, loaded) <= 1e-5
    assert sum(p.numel() for p in loaded.parameters()) == architecture["params"]
    fresh = create_model(**model.idap_arch)
    assert architecture["params"] < sum(p.numel() for p in fresh.parameters())


def test_architecture_records_pruned_widths_and_removed_blocks(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", image_size=8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *SHAPE))
    graph.get_pruning_group(model.layer2[1].conv1, tp.prune_conv_out_channels, idxs=[0, 3, 5]).prune()
    _replace_by_identity(model, "layer1.1")
    path = save_bundle(model, tmp_path / "r20", input_shape=SHAPE)
    architecture = read_bundle_info(path)["architecture"]
    assert architecture["removed"] == ["layer1.1"]
    assert architecture["modules"]["layer2.1.conv1"] == {"out_channels": 29}
    assert architecture["modules"]["layer2.1.bn1"] == {"num_features": 29}
    assert architecture["modules"]["layer2.1.conv2"] == {"in_channels": 29}
    assert architecture["input_shape"] == list(SHAPE) and architecture["num_classes"] == 10
    assert architecture["macs"] > 0
    loaded = load_bundle(path)
    assert isinstance(loaded.layer1[1], nn.Identity)
    assert loaded.layer2[1].conv1.weight.shape == (29, 32, 3, 3)
    assert _outputs_equal(model, loaded) <= 1e-5


def test_vit_with_heads_mlp_neurons_and_a_block_removed(tmp_path):
    model = _pruned("vit_small")
    loaded = load_bundle(save_bundle(model, tmp_path / "vit", input_shape=SHAPE))
    attention = loaded.encoder.layers[0].self_attention
    assert (attention.num_heads, attention.head_dim, attention.q_proj.out_features) == (2, 48, 96)
    assert loaded.encoder.layers[0].mlp[0].out_features == 192
    assert isinstance(loaded.encoder.layers[1], nn.Identity)
    assert _outputs_equal(model, loaded) <= 1e-5


class _TwinLinear(nn.Module):
    """Two linears sharing one weight, applied side by side."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        features = in_channels * image_size * image_size
        self.a, self.b = nn.Linear(features, num_classes), nn.Linear(features, num_classes)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.a(x) + self.b(x)


def _twin_linear(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _TwinLinear(num_classes, in_channels, image_size)


def test_tied_weights_survive_pruning_and_a_round_trip(tmp_path):
    model = create_model(f"{__name__}:_twin_linear", num_classes=5, in_channels=1, image_size=4)
    shared = nn.Parameter(model.a.weight[:3].clone())  # prune two outputs of the tied pair
    model.a.weight = model.b.weight = shared
    for linear in (model.a, model.b):
        linear.bias = nn.Parameter(linear.bias[:3].clone())
        linear.out_features = 3
    loaded = load_bundle(save_bundle(model, tmp_path / "twin", input_shape=(1, 4, 4)))
    assert loaded.a.weight is loaded.b.weight and loaded.a.weight.shape == (3, 16)
    assert _outputs_equal(model, loaded, shape=(1, 4, 4)) <= 1e-5


def test_recipe_metadata_and_info_without_weights(tmp_path):
    model = _pruned("cnn_small")
    recipe = {"budget": 1.0, "stages": ["filter", "layer"]}
    metadata = {"accuracy": {"validation": 91.5}, "parent": "runs/dense"}
    path = save_bundle(model, tmp_path / "b", input_shape=SHAPE, recipe=recipe, metadata=metadata)
    (path / "weights.safetensors").unlink()  # info must not need the weights
    info = read_bundle_info(path)
    assert info["recipe"] == recipe and info["metadata"] == metadata
    assert info["architecture"]["arch"] == model.idap_arch
    assert info["onnx"] is None


def test_saving_does_not_disturb_the_model_or_the_random_stream(tmp_path):
    model = _pruned("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    save_bundle(model, tmp_path / "b", input_shape=SHAPE)
    after_save = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_save, torch.rand(3))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_loading_uses_no_pickle(cnn_bundle, monkeypatch):
    model, path = cnn_bundle

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle must not be used to load a bundle")

    for target, attr in [
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
    ]:
        monkeypatch.setattr(target, attr, forbidden)
    assert _outputs_equal(model, load_bundle(path)) <= 1e-5


def test_bundles_load_in_a_fresh_process(tmp_path):
    names = ["cnn_small", "resnet20", "mobilenet_v2", "vit_small"]
    models = {name: _pruned(name) for name in names}
    for name, model in models.items():
        save_bundle(model, tmp_path / name, input_shape=SHAPE)
    probe = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(3))
    save_file({"probe": probe}, str(tmp_path / "probe.safetensors"))
    script = textwrap.dedent(
        f"""
        import pickle, torch
        from safetensors.torch import load_file, save_file
        from idap.bundle import load_bundle
        def forbidden(*a, **k):
            raise AssertionError("pickle used")
        class ForbiddenUnpickler(pickle.Unpickler):  # a class, so modules imported later may still subclass it
            def __init__(self, *a, **k):
                forbidden()
        pickle.load = pickle.loads = torch.load = forbidden
        pickle.Unpickler = ForbiddenUnpickler
        root = {str(tmp_path)!r}
        probe = load_file(root + "/probe.safetensors")["probe"]
        outputs = {{}}
        with torch.no_grad():
            for name in {names!r}:
                outputs[name] = load_bundle(root + "/" + name)(probe).contiguous()
        save_file(outputs, root + "/outputs.safetensors")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = load_file(str(tmp_path / "outputs.safetensors"))
    with torch.no_grad():
        for name, model in models.items():
            assert float((outputs[name] - model(probe)).abs().max()) <= 1e-5, name


# --- bad bundles --------------------------------------------------------------------------------------


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_weights(path: Path, edit) -> None:
    weights = load_file(str(path / "weights.safetensors"))
    edit(weights)
    save_file(weights, str(path / "weights.safetensors"))


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "missing", ["architecture.json", "weights.safetensors", "recipe.json", "parity.safetensors"]
)
def test_missing_file(cnn_bundle, missing):
    _, path = cnn_bundle
    (path / missing).unlink()
    with pytest.raises(BundleError, match=f"{missing}: missing bundle file"):
        load_bundle(path)


def test_truncated_weights(cnn_bundle):
    _, path = cnn_bundle
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BundleError, match="weights.safetensors: corrupt or truncated"):
        load_bundle(path)


def test_garbage_weights(cnn_bundle):
    _, path = cnn_bundle
    (path / "weights.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(BundleError, match="corrupt or truncated"):
        load_bundle(path)


@pytest.mark.parametrize("name", ["architecture.json", "recipe.json"])
def test_corrupt_json(cnn_bundle, name):
    _, path = cnn_bundle
    (path / name).write_text('{"format": "idap-bundle", ')
    with pytest.raises(BundleError, match=f"{name}: invalid JSON"):
        load_bundle(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.update(format="something-else"), "not an idap-bundle"),
        (lambda a: a.update(format_version=99), "unsupported format_version 99"),
        (lambda a: a.update(removed="layer1"), "'removed' must be a list"),
        (
            lambda a: a["modules"].update({"no.such.module": {"out_channels": 3}}),
            "'no.such.module' does not exist",
        ),
    ],
)
def test_invalid_architecture(cnn_bundle, edit, message):
    _, path = cnn_bundle
    _edit_json(path / "architecture.json", edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_unknown_model_name(cnn_bundle):
    _, path = cnn_bundle
    _edit_json(path / "architecture.json", lambda a: a["arch"].update(name="no_such_model"))
    with pytest.raises(BundleError, match="cannot build architecture 'no_such_model'.*registered models"):
        load_bundle(path)
    assert read_bundle_info(path)["architecture"]["arch"]["name"] == "no_such_model"  # info builds nothing


def test_conv_weight_whose_shape_does_not_match_the_channels(cnn_bundle):
    _, path = cnn_bundle
    _edit_weights(path, lambda w: w.update({"features.3.weight": w["features.3.weight"][:-1].clone()}))
    with pytest.raises(BundleError, match=r"'features\.3' \(Conv2d\).*in/out channels"):
        load_bundle(path, verify=False)


def test_linear_weight_whose_shape_does_not_match_the_features(cnn_bundle):
    _, path = cnn_bundle
    _edit_weights(path, lambda w: w.update({"classifier.2.weight": w["classifier.2.weight"][:, :-1].clone()}))
    with pytest.raises(BundleError, match=r"'classifier\.2' \(Linear\).*in/out features"):
        load_bundle(path)


def test_missing_and_unexpected_keys(cnn_bundle):
    _, path = cnn_bundle
    kept = {}
    _edit_weights(path, lambda w: kept.update(running_var=w.pop("features.4.running_var")))
    with pytest.raises(BundleError, match=r"(?s)do not fit the architecture.*features\.4\.running_var"):
        load_bundle(path)
    _edit_weights(
        path,
        lambda w: w.update({"features.4.running_var": kept["running_var"], "extra.weight": torch.ones(2)}),
    )
    with pytest.raises(BundleError, match=r"(?s)Unexpected key.*extra\.weight"):
        load_bundle(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights(cnn_bundle, value):
    _, path = cnn_bundle

    def poison(weights):
        weights["features.0.weight"][0, 0, 0, 0] = value

    _edit_weights(path, poison)
    with pytest.raises(BundleError, match=r"NaN or Inf in weights \['features\.0\.weight'\]"):
        load_bundle(path)


def test_parity_mismatch_from_altered_weights(cnn_bundle):
    model, path = cnn_bundle

    def nudge(weights):
        weights["classifier.2.bias"] += 1e-3

    _edit_weights(path, nudge)
    with pytest.raises(BundleError, match="parity mismatch"):
        load_bundle(path)
    assert _outputs_equal(model, load_bundle(path, verify=False)) == pytest.approx(1e-3, rel=1e-2)


def test_parity_file_with_wrong_contents(cnn_bundle):
    _, path = cnn_bundle
    save_file({"input": torch.zeros(2, *SHAPE)}, str(path / "parity.safetensors"))
    with pytest.raises(BundleError, match="expected tensors 'input' and 'output'"):
        load_bundle(path)


# --- saving -------------------------------------------------------------------------------------------


class _Boom(Exception):
    pass


def test_a_failing_save_leaves_the_old_bundle_intact(cnn_bundle):
    model, path = cnn_bundle
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    broken = _pruned("cnn_small")

    def explode(x):
        raise _Boom("forward failed")

    broken.forward = explode
    with pytest.raises(BundleError, match="fails on the parity probe.*forward failed"):
        save_bundle(broken, path, input_shape=SHAPE)
    # A failure while writing (metadata that is not JSON) happens inside the staging directory.
    with pytest.raises(BundleError, match="metadata.json must be JSON-serialisable"):
        save_bundle(_pruned("resnet20"), path, input_shape=SHAPE, metadata={"bad": object()})
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["cnn"]  # no staging leftovers
    assert _outputs_equal(model, load_bundle(path)) <= 1e-5


def test_saving_over_a_bundle_replaces_it(cnn_bundle):
    _, path = cnn_bundle
    other = _pruned("resnet20")
    save_bundle(other, path, input_shape=SHAPE)
    assert read_bundle_info(path)["architecture"]["arch"]["name"] == "resnet20"
    assert read_bundle_info(path)["recipe"] == {}
    assert _outputs_equal(other, load_bundle(path)) <= 1e-5
    assert sorted(p.name for p in path.parent.iterdir()) == ["cnn"]


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle; refusing to replace"):
        save_bundle(_pruned("cnn_small"), tmp_path / "precious", input_shape=SHAPE)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_a_model_with_nan_weights_is_not_written(tmp_path):
    model = _pruned("cnn_small")
    with torch.no_grad():
        model.classifier[0].bias[0] = float("nan")
    with pytest.raises(BundleError, match="NaN or Inf"):
        save_bundle(model, tmp_path / "b", input_shape=SHAPE)
    assert list(tmp_path.iterdir()) == []


def test_a_model_without_idap_arch_cannot_be_bundled(tmp_path):
    with pytest.raises(BundleError, match="no idap_arch"):
        save_bundle(nn.Linear(2, 2), tmp_path / "b", input_shape=(2,))


def test_a_swapped_module_type_is_refused_not_skipped(tmp_path):
    model = _pruned("cnn_small")
    model.features[2] = nn.GELU()  # not a reshaping and not nn.Identity: the bundle cannot describe it
    with pytest.raises(BundleError, match=r"'features\.2' is GELU but the architecture builds ReLU"):
        save_bundle(model, tmp_path / "b", input_shape=SHAPE)
    assert not (tmp_path / "b").exists()


# --- ONNX ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn_small", "vit_small"])
def test_onnx_export_and_check(tmp_path, name):
    model = _pruned(name)
    onnx_path = export_onnx(model, tmp_path / f"{name}.onnx", input_shape=SHAPE)
    assert onnx_path.stat().st_size > 0
    assert check_onnx(model, onnx_path, input_shape=SHAPE) <= 1e-4
    with torch.no_grad():
        classifier(model).bias.add_(0.5)  # the PyTorch model moves on; the ONNX file does not
    with pytest.raises(BundleError, match="ONNX output differs from PyTorch"):
        check_onnx(model, onnx_path, input_shape=SHAPE)


def test_bundle_with_onnx(tmp_path):
    model = _pruned("resnet20")
    path = save_bundle(model, tmp_path / "b", input_shape=SHAPE, onnx=True)
    info = read_bundle_info(path)
    assert info["onnx"] == str(path / "model.onnx")
    assert check_onnx(load_bundle(path), info["onnx"], input_shape=SHAPE) <= 1e-4
