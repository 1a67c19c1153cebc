"""MM5 study, method 2: early fusion. RGB and X are concatenated into a 4-channel input of one ResNet-18 U-Net.

With ImageNet weights the first convolution keeps the RGB filters and initialises the X filter as their mean
(blocks.adapt_first_conv); everything else is the RGB baseline's network.
"""
from __future__ import annotations

import torch

from ..base import FusionSegmenter, SegOutput
from ..blocks import ResNetEncoder, UNetDecoder
from ..fusion_blocks import standardise_aux
from ..registry import register


@register
class EarlyFusion(FusionSegmenter):
    method = "early"

    def __init__(self, num_classes: int, *, pretrained: bool = False):
        super().__init__(num_classes)
        self.encoder = ResNetEncoder("resnet18", in_channels=4, pretrained=pretrained)
        self.decoder = UNetDecoder(self.encoder.channels, num_classes)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        inputs = torch.cat([rgb, standardise_aux(aux)], dim=1)
        return SegOutput(self.decoder(self.encoder(inputs), rgb.shape[-2:]))
