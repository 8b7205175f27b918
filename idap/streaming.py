"""Datasets that do not fit in memory: image folders (and CIFAR-10) read lazily through a DataLoader.

``open_image_folder`` lists the files of an ImageFolder tree (``[train/|test/]<class>/*.jpg``) and cuts the
same seeded, disjoint train / calibration / validation / test splits as ``idap.data`` — calibration and
validation from the training files only — but keeps file names and labels, not pixels. Batches are decoded
by DataLoader workers at the chosen resolution: resize + centre crop for evaluation; random crop (padding or
random-resized) and horizontal flip, as the spec says, for training and recovery. Normalisation is the
dataset's own (per-channel statistics of a seeded subset of training images) or the model's (ImageNet
statistics for pretrained models). The calibration split is decoded once into a tensor — it is small
(``calibration_size`` images) and every score pass reads it.

``StreamedSplits`` stands in for ``DataSplits``: ``train_x`` / ``val_x`` / ``test_x`` are ``StreamedSplit``
objects (``len()``, ``batches()``) and ``*_y`` label tensors, ``calib_x`` / ``calib_y`` tensors, so
``idap.recovery`` and ``idap.metrics.accuracy`` take it where they take tensors, and the stages run
unchanged. Small datasets are usually faster as tensors: ``StreamedSplits.to_memory()`` converts (and
``benchmarks``-style measurements are in the module's tests and the README).

A dataset *spec* (YAML or JSON, passed wherever a dataset is named: ``--dataset cifar.yaml``) selects this::

    source: cifar10          # an ImageFolder directory, or cifar10 (JPEG archive or torchvision format)
    resolution: 64           # side of the square input
    normalization: imagenet  # dataset | imagenet | {mean: [...], std: [...]} (pixels in [0, 1])
    stream: true             # false: decode everything into tensors (faster for small data)
    workers: 2
    train_transform: {flip: true, crop_padding: 4, random_resized_crop: false}

Example:
    >>> data = open_image_folder("photos/", resolution=64, seed=0)          # doctest: +SKIP
    >>> for x, y in data.train_x.batches(32, shuffle=True, seed=0, augment=True):  # doctest: +SKIP
    ...     break
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from idap.data import _IMAGE_SUFFIXES, _SPLITS, DataError, DataSplits, _clip_holdout
from idap.metrics import is_streamed

__all__ = ["CIFAR10_CLASSES", "StreamSpec", "StreamedSplit", "StreamedSplits", "TransformConfig",
           "cifar10_arrays", "cifar10_jpeg_root", "is_streamed", "load_spec", "open_cifar10", "open_image_folder",
           "open_spec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_JPEG_SHA256 = "f17d98b1fac443baf878cf91d398c3e18c6709436e05799d45e0487c809d694a"
CIFAR10_JPEG_ENV = "IDAP_CIFAR10_JPEG"
CACHE_ENV = "IDAP_CACHE_DIR"
_TEST_FRACTION = 0.2
_STATS_IMAGES = 2000  # images whose pixels give the "dataset" normalisation


# --- settings ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformConfig:
    """Training-time augmentation of streamed images (evaluation always resizes and centre-crops)."""

    flip: bool = True  # random horizontal flip
    crop_padding: int = 4  # pad by this many pixels then random-crop back (CIFAR style); 0: none
    random_resized_crop: bool = False  # RandomResizedCrop (ImageNet style) instead of pad + crop
    min_scale: float = 0.35  # smallest area fraction of a random-resized crop

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise DataError(f"train_transform.crop_padding must be >= 0, got {self.crop_padding}")
        if not 0 < self.min_scale <= 1:
            raise DataError(f"train_transform.min_scale must be in (0, 1], got {self.min_scale}")


@dataclass(frozen=True)
class StreamSpec:
    """What a dataset spec file says; see the module docstring."""

    source: str
    resolution: int | None = None  # default: the images' own size (the first image's shorter side)
    crop_fraction: float = 1.0  # evaluation: resize to resolution / crop_fraction, then centre-crop
    normalization: str | dict = "dataset"
    stream: bool = True
    workers: int = 2
    channels: int | None = None  # 1 or 3; default: 3 if any image is colour
    train_transform: TransformConfig = field(default_factory=TransformConfig)

    def __post_init__(self) -> None:
        if self.resolution is not None and self.resolution < 1:
            raise DataError(f"resolution must be >= 1, got {self.resolution}")
        if not 0 < self.crop_fraction <= 1:
            raise DataError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.workers < 0:
            raise DataError(f"workers must be >= 0, got {self.workers}")
        if self.channels not in (None, 1, 3):
            raise DataError(f"channels must be 1 or 3, got {self.channels}")
        _normalization_kind(self.normalization)

    @classmethod
    def from_dict(cls, data: dict, where: str = "dataset spec") -> StreamSpec:
        if not isinstance(data, dict) or "source" not in data:
            raise DataError(f"{where}: expected a mapping with at least 'source', got {data!r}")
        valid = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - valid
        if unknown:
            raise DataError(f"{where}: unknown fields {sorted(unknown)}; valid: {sorted(valid)}")
        data = dict(data)
        tt = data.pop("train_transform", None) or {}
        tvalid = set(TransformConfig.__dataclass_fields__)
        if not isinstance(tt, dict) or set(tt) - tvalid:
            raise DataError(f"{where}: train_transform must be a mapping of {sorted(tvalid)}, got {tt!r}")
        try:
            return cls(train_transform=TransformConfig(**tt), **data)
        except TypeError as error:
            raise DataError(f"{where}: {error}") from None


def load_spec(path: str | os.PathLike) -> StreamSpec:
    """Read a YAML / JSON dataset spec; a relative ``source`` is taken relative to the spec's folder when it
    exists there."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable dataset spec ({error})") from error
    spec = StreamSpec.from_dict(data, str(path))
    source = Path(spec.source).expanduser()
    if not source.is_absolute() and (path.parent / source).exists():
        spec = replace(spec, source=str(path.parent / source))
    return spec


# --- lazily decoded images -----------------------------------------------------------------------------------


class _Images(Dataset):
    """Images from files (or from a uint8 array), decoded and transformed one at a time in the worker."""

    def __init__(self, items: Sequence, labels: np.ndarray, transform, mode: str, seed: int | None = None):
        self.items, self.labels, self.transform, self.mode, self.seed = items, labels, transform, mode, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image, UnidentifiedImageError

        item = self.items[i]
        if isinstance(item, np.ndarray):  # (H, W, C) uint8
            image = Image.fromarray(item[..., 0] if item.shape[-1] == 1 else item)
        else:
            try:
                with Image.open(item) as opened:
                    image = opened.convert(self.mode)
            except (OSError, UnidentifiedImageError) as error:
                raise DataError(f"{item}: unreadable image ({error})") from error
        if self.seed is None:
            return self.transform(image.convert(self.mode)), int(self.labels[i])
        # Seeded per sample: the same augmentation whichever worker (or the main process) draws it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + i) % 2**63)
            return self.transform(image.convert(self.mode)), int(self.labels[i])


class StreamedSplit:
    """One split as files + labels: ``len()``, ``labels``, ``batches()``; ``split[a:b]`` decodes into a tensor."""

    def __init__(self, items: Sequence, labels: np.ndarray, *, eval_transform, train_transform, mode: str,
                 workers: int, name: str):
        self.items, self.mode, self.workers, self.name = items, mode, workers, name
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self._eval, self._train = eval_transform, train_transform

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"StreamedSplit({self.name!r}, {len(self)} images, {self.workers} workers)"

    def dataset(self, augment: bool = False, seed: int | None = None) -> Dataset:
        return _Images(self.items, self.labels.numpy(), self._train if augment else self._eval, self.mode,
                       seed if augment else None)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, augment: bool = False,
                drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the split: ``(x float32 (B, C, H, W) normalised, y int64 (B,))`` per batch.

        Args:
            shuffle: seeded order (and seeded worker augmentations): the same seed, the same batches.
            augment: the training transform (random crop / flip) instead of resize + centre crop.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        augment_seed = int(torch.randint(2**62, (1,), generator=generator))
        loader = DataLoader(self.dataset(augment, augment_seed), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                            num_workers=self.workers, generator=generator, persistent_workers=False,
                            prefetch_factor=2 if self.workers else None)
        yield from loader

    def tensors(self, limit: int | None = None) -> tuple[Tensor, Tensor]:
        """The first ``limit`` images (all by default), decoded with the evaluation transform."""
        n = len(self) if limit is None else min(limit, len(self))
        if n == 0:
            return torch.empty(0), self.labels[:0]
        sub = StreamedSplit(self.items[:n], self.labels[:n].numpy(), eval_transform=self._eval,
                            train_transform=self._train, mode=self.mode, workers=self.workers, name=self.name)
        xs = [x for x, _ in sub.batches(256)]
        return torch.cat(xs), self.labels[:n].clone()

    def is_floating_point(self) -> bool:
        """False: tensor-content checks (NaN/Inf) do not apply; decoded 8-bit pixels are finite by construction."""
        return False

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step in (None, 1) and (key.start or 0) == 0:
            return self.tensors(len(range(*key.indices(len(self)))))[0]
        raise TypeError(f"{self!r} supports only prefix slices split[:n]; use batches() to read it")


@dataclass(eq=False)
class StreamedSplits:
    """``DataSplits``' interface over streamed images (see the module docstring)."""

    name: str
    train_x: StreamedSplit
    val_x: StreamedSplit
    test_x: StreamedSplit
    calib_source: StreamedSplit
    num_classes: int
    in_channels: int
    image_size: int
    content_hash: str
    seed: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    spec: dict = field(default_factory=dict)

    @property
    def train_y(self) -> Tensor:
        return self.train_x.labels

    @property
    def val_y(self) -> Tensor:
        return self.val_x.labels

    @property
    def test_y(self) -> Tensor:
        return self.test_x.labels

    @functools.cached_property
    def _calib(self) -> tuple[Tensor, Tensor]:
        return self.calib_source.tensors()

    @property
    def calib_x(self) -> Tensor:
        return self._calib[0]

    @property
    def calib_y(self) -> Tensor:
        return self._calib[1]

    def split(self, name: str) -> StreamedSplit:
        splits = {"train": self.train_x, "calibration": self.calib_source, "validation": self.val_x,
                  "test": self.test_x}
        if name not in splits:
            raise DataError(f"unknown split {name!r}; valid: {sorted(splits)}")
        return splits[name]

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """``split(name).batches(...)``: one pass over train | calibration | validation | test."""
        return self.split(split).batches(batch_size, shuffle=shuffle, seed=seed, augment=augment)

    def describe(self) -> dict:
        sizes = {name: len(self.split(name)) for name in _SPLITS}
        return {"name": self.name, "content_hash": self.content_hash, "seed": self.seed, "sizes": sizes,
                "num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size,
                "normalization": {"mean": list(self.mean), "std": list(self.std), "scale": 1 / 255},
                "streamed": True, "spec": self.spec}

    def to_memory(self) -> DataSplits:
        """Decode every split into tensors (evaluation transform): for data small enough to hold."""
        train_x, train_y = self.train_x.tensors()
        val_x, val_y = self.val_x.tensors()
        test_x, test_y = self.test_x.tensors()
        return DataSplits(name=self.name, train_x=train_x, train_y=train_y, calib_x=self.calib_x,
                          calib_y=self.calib_y, val_x=val_x, val_y=val_y, test_x=test_x, test_y=test_y,
                          num_classes=self.num_classes, in_channels=self.in_channels, image_size=self.image_size,
                          content_hash=self.content_hash, seed=self.seed,
                          mean=tuple(m * 255 for m in self.mean), std=tuple(s * 255 for s in self.std))


# --- opening a folder ----------------------------------------------------------------------------------------


def open_image_folder(root: str | os.PathLike, *, resolution: int | None = None, seed: int = 0,
                      calibration_size: int = 2048, validation_size: int = 5000, train_limit: int | None = None,
                      test_limit: int | None = None, normalization: str | dict = "dataset", workers: int = 2,
                      crop_fraction: float = 1.0, channels: int | None = None,
                      train_transform: TransformConfig | None = None, name: str | None = None) -> StreamedSplits:
    """List an ImageFolder tree and cut streamed splits (see the module docstring); no image is decoded here
    except the few that give the resolution / channels and, for ``normalization="dataset"``, the statistics.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected an ImageFolder tree ([train/|test/]<class>/<images>)")
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    train_dir = root / "train" if has_split else root
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{train_dir}: expected ImageFolder layout, one subfolder of images per class")
    files, labels = _list_images(train_dir, classes)
    test_files, test_labels = _list_images(root / "test", classes) if has_split else (None, None)
    return _streamed(files, labels, test_files, test_labels, classes=classes, root=root, name=name or str(root),
                     content_hash=_hash_files(root, files + (test_files or [])), resolution=resolution, seed=seed,
                     calibration_size=calibration_size, validation_size=validation_size, train_limit=train_limit,
                     test_limit=test_limit, normalization=normalization, workers=workers,
                     crop_fraction=crop_fraction, channels=channels, train_transform=train_transform)


def _streamed(files: list, labels: np.ndarray, test_files: list | None, test_labels: np.ndarray | None, *,
              classes, root, name, content_hash, resolution, seed, calibration_size, validation_size, train_limit,
              test_limit, normalization, workers, crop_fraction, channels, train_transform) -> StreamedSplits:
    for arg, value in (("calibration_size", calibration_size), ("validation_size", validation_size)):
        if value < 0:
            raise DataError(f"{arg} must be >= 0, got {value}")
    _normalization_kind(normalization)
    rng = np.random.default_rng(seed)
    if test_files is None:
        perm = rng.permutation(len(labels))
        n_test = max(1, round(_TEST_FRACTION * len(perm)))
        test_idx, pool = perm[:n_test], perm[n_test:]
        test_files, test_labels = files, labels
    else:
        test_idx, pool = np.arange(len(test_labels)), rng.permutation(len(labels))
    n_calib, n_val = _clip_holdout(name, len(pool), calibration_size, validation_size)
    calib_idx, val_idx, train_idx = pool[:n_calib], pool[n_calib:n_calib + n_val], pool[n_calib + n_val:]
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"{name}: too few images ({len(labels)}) for non-empty train and test splits")
    train_idx = train_idx[:train_limit]
    test_idx = rng.permutation(test_idx)[:test_limit]
    first = _peek(files[0])
    mode = "L" if channels == 1 else "RGB" if channels == 3 else ("RGB" if _any_colour(files) else "L")
    size = resolution or min(first.size)
    in_channels = 1 if mode == "L" else 3
    tt = train_transform or TransformConfig()
    mean, std = _normalization(normalization, files, np.sort(pool), in_channels, mode, size, crop_fraction, seed)
    eval_tf = _eval_transform(size, crop_fraction, mean, std)
    train_tf = _train_transform(size, crop_fraction, tt, mean, std)

    def split(source, source_labels, idx, split_name) -> StreamedSplit:
        idx = np.sort(idx)
        items = [source[i] for i in idx] if isinstance(source, list) else source[idx]
        return StreamedSplit(items, source_labels[idx], eval_transform=eval_tf, train_transform=train_tf,
                             mode=mode, workers=workers, name=f"{name}:{split_name}")

    spec = {"resolution": size, "crop_fraction": crop_fraction, "normalization": normalization,
            "workers": workers, "train_transform": asdict(tt)}
    return StreamedSplits(name=name, train_x=split(files, labels, train_idx, "train"),
                          val_x=split(files, labels, val_idx, "validation"),
                          test_x=split(test_files, test_labels, test_idx, "test"),
                          calib_source=split(files, labels, calib_idx, "calibration"), num_classes=len(classes),
                          in_channels=in_channels, image_size=size, content_hash=content_hash, seed=seed,
                          mean=mean, std=std, classes=tuple(classes), spec=spec)


def _list_images(directory: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    extra = sorted({d.name for d in directory.iterdir() if d.is_dir()} - set(classes))
    if extra:
        raise DataError(f"{directory}: class folders {extra} are not in the training classes {classes}")
    files, labels = [], []
    for label, cls in enumerate(classes):
        if (directory / cls).is_dir():
            found = sorted(f for f in (directory / cls).rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
    if not files:
        raise DataError(f"{directory}: no images ({', '.join(_IMAGE_SUFFIXES)}) in the class folders")
    return files, np.asarray(labels, dtype=np.int64)


def _hash_files(root: Path, files: list[Path]) -> str:
    """sha256 over every file's relative path and bytes, read in order one file at a time (constant memory).

    Reading 60,000 files takes tens of seconds, so the digest is cached under ``cache_dir()/content-hashes``,
    keyed by the listing (relative paths, sizes, modification times): a changed file is hashed again.
    """
    listing = hashlib.sha256()
    for file in files:
        st = file.stat()
        listing.update(f"{file.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cached = cache_dir() / "content-hashes" / f"{listing.hexdigest()}.txt"
    if cached.is_file():
        text = cached.read_text().strip()
        if len(text) == 64:
            return text
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next open another pass
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(digest.hexdigest())
        tmp.rename(cached)
    return digest.hexdigest()


def _peek(item):
    from PIL import Image

    if isinstance(item, np.ndarray):
        return Image.fromarray(item[..., 0] if item.shape[-1] == 1 else item)
    try:
        with Image.open(item) as image:
            image.load()
            return image
    except OSError as error:
        raise DataError(f"{item}: unreadable image ({error})") from error


def _any_colour(items, probe: int = 16) -> bool:
    """Colour if any of the first ``probe`` images is colour (a full scan would read every file)."""
    for item in items[:probe]:
        if isinstance(item, np.ndarray):
            return item.shape[-1] == 3
        if _peek(item).mode not in ("L", "1", "I;16", "I", "F"):
            return True
    return False


# --- transforms and normalisation ----------------------------------------------------------------------------


def _eval_transform(size: int, crop_fraction: float, mean, std):
    from torchvision import transforms as T

    return T.Compose([T.Resize(round(size / crop_fraction)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])


def _train_transform(size: int, crop_fraction: float, tt: TransformConfig, mean, std):
    from torchvision import transforms as T

    if tt.random_resized_crop:
        steps = [T.RandomResizedCrop(size, scale=(tt.min_scale, 1.0))]
    else:
        steps = [T.Resize(round(size / crop_fraction)), T.CenterCrop(size)]
        if tt.crop_padding:
            steps.append(T.RandomCrop(size, padding=tt.crop_padding))
    if tt.flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def _normalization_kind(value) -> str:
    if value in ("dataset", "imagenet"):
        return value
    if isinstance(value, dict) and set(value) == {"mean", "std"}:
        return "explicit"
    raise DataError(f"normalization must be 'dataset', 'imagenet' or {{mean: [...], std: [...]}} of pixels in "
                    f"[0, 1], got {value!r}")


def _normalization(value, items, pool_idx, channels: int, mode: str, size: int, crop_fraction: float,
                   seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    kind = _normalization_kind(value)
    if kind == "imagenet":
        if channels != 3:
            raise DataError("normalization 'imagenet' needs colour images; these are single-channel")
        return IMAGENET_MEAN, IMAGENET_STD
    if kind == "explicit":
        mean, std = tuple(float(v) for v in value["mean"]), tuple(float(v) for v in value["std"])
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise DataError(f"normalization needs {channels} means and {channels} positive stds, got {value!r}")
        return mean, std
    # The dataset's own statistics, from a seeded subset of the training pool, streamed in batches.
    rng = np.random.default_rng(seed + 17)
    pick = np.sort(rng.permutation(pool_idx)[:_STATS_IMAGES])
    from torchvision import transforms as T

    plain = T.Compose([T.Resize(round(size / crop_fraction)), T.CenterCrop(size), T.ToTensor()])
    items = [items[i] for i in pick] if isinstance(items, list) else items[pick]
    loader = DataLoader(_Images(items, np.zeros(len(pick), dtype=np.int64), plain, mode), batch_size=256)
    total, total_sq, count = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64), 0
    for x, _ in loader:
        x = x.double()
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# --- CIFAR-10 ------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where extracted archives live: ``$IDAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/idap``, else ``~/.cache/idap``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "idap"


def _find_cifar10_archive(root: str | os.PathLike | None) -> Path | None:
    candidates = [os.environ.get(CIFAR10_JPEG_ENV)]
    if root is not None:
        candidates += [Path(root) / "cifar10-jpeg.tar.gz"]
    here = Path(__file__).resolve().parents[1]  # the checkout: its ../shared/datasets holds the shared copy
    candidates += [Path.cwd().parent / "shared/datasets/cifar10-jpeg.tar.gz",
                   here.parent / "shared/datasets/cifar10-jpeg.tar.gz"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def cifar10_jpeg_root(archive: str | os.PathLike | None = None, *, cache: str | os.PathLike | None = None,
                      root: str | os.PathLike | None = None) -> Path:
    """The JPEG copy of CIFAR-10 (``train|test/<class>/NNNN.jpg``) extracted once into the cache.

    The archive is found at ``archive``, ``$IDAP_CIFAR10_JPEG``, ``ROOT/cifar10-jpeg.tar.gz`` or the shared
    ``../shared/datasets/``; it is extracted into ``<cache>/cifar10-jpeg-<sha256[:12]>`` (staged, then renamed,
    so a reader never sees half of it), never into the project.
    """
    path = Path(archive) if archive is not None else _find_cifar10_archive(root)
    if path is None or not path.is_file():
        raise DataError(f"CIFAR-10 JPEG archive not found (looked at {archive or ''} ${CIFAR10_JPEG_ENV}, "
                        f"{root or 'ROOT'}/cifar10-jpeg.tar.gz, ../shared/datasets/cifar10-jpeg.tar.gz); set "
                        f"{CIFAR10_JPEG_ENV}, or use torchvision's format (ROOT/cifar-10-batches-py)")
    digest = _sha256(path)
    if path.name == "cifar10-jpeg.tar.gz" and digest != CIFAR10_JPEG_SHA256:
        warnings.warn(f"{path}: sha256 {digest} is not the published {CIFAR10_JPEG_SHA256}", stacklevel=2)
    target = Path(cache or cache_dir()) / f"cifar10-jpeg-{digest[:12]}"
    if (target / "train").is_dir() and (target / "test").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".cifar10-", dir=target.parent))
    try:
        with tarfile.open(path) as tar:
            tar.extractall(staging, filter="data")  # the "data" filter refuses absolute paths, links out, devices
        if not ((staging / "train").is_dir() and (staging / "test").is_dir()):
            raise DataError(f"{path}: expected train/<class>/ and test/<class>/ folders in the archive")
        try:
            staging.rename(target)
        except OSError:  # another process extracted it first
            if not (target / "train").is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """torchvision's CIFAR-10 batches are pickles of numpy arrays: admit exactly the globals those need."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return _NumpyOnlyUnpickler(fh, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"{path}: not a CIFAR-10 batch file ({error})") from error


def cifar10_arrays(root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """CIFAR-10 as uint8 arrays ``(x (N,3,32,32), y, x_test, y_test, content_hash)``.

    From torchvision's format (``ROOT/cifar-10-batches-py``, read with a numpy-only unpickler) when present,
    else from the JPEG archive (decoded once, then cached as ``.npz`` beside the extracted files).
    """
    tv = Path(root) / "cifar-10-batches-py" if root is not None else None
    if tv is not None and (tv / "data_batch_1").is_file():
        digest = hashlib.sha256()
        parts = []
        for names in ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]):
            xs, ys = [], []
            for n in names:
                raw = (tv / n).read_bytes()
                digest.update(raw)
                entry = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load() if raw else {}
                if "data" not in entry or "labels" not in entry:
                    raise DataError(f"{tv / n}: expected a CIFAR-10 batch with 'data' and 'labels'")
                xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(entry["labels"], dtype=np.int64))
            parts += [np.concatenate(xs), np.concatenate(ys)]
        return (*parts, digest.hexdigest())
    jpeg = cifar10_jpeg_root(root=root)
    cached = jpeg / "arrays.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as npz:
            return npz["x"], npz["y"], npz["x_test"], npz["y_test"], str(npz["content_hash"])
    from PIL import Image

    out = []
    for part in ("train", "test"):
        files, labels = _list_images(jpeg / part, list(CIFAR10_CLASSES))
        x = np.empty((len(files), 3, 32, 32), dtype=np.uint8)
        for i, f in enumerate(files):
            with Image.open(f) as image:
                x[i] = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        out += [x, labels]
    content_hash = _hash_files(jpeg, sorted(jpeg.rglob("*.jpg")))
    tmp = jpeg / ".arrays.tmp.npz"
    np.savez(tmp, x=out[0], y=out[1], x_test=out[2], y_test=out[3], content_hash=np.asarray(content_hash))
    tmp.rename(cached)
    return (*out, content_hash)


def open_cifar10(root: str | os.PathLike | None = None, **kwargs) -> StreamedSplits:
    """CIFAR-10 streamed: from the extracted JPEG files, or from torchvision's arrays (decoded per batch)."""
    tv = Path(root) / "cifar-10-batches-py" if root is not None else None
    if tv is not None and (tv / "data_batch_1").is_file():
        x, y, xt, yt, digest = cifar10_arrays(root)
        hwc, hwc_test = x.transpose(0, 2, 3, 1), xt.transpose(0, 2, 3, 1)
        return _streamed(hwc, y, hwc_test, yt, classes=list(CIFAR10_CLASSES), root=tv, name="cifar10",
                         content_hash=digest, **_stream_defaults(kwargs))
    kwargs.setdefault("name", "cifar10")
    return open_image_folder(cifar10_jpeg_root(root=root), **kwargs)


def _stream_defaults(kwargs: dict) -> dict:
    base = {"resolution": None, "seed": 0, "calibration_size": 2048, "validation_size": 5000, "train_limit": None,
            "test_limit": None, "normalization": "dataset", "workers": 2, "crop_fraction": 1.0, "channels": None,
            "train_transform": None}
    unknown = set(kwargs) - set(base) - {"name"}
    if unknown:
        raise DataError(f"unknown options {sorted(unknown)}; valid: {sorted(base)}")
    kwargs.pop("name", None)
    return {**base, **kwargs}


def open_spec(spec: StreamSpec, *, root=None, seed: int = 0, calibration_size: int = 2048,
              validation_size: int = 5000, train_limit: int | None = None,
              test_limit: int | None = None) -> StreamedSplits | DataSplits:
    """Open what a dataset spec describes; ``stream: false`` returns in-memory ``DataSplits``."""
    options = {"resolution": spec.resolution, "seed": seed, "calibration_size": calibration_size,
               "validation_size": validation_size, "train_limit": train_limit, "test_limit": test_limit,
               "normalization": spec.normalization, "workers": spec.workers, "crop_fraction": spec.crop_fraction,
               "channels": spec.channels, "train_transform": spec.train_transform}
    if spec.source == "cifar10":
        data = open_cifar10(root, **options)
    else:
        data = open_image_folder(Path(spec.source).expanduser(), **options)
    return data if spec.stream else data.to_memory()
