"""Splits read lazily through a DataLoader: ``StreamedSplits``, the stand-in for ``DataSplits`` when the images
do not fit in memory.

``StreamedSplits`` keeps file names (or rows of a uint8 array) and labels, not pixels: ``train_x`` / ``val_x`` /
``test_x`` are ``StreamedSplit`` objects (``len()``, ``batches()``), the ``*_y`` label tensors, and
``calib_x`` / ``calib_y`` tensors — the calibration split is decoded once, since it is small
(``calibration_size`` images) and every score pass reads it. ``idap.prune.recovery`` and ``idap.measure.metrics.accuracy``
take a ``StreamedSplit`` where they take tensors, so the stages run unchanged. Batches are decoded by
DataLoader workers: the evaluation transform, or the training one with ``augment=True`` (``idap.data.transforms``).

Where the splits come from: ``idap.data.image_folder.open_image_folder`` (an ImageFolder tree),
``idap.data.cifar10.open_cifar10``, or a dataset spec (``idap.data.spec``, ``--dataset spec.yaml``). Between
pipeline steps they travel as a reference (``idap.data.stream_reference``, through ``idap.data.sources.save_splits``).
Small datasets are usually faster as tensors: ``StreamedSplits.to_memory()`` converts.

Example:
    >>> from idap.data.image_folder import open_image_folder
    >>> data = open_image_folder("photos/", resolution=64, seed=0)          # doctest: +SKIP
    >>> for x, y in data.train_x.batches(32, shuffle=True, seed=0, augment=True):  # doctest: +SKIP
    ...     break
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from idap.data.splits import SPLIT_FIELDS, DataError, DataSplits
from idap.data.transforms import TransformConfig, eval_transform, train_transform

__all__ = ["ImageDataset", "StreamedSplit", "StreamedSplits", "assemble"]


class ImageDataset(Dataset):
    """Images from files (or rows of a uint8 (N, H, W, C) array), decoded and transformed one at a time."""

    def __init__(self, items: Sequence, labels: np.ndarray, transform, mode: str, seed: int | None = None):
        self.items, self.labels, self.transform, self.mode, self.seed = items, labels, transform, mode, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = decode(self.items[i], self.mode)
        if self.seed is None:
            return self.transform(image), int(self.labels[i])
        # Seeded per sample: the same augmentation whichever worker (or the main process) draws it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + i) % 2**63)
            return self.transform(image), int(self.labels[i])


def decode(item, mode: str | None = None):
    """A PIL image from a file path or a (H, W, C) uint8 array, converted to ``mode`` when given."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, np.ndarray):
        image = Image.fromarray(item[..., 0] if item.shape[-1] == 1 else item)
        return image.convert(mode) if mode else image
    try:
        with Image.open(item) as opened:
            opened.load()
            return opened.convert(mode) if mode else opened.copy()
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"{item}: unreadable image ({error})") from error


class StreamedSplit:
    """One split as files + labels: ``len()``, ``labels``, ``batches()``; ``split[:n]`` decodes into a tensor."""

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
        return ImageDataset(self.items, self.labels.numpy(), self._train if augment else self._eval, self.mode,
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
        loader = DataLoader(self.dataset(augment, augment_seed), batch_size=batch_size, shuffle=shuffle,
                            drop_last=drop_last, num_workers=self.workers, generator=generator,
                            persistent_workers=False, prefetch_factor=2 if self.workers else None)
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
    """``DataSplits``' interface over streamed images (see the module docstring).

    ``pools`` (``{"train" | "test": (items, labels)}``) and ``assignments`` (``{split: (pool, indices)}``) say
    which images each split holds; ``source`` (``{"kind", "root"}``) where the pools were read. Together they
    are the reference ``idap.data.sources.save_splits`` writes instead of pixels.
    """

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
    source: dict = field(default_factory=dict)
    pools: dict = field(default_factory=dict, repr=False)
    assignments: dict = field(default_factory=dict, repr=False)

    @property
    def train_y(self) -> Tensor:
        return self.train_x.labels

    @property
    def val_y(self) -> Tensor:
        return self.val_x.labels

    @property
    def test_y(self) -> Tensor:
        return self.test_x.labels

    @property
    def mode(self) -> str:
        return self.train_x.mode

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
        sizes = {name: len(self.split(name)) for name in SPLIT_FIELDS}
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


def assemble(pools: dict, assignments: dict, *, name: str, classes, mode: str, size: int, crop_fraction: float,
             transform: TransformConfig, mean, std, workers: int, content_hash: str, seed: int, spec: dict,
             source: dict) -> StreamedSplits:
    """``StreamedSplits`` from pools of images and each split's (pool, sorted indices): the one constructor that
    opening a dataset and reading a reference share, so both give the same splits."""
    eval_tf = eval_transform(size, crop_fraction, mean, std)
    train_tf = train_transform(size, crop_fraction, transform, mean, std)

    def split(split_name: str) -> StreamedSplit:
        pool, idx = assignments[split_name]
        items, labels = pools[pool]
        idx = np.asarray(idx, dtype=np.int64)
        picked = [items[i] for i in idx] if isinstance(items, list) else items[idx]
        return StreamedSplit(picked, np.asarray(labels)[idx], eval_transform=eval_tf, train_transform=train_tf,
                             mode=mode, workers=workers, name=f"{name}:{split_name}")

    return StreamedSplits(name=name, train_x=split("train"), val_x=split("validation"), test_x=split("test"),
                          calib_source=split("calibration"), num_classes=len(classes),
                          in_channels=1 if mode == "L" else 3, image_size=size, content_hash=content_hash,
                          seed=seed, mean=tuple(mean), std=tuple(std), classes=tuple(classes), spec=spec,
                          source=source, pools=pools, assignments=assignments)
