"""One data check for every entry point: bad data fails up front with a DataError that names the dataset
and what the model expects (train, compress and evaluate alike)."""

import numpy as np
import pytest

from idap.bundle import save_bundle
from idap.cli import main as idap_main
from idap.data import DataError, load_dataset
from idap.data.checks import check_data, check_model_fits
from idap.models import create_model


def _npz(tmp_path, name, *, n=120, size=8, channels=1, classes=3, y=None, nan=False):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(n, channels, size, size)).astype(np.float32)
    if nan:
        x[5, 0, 1, 1] = np.nan
    y = rng.integers(0, classes, size=n) if y is None else y
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=x, y=np.asarray(y, dtype=np.int64))
    return str(path)


@pytest.fixture
def bundle(tmp_path):
    return str(save_bundle(create_model("cnn_small", 3, 1, 8), tmp_path / "m", input_shape=(1, 8, 8)))


def _load(path):
    return load_dataset(path, calibration_size=16, validation_size=16)


def test_clean_data_passes(tmp_path):
    data = _load(_npz(tmp_path, "ok"))
    check_data(data)
    check_model_fits(create_model("cnn_small", 3, 1, 8), data, source="cnn_small")


def test_nan_pixels_are_refused_naming_the_dataset(tmp_path):
    path = _npz(tmp_path, "nan", nan=True)
    with pytest.raises(DataError, match=r"nan\.npz.*NaN or Inf"):
        check_data(_load(path))


def test_one_class_is_refused_for_training(tmp_path):
    data = _load(_npz(tmp_path, "one", y=np.zeros(120)))
    with pytest.raises(DataError, match="1 class"):
        check_data(data)
    check_data(data, need_train=False)  # evaluating on it is fine; the model check then decides


@pytest.mark.parametrize("kwargs,message", [
    ({"channels": 3}, "in channels 1; dataset .* has in channels 3"),
    ({"size": 16}, "image size 8; dataset .* has image size 16 .resize"),
    ({"y": [0] * 119 + [999]}, "num classes 3; dataset .* has num classes 1000"),
    ({"y": np.zeros(120)}, "num classes 3; dataset .* has num classes 1"),
])
def test_evaluate_refuses_data_the_model_does_not_fit(tmp_path, bundle, capsys, kwargs, message):
    path = _npz(tmp_path, "bad", **kwargs)
    assert idap_main(["evaluate", "--model-dir", bundle, "--dataset", path, "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert "DataError" in err and "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_compress_refuses_a_larger_image_than_the_model_was_built_for(tmp_path, bundle, capsys):
    path = _npz(tmp_path, "big", size=16)
    out = tmp_path / "out"
    assert idap_main(["compress", "--model-dir", bundle, "--dataset", path, "--out", str(out), "--quiet"]) == 2
    assert "image size 8" in capsys.readouterr().err
    assert not out.exists()


def test_train_refuses_nan_data_before_training(tmp_path, capsys):
    path = _npz(tmp_path, "nan", nan=True)
    out = tmp_path / "dense"
    assert idap_main(["train", "--model", "cnn_small", "--dataset", path, "--out", str(out), "--quiet"]) == 2
    assert "NaN or Inf" in capsys.readouterr().err and not out.exists()
