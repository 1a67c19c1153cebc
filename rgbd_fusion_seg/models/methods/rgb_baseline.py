"""MM5 study, method 1: ResNet-18 U-Net on RGB alone; the reference every fusion method is measured against."""
from __future__ import annotations

import torch

from ..base import FusionSegmenter, SegOutput
from ..blocks import ResNetEncoder, UNetDecoder
from ..registry import register


@register
class RGBBaseline(FusionSegmenter):
    method = "rgb"
    uses_aux = False

    def __init__(self, num_classes: int, *, pretrained: bool = False):
        super().__init__(num_classes)
        self.encoder = ResNetEncoder("resnet18", in_channels=3, pretrained=pretrained)
        self.decoder = UNetDecoder(self.encoder.channels, num_classes)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        return SegOutput(self.decoder(self.encoder(rgb), rgb.shape[-2:]))
