"""Backbones cut into stages for RSFNet's asymmetric encoder: torchvision ResNets (blocks.ResNetEncoder) and
DenseNets, both with optional ImageNet weights from the torch hub folder (never downloaded at run time).

`build_encoder(arch, pretrained)` returns a module with `stages` (stem at /2, then /4, /8, /16, /32) and
`channels` (the width of each stage's output), so a method can run two of them stage by stage.
"""
from __future__ import annotations

import re

import torch
import torchvision
from torch import nn

from .blocks import ResNetEncoder, StagedEncoder, load_imagenet_state

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DENSENETS = ("densenet121", "densenet161", "densenet169", "densenet201")
ENCODERS = RESNETS + DENSENETS

# The ImageNet files keep DenseNet's pre-0.4 names ("norm.1" for "norm1"); torchvision renames them on load.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _densenet_state(arch: str) -> dict[str, torch.Tensor]:
    state = load_imagenet_state(arch)
    renamed = {}
    for key, value in state.items():
        match = _OLD_DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return {k: v for k, v in renamed.items() if not k.startswith("classifier.")}


def _block_width(block: nn.Module) -> int:
    """Output channels of a torchvision _DenseBlock: its last layer's input plus that layer's growth."""
    last = list(block.children())[-1]
    return last.norm1.num_features + last.conv2.out_channels


class DenseNetEncoder(StagedEncoder):
    """A torchvision DenseNet in five stages: stem (/2), dense block 1 (/4), transition + block 2 (/8), 3 (/16),
    4 with the final norm and ReLU (/32). Each stage's output is its dense block's (before the transition)."""

    def __init__(self, arch: str = "densenet121", pretrained: bool = False):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained:
            missing, unexpected = net.load_state_dict(_densenet_state(arch), strict=False)
            if unexpected or any(not k.startswith("classifier.") for k in missing):
                raise RuntimeError(
                    f"ImageNet file for {arch} does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
        f = net.features
        self.stages = nn.ModuleList(
            [
                nn.Sequential(f.conv0, f.norm0, f.relu0),
                nn.Sequential(f.pool0, f.denseblock1),
                nn.Sequential(f.transition1, f.denseblock2),
                nn.Sequential(f.transition2, f.denseblock3),
                nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU(inplace=True)),
            ]
        )
        blocks = (f.denseblock1, f.denseblock2, f.denseblock3, f.denseblock4)
        self.channels = (f.conv0.out_channels, *(_block_width(b) for b in blocks))


def build_encoder(arch: str, pretrained: bool = False) -> nn.Module:
    """A 3-channel-input encoder by torchvision name (see ENCODERS)."""
    if arch in RESNETS:
        return ResNetEncoder(arch, in_channels=3, pretrained=pretrained)
    if arch in DENSENETS:
        return DenseNetEncoder(arch, pretrained=pretrained)
    raise ValueError(f"encoder {arch!r} is not one of {', '.join(ENCODERS)}")
