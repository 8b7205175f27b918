"""How streamed images become tensors: evaluation (resize + centre crop), training augmentation, normalisation.

Evaluation always resizes to ``size / crop_fraction`` and centre-crops ``size``. Training adds, as the dataset
spec's ``train_transform`` says, a pad-and-random-crop (CIFAR style) or a random-resized crop (ImageNet style)
and a horizontal flip. Normalisation is ``(pixel / 255 - mean) / std`` per channel, with the mean and std the
dataset's own (``idap.data.image_folder`` measures them), ImageNet's, or given.

Example:
    >>> eval_transform(32, 1.0, IMAGENET_MEAN, IMAGENET_STD)          # doctest: +SKIP
    Compose(Resize(32), CenterCrop(32), ToTensor(), Normalize(...))
"""

from __future__ import annotations

from dataclasses import dataclass

from idap.data.splits import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TransformConfig", "eval_transform", "normalization_kind",
           "train_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def eval_transform(size: int, crop_fraction: float, mean, std):
    """Resize to ``size / crop_fraction``, centre-crop ``size``, scale to [0, 1], normalise."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(round(size / crop_fraction)), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])


def train_transform(size: int, crop_fraction: float, tt: TransformConfig, mean, std):
    """The evaluation geometry plus the augmentation ``tt`` asks for."""
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


def normalization_kind(value) -> str:
    """``"dataset"``, ``"imagenet"`` or ``"explicit"`` (a ``{mean, std}`` mapping); anything else is refused."""
    if value in ("dataset", "imagenet"):
        return value
    if isinstance(value, dict) and set(value) == {"mean", "std"}:
        return "explicit"
    raise DataError(f"normalization must be 'dataset', 'imagenet' or {{mean: [...], std: [...]}} of pixels in "
                    f"[0, 1], got {value!r}")


def fixed_normalization(value, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean and std for ``imagenet`` or an explicit mapping; None for ``dataset`` (measured from the images)."""
    kind = normalization_kind(value)
    if kind == "imagenet":
        if channels != 3:
            raise DataError("normalization 'imagenet' needs colour images; these are single-channel")
        return IMAGENET_MEAN, IMAGENET_STD
    if kind == "explicit":
        mean, std = tuple(float(v) for v in value["mean"]), tuple(float(v) for v in value["std"])
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise DataError(f"normalization needs {channels} means and {channels} positive stds, got {value!r}")
        return mean, std
    return None
