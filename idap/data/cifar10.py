"""CIFAR-10 in both layouts: the JPEG archive (``train|test/<class>/NNNN.jpg``) and torchvision's batch files.

The JPEG copy (``../shared/datasets/cifar10-jpeg.tar.gz`` here) is extracted once into the cache and read as an
image folder; torchvision's ``ROOT/cifar-10-batches-py`` is read with a numpy-only unpickler (a batch file that
names any other global is refused before anything runs). ``cifar10_arrays`` gives uint8 arrays for the
in-memory path; ``open_cifar10`` streamed splits.

Example:
    >>> data = open_cifar10(None, resolution=64, normalization="imagenet")   # doctest: +SKIP
    >>> data.classes[:3]                                                      # doctest: +SKIP
    ('airplane', 'automobile', 'bird')
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np

from idap.data.image_folder import (
    cache_dir,
    cut_splits,
    extract_archive,
    hash_files,
    list_images,
    open_image_folder,
    sha256_file,
)
from idap.data.splits import DataError
from idap.data.streaming import StreamedSplits

__all__ = ["CIFAR10_CLASSES", "cifar10_arrays", "cifar10_jpeg_root", "open_cifar10"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_JPEG_SHA256 = "f17d98b1fac443baf878cf91d398c3e18c6709436e05799d45e0487c809d694a"
CIFAR10_JPEG_ENV = "IDAP_CIFAR10_JPEG"
BATCHES_DIR = "cifar-10-batches-py"


def _find_archive(root: str | os.PathLike | None) -> Path | None:
    candidates = [os.environ.get(CIFAR10_JPEG_ENV)]
    if root is not None:
        candidates += [Path(root) / "cifar10-jpeg.tar.gz"]
    here = Path(__file__).resolve().parents[2]  # the checkout: its ../shared/datasets holds the shared copy
    candidates += [Path.cwd().parent / "shared/datasets/cifar10-jpeg.tar.gz",
                   here.parent / "shared/datasets/cifar10-jpeg.tar.gz"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def cifar10_jpeg_root(archive: str | os.PathLike | None = None, *, cache: str | os.PathLike | None = None,
                      root: str | os.PathLike | None = None) -> Path:
    """The JPEG copy of CIFAR-10 (``train|test/<class>/NNNN.jpg``) extracted once into the cache.

    The archive is found at ``archive``, ``$IDAP_CIFAR10_JPEG``, ``ROOT/cifar10-jpeg.tar.gz`` or the shared
    ``../shared/datasets/``; it is extracted into ``<cache>/cifar10-jpeg-<sha256[:12]>``, never into the project.
    """
    path = Path(archive) if archive is not None else _find_archive(root)
    if path is None or not path.is_file():
        raise DataError(f"CIFAR-10 JPEG archive not found (looked at {archive or ''} ${CIFAR10_JPEG_ENV}, "
                        f"{root or 'ROOT'}/cifar10-jpeg.tar.gz, ../shared/datasets/cifar10-jpeg.tar.gz); set "
                        f"{CIFAR10_JPEG_ENV}, or use torchvision's format (ROOT/{BATCHES_DIR})")
    digest = sha256_file(path)
    if path.name == "cifar10-jpeg.tar.gz" and digest != CIFAR10_JPEG_SHA256:
        warnings.warn(f"{path}: sha256 {digest} is not the published {CIFAR10_JPEG_SHA256}", stacklevel=2)
    return extract_archive(path, cache=cache or cache_dir(), digest=digest, expect=("train", "test"))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """torchvision's CIFAR-10 batches are pickles of numpy arrays: admit exactly the globals those need."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch file")
        return super().find_class(module, name)


def has_batches(root: str | os.PathLike | None) -> bool:
    """True when ``ROOT/cifar-10-batches-py`` holds torchvision's format."""
    return root is not None and (Path(root) / BATCHES_DIR / "data_batch_1").is_file()


def cifar10_arrays(root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """CIFAR-10 as uint8 arrays ``(x (N,3,32,32), y, x_test, y_test, content_hash)``.

    From torchvision's format (``ROOT/cifar-10-batches-py``, read with a numpy-only unpickler) when present,
    else from the JPEG archive (decoded once, then cached as ``.npz`` beside the extracted files).
    """
    if has_batches(root):
        tv = Path(root) / BATCHES_DIR
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
        files, labels = list_images(jpeg / part, list(CIFAR10_CLASSES))
        x = np.empty((len(files), 3, 32, 32), dtype=np.uint8)
        for i, f in enumerate(files):
            with Image.open(f) as image:
                x[i] = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        out += [x, labels]
    content_hash = hash_files(jpeg, sorted(jpeg.rglob("*.jpg")))
    tmp = jpeg / ".arrays.tmp.npz"
    np.savez(tmp, x=out[0], y=out[1], x_test=out[2], y_test=out[3], content_hash=np.asarray(content_hash))
    tmp.rename(cached)
    return (*out, content_hash)


def batch_pools(root: str | os.PathLike) -> tuple[dict, str]:
    """torchvision's arrays as streaming pools ``{"train" | "test": ((N, H, W, C) uint8, labels)}`` and their hash."""
    x, y, xt, yt, digest = cifar10_arrays(root)
    return {"train": (x.transpose(0, 2, 3, 1), y), "test": (xt.transpose(0, 2, 3, 1), yt)}, digest


def open_cifar10(root: str | os.PathLike | None = None, **kwargs) -> StreamedSplits:
    """CIFAR-10 streamed: from the extracted JPEG files, or from torchvision's arrays (decoded per batch).

    ``kwargs`` are ``open_image_folder``'s options (resolution, seed, sizes, limits, normalization, ...).
    """
    if has_batches(root):
        pools, digest = batch_pools(root)
        source = {"kind": "cifar10-batches", "root": str(Path(root).resolve())}
        return cut_splits(pools, classes=list(CIFAR10_CLASSES), source=source, name="cifar10", content_hash=digest,
                          **_folder_defaults(kwargs))
    kwargs.setdefault("name", "cifar10")
    return open_image_folder(cifar10_jpeg_root(root=root), **kwargs)


def _folder_defaults(kwargs: dict) -> dict:
    base = {"resolution": None, "seed": 0, "calibration_size": 2048, "validation_size": 5000, "train_limit": None,
            "test_limit": None, "normalization": "dataset", "workers": 2, "crop_fraction": 1.0, "channels": None,
            "train_transform": None}
    unknown = set(kwargs) - set(base) - {"name"}
    if unknown:
        raise DataError(f"unknown options {sorted(unknown)}; valid: {sorted(base)}")
    return {**base, **{k: v for k, v in kwargs.items() if k != "name"}}
