"""The compress pipeline on text, end to end on this machine (kfp.local): a tiny random BERT imported from a
Hugging Face directory, a tiny text corpus as a `kind: text` dataset spec; the compressed model is registered in
MLflow (sqlite) and the registered version, served as a pyfunc on token ids, gives the bundle's logits."""


import numpy as np
import pytest
import torch

from idap.bundle import load_bundle
from idap.bundle.format import read_input_spec
from idap.data import load_splits
from idap.dense.text_models import import_hf_model
from tests.idap.text_fixtures import hf_bert_dir, text_spec, write_corpus
from tests.pipelines.text_runs import run_compress

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")

L = 16
NAME = "idap-tiny-bert-text"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-run")
    import_hf_model(hf_bert_dir(root / "hf"), root / "dense", num_classes=3, max_length=L)
    spec = text_spec(root / "corpus.json", write_corpus(root / "corpus"), root / "dense", max_length=L)
    return run_compress(root, dataset=spec, base_model=root / "dense", name=NAME, experiment="text-run-test")


def test_the_compressed_text_model_is_smaller_and_keeps_its_tokenizer(run):
    splits = load_splits(run["data"])
    assert type(splits).__name__ == "TextSplits" and splits.input_shape == (L,)
    dense, model = load_bundle(run["root"] / "dense"), load_bundle(run["model"])  # both parity-checked on load
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    assert model(splits.test_x[:4]).shape == (4, 3)
    assert (run["model"] / "tokenizer" / "tokenizer.json").is_file()
    assert read_input_spec(run["model"])["tokens"]["vocab_size"] == dense.shape.vocab_size


def test_the_registered_version_serves_token_ids_with_the_bundles_logits(run):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = run["env"]["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri)
    [found] = client.search_model_versions(f"name = '{NAME}'")
    version = client.get_model_version(found.name, found.version)
    assert "token ids" in version.tags["idap.input"]
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{found.version}")
    bundle = load_bundle(run["model"])
    ids = load_splits(run["data"]).test_x[:5]
    with torch.no_grad():
        expected = bundle(ids).numpy()
    assert np.array_equal(served.predict(ids.numpy()), expected)  # int64 ids, exactly the bundle's logits
    with torch.no_grad():
        one = bundle(ids[:1]).numpy()
    assert np.array_equal(served.predict(ids.numpy()[0]), one)  # one sample, as a batch of one
    with pytest.raises(MlflowException, match=r"integers in \[0, 64\)"):
        served.predict(np.full((1, L), 64))
