"""MM5 study, method 6: cross-attention fusion at layer3.

RGB and X run in two ResNet-18 encoders up to layer3 (the X encoder takes one channel and has no layer4).
At layer3 (1/16 of the input) a CrossModalAttention block (fusion_blocks.py) lets RGB tokens attend to X
tokens with multi-head attention in a small `attn_dim`; the fused map continues through the RGB encoder's
layer4, and the decoder uses it as the layer3 skip alongside the standard RGB skips (stem, layer1, layer2).
"""
from __future__ import annotations

from functools import partial

import torch

from ..base import FusionSegmenter, SegOutput
from ..blocks import UNetDecoder
from ..fusion_blocks import CrossModalAttention, SingleStageFusionEncoder
from ..registry import register

FUSION_STAGE = 3  # layer3 in ResNetEncoder.stages


@register
class AttentionFusion(FusionSegmenter):
    method = "attention"

    def __init__(
        self,
        num_classes: int,
        *,
        pretrained: bool = False,
        num_heads: int = 4,
        attn_dim: int = 128,
        positional_encoding: bool = True,
    ):
        super().__init__(num_classes)
        make_fusion = partial(
            CrossModalAttention, attn_dim=attn_dim, num_heads=num_heads, positional_encoding=positional_encoding
        )
        self.encoder = SingleStageFusionEncoder(make_fusion, FUSION_STAGE, pretrained=pretrained)
        self.decoder = UNetDecoder(self.encoder.channels, num_classes)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        return SegOutput(self.decoder(self.encoder(rgb, aux), rgb.shape[-2:]))
