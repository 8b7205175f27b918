"""A bundle never makes idap import or call code it names: only registered architectures load by name;
a user factory loads only from a module the user trusted (flag, argument or environment), never the file."""

import json
import sys

import pytest
import torch

from idap import models
from idap.bundle import BundleError, load_bundle, save_bundle
from idap.cli import main as idap_main
from idap.models import TRUST_ENV, ModelError, create_model, trust_modules

SHAPE = (1, 8, 8)
ZOO = (
    "from torch import nn\n"
    "def tiny(num_classes, in_channels, image_size, width=4):\n"
    "    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
    "                         nn.Linear(width, num_classes))\n"
)


@pytest.fixture(autouse=True)
def no_trust(monkeypatch):
    monkeypatch.setattr(models, "_TRUSTED", set())
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture
def user_bundle(tmp_path, monkeypatch):
    (tmp_path / "idap_trust_zoo.py").write_text(ZOO)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("idap_trust_zoo:tiny", num_classes=10, in_channels=1, image_size=8)
    return save_bundle(model, tmp_path / "user", input_shape=SHAPE), model


def _forge(tmp_path, name: str, kwargs: dict):
    """A valid bundle whose architecture.json was edited to name ``name`` with ``kwargs``."""
    path = save_bundle(create_model("cnn_small", 10, 1, 8), tmp_path / "forged", input_shape=SHAPE)
    arch_file = path / "architecture.json"
    doc = json.loads(arch_file.read_text())
    doc["arch"] = {"name": name, "num_classes": 10, "in_channels": 1, "image_size": 8, "kwargs": kwargs}
    arch_file.write_text(json.dumps(doc))
    return path


def test_logging_basicconfig_payload_creates_no_file(tmp_path):
    planted = tmp_path / "planted.log"
    path = _forge(tmp_path, "logging:basicConfig", {"filename": str(planted)})
    with pytest.raises(BundleError, match="not trusted.*--trust-module logging"):
        load_bundle(path)
    assert not planted.exists()


def test_subprocess_payload_is_refused_before_any_call(tmp_path):
    marker = tmp_path / "ran"
    path = _forge(tmp_path, "subprocess:run", {"args": ["touch", str(marker)]})
    with pytest.raises(BundleError, match="subprocess"):
        load_bundle(path)
    assert not marker.exists()


def test_an_untrusted_module_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "idap_canary_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(**kw): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _forge(tmp_path, "idap_canary_mod:f", {})
    with pytest.raises(BundleError, match="idap_canary_mod"):
        load_bundle(path)
    assert not marker.exists() and "idap_canary_mod" not in sys.modules


def test_cli_evaluate_refuses_a_payload_with_exit_2(tmp_path, capsys):
    planted = tmp_path / "planted.log"
    path = _forge(tmp_path, "logging:basicConfig", {"filename": str(planted)})
    assert idap_main(["evaluate", "--model-dir", str(path), "--dataset", "digits", "--no-latency"]) == 2
    assert "--trust-module logging" in capsys.readouterr().err
    assert not planted.exists()


def test_user_factory_loads_only_when_trusted(user_bundle, monkeypatch):
    path, model = user_bundle
    with pytest.raises(BundleError, match="idap_trust_zoo"):
        load_bundle(path)
    x = torch.randn(2, *SHAPE)
    same = load_bundle(path, trust_modules=["idap_trust_zoo"])
    assert torch.allclose(same(x), model.eval()(x), atol=1e-6)
    monkeypatch.setenv(TRUST_ENV, "other_pkg, idap_trust_zoo")
    assert load_bundle(path) is not None


def test_trusting_a_package_covers_its_submodules_only():
    models.check_trusted("pkg.models:f", ["pkg"])
    models.check_trusted("pkg:f", ["pkg"])
    with pytest.raises(ModelError, match="pkgx"):
        models.check_trusted("pkgx.models:f", ["pkg"])
    models.check_trusted("resnet20")  # registered names need no trust


def test_cli_trust_flag_allows_the_user_factory(user_bundle, capsys):
    path, _ = user_bundle
    args = ["evaluate", "--model-dir", str(path), "--dataset", "digits", "--no-latency", "--test-limit", "50"]
    assert idap_main(args) == 2
    assert idap_main([*args, "--trust-module", "idap_trust_zoo"]) == 0
    assert "test_acc" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["", "a b", "os;rm", "1abc"])
def test_trust_modules_rejects_non_module_names(bad):
    with pytest.raises(ModelError, match="dotted module name"):
        trust_modules(bad)
