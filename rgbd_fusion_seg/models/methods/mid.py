"""MM5 study, method 3: mid-level fusion by concatenation.

`fusion="code"` (default; the study's public code, which produced its tables): two complete ResNet-18
encoders, RGB and X (one input channel; grey-level ImageNet filters when pretrained), each on its own input.
The decoder's input is the concatenation of the two layer4 maps (1024 channels), its 1/8 skip the
concatenation of the two layer2 maps; the 1/16 and 1/4 skips are RGB's layer3 and layer1.

`fusion="text"` (the study's text: "fusion at layer3 by concatenation"): the X encoder stops at layer3; the
two layer3 maps are concatenated and reduced back to 256 channels (1x1 conv-BN-ReLU); RGB's layer4 continues
on the fused map, which is also the 1/16 skip; the other skips are RGB's. Same decoder.
"""
from __future__ import annotations

import torch

from ..base import FusionSegmenter, SegOutput
from ..blocks import UNetDecoder
from ..fusion_blocks import ConcatFusion, TwoEncoders, standardise_aux
from ..registry import register
from .rgb_baseline import mm5_published

FORMS = ("code", "text")


@register
class MidFusion(FusionSegmenter):
    method = "mid"
    architecture_version = 2  # 2: the study's decoder; fusion at layer2 + layer4 ("code"), 1: layer3 only
    published = mm5_published(25.42, 34.31)

    def __init__(self, num_classes: int, *, pretrained: bool = False, fusion: str = "code"):
        super().__init__(num_classes)
        if fusion not in FORMS:
            raise ValueError(f"mid's fusion must be one of {', '.join(FORMS)}, got {fusion!r}")
        self.fusion_form = fusion
        self.encoders = TwoEncoders(pretrained, aux_stages=5 if fusion == "code" else 4)
        stem, c1, c2, c3, c4 = self.encoders.channels
        if fusion == "code":
            self.decoder = UNetDecoder(2 * c4, (c3, 2 * c2, c1), num_classes)
        else:
            self.fuse = ConcatFusion(c3)
            self.decoder = UNetDecoder(c4, (c3, c2, c1), num_classes)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        if self.fusion_form == "code":
            r, x = self.encoders(rgb, aux)
            bottom, skips = torch.cat([r[4], x[4]], dim=1), [r[3], torch.cat([r[2], x[2]], dim=1), r[1]]
        else:
            stages = self.encoders.rgb_encoder.stages
            r = self.encoders.rgb_encoder(rgb, stop=4)
            fused = self.fuse(r[3], self.encoders.aux_encoder(standardise_aux(aux))[3])
            bottom, skips = stages[4](fused), [fused, r[2], r[1]]
        return SegOutput(self.decoder(bottom, skips, rgb.shape[-2:]))
