"""MM5 study, method 5: squeeze-excitation (adaptive gated) fusion at every encoder scale.

RGB and X run in two ResNet-18 encoders stage by stage. After each stage (stem, layer1..layer4) an
AdaptiveGatedFusion block (fusion_blocks.py) estimates a per-pixel X confidence, weights the X features by
it, applies channel (squeeze-excitation) and spatial attention to the pair and adds the result to the RGB
features. The fused map continues through the RGB encoder and is the decoder's skip at that scale, so the
skip connections carry both modalities weighted by the gates.

Extras: "aux_confidence", Nx1xHxW, the X confidence maps of all five scales upsampled to the input size and
averaged (where the network trusts X).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FusionSegmenter, SegOutput
from ..blocks import ResNetEncoder, UNetDecoder
from ..fusion_blocks import AdaptiveGatedFusion, standardise_aux
from ..registry import register


@register
class SEFusion(FusionSegmenter):
    method = "se"

    def __init__(self, num_classes: int, *, pretrained: bool = False, reduction: int = 16):
        super().__init__(num_classes)
        self.rgb_encoder = ResNetEncoder("resnet18", in_channels=3, pretrained=pretrained)
        self.aux_encoder = ResNetEncoder("resnet18", in_channels=1, pretrained=pretrained)
        self.fusions = nn.ModuleList(AdaptiveGatedFusion(c, reduction) for c in self.rgb_encoder.channels)
        self.decoder = UNetDecoder(self.rgb_encoder.channels, num_classes)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        size = rgb.shape[-2:]
        x_rgb, x_aux = rgb, standardise_aux(aux)
        skips, confidences = [], []
        for rgb_stage, aux_stage, fusion in zip(self.rgb_encoder.stages, self.aux_encoder.stages, self.fusions):
            x_aux = aux_stage(x_aux)
            x_rgb, confidence = fusion(rgb_stage(x_rgb), x_aux)
            skips.append(x_rgb)
            confidences.append(confidence)
        logits = self.decoder(skips, size)
        confidence = torch.stack(
            [F.interpolate(c, size=size, mode="bilinear", align_corners=False) for c in confidences]
        ).mean(dim=0)
        return SegOutput(logits, {"aux_confidence": confidence})
