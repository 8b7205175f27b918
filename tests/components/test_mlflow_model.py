"""The served model takes raw pixels (any real dtype, one sample or a batch) and normalises inside with the
statistics its bundle records; bad input gets a short INVALID_PARAMETER_VALUE, not a dump of the input."""

import importlib.util
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from idap.bundle import save_bundle
from idap.data import input_spec

CODE = Path(__file__).parents[2] / "components" / "mlflow_model.py"


@pytest.fixture(scope="module")
def served(trained_resnet20, digits, tmp_path_factory):
    path = save_bundle(trained_resnet20, tmp_path_factory.mktemp("served") / "bundle", input_shape=(1, 8, 8),
                       input_spec=input_spec(digits))
    spec = importlib.util.spec_from_file_location("idap_served_model", CODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.IdapBundleModel()
    model.load_context(SimpleNamespace(artifacts={"bundle": str(path)}))
    return model, path


def _raw(digits, x):
    mean, std = torch.tensor(digits.mean).view(1, -1, 1, 1), torch.tensor(digits.std).view(1, -1, 1, 1)
    return (x * std + mean).numpy()


def test_raw_pixels_give_the_models_predictions(served, digits, trained_resnet20):
    model, _ = served
    raw = _raw(digits, digits.test_x[:64])
    assert raw.min() >= -1e-4 and raw.max() <= 16 + 1e-4  # digits' own pixel range, not normalised values
    with torch.no_grad():
        expected = trained_resnet20.eval()(digits.test_x[:64]).numpy()
    got = model.predict(None, raw)
    assert np.allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == digits.test_y[:64].numpy()).mean() > 0.8


def test_dtypes_and_shapes_a_client_sends(served, digits):
    model, _ = served
    raw = _raw(digits, digits.test_x[:4])
    reference = model.predict(None, raw)
    for variant in (raw.astype(np.float64), raw[:, 0], raw.reshape(4, -1), {"inputs": raw.tolist()}):
        got = model.predict(None, variant)
        assert got.shape == (4, 10) and np.allclose(got, reference, atol=1e-4)
    integers = np.rint(raw)
    assert np.allclose(model.predict(None, integers.astype(np.uint8)), model.predict(None, integers), atol=1e-5)
    one = model.predict(None, raw[0])
    assert one.shape == (1, 10) and np.allclose(one, reference[:1], atol=1e-4)


@pytest.mark.parametrize("bad,message", [
    (np.zeros((2, 3, 8, 8)), r"expected raw pixels of shape \(N, 1, 8, 8\).*got an array of shape \(2, 3, 8, 8\)"),
    (np.full((1, 1, 8, 8), np.nan), "NaN or Inf"),
    ([["a", "b"]], "numeric pixels"),
])
def test_bad_input_is_a_short_invalid_parameter_error(served, bad, message):
    model, _ = served
    with pytest.raises(MlflowException, match=message) as err:
        model.predict(None, bad)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert len(str(err.value)) < 300  # names the problem, does not repeat the input


def test_bundle_files_are_readable_by_a_serving_user_per_the_umask(served):
    _, path = served
    assert stat.S_IMODE(path.stat().st_mode) & 0o055 == 0o055  # group/other may list and enter (umask 022)
    for f in path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044, f
