"""MM5 study, method 5: squeeze-excitation (adaptive gated) fusion at layer1..layer4, as its public code builds it.

Two complete ResNet-18 encoders, RGB and X (one input channel), each on its own input. At each of layer1..4 an
AdaptiveGatedFusion block (fusion_blocks.py) weights the X map by a per-pixel confidence, mixes it with the
RGB map by two per-image gate weights (starting at "trust RGB") and applies channel (SE) and spatial
attention. The fused maps feed only the decoder: layer4's is its input, layer3..1's its skips.

Warm-up: the X encoder's stem, layer1 and layer2 start frozen and are released at step `aux_freeze_steps`
(before_train_step); trainable_parameters() lists them from the start, so the optimiser holds them (AdamW
skips a parameter without a gradient until it has one). 0 trains them from the first step.

Extras: "aux_confidence", Nx1xHxW, the X confidence maps of the four scales upsampled to the input size and
averaged (where the network trusts X).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FusionSegmenter, SegOutput
from ..blocks import UNetDecoder
from ..fusion_blocks import AdaptiveGatedFusion, TwoEncoders
from ..registry import register
from .rgb_baseline import mm5_published

FROZEN_AUX_STAGES = 3  # stem, layer1, layer2 of the X encoder


@register
class SEFusion(FusionSegmenter):
    method = "se"
    architecture_version = 2  # 2: the study's gate (1: SE on the concatenation, residual) and decoder
    published = mm5_published(25.74, 34.70)

    def __init__(self, num_classes: int, *, pretrained: bool = False, reduction: int = 16, aux_freeze_steps: int = 80):
        super().__init__(num_classes)
        if aux_freeze_steps < 0:
            raise ValueError(f"aux_freeze_steps must be >= 0, got {aux_freeze_steps}")
        # 80 steps: 10 epochs of the study's recipe (248 frames, batch 32); the study gives no number.
        self.aux_freeze_steps = int(aux_freeze_steps)
        self.encoders = TwoEncoders(pretrained)
        stem, c1, c2, c3, c4 = self.encoders.channels
        self.fusions = nn.ModuleList(AdaptiveGatedFusion(c, reduction) for c in (c1, c2, c3, c4))
        self.decoder = UNetDecoder(c4, (c3, c2, c1), num_classes)
        self._set_aux_frozen(self.aux_freeze_steps > 0)

    def _warmup_parameters(self) -> list[nn.Parameter]:
        return [p for stage in self.encoders.aux_encoder.stages[:FROZEN_AUX_STAGES] for p in stage.parameters()]

    def _set_aux_frozen(self, frozen: bool) -> None:
        for p in self._warmup_parameters():
            p.requires_grad_(not frozen)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.named_parameters())  # the frozen part too: it joins the optimiser before its release

    def before_train_step(self, step: int) -> None:
        self._set_aux_frozen(step < self.aux_freeze_steps)  # by step, so a resumed run is frozen or not alike

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        size = rgb.shape[-2:]
        r, x = self.encoders(rgb, aux)
        fused, confidences = [], []
        for fusion, f_rgb, f_aux in zip(self.fusions, r[1:], x[1:]):
            out, confidence, _ = fusion(f_rgb, f_aux)
            fused.append(out)
            confidences.append(F.interpolate(confidence, size=size, mode="bilinear", align_corners=False))
        logits = self.decoder(fused[3], [fused[2], fused[1], fused[0]], size)
        return SegOutput(logits, {"aux_confidence": torch.stack(confidences).mean(dim=0)})
