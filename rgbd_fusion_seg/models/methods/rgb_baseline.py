"""MM5 study, method 1: ResNet-18 U-Net on RGB alone; the reference every fusion method is measured against.

The network is the study's public code's (blocks.UNetDecoder: transposed-convolution decoder, skips at 1/16,
1/8 and 1/4, classifier at full resolution); see docs/methods.md.
"""
from __future__ import annotations

import torch

from ..base import FusionSegmenter, PublishedFigures, SegOutput
from ..fusion_blocks import ResNetUNet
from ..registry import register

MM5_CODE = "MM5 study's public code (measured at 480x640)"


def mm5_published(params_m: float, gmacs: float) -> tuple[PublishedFigures, ...]:
    """The figures of one of the study's six models, measured from its public code (32 classes, 480x640)."""
    return (PublishedFigures(source=MM5_CODE, size=(480, 640), num_classes=32, params_m=params_m, gmacs=gmacs),)


@register
class RGBBaseline(FusionSegmenter):
    method = "rgb"
    uses_aux = False
    architecture_version = 2  # 2: the study's transposed-convolution decoder (1: bilinear, stem skip)
    published = mm5_published(13.70, 23.37)

    def __init__(self, num_classes: int, *, pretrained: bool = False):
        super().__init__(num_classes)
        self.unet = ResNetUNet(3, num_classes, pretrained=pretrained)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        return SegOutput(self.unet(rgb))
