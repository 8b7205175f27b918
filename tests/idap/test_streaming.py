"""Streamed image folders: seeded disjoint splits from files, DataLoader batches at a chosen resolution, the
stages' consumers (accuracy, recovery) taking a streamed split, CIFAR-10 in both layouts, and an image folder
too large for the memory it is given compressing end to end."""

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idap.data import DataError, DataSplits, load_dataset, load_splits, save_splits
from idap.data.cifar10 import CIFAR10_CLASSES, cifar10_arrays, cifar10_jpeg_root, open_cifar10
from idap.data.image_folder import open_image_folder
from idap.data.streaming import StreamedSplits
from idap.data.transforms import IMAGENET_MEAN, TransformConfig
from idap.measure.metrics import accuracy
from idap.models import create_model
from idap.prune.recovery import train
from tests.conftest import base_seed

ROOT = Path(__file__).resolve().parents[2]
SHARED_CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def make_folder(root: Path, per_class: int, size: int = 12, classes=("a", "b", "c"), split: bool = True,
                seed: int = 0, fmt: str = "png") -> Path:
    """Class-coloured noisy images: class k is brighter in channel k, so a tiny net can learn them."""
    rng = np.random.default_rng(seed)
    parts = {"train": per_class, "test": max(1, per_class // 4)} if split else {"": per_class}
    for part, n in parts.items():
        for k, cls in enumerate(classes):
            d = root / part / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
                pixels[..., k % 3] += 120
                Image.fromarray(pixels).save(d / f"{i:04d}.{fmt}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("folder"), per_class=40)


def test_splits_disjoint_and_from_training_files(folder):
    data = open_image_folder(folder, calibration_size=12, validation_size=18, workers=0)
    assert isinstance(data, StreamedSplits) and data.num_classes == 3 and data.image_size == 12
    train, calib, val, test = (set(map(str, s.items)) for s in (data.train_x, data.calib_source, data.val_x,
                                                                  data.test_x))
    assert len(calib) == 12 and len(val) == 18 and len(train) == 120 - 30 and len(test) == 30
    assert not (train & calib or train & val or calib & val)
    assert all("/train/" in f for f in train | calib | val) and all("/test/" in f for f in test)
    assert data.calib_x.shape == (12, 3, 12, 12) and data.calib_y.shape == (12,)
    described = data.describe()
    assert described["sizes"] == {"train": 90, "calibration": 12, "validation": 18, "test": 30}
    # The same seed cuts the same splits; another seed other ones.
    again = open_image_folder(folder, calibration_size=12, validation_size=18, workers=0)
    other = open_image_folder(folder, calibration_size=12, validation_size=18, workers=0, seed=1)
    assert list(map(str, again.val_x.items)) == list(map(str, data.val_x.items))
    assert list(map(str, other.val_x.items)) != list(map(str, data.val_x.items))


def test_no_test_folder_carves_test_from_the_pool(tmp_path):
    root = make_folder(tmp_path / "flat", per_class=10, split=False)
    data = open_image_folder(root, calibration_size=4, validation_size=4, workers=0)
    names = [set(map(str, s.items)) for s in (data.train_x, data.calib_source, data.val_x, data.test_x)]
    assert sum(map(len, names)) == 30 and len(set().union(*names)) == 30  # disjoint, all used


def test_resolution_normalization_and_augmentation(folder):
    data = open_image_folder(folder, resolution=16, calibration_size=8, validation_size=8, workers=0,
                             normalization="dataset")
    x, _ = data.train_x.tensors()
    assert x.shape[1:] == (3, 16, 16)
    # "dataset" statistics normalise the training images to about zero mean, unit variance per channel.
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.1)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=0.15)
    imagenet = open_image_folder(folder, calibration_size=8, validation_size=8, workers=0, normalization="imagenet")
    assert imagenet.mean == IMAGENET_MEAN
    plain = [xb for xb, _ in data.train_x.batches(16, seed=3)]
    aug1 = [xb for xb, _ in data.train_x.batches(16, shuffle=True, seed=3, augment=True)]
    aug2 = [xb for xb, _ in data.train_x.batches(16, shuffle=True, seed=3, augment=True)]
    assert all(torch.equal(a, b) for a, b in zip(aug1, aug2, strict=True))  # seeded
    assert not torch.equal(torch.cat(plain), torch.cat(aug1))
    with pytest.raises(DataError, match="normalization must be"):
        open_image_folder(folder, normalization="bogus", workers=0)


@pytest.mark.outcome
def test_consumers_take_a_streamed_split(folder, margin):
    data = open_image_folder(folder, calibration_size=8, validation_size=24, workers=2)
    torch.manual_seed(0)
    model = create_model("cnn_small", 3, 3, 12)
    x_val, y_val = data.val_x.tensors()
    assert accuracy(model, data.val_x, data.val_y, batch_size=7) == accuracy(model, x_val, y_val)
    # Training from the stream (2 DataLoader workers, seeded augmentation) learns and is reproducible.
    weights = []
    for _ in range(2):
        torch.manual_seed(base_seed())
        m = create_model("cnn_small", 3, 3, 12)
        train(m, data.train_x, data.train_y, epochs=3, batch_size=16, lr=0.05, seed=base_seed(), device=torch.device("cpu"))
        weights.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert margin("trained val acc, above", accuracy(m, data.val_x, data.val_y), 60.0) > 60.0  # 3 classes: chance is 33 %


def test_spec_file_streams_or_decodes(folder, tmp_path):
    spec = tmp_path / "data.yaml"
    spec.write_text(f"source: {folder}\nresolution: 16\nworkers: 0\nnormalization: imagenet\n"
                    "train_transform: {{flip: true, crop_padding: 2}}\n".replace("{{", "{").replace("}}", "}"))
    data = load_dataset(str(spec), calibration_size=8, validation_size=8)
    assert isinstance(data, StreamedSplits) and data.image_size == 16 and data.describe()["streamed"]
    spec.write_text(f"source: {folder}\nresolution: 16\nworkers: 0\nstream: false\n")
    memory = load_dataset(str(spec), calibration_size=8, validation_size=8)
    assert isinstance(memory, DataSplits) and memory.train_x.shape == (len(data.train_y), 3, 16, 16)
    spec.write_text(f"source: {folder}\nresolutoin: 16\n")
    with pytest.raises(DataError, match="unknown fields \\['resolutoin'\\]"):
        load_dataset(str(spec))


def _fake_cifar_batches(root: Path, n: int, marker: Path | None = None) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        entry["labels"] = [int(v) for v in entry["labels"]]
        with open(d / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, fh, protocol=2)
    return d


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_torchvision_format(tmp_path):
    _fake_cifar_batches(tmp_path, 6)
    x, y, xt, yt, digest = cifar10_arrays(tmp_path)
    assert x.shape == (30, 3, 32, 32) and x.dtype == np.uint8 and xt.shape == (6, 3, 32, 32) and len(digest) == 64
    data = load_dataset("cifar10", root=tmp_path, calibration_size=4, validation_size=4)
    assert data.train_x.shape == (22, 3, 32, 32) and data.num_classes == 10
    streamed = open_cifar10(tmp_path, calibration_size=4, validation_size=4, workers=0, resolution=64)
    xb, yb = next(streamed.train_x.batches(5))
    assert xb.shape == (5, 3, 64, 64)
    # A batch file that would run code is refused by the numpy-only unpickler before anything runs.
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "wb") as fh:
        pickle.dump({"data": _Payload(str(marker)), "labels": []}, fh)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        cifar10_arrays(tmp_path)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"the shared CIFAR-10 JPEG archive is absent ({SHARED_CIFAR})")
def test_cifar10_jpeg_archive_extracted_into_cache():
    # The machine's cache (~/.cache/idap or $IDAP_CACHE_DIR): extracted once (about 30 s), then reused.
    root = cifar10_jpeg_root(SHARED_CIFAR)
    assert not root.is_relative_to(ROOT) and cifar10_jpeg_root(SHARED_CIFAR) == root
    assert len(list((root / "test" / "cat").iterdir())) == 1000
    data = open_cifar10(None, calibration_size=100, validation_size=500, workers=0, normalization="imagenet")
    assert data.num_classes == 10 and data.classes == CIFAR10_CLASSES and data.image_size == 32
    assert len(data.train_y) == 50000 - 600 and len(data.test_y) == 10000
    xb, yb = next(data.test_x.batches(8))
    assert xb.shape == (8, 3, 32, 32) and yb.max() < 10


BOUNDED = textwrap.dedent("""
    import json, resource, sys, torch
    torch.set_num_threads(1)
    from idap.prune.compress import compress
    from idap.prune.config import Recipe
    from idap.data import load_dataset
    from idap.models import create_model
    from idap.bundle import save_bundle, load_bundle

    def peak_mb():
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return max(own, kids) / 1024

    spec, out = sys.argv[1], sys.argv[2]
    data = load_dataset(spec, calibration_size=64, validation_size=96, test_limit=96)
    torch.manual_seed(0)
    model = create_model("tests.idap.factories:tiny_net", data.num_classes, data.in_channels, data.image_size, width=4)
    torch.zeros(64, 3, data.image_size, data.image_size)  # allocator warm-up before the baseline
    baseline = peak_mb()
    recipe = Recipe.from_dict({"calibration_size": 64, "validation_size": 96, "eval_batch_size": 48,
                               "device": "cpu", "max_accuracy_drop": 50.0,
                               "filter": {"steps": 2, "p0": 0.2, "min_channels": 2},
                               "layer": {"enabled": False},
                               "recovery": {"step_budget": 6, "final_budget": 6, "batch_size": 32}})
    result = compress(model, data, recipe)
    save_bundle(result.model, out, input_shape=(data.in_channels, data.image_size, data.image_size))
    load_bundle(out)
    print(json.dumps({"baseline_mb": baseline, "peak_mb": peak_mb(), "train": len(data.train_y),
                      "steps": len(result.steps), "dense_val": result.dense_val_acc}))
""")


@pytest.mark.slow
def test_folder_larger_than_memory_compresses(tmp_path):
    """2,400 images at 64x64: 118 MB as float32 tensors (the in-memory path's form). The streamed run may grow
    by at most a third of that, so holding the data (or even its train split) is ruled out."""
    n_per_class, size = 800, 64
    root = make_folder(tmp_path / "big", per_class=n_per_class, size=size, fmt="jpg")
    total = 3 * (n_per_class + n_per_class // 4)
    as_tensors_mb = total * 3 * size * size * 4 / 2**20
    spec = tmp_path / "big.yaml"
    spec.write_text(json.dumps({"source": str(root), "workers": 1, "normalization": "dataset"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", BOUNDED, str(spec),
                           str(tmp_path / "bundle")], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    growth = figures["peak_mb"] - figures["baseline_mb"]
    assert figures["train"] > 2000 and figures["steps"] >= 3
    assert growth < as_tensors_mb / 3, (growth, as_tensors_mb, figures)


def test_content_hash_cached_and_renewed_on_change(tmp_path, monkeypatch):
    monkeypatch.setenv("IDAP_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f", per_class=4, split=False)
    first = open_image_folder(root, calibration_size=1, validation_size=1, workers=0).content_hash
    assert len(list((tmp_path / "cache" / "content-hashes").iterdir())) == 1
    assert open_image_folder(root, calibration_size=1, validation_size=1, workers=0).content_hash == first
    image = next((root / "a").iterdir())
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(image)
    os.utime(image, ns=(1, 1))  # a different mtime even on a coarse clock
    assert open_image_folder(root, calibration_size=1, validation_size=1, workers=0).content_hash != first


def _same_splits(a: StreamedSplits, b: StreamedSplits) -> None:
    for name in ("train", "calibration", "validation", "test"):
        assert list(map(str, a.split(name).items)) == list(map(str, b.split(name).items)), name
        assert torch.equal(a.split(name).labels, b.split(name).labels), name
    assert a.mean == b.mean and a.std == b.std and a.content_hash == b.content_hash
    assert torch.equal(a.calib_x, b.calib_x)
    # the same seeded, augmented batches: the transforms were rebuilt as they were
    xa = torch.cat([x for x, _ in a.train_x.batches(16, shuffle=True, seed=5, augment=True)])
    xb = torch.cat([x for x, _ in b.train_x.batches(16, shuffle=True, seed=5, augment=True)])
    assert torch.equal(xa, xb)


def test_streamed_splits_travel_as_a_reference(folder, tmp_path):
    """save_splits writes the files and the split assignments, not pixels; load_splits gives the same splits."""
    data = open_image_folder(folder, resolution=16, calibration_size=8, validation_size=12, train_limit=50,
                             workers=0, train_transform=TransformConfig(crop_padding=2))
    save_splits(data, tmp_path / "data")
    written = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert written == ["splits.json", "stream.json"]  # no safetensors: no pixel tensors
    pixels_bytes = (len(data.train_y) + 8 + 12 + len(data.test_y)) * 3 * 16 * 16 * 4
    size = sum(p.stat().st_size for p in (tmp_path / "data").iterdir())
    assert size < pixels_bytes / 4, (size, pixels_bytes)
    reference = json.loads((tmp_path / "data" / "stream.json").read_text())
    assert reference["content_hash"] == data.content_hash and len(reference["pools"]["train"]["files"]) == 120
    assert reference["pools"]["train"]["files"][0] == "train/a/0000.png"
    loaded = load_splits(tmp_path / "data")
    assert isinstance(loaded, StreamedSplits) and loaded.describe() == data.describe()
    _same_splits(data, loaded)


def test_reference_refuses_changed_or_missing_images(tmp_path, monkeypatch):
    monkeypatch.setenv("IDAP_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f", per_class=6, split=False)
    save_splits(open_image_folder(root, calibration_size=2, validation_size=2, workers=0), tmp_path / "d")
    image = root / "b" / "0001.png"
    Image.fromarray(np.full((12, 12, 3), 7, dtype=np.uint8)).save(image)
    os.utime(image, ns=(3, 3))
    with pytest.raises(DataError, match="changed since the splits were saved"):
        load_splits(tmp_path / "d")
    image.unlink()
    with pytest.raises(DataError, match="lost files"):
        load_splits(tmp_path / "d")
    root.rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="not on this machine.*same data volume or IDAP_CACHE_DIR"):
        load_splits(tmp_path / "d")


def test_archive_extracted_into_cache_and_found_when_the_cache_moves(tmp_path, monkeypatch):
    monkeypatch.setenv("IDAP_CACHE_DIR", str(tmp_path / "cache"))
    make_folder(tmp_path / "src" / "photos", per_class=8)
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "photos", arcname="photos")
    spec = tmp_path / "photos.yaml"
    spec.write_text("source: photos.tar.gz\nworkers: 0\n")  # relative to the spec's folder
    data = load_dataset(str(spec), calibration_size=4, validation_size=4)
    assert isinstance(data, StreamedSplits) and len(data.test_y) == 3 * 2 and data.name == str(archive)
    assert Path(data.source["root"]).is_relative_to(tmp_path / "cache")  # one extraction, in the cache
    save_splits(data, tmp_path / "d")
    calibration = data.calib_x  # decoded now: the files move next
    # Another step mounts the same cache at another path: the reference is relative to the cache.
    (tmp_path / "cache").rename(tmp_path / "mounted")
    monkeypatch.setenv("IDAP_CACHE_DIR", str(tmp_path / "mounted"))
    moved = load_splits(tmp_path / "d")
    assert Path(moved.source["root"]).is_relative_to(tmp_path / "mounted")
    assert torch.equal(moved.calib_x, calibration)
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../escape.png")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataError, match="unreadable archive"):
        open_image_folder(bad)


def test_cifar10_batches_travel_as_a_reference(tmp_path):
    _fake_cifar_batches(tmp_path, 6)
    data = open_cifar10(tmp_path, calibration_size=4, validation_size=4, workers=0)
    save_splits(data, tmp_path / "d")
    assert not (tmp_path / "d" / "splits.safetensors").exists()
    assert json.loads((tmp_path / "d" / "stream.json").read_text())["source"]["kind"] == "cifar10-batches"
    _same_splits(data, load_splits(tmp_path / "d"))
