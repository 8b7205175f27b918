"""The compress pipeline on a decoder language model, end to end on this machine (kfp.local): a tiny random
Llama imported from a Hugging Face directory, a plain text file as a `kind: lm` spec (the pipeline's data step
runs before the model is read, so the spec names the tokenizer); the compressed LM is registered in MLflow
(sqlite) with its perplexity on the pipeline's parent run."""

import json
import re

import pytest
import torch

from idap.bundle import load_bundle
from idap.data import load_splits
from idap.dense.text_models import import_hf_model
from idap.measure.tokens import mean_token_ce
from tests.idap.test_lm_task import write_book
from tests.idap.text_fixtures import hf_llama_dir
from tests.pipelines.text_runs import run_compress

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")

T = 16
NAME = "idap-tiny-llama-lm"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-run")
    import_hf_model(hf_llama_dir(root / "hf"), root / "dense", max_length=T)
    write_book(root / "book.txt")
    (root / "book.yaml").write_text(f"kind: lm\npath: book.txt\ntokenizer: dense\nblock_size: {T}\n")
    return run_compress(root, dataset=root / "book.yaml", base_model=root / "dense", name=NAME, experiment="lm-run-test")


def test_the_compressed_lm_is_smaller_and_its_report_has_perplexity(run):
    splits = load_splits(run["data"])
    assert type(splits).__name__ == "LMSplits" and splits.input_shape == (T,)
    dense, model = load_bundle(run["root"] / "dense"), load_bundle(run["model"])  # both parity-checked on load
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    report = json.loads((run["report"].parent / "report_json").read_text())  # the evaluate step's outputs
    assert report["dataset"]["kind"] == "lm" and report["ratios"]["macs_reduction"] >= 1.3
    measured = torch.exp(torch.tensor(mean_token_ce(model, splits.test_x, splits.test_y))).item()
    assert report["compressed"]["test_ppl"] == pytest.approx(measured, rel=1e-4)
    assert re.search(r"^\s+test perplexity\s+[\d.]+\s+[\d.]+", run["stdout"], flags=re.M)  # the console summary
    assert "test next-token accuracy (%)" in run["stdout"]


def test_the_registered_lm_version_and_the_parent_run_carry_perplexity(run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=run["env"]["MLFLOW_TRACKING_URI"])
    [version] = client.search_model_versions(f"name = '{NAME}'")
    assert "token ids" in client.get_model_version(NAME, version.version).tags["idap.input"]
    [parent] = client.search_runs([client.get_experiment_by_name("lm-run-test").experiment_id],
                                  filter_string="tags.`idap.kind` = 'pipeline'")
    metrics = parent.data.metrics
    assert {"dense_test_ppl", "compressed_test_ppl"} <= set(metrics), sorted(metrics)
    assert metrics["compressed_test_ppl"] > 1.0
