"""``idap import`` from remote sources, as the console script runs it: a version registered by this project in
MLflow (sqlite store in tmp_path; models:/NAME/VERSION and models:/NAME@ALIAS) and a bundle / weights on S3
(moto server on 127.0.0.1). Each import reproduces the source model's outputs; the registered version is read
as its bundle artifact, never through MLflow's pyfunc."""

import json

import boto3
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from components.services.storage import upload
from idap.bundle import load_bundle, read_bundle_info
from idap.dense.importing import import_model
from idap.prune.config import Recipe
from pipelines.cli import main
from tests.integration.services import create_bucket, use_s3

BUCKET = "idap-import"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small torchvision classifier with non-trivial weights, and its bundle from a safetensors file."""
    root = tmp_path_factory.mktemp("source")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=5).eval()
    save_file(model.state_dict(), str(root / "w.safetensors"))
    import_model("torchvision.models.mobilenet_v3_small", root / "w.safetensors", root / "bundle", image_size=32)
    return model, root


def _same_outputs(bundle, model):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return torch.equal(load_bundle(bundle)(x), model(x))


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("IDAP_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("IDAP_EXPERIMENT", "import-tests")
    return tmp_path


def test_registered_version_imports_by_version_and_alias(source, registry, monkeypatch, capsys):
    from components.services.registry import register_and_promote

    model, root = source
    figures = {"val_acc": 50.0, "test_acc": 50.0, "params": 1, "macs": 1, "latency_ms_b1": None}
    report = {"dense": figures, "compressed": figures,
              "ratios": {"macs_reduction": 1.0, "params_reduction": 1.0, "speedup_b1": None, "val_acc_drop_pp": 0.0,
                         "test_acc_drop_pp": 0.0}}
    reg = register_and_promote(parent_run_id=None, model_dir=root / "bundle", dense_dir=root / "bundle", report=report,
                               recipe=Recipe(), dataset={"name": "none"}, registered_name="imported-mnv3",
                               base_model=str(root / "w.safetensors"))
    assert reg["version"] == "1" and reg["decision"] == "champion"

    import mlflow.pyfunc

    def never(*args, **kwargs):
        raise AssertionError("a registered model must not be loaded through pyfunc (it runs the model's code)")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", never)
    for uri, out in (("models:/imported-mnv3/1", "by-version"), ("models:/imported-mnv3@champion", "by-alias")):
        assert main(["import", "--model", uri, "--out", str(registry / out)]) == 0
        assert _same_outputs(registry / out, model)
        assert read_bundle_info(registry / out)["metadata"]["import"]["bundle"] == uri
        assert json.loads(capsys.readouterr().out)["parity_max_abs_diff"] == 0.0
    assert main(["import", "--model", "models:/imported-mnv3/7", "--out", str(registry / "x")]) == 2
    assert "no such registered model version" in capsys.readouterr().err
    assert main(["import", "--model", "models:/just-a-name", "--out", str(registry / "x")]) == 2


def test_s3_bundle_and_s3_weights(source, moto_server, tmp_path, monkeypatch):
    moto = moto_server
    create_bucket(moto.url, BUCKET)
    use_s3(monkeypatch, moto)
    monkeypatch.setenv("IDAP_WORKDIR", str(tmp_path / "work"))
    model, root = source
    upload(root / "bundle", f"s3://{BUCKET}/bundles/mnv3")
    upload(root / "w.safetensors", f"s3://{BUCKET}/weights/w.safetensors")
    assert main(["import", "--model", f"s3://{BUCKET}/bundles/mnv3", "--out", str(tmp_path / "from-bundle")]) == 0
    assert _same_outputs(tmp_path / "from-bundle", model)
    assert main(["import", "--model", "torchvision.models.mobilenet_v3_small", "--weights",
                 f"s3://{BUCKET}/weights/w.safetensors", "--image-size", "32", "--out", str(tmp_path / "from-w")]) == 0
    assert _same_outputs(tmp_path / "from-w", model)
    assert boto3.client("s3", endpoint_url=moto.url).list_objects_v2(Bucket=BUCKET)["KeyCount"] >= 5
