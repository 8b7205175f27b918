"""Dataset spec files: a YAML / JSON file, passed wherever a dataset is named (``--dataset cifar.yaml``), that
says which images to stream and how::

    source: cifar10          # an ImageFolder directory or archive (.tar[.gz], .tgz, .zip), or cifar10
    resolution: 64           # side of the square input
    normalization: imagenet  # dataset | imagenet | {mean: [...], std: [...]} (pixels in [0, 1])
    stream: true             # false: decode everything into tensors (faster for small data)
    workers: 2
    train_transform: {flip: true, crop_padding: 4, random_resized_crop: false}

An ``s3://`` source is fetched at the edge (``components.services.sources.resolve_dataset``: downloaded once, cached by
content), which hands this module a spec whose source is the local copy and whose ``origin`` names the URI.

Example:
    >>> data = open_spec(load_spec("cifar.yaml"), seed=0)     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from idap.data.cifar10 import open_cifar10
from idap.data.image_folder import open_image_folder
from idap.data.splits import DataError, DataSplits
from idap.data.streaming import StreamedSplits
from idap.data.transforms import TransformConfig, normalization_kind

__all__ = ["StreamSpec", "load_spec", "open_spec"]


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
    origin: str | None = None  # where ``source`` was fetched from (an s3:// URI), recorded for lineage

    def __post_init__(self) -> None:
        if self.resolution is not None and self.resolution < 1:
            raise DataError(f"resolution must be >= 1, got {self.resolution}")
        if not 0 < self.crop_fraction <= 1:
            raise DataError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.workers < 0:
            raise DataError(f"workers must be >= 0, got {self.workers}")
        if self.channels not in (None, 1, 3):
            raise DataError(f"channels must be 1 or 3, got {self.channels}")
        normalization_kind(self.normalization)

    @classmethod
    def from_dict(cls, data: dict, where: str = "dataset spec") -> StreamSpec:
        if not isinstance(data, dict) or "source" not in data:
            raise DataError(f"{where}: expected a mapping with at least 'source', got {data!r}")
        valid = set(cls.__dataclass_fields__)
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

    def to_dict(self) -> dict:
        """The spec as ``from_dict`` reads it (JSON-able)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "train_transform"}
        out["train_transform"] = {k: getattr(self.train_transform, k) for k in TransformConfig.__dataclass_fields__}
        return out


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
    if spec.source.startswith("s3://"):
        return spec
    source = Path(spec.source).expanduser()
    if not source.is_absolute() and (path.parent / source).exists():
        spec = replace(spec, source=str(path.parent / source))
    return spec


def open_spec(spec: StreamSpec, *, root=None, seed: int = 0, calibration_size: int = 2048,
              validation_size: int = 5000, train_limit: int | None = None,
              test_limit: int | None = None) -> StreamedSplits | DataSplits:
    """Open what a dataset spec describes; ``stream: false`` returns in-memory ``DataSplits``."""
    if spec.source.startswith("s3://"):
        raise DataError(f"dataset spec source {spec.source}: s3:// is fetched by the pipeline / the `idap "
                        "pipeline` commands (components.services.sources.resolve_dataset); in Python, download it and give "
                        "the local folder or archive as source")
    options = {"resolution": spec.resolution, "seed": seed, "calibration_size": calibration_size,
               "validation_size": validation_size, "train_limit": train_limit, "test_limit": test_limit,
               "normalization": spec.normalization, "workers": spec.workers, "crop_fraction": spec.crop_fraction,
               "channels": spec.channels, "train_transform": spec.train_transform}
    if spec.source == "cifar10":
        data = open_cifar10(root, **options)
    else:
        data = open_image_folder(Path(spec.source).expanduser(), name=spec.origin, **options)
    if spec.origin:
        data.spec["origin"] = spec.origin
    return data if spec.stream else data.to_memory()
