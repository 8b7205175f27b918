"""The served model of a text bundle takes token ids (its input spec says so): int or integral-float ids, a batch
or one sample, exactly the bundle's logits; ids outside the vocabulary or non-integers get INVALID_PARAMETER_VALUE."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from idap.bundle import save_bundle
from idap.models import create_model

CODE = Path(__file__).parents[2] / "components" / "mlflow_model.py"
L, VOCAB = 12, 50


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("bert_classifier", 3, 1, L, vocab_size=VOCAB, hidden=32, layers=2, heads=4, ffn=48).eval()
    path = save_bundle(model, tmp_path_factory.mktemp("served") / "bundle", input_shape=(L,))
    spec = importlib.util.spec_from_file_location("idap_served_text_model", CODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pyfunc = module.IdapBundleModel()
    pyfunc.load_context(SimpleNamespace(artifacts={"bundle": str(path)}))
    return pyfunc, model


def test_token_ids_give_the_bundles_logits(served):
    pyfunc, model = served
    ids = torch.randint(1, VOCAB, (4, L), generator=torch.Generator().manual_seed(1))
    ids[0, 8:] = 0  # padded
    with torch.no_grad():
        expected = model(ids).numpy()
    assert np.array_equal(pyfunc.predict(None, ids.numpy()), expected)
    assert np.array_equal(pyfunc.predict(None, ids.numpy().astype(np.float64)), expected)  # integral floats
    assert np.array_equal(pyfunc.predict(None, {"inputs": ids.tolist()}), expected)
    with torch.no_grad():
        one = model(ids[:1]).numpy()
    assert np.array_equal(pyfunc.predict(None, ids[0].numpy()), one)


@pytest.mark.parametrize("bad, message", [
    (np.full((1, L), VOCAB), rf"integers in \[0, {VOCAB}\)"),
    (np.full((1, L), 2.5), "integers"),
    (np.full((1, L), -1), "integers"),
    (np.ones((1, 2, L)), r"shape \(N, tokens\)"),
    (np.ones((1, 600)), "positions"),
])
def test_bad_token_input_is_a_short_invalid_parameter(served, bad, message):
    pyfunc, _ = served
    with pytest.raises(MlflowException, match=message) as info:
        pyfunc.predict(None, bad)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
