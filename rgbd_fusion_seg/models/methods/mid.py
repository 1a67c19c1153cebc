"""MM5 study, method 3: mid-level fusion after layer3.

Separate ResNet-18 encoders for RGB and X (the X encoder takes one channel; with ImageNet weights its first
filters are the RGB filters summed, i.e. grey-level weights). After layer3 the two 256-channel maps are
concatenated and reduced back to 256 channels (1x1 conv-BN-ReLU); the RGB encoder's layer4 continues on the
fused map. The shared U-Net decoder takes its shallow skips (stem, layer1, layer2) from the RGB encoder and
its deep inputs (layer3 skip, layer4 bottom) from the fused stream. The X encoder has no layer4.
"""
from __future__ import annotations

import torch

from ..base import FusionSegmenter, SegOutput
from ..blocks import UNetDecoder
from ..fusion_blocks import ConcatFusion, SingleStageFusionEncoder
from ..registry import register

FUSION_STAGE = 3  # layer3 in ResNetEncoder.stages


@register
class MidFusion(FusionSegmenter):
    method = "mid"

    def __init__(self, num_classes: int, *, pretrained: bool = False):
        super().__init__(num_classes)
        self.encoder = SingleStageFusionEncoder(ConcatFusion, FUSION_STAGE, pretrained=pretrained)
        self.decoder = UNetDecoder(self.encoder.channels, num_classes)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        return SegOutput(self.decoder(self.encoder(rgb, aux), rgb.shape[-2:]))
