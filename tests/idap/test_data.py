"""idap.data.sources: seeded disjoint splits, hashes, bad inputs and the pickle-free round trip."""

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from idap.data import (
    DataError,
    DataSplits,
    builtin,
    fetch_dataset,
    list_datasets,
    load_dataset,
    load_splits,
    save_splits,
)

SPLITS = ("train", "calib", "val", "test")
DEBIAN_FILES = [builtin.FASHION_DEBIAN_DIR / f"{f}.gz" for f in builtin._FASHION_FILES]
# sha256 of the four uncompressed Fashion-MNIST IDX files: the same for Debian's and torchvision's copies
FASHION_HASH = "14410854cf7a289477dcfc7df3f8ec24741e281cdcc425ede0d9a748ca630214"


def digits(seed=0, **kwargs) -> DataSplits:
    kwargs = {"calibration_size": 100, "validation_size": 200, **kwargs}
    return load_dataset("digits", seed=seed, **kwargs)


def rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def write_npz(path: Path, n=60, shape=(8, 8), **extra) -> Path:
    rng = np.random.default_rng(1)
    arrays = {"x": rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), "y": np.arange(n) % 3, **extra}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def write_idx(directory: Path, n_train=30, n_test=10, size=4, compress=True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, size, size))
        images += rng.integers(0, 256, size=n * size * size, dtype=np.uint8).tobytes()
        labels = (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n))
        for name, content in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            if compress:
                (directory / f"{name}.gz").write_bytes(gzip.compress(content))
            else:
                (directory / name).write_bytes(content)
    return directory


def test_list_datasets():
    assert list_datasets() == ["cifar10", "digits", "fashion-mnist"]


@pytest.mark.parametrize("seed", [0, 1])
def test_splits_are_disjoint_and_cover_the_data(tmp_path, seed):
    x = np.arange(200 * 16, dtype=np.int64).reshape(200, 4, 4)  # every image unique: content = index
    np.savez(tmp_path / "u.npz", x=x, y=np.arange(200) % 5)
    splits = load_dataset(str(tmp_path / "u.npz"), seed=seed, calibration_size=20, validation_size=30)
    seen = [rows(getattr(splits, f"{s}_x")) for s in SPLITS]
    assert [len(s) for s in seen] == [110, 20, 30, 40]
    assert len(set().union(*seen)) == 200  # no sample in two splits, none lost


def test_digits_sizes_and_tensors():
    splits = digits()
    sizes = splits.describe()["sizes"]
    assert sizes == {"train": 1138, "calibration": 100, "validation": 200, "test": 359}
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    assert splits.train_x.shape[1:] == (1, 8, 8) and (splits.in_channels, splits.image_size) == (1, 8)
    assert splits.num_classes == 10 and set(splits.train_y.tolist()) == set(range(10))
    assert abs(splits.train_x.mean().item()) < 0.1 and abs(splits.train_x.std().item() - 1) < 0.1


def test_splits_are_deterministic_per_seed_and_differ_across_seeds():
    a, b, c = digits(seed=3), digits(seed=3), digits(seed=4)
    for s in SPLITS:
        assert torch.equal(getattr(a, f"{s}_x"), getattr(b, f"{s}_x"))
        assert torch.equal(getattr(a, f"{s}_y"), getattr(b, f"{s}_y"))
        assert not torch.equal(getattr(a, f"{s}_x"), getattr(c, f"{s}_x"))
    assert a.content_hash == c.content_hash and (a.seed, c.seed) == (3, 4)


def test_digits_holdout_is_clipped_once_so_train_keeps_half():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_dataset("digits")
    assert len([w for w in caught if "clipped" in str(w.message)]) == 1
    sizes = splits.describe()["sizes"]
    assert sizes["train"] >= sizes["calibration"] + sizes["validation"] > 0


def test_limits_subsample_train_and_test():
    splits = digits(train_limit=50, test_limit=20)
    assert (len(splits.train_y), len(splits.test_y), len(splits.calib_y)) == (50, 20, 100)
    assert rows(splits.train_x) <= rows(digits().train_x)


def test_describe_is_json_and_hash_is_stable():
    described = json.loads(json.dumps(digits().describe()))
    assert described["content_hash"] == "3bdcbf898d4e4ae2f3de959032fd61698f9cfd69ee85a8f024b3c115d56ec81a"
    assert set(described) >= {"name", "seed", "sizes", "num_classes", "in_channels", "image_size"}


def test_save_load_round_trip(tmp_path):
    splits = digits(seed=7)
    save_splits(splits, tmp_path / "splits")
    loaded = load_splits(tmp_path / "splits")
    for s in SPLITS:
        for k in "xy":
            assert torch.equal(getattr(loaded, f"{s}_{k}"), getattr(splits, f"{s}_{k}"))
    assert loaded.describe() == splits.describe()
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == ["splits.json", "splits.safetensors"]


def test_load_splits_rejects_missing_and_mismatched_files(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        load_splits(tmp_path)
    save_splits(digits(), tmp_path)
    meta = json.loads((tmp_path / "splits.json").read_text())
    (tmp_path / "splits.json").write_text(json.dumps({**meta, "content_hash": "0" * 64}))
    with pytest.raises(DataError, match="different datasets"):
        load_splits(tmp_path)


def test_one_directory_switches_between_tensors_and_a_reference(tmp_path):
    """save_splits is the one way for both kinds: a directory reused for the other kind keeps no stale file."""
    from idap.data.image_folder import open_image_folder
    from idap.data.streaming import StreamedSplits
    from tests.idap.test_streaming import make_folder

    streamed = open_image_folder(make_folder(tmp_path / "f", per_class=6), calibration_size=2, validation_size=2,
                                 workers=0)
    save_splits(streamed, tmp_path / "d")
    assert isinstance(load_splits(tmp_path / "d"), StreamedSplits)
    save_splits(digits(), tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["splits.json", "splits.safetensors"]
    assert isinstance(load_splits(tmp_path / "d"), DataSplits)
    save_splits(streamed, tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["splits.json", "stream.json"]
    meta = json.loads((tmp_path / "d" / "splits.json").read_text())
    (tmp_path / "d" / "splits.json").write_text(json.dumps({**meta, "content_hash": "0" * 64}))
    with pytest.raises(DataError, match="different datasets"):
        load_splits(tmp_path / "d")
    (tmp_path / "d" / "stream.json").write_text("{}")
    with pytest.raises(DataError, match="not an idap.streamed-splits v1 reference"):
        load_splits(tmp_path / "d")


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npz_layouts_and_carved_test_split(tmp_path, layout):
    x = np.random.default_rng(0).integers(0, 256, size=(50, 6, 6, 3), dtype=np.uint8)
    x = {"nhw": x[..., 0], "nhwc": x, "nchw": x.transpose(0, 3, 1, 2)}[layout]
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 4)
    splits = load_dataset(str(tmp_path / "d.npz"), calibration_size=5, validation_size=5)
    assert splits.train_x.shape[1:] == ((1, 6, 6) if layout == "nhw" else (3, 6, 6))
    assert splits.num_classes == 4 and len(splits.test_y) == 10 and len(splits.train_y) == 30
    assert splits.name == str(tmp_path / "d.npz")


def test_npz_with_its_own_test_set(tmp_path):
    path = write_npz(tmp_path / "d.npz", x_test=np.zeros((7, 8, 8), np.uint8), y_test=np.full(7, 5))
    splits = load_dataset(str(path), calibration_size=4, validation_size=4)
    assert len(splits.test_y) == 7 and len(splits.train_y) == 52 and splits.num_classes == 6


@pytest.mark.parametrize("arrays, expected", [
    ({"images": np.zeros((4, 8, 8)), "y": np.zeros(4, int)}, "expected arrays 'x'"),
    ({"x": np.zeros((4, 8, 8)), "y": np.zeros(3, int)}, "expected 4"),
    ({"x": np.zeros((4, 8)), "y": np.zeros(4, int)}, "square images"),
    ({"x": np.zeros((4, 8, 6)), "y": np.zeros(4, int)}, "square images"),
    ({"x": np.zeros((4, 8, 8)), "y": np.zeros(4)}, "integer labels"),
    ({"x": np.zeros((4, 8, 8)), "y": np.zeros(4, int), "x_test": np.zeros((2, 8, 8))}, "expected arrays"),
])
def test_bad_npz_names_the_path(tmp_path, arrays, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=expected) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_missing_unreadable_and_unsupported_paths(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "nope.npz"))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="garbage.npz"):
        load_dataset(str(tmp_path / "garbage.npz"))
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(DataError, match="data.csv"):
        load_dataset(str(tmp_path / "data.csv"))
    with pytest.raises(DataError, match="calibration_size"):
        load_dataset("digits", calibration_size=-1)


def save_images(directory: Path, count: int, mode: str = "L", size: int = 5):
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.full((size, size) if mode == "L" else (size, size, 3), i * 20, dtype=np.uint8)
        Image.fromarray(pixels).save(directory / f"{i}.png")


def test_image_folder(tmp_path):
    for cls in ("cat", "dog", "emu"):
        save_images(tmp_path / "imgs" / cls, 10, mode="RGB")
    splits = load_dataset(str(tmp_path / "imgs"), calibration_size=2, validation_size=2)
    assert splits.train_x.shape[1:] == (3, 5, 5) and splits.num_classes == 3
    assert len(splits.test_y) + len(splits.train_y) + 4 == 30
    again = load_dataset(str(tmp_path / "imgs"), seed=5, calibration_size=2, validation_size=2)
    assert again.content_hash == splits.content_hash


def test_image_folder_with_train_and_test(tmp_path):
    for cls in ("a", "b"):
        save_images(tmp_path / "train" / cls, 8)
        save_images(tmp_path / "test" / cls, 3)
    splits = load_dataset(str(tmp_path), calibration_size=2, validation_size=2)
    assert len(splits.test_y) == 6 and len(splits.train_y) == 12 and splits.in_channels == 1


def test_bad_image_folders_name_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png"):
        load_dataset(str(tmp_path / "broken"))


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_from_idx_files_in_the_data_root(tmp_path, compress):
    write_idx(tmp_path / "FashionMNIST" / "raw", compress=compress)
    assert fetch_dataset("fashion-mnist", tmp_path) == tmp_path / "FashionMNIST" / "raw"
    splits = load_dataset("fashion-mnist", root=tmp_path, calibration_size=4, validation_size=4)
    assert splits.train_x.shape == (22, 1, 4, 4) and len(splits.test_y) == 10


def test_malformed_idx_file_is_named(tmp_path):
    directory = write_idx(tmp_path, compress=False)
    (directory / "t10k-labels-idx1-ubyte").write_bytes((2051).to_bytes(4, "big") + bytes(12))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*magic number 2049"):
        load_dataset("fashion-mnist", root=tmp_path)
    write_idx(directory, compress=False)
    truncated = (directory / "train-images-idx3-ubyte").read_bytes()[:-5]
    (directory / "train-images-idx3-ubyte").write_bytes(truncated)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*header says"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_fetch_explains_how_to_get_fashion_when_everything_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "FASHION_DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(builtin, "_torchvision_download", lambda root: False)
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist.*--data-root"):
        fetch_dataset("fashion-mnist", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        fetch_dataset("mnist")


def test_default_root_comes_from_the_environment(tmp_path, monkeypatch):
    write_idx(tmp_path)
    monkeypatch.setenv("IDAP_DATA_ROOT", str(tmp_path))
    assert fetch_dataset("fashion-mnist") == tmp_path
    assert fetch_dataset("digits").is_dir()


@pytest.mark.skipif(not all(p.is_file() for p in DEBIAN_FILES),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    splits = load_dataset("fashion-mnist", root=tmp_path, train_limit=256, test_limit=128)
    assert splits.content_hash == FASHION_HASH
    assert splits.describe()["sizes"] == {"train": 256, "calibration": 2048, "validation": 5000, "test": 128}
    assert splits.train_x.shape[1:] == (1, 28, 28) and splits.num_classes == 10
    seen = [rows(getattr(splits, f"{s}_x")) for s in ("train", "calib", "val")]
    assert len(seen[0] & seen[1]) + len(seen[0] & seen[2]) + len(seen[1] & seen[2]) <= 2  # rare duplicate images
