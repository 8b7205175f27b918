"""The builtin datasets, by name: Fashion-MNIST (IDX files), scikit-learn's digits and CIFAR-10.

``fetch_dataset`` makes one available locally (it never installs system packages); ``BUILTIN_DATASETS`` maps
each name to its loader, which returns :class:`~idap.data.splits.RawArrays` for ``load_dataset`` to split.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from idap.data.splits import DataError, RawArrays, hash_arrays

__all__ = ["BUILTIN_DATASETS", "fetch_dataset", "list_datasets"]

FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_APT_PACKAGE = "dataset-fashion-mnist"
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # the IDX magic numbers


def list_datasets() -> list[str]:
    """Names of the builtin datasets accepted by `load_dataset` and `fetch_dataset`."""
    return sorted(BUILTIN_DATASETS)


def fetch_dataset(name: str, root: str | Path | None = None) -> Path:
    """Make a builtin dataset available locally and return the directory holding its files.

    Fashion-MNIST IDX files (gz or raw) are looked up in ROOT/FashionMNIST/raw, ROOT and the Debian
    package directory (the setup installs it: ``make data`` / ``.ci/run``); failing that, torchvision
    downloads them into ROOT/FashionMNIST/raw. A library function never installs system packages.
    ROOT defaults to $IDAP_DATA_ROOT or ./data.
    """
    if name == "digits":  # shipped inside scikit-learn
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "data"
    if name == "cifar10":
        return _cifar10_location(root)
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown dataset {name!r}; builtin datasets: {list_datasets()}")
    root = _data_root(root)
    torchvision_dir = root / "FashionMNIST" / "raw"
    for directory in (torchvision_dir, root, FASHION_DEBIAN_DIR):
        if _has_fashion_files(directory):
            return directory
    if _torchvision_download(root) and _has_fashion_files(torchvision_dir):
        return torchvision_dir
    raise DataError(
        f"Fashion-MNIST not found in {torchvision_dir}, {root} or {FASHION_DEBIAN_DIR}, and torchvision could not "
        f"download it. Install the Debian package (`apt-get install -y {FASHION_APT_PACKAGE}`), "
        f"or put the IDX files {', '.join(f + '[.gz]' for f in _FASHION_FILES)} in a directory and pass it "
        "as --data-root (or set IDAP_DATA_ROOT)."
    )


def _data_root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else Path(os.environ.get("IDAP_DATA_ROOT", "data"))


# ---- Fashion-MNIST ----------------------------------------------------------------------------------

def _has_fashion_files(directory: Path) -> bool:
    return all((directory / b).is_file() or (directory / f"{b}.gz").is_file() for b in _FASHION_FILES)


def _torchvision_download(root: Path) -> bool:
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        return True
    except Exception as exc:  # network failures share no common base class
        warnings.warn(f"torchvision could not download Fashion-MNIST into {root}: {exc}", stacklevel=3)
        return False


def _load_fashion(root: str | Path | None) -> RawArrays:
    directory = fetch_dataset("fashion-mnist", root)
    digest = hashlib.sha256()
    arrays = []
    for base, magic in zip(_FASHION_FILES, (_IDX_IMAGES, _IDX_LABELS) * 2, strict=True):
        path = next(p for p in (directory / base, directory / f"{base}.gz") if p.is_file())
        array, content = _read_idx(path, magic)
        digest.update(content)  # uncompressed bytes: Debian recompressed the .gz files
        arrays.append(array)
    x, y, x_test, y_test = arrays
    for images, labels, base in ((x, y, _FASHION_FILES[0]), (x_test, y_test, _FASHION_FILES[2])):
        if len(images) != len(labels):
            raise DataError(f"{directory / base}: {len(images)} images but {len(labels)} labels")
    return RawArrays(x, y.astype(np.int64), x_test, y_test.astype(np.int64), 10, digest.hexdigest())


def _read_idx(path: Path, magic: int) -> tuple[np.ndarray, bytes]:
    """Parse an IDX file: big-endian magic (2051 images, 2049 labels), int32 sizes, then uint8 data."""
    try:
        content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file ({exc})") from exc
    header = 16 if magic == _IDX_IMAGES else 8
    found = int.from_bytes(content[:4], "big") if len(content) >= header else None
    if found != magic:
        raise DataError(f"{path}: malformed IDX file: expected magic number {magic} and a {header}-byte "
                        f"header, got {found} in {len(content)} bytes")
    shape = tuple(int.from_bytes(content[i:i + 4], "big") for i in range(4, header, 4))
    if len(content) - header != int(np.prod(shape)):
        raise DataError(f"{path}: malformed IDX file: header says {shape} ({int(np.prod(shape))} bytes), "
                        f"found {len(content) - header} bytes of data")
    array = np.frombuffer(content, dtype=np.uint8, offset=header)
    return (array.reshape(shape[0], 1, *shape[1:]) if magic == _IDX_IMAGES else array), content


# ---- digits (scikit-learn) and CIFAR-10 ---------------------------------------------------------------

def _load_digits(root: str | Path | None) -> RawArrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.uint8)[:, None]  # values 0..16, stored as float64 by scikit-learn
    y = digits.target.astype(np.int64)
    return RawArrays(x, y, None, None, 10, hash_arrays(x, y))


def _cifar10_location(root: str | Path | None) -> Path:
    from idap.data.cifar10 import BATCHES_DIR, cifar10_jpeg_root

    batches = _data_root(root) / BATCHES_DIR
    return batches if (batches / "data_batch_1").is_file() else cifar10_jpeg_root(root=_data_root(root))


def _load_cifar10(root: str | Path | None) -> RawArrays:
    """CIFAR-10 in memory: torchvision's format under ROOT/cifar-10-batches-py, else the JPEG archive."""
    from idap.data.cifar10 import cifar10_arrays

    x, y, x_test, y_test, digest = cifar10_arrays(_data_root(root))
    return RawArrays(x, y, x_test, y_test, 10, digest)


BUILTIN_DATASETS: dict[str, Callable[[str | Path | None], RawArrays]] = {
    "cifar10": _load_cifar10,
    "digits": _load_digits,
    "fashion-mnist": _load_fashion,
}
