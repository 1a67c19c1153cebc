"""MM5 study, method 6: cross-attention fusion at layer3, as the study's public code builds it.

Two complete ResNet-18 encoders, RGB and X (one input channel), each on its own input. At layer3 (1/16) a
CrossModalAttention block (fusion_blocks.py: nn.MultiheadAttention(256, `num_heads` = 4), RGB tokens as
queries, X tokens as keys and values, no residual) gives the decoder's 1/16 skip; the decoder's input is the
concatenation of the two layer4 maps (1024 channels); the 1/8 and 1/4 skips are RGB's.
`positional_encoding` (ours, off by default) adds fixed 2-D sine/cosine codes to queries and keys.
"""
from __future__ import annotations

import torch

from ..base import FusionSegmenter, SegOutput
from ..blocks import UNetDecoder
from ..fusion_blocks import CrossModalAttention, TwoEncoders
from ..registry import register
from .rgb_baseline import mm5_published


@register
class AttentionFusion(FusionSegmenter):
    method = "attention"
    architecture_version = 2  # 2: the study's decoder and attention block (1: projected attention, residual)
    published = mm5_published(25.65, 35.20)

    def __init__(
        self, num_classes: int, *, pretrained: bool = False, num_heads: int = 4, positional_encoding: bool = False
    ):
        super().__init__(num_classes)
        self.encoders = TwoEncoders(pretrained)
        stem, c1, c2, c3, c4 = self.encoders.channels
        self.fusion = CrossModalAttention(c3, num_heads, positional_encoding)
        self.decoder = UNetDecoder(2 * c4, (c3, c2, c1), num_classes)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        r, x = self.encoders(rgb, aux)
        bottom = torch.cat([r[4], x[4]], dim=1)
        skips = [self.fusion(r[3], x[3]), r[2], r[1]]
        return SegOutput(self.decoder(bottom, skips, rgb.shape[-2:]))
