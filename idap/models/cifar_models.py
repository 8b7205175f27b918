"""CIFAR-style networks written here: a VGG-style small CNN and the ResNet-(6n+2) family, registered by name.

``resnet20`` / ``resnet56`` are He et al. 2016's CIFAR ResNets; ``resnet_tiny`` is a 12-layer one for quick
runs; ``cnn_small`` a conv-bn-relu stack. Attribute names follow torchvision's ResNet, so the pruning stages
and ``idap.models.prunable`` treat them like torchvision's.
"""

from __future__ import annotations

import torch
from torch import nn

from idap.models.registry import ModelError, register_model
from idap.models.stems import drop_pools

__all__ = ["BasicBlock", "CifarResNet", "SmallCNN"]


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """VGG-style conv-bn-relu 32-32-pool-64-64-pool-128, global average pool, 128-512-classes head."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32), *_conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
        )  # fmt: skip
        drop_pools(self.features, image_size, (nn.MaxPool2d,))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """CIFAR ResNet block, attribute names as torchvision's; option-B (1x1 conv + BN) shortcut on shape change."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. 2016 for small images: 3 stages of n blocks, widths 16/32/64."""

    def __init__(self, depth: int, num_classes: int, in_channels: int, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(in_channels, w1, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(w1, w1, n, 1)
        self.layer2 = self._stage(w1, w2, n, 2)
        self.layer3 = self._stage(w2, w3, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(inplanes, planes, stride), *(BasicBlock(planes, planes) for _ in range(blocks - 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("cnn_small")
def cnn_small(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SmallCNN(num_classes, in_channels, image_size)


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)


@register_model("resnet14_half")
def resnet14_half(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """ResNet-14 at half width (8 / 16 / 32), four shape-preserving blocks: the converged CPU preset's network
    (benchmarks.presets, issue 23). Measured on the 2-core VM, 1 thread, batch 128 at 28x28 under load: 0.17 s a
    training step (ResNet-20 0.61 s, ResNet-20 at half width 0.28 s), 73 s a Fashion-MNIST epoch."""
    return CifarResNet(14, num_classes, in_channels, widths=(8, 16, 32))


@register_model("resnet_tiny")
def resnet_tiny(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A 12-layer CIFAR-style ResNet for quick runs (``make demo``): a 16-wide stem, then stages of widths
    32 / 64 / 64 (the first two downsample), with three stride-1 same-width blocks that stage 2 may remove
    (``layer1.1``, ``layer2.1``, ``layer3.0``). About cnn_small's training cost at 28x28."""
    model = CifarResNet(8, num_classes, in_channels)
    model.layer1 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
    model.layer2 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64))
    model.layer3 = nn.Sequential(BasicBlock(64, 64))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model

