"""MM5 study, method 4: late fusion. Two complete ResNet-18 U-Nets (the study's decoder), one on RGB and one on
X; their logits are averaged.

The X network takes one channel; with ImageNet weights its first filters are the RGB filters summed (the
study's code takes their mean; the sum keeps the response to a grey image, see docs/methods.md). Each
branch's logits are returned in the extras ("rgb_logits", "aux_logits") for analysis; the default loss trains
the averaged logits only.
"""
from __future__ import annotations

import torch

from ..base import FusionSegmenter, SegOutput
from ..fusion_blocks import ResNetUNet, standardise_aux
from ..registry import register
from .rgb_baseline import mm5_published


@register
class LateFusion(FusionSegmenter):
    method = "late"
    architecture_version = 2  # 2: the study's transposed-convolution decoder in both branches
    published = mm5_published(27.39, 46.26)

    def __init__(self, num_classes: int, *, pretrained: bool = False):
        super().__init__(num_classes)
        self.rgb_branch = ResNetUNet(3, num_classes, pretrained=pretrained)
        self.aux_branch = ResNetUNet(1, num_classes, pretrained=pretrained)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        rgb_logits = self.rgb_branch(rgb)
        aux_logits = self.aux_branch(standardise_aux(aux))
        logits = (rgb_logits + aux_logits) / 2
        return SegOutput(logits, {"rgb_logits": rgb_logits, "aux_logits": aux_logits})
