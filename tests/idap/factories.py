"""Model factories for tests of user-model paths (``tests.idap.factories:tiny_net``): code the suite trusts."""

from torch import nn


def tiny_net(num_classes: int, in_channels: int, image_size: int, width: int = 8) -> nn.Module:
    """conv-bn-relu x2, global pool, linear: a user's own architecture in miniature."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
