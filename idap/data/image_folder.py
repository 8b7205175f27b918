"""Image folders as streamed splits: list an ImageFolder tree, hash it, cut seeded disjoint splits.

``open_image_folder`` lists the files of ``[train/|test/]<class>/*.jpg`` and cuts the same seeded, disjoint
train / calibration / validation / test splits as ``idap.data.sources`` — calibration and validation from the training
files only, the test split from ``test/`` or else a seeded 20 % of the files — but keeps file names and labels,
not pixels (``idap.data.streaming.StreamedSplits``). The content hash covers every file's relative path and bytes.
Archives (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``) are extracted once into the cache, keyed by their sha256.

Example:
    >>> data = open_image_folder("photos/", resolution=64, seed=0, workers=2)   # doctest: +SKIP
    >>> data.describe()["sizes"]                                                  # doctest: +SKIP
    {'train': 3412, 'calibration': 2048, 'validation': 5000, 'test': 2615}
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from idap.data.splits import IMAGE_SUFFIXES, TEST_FRACTION, DataError, clip_holdout
from idap.data.streaming import ImageDataset, StreamedSplits, assemble, decode
from idap.data.transforms import TransformConfig, fixed_normalization, normalization_kind

__all__ = ["ARCHIVE_SUFFIXES", "cache_dir", "extract_archive", "hash_files", "open_image_folder"]

CACHE_ENV = "IDAP_CACHE_DIR"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_STATS_IMAGES = 2000  # images whose pixels give the "dataset" normalisation


def cache_dir() -> Path:
    """Where extracted archives and digests live: ``$IDAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/idap``, else
    ``~/.cache/idap``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "idap"


def open_image_folder(root: str | os.PathLike, *, resolution: int | None = None, seed: int = 0,
                      calibration_size: int = 2048, validation_size: int = 5000, train_limit: int | None = None,
                      test_limit: int | None = None, normalization: str | dict = "dataset", workers: int = 2,
                      crop_fraction: float = 1.0, channels: int | None = None,
                      train_transform: TransformConfig | None = None, name: str | None = None) -> StreamedSplits:
    """List an ImageFolder tree (or an archive of one) and cut streamed splits; no image is decoded here
    except the few that give the resolution / channels and, for ``normalization="dataset"``, the statistics.
    """
    name = name or str(root)
    root = Path(root).expanduser()
    if root.is_file() and root.name.lower().endswith(ARCHIVE_SUFFIXES):
        root = extract_archive(root)
    root = root.resolve()  # file names are recorded relative to it (idap.data.stream_reference)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; expected an ImageFolder tree ([train/|test/]<class>/<images>) "
                        f"or an archive of one ({', '.join(ARCHIVE_SUFFIXES)})")
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    train_dir = root / "train" if has_split else root
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{train_dir}: expected ImageFolder layout, one subfolder of images per class")
    pools = {"train": list_images(train_dir, classes)}
    if has_split:
        pools["test"] = list_images(root / "test", classes)
    listed = [f for items, _ in pools.values() for f in items]
    return cut_splits(pools, classes=classes, source={"kind": "folder", "root": str(root)}, name=name,
                      content_hash=hash_files(root, listed), resolution=resolution, seed=seed, calibration_size=calibration_size, validation_size=validation_size,
                      train_limit=train_limit, test_limit=test_limit, normalization=normalization, workers=workers,
                      crop_fraction=crop_fraction, channels=channels, train_transform=train_transform)


def cut_splits(pools: dict, *, classes, source: dict, name: str, content_hash: str, resolution: int | None,
               seed: int, calibration_size: int, validation_size: int, train_limit: int | None,
               test_limit: int | None, normalization, workers: int, crop_fraction: float, channels: int | None,
               train_transform: TransformConfig | None) -> StreamedSplits:
    """Seeded splits of ``pools`` (``{"train": (items, labels)[, "test": ...]}``), as ``idap.data.sources`` cuts them."""
    for arg, value in (("calibration_size", calibration_size), ("validation_size", validation_size)):
        if value < 0:
            raise DataError(f"{arg} must be >= 0, got {value}")
    normalization_kind(normalization)
    files, labels = pools["train"]
    rng = np.random.default_rng(seed)
    if "test" not in pools:
        perm = rng.permutation(len(labels))
        n_test = max(1, round(TEST_FRACTION * len(perm)))
        test_pool, test_idx, pool = "train", perm[:n_test], perm[n_test:]
    else:
        test_pool, test_idx, pool = "test", np.arange(len(pools["test"][1])), rng.permutation(len(labels))
    n_calib, n_val = clip_holdout(name, len(pool), calibration_size, validation_size)
    calib_idx, val_idx, train_idx = pool[:n_calib], pool[n_calib:n_calib + n_val], pool[n_calib + n_val:]
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"{name}: too few images ({len(labels)}) for non-empty train and test splits")
    train_idx = train_idx[:train_limit]
    test_idx = rng.permutation(test_idx)[:test_limit]
    first = decode(files[0])
    mode = "L" if channels == 1 else "RGB" if channels == 3 else ("RGB" if _any_colour(files) else "L")
    size = resolution or min(first.size)
    tt = train_transform or TransformConfig()
    mean, std = (fixed_normalization(normalization, 1 if mode == "L" else 3)
                 or dataset_statistics(files, np.sort(pool), mode, size, crop_fraction, seed))
    assignments = {"train": ("train", np.sort(train_idx)), "calibration": ("train", np.sort(calib_idx)),
                   "validation": ("train", np.sort(val_idx)), "test": (test_pool, np.sort(test_idx))}
    spec = {"resolution": size, "crop_fraction": crop_fraction, "normalization": normalization,
            "workers": workers, "train_transform": asdict(tt)}
    return assemble(pools, assignments, name=name, classes=classes, mode=mode, size=size,
                    crop_fraction=crop_fraction, transform=tt, mean=mean, std=std, workers=workers,
                    content_hash=content_hash, seed=seed, spec=spec, source=source)


def dataset_statistics(items, pool_idx, mode: str, size: int, crop_fraction: float,
                       seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixels in [0, 1] over a seeded subset of the training pool, in batches."""
    from torchvision import transforms as T

    rng = np.random.default_rng(seed + 17)
    pick = np.sort(rng.permutation(pool_idx)[:_STATS_IMAGES])
    plain = T.Compose([T.Resize(round(size / crop_fraction)), T.CenterCrop(size), T.ToTensor()])
    items = [items[i] for i in pick] if isinstance(items, list) else items[pick]
    loader = DataLoader(ImageDataset(items, np.zeros(len(pick), dtype=np.int64), plain, mode), batch_size=256)
    channels = 1 if mode == "L" else 3
    total, total_sq, count = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64), 0
    for x, _ in loader:
        x = x.double()
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def list_images(directory: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Every image under ``directory/<class>/`` (sorted), with the class's index as its label."""
    extra = sorted({d.name for d in directory.iterdir() if d.is_dir()} - set(classes))
    if extra:
        raise DataError(f"{directory}: class folders {extra} are not in the training classes {classes}")
    files, labels = [], []
    for label, cls in enumerate(classes):
        if (directory / cls).is_dir():
            found = sorted(f for f in (directory / cls).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
    if not files:
        raise DataError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    return files, np.asarray(labels, dtype=np.int64)


def hash_files(root: Path, files: list[Path]) -> str:
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def extract_archive(path: str | os.PathLike, *, cache: str | os.PathLike | None = None, digest: str | None = None,
                    expect: tuple[str, ...] = ()) -> Path:
    """Extract a ``.tar[.gz]`` / ``.tgz`` / ``.zip`` once into ``<cache>/<stem>-<sha256[:12]>`` and return it.

    Staged, then renamed, so a reader never sees half of it; tar's ``data`` filter and a zip path check refuse
    absolute paths, links out of the target and devices. A single top folder holding everything is stepped
    into. ``expect`` names folders that must exist in the result.
    """
    path = Path(path)
    digest = digest or sha256_file(path)
    stem = next((path.name[:-len(s)] for s in ARCHIVE_SUFFIXES if path.name.lower().endswith(s)), path.stem)
    target = Path(cache or cache_dir()) / f"{stem}-{digest[:12]}"
    if target.is_dir():
        return _top(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=target.parent))
    try:
        try:
            if path.name.lower().endswith(".zip"):
                with zipfile.ZipFile(path) as archive:
                    for member in archive.namelist():
                        if not (staging / member).resolve().is_relative_to(staging.resolve()):
                            raise DataError(f"{path}: member {member!r} escapes the extraction folder")
                    archive.extractall(staging)
            else:
                with tarfile.open(path) as tar:
                    tar.extractall(staging, filter="data")
        except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
            raise DataError(f"{path}: unreadable archive ({error})") from error
        missing = [e for e in expect if not (_top(staging) / e).is_dir()]
        if missing:
            raise DataError(f"{path}: expected folders {missing} in the archive")
        try:
            staging.rename(target)
        except OSError:  # another process extracted it first
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return _top(target)


def _top(directory: Path) -> Path:
    """The archive's content: its single top-level folder when it has nothing else."""
    entries = [e for e in directory.iterdir() if not e.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and any(e.is_dir() for e in entries[0].iterdir()):
        return entries[0]
    return directory


def _any_colour(items, probe: int = 16) -> bool:
    """Colour if any of the first ``probe`` images is colour (a full scan would read every file)."""
    for item in items[:probe]:
        if isinstance(item, np.ndarray):
            return item.shape[-1] == 3
        if decode(item).mode not in ("L", "1", "I;16", "I", "F"):
            return True
    return False
