"""Stem surgery shared by the architectures: small images get CIFAR-style stems, pools that would shrink a map
below 1x1 are dropped.

For images of at most ``SMALL_IMAGE`` pixels the ImageNet stems are replaced by 3x3 stride-1 convs (the CIFAR
convention), keeping the module names, so the same names work on 8x8 digits, 28x28 Fashion-MNIST and 32x32
CIFAR.
"""

from __future__ import annotations

from torch import nn

__all__ = ["SMALL_IMAGE", "drop_pools", "is_small", "new_conv", "stem"]

SMALL_IMAGE = 64  # images up to this side get CIFAR-style stems (3x3 stride 1, no stem max-pool)


def is_small(image_size: int) -> bool:
    return image_size <= SMALL_IMAGE


def new_conv(old: nn.Conv2d, in_channels: int, kernel: int, stride: int, padding: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, old.out_channels, kernel, stride, padding, bias=old.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def stem(old: nn.Conv2d, in_channels: int, image_size: int) -> nn.Conv2d:
    """The stock stem for large images, a 3x3 stride-1 conv for small ones; either takes in_channels."""
    if is_small(image_size):
        return new_conv(old, in_channels, 3, 1, 1)
    return new_conv(old, in_channels, old.kernel_size[0], old.stride[0], old.padding[0])


def drop_pools(layers: nn.Sequential, size: int, downsamplers: tuple[type, ...]) -> int:
    """Replace each 2x pooling that would shrink a ``size``-sided map below 1x1 by Identity; return final size."""
    for key, layer in layers.named_children():
        if isinstance(layer, downsamplers):
            if size < 2:
                setattr(layers, key, nn.Identity())
            else:
                size //= 2
    return size

