"""RSFNet (Li et al., "Residual Spatial Fusion Network for RGB-Thermal Semantic Segmentation"; docs/methods.md).

- Asymmetric encoder (III-B): a large RGB backbone and a small one for the one-channel modality, from
  torchvision: `encoders="resnet50-resnet18"` (the paper's default for its ablations), "resnet101-resnet34"
  (its best), "densenet161-densenet121". The one-channel image is repeated to three channels so that the
  ImageNet filters fit (IV-B). Inputs are expected in [0, 1] (the paper's normalisation; set
  data.rgb_mean [0, 0, 0] and rgb_std [1, 1, 1]).
- Confidence heads (III-C): p_hat = sigmoid(fc(fc(GAP(F_4)))) per encoder, regressed onto the saliency
  pseudo-labels (offline/pseudo_labels.py) with a smooth-L1 loss (eq. 8-9).
- RSF module (III-D) at each of the four stages, reducing both modalities to {64, 128, 256, 256} channels,
  fusing them spatially and gating the fused part by the confidence (rsf_blocks.py); its KxK convolution
  is trained multi-branch and merged for inference (reparam.py, eq. 5): `deploy()` returns the merged copy.
- Two-stream decoder with multi-scale fusion (III-E).
- Loss (eq. 6): L = L_seg + lambda * (L_reg_rgb + L_reg_aux), lambda = `reg_weight` = 0.3. L_seg is the
  segmentation loss the trainer passes in (the paper's is class-weighted cross-entropy, w_c = 1/ln(1.05+p_c)).

Extras: "confidence", N x 2, the confidence scores (p_hat_rgb, p_hat_aux) of each image.
Training batches need "confidence_target" (N x 2), which `extra_targets` asks the trainer to provide.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FusionSegmenter, SegOutput
from ..encoders import build_encoder
from ..reparam import deploy_copy
from ..registry import register
from ..rsf_blocks import ConfidenceHead, ResidualSpatialFusion, TwoStreamDecoder

# The encoder pairs of the paper (section IV-B, Table III), RGB first.
PAPER_ENCODER_PAIRS = ("resnet50-resnet18", "densenet161-densenet121", "resnet101-resnet34")


def parse_encoders(encoders: str) -> tuple[str, str]:
    rgb, sep, aux = str(encoders).partition("-")
    if not sep or not rgb or not aux:
        raise ValueError(f"encoders must look like 'rgbnet-auxnet' (e.g. 'resnet50-resnet18'), got {encoders!r}")
    return rgb, aux


@register
class RSFNet(FusionSegmenter):
    method = "rsfnet"
    extra_targets = ("confidence",)

    def __init__(
        self,
        num_classes: int,
        *,
        encoders: str = "resnet50-resnet18",
        pretrained: bool = False,
        kernel_size: int = 5,
        stage_channels: tuple[int, ...] = (64, 128, 256, 256),
        fusion_channels: int = 64,
        confidence_hidden: int = 128,
        reg_weight: float = 0.3,
    ):
        super().__init__(num_classes)
        if len(stage_channels) != 4:
            raise ValueError(f"stage_channels needs one width per encoder stage (4), got {list(stage_channels)}")
        if reg_weight < 0:
            raise ValueError(f"reg_weight (lambda) must be >= 0, got {reg_weight}")
        rgb_arch, aux_arch = parse_encoders(encoders)
        self.reg_weight = float(reg_weight)
        self.rgb_encoder = build_encoder(rgb_arch, pretrained)
        self.aux_encoder = build_encoder(aux_arch, pretrained)
        self.rgb_confidence = ConfidenceHead(self.rgb_encoder.channels[-1], confidence_hidden)
        self.aux_confidence = ConfidenceHead(self.aux_encoder.channels[-1], confidence_hidden)
        # Stage 1..4 (the stem is not fused); the 1x1 reductions absorb any width mismatch of the encoders.
        self.fusions = nn.ModuleList(
            ResidualSpatialFusion(c_rgb, c_aux, c, fusion_channels, kernel_size)
            for c_rgb, c_aux, c in zip(self.rgb_encoder.channels[1:], self.aux_encoder.channels[1:], stage_channels)
        )
        self.decoder = TwoStreamDecoder(stage_channels, num_classes)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        rgb_features = self.rgb_encoder(rgb)[1:]
        aux_features = self.aux_encoder(aux.expand(-1, 3, -1, -1))[1:]
        p_rgb = self.rgb_confidence(rgb_features[-1])
        p_aux = self.aux_confidence(aux_features[-1])
        enhanced_rgb, enhanced_aux = [], []
        for fusion, f_rgb, f_aux in zip(self.fusions, rgb_features, aux_features):
            if f_aux.shape[-2:] != f_rgb.shape[-2:]:  # odd input sizes round differently in mixed families
                f_aux = F.interpolate(f_aux, size=f_rgb.shape[-2:], mode="bilinear", align_corners=False)
            out_rgb, out_aux = fusion(f_rgb, f_aux, p_rgb, p_aux)
            enhanced_rgb.append(out_rgb)
            enhanced_aux.append(out_aux)
        logits = self.decoder(enhanced_rgb, enhanced_aux)
        logits = F.interpolate(logits, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        return SegOutput(logits, {"confidence": torch.cat([p_rgb, p_aux], dim=1)})

    def compute_loss(self, output: SegOutput, batch: dict, seg_loss) -> tuple[torch.Tensor, dict[str, float]]:
        seg = seg_loss(output.logits, batch["label"])
        if self.reg_weight == 0:
            return seg, {"seg": float(seg.detach())}
        target = batch.get("confidence_target")
        if target is None:
            raise KeyError(
                "rsfnet's confidence regression needs batch['confidence_target'] (N x 2 saliency pseudo-labels, "
                "offline/pseudo_labels.py); set model.options.reg_weight: 0 to train without it"
            )
        predicted = output.extras["confidence"].float()
        # eq. 8-9: smooth-L1 (beta 1) per modality, summed over the two, averaged over the images
        regression = F.smooth_l1_loss(predicted, target.to(predicted), reduction="none").sum(dim=1).mean()
        loss = seg + self.reg_weight * regression  # eq. 6
        return loss, {"seg": float(seg.detach()), "confidence": float(regression.detach())}

    def deploy(self, keep_extras: tuple[str, ...] = ()) -> "RSFNet":
        """A copy in eval mode with every RSF KxK block merged into one convolution (this model is kept)."""
        return deploy_copy(self)
