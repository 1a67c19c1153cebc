"""MM5 study, method 2: early fusion. RGB and X are concatenated into a 4-channel input of one ResNet-18 U-Net
(the baseline's network otherwise, as the study's code builds it).

With ImageNet weights the first convolution keeps the RGB filters and initialises the X filter as their mean
(blocks.adapt_first_conv).
"""
from __future__ import annotations

import torch

from ..base import FusionSegmenter, SegOutput
from ..fusion_blocks import ResNetUNet, standardise_aux
from ..registry import register
from .rgb_baseline import mm5_published


@register
class EarlyFusion(FusionSegmenter):
    method = "early"
    architecture_version = 2  # 2: the study's transposed-convolution decoder
    published = mm5_published(13.70, 23.61)

    def __init__(self, num_classes: int, *, pretrained: bool = False):
        super().__init__(num_classes)
        self.unet = ResNetUNet(4, num_classes, pretrained=pretrained)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        return SegOutput(self.unet(torch.cat([rgb, standardise_aux(aux)], dim=1)))
