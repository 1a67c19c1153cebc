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
- Two-stream decoder with multi-scale fusion (III-E): per stream three aggregation blocks, each three 3x3
  convolutions and two bilinear interpolations (rsf_blocks.AggregationBlock, as the authors' code has it).
- Head (authors' code): the two streams' 1/4 maps summed, conv3x3 -> 128, BN, ReLU, dropout 0.1, conv1x1,
  bilinear to the input size. Deep supervision (authors' code, training form only): the same head on the
  summed 1/8 and 1/16 maps, each with the segmentation loss times `deep_supervision` (0.4, our choice: the
  code's weight is not given; 0 builds no such heads). The deploy form drops them.
- Loss (eq. 6): L = L_seg + lambda * (L_reg_rgb + L_reg_aux), lambda = `reg_weight` = 0.3, plus the deep
  supervision terms. L_seg is the segmentation loss the trainer passes in (the paper's is class-weighted
  cross-entropy, w_c = 1/ln(1.05+p_c)).

Extras: "confidence", N x 2, the confidence scores (p_hat_rgb, p_hat_aux) of each image (the deploy form
keeps them only when asked: `deploy(keep_extras=("confidence",))`); in training mode also "deep_logits_8" and
"deep_logits_16", the deep-supervision logits at the input size.
Training batches need "confidence_target" (N x 2), which `extra_targets` asks the trainer to provide.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FusionSegmenter, PublishedFigures, SegOutput
from ..encoders import build_encoder
from ..reparam import deploy_copy
from ..registry import register
from ..rsf_blocks import ConfidenceHead, ResidualSpatialFusion, SegHead, TwoStreamDecoder

# The encoder pairs of the paper (section IV-B, Table III), RGB first.
PAPER_ENCODER_PAIRS = ("resnet50-resnet18", "densenet161-densenet121", "resnet101-resnet34")
# Table III: parameters (M), "FLOPs" (multiply-adds, G) and frames per second on an RTX 2080Ti and a TITAN Xp
_TABLE_III = {"resnet50-resnet18": (44.53, 64.69, 81.36, 40.47),
              "densenet161-densenet121": (44.10, 95.02, 34.15, 14.10),
              "resnet101-resnet34": (73.63, 98.82, 57.31, 28.40)}
DEEP_SCALES = ("deep_logits_8", "deep_logits_16")  # extras of the deep-supervision heads, on decoder outputs 1 and 2


def parse_encoders(encoders: str) -> tuple[str, str]:
    rgb, sep, aux = str(encoders).partition("-")
    if not sep or not rgb or not aux:
        raise ValueError(f"encoders must look like 'rgbnet-auxnet' (e.g. 'resnet50-resnet18'), got {encoders!r}")
    return rgb, aux


@register
class RSFNet(FusionSegmenter):
    method = "rsfnet"
    extra_targets = ("confidence",)
    architecture_version = 2  # 2: the authors' aggregation decoder and head (1: concatenating decoder, 1x1 head)
    serving_extras = ("confidence",)
    published = tuple(
        PublishedFigures(source="RSFNet paper, Table III", size=(480, 640), num_classes=9, params_m=params,
                         gmacs=gmacs, options={"encoders": pair}, label=pair,
                         note="the paper's FLOPs are multiply-adds (its K = 3/5/7 rows differ by the RSF convs' MACs)",
                         fps=(("RTX 2080Ti", fps_2080ti), ("TITAN Xp", fps_titan_xp)))
        for pair, (params, gmacs, fps_2080ti, fps_titan_xp) in _TABLE_III.items()
    ) + (
        PublishedFigures(source="RSFNet public code (measured at 480x640)", size=(480, 640), num_classes=9,
                         params_m=44.57, gmacs=65.19, options={"encoders": "resnet50-resnet18"},
                         label="resnet50-resnet18"),
    )

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
        deep_supervision: float = 0.4,
    ):
        super().__init__(num_classes)
        if len(stage_channels) != 4:
            raise ValueError(f"stage_channels needs one width per encoder stage (4), got {list(stage_channels)}")
        if reg_weight < 0:
            raise ValueError(f"reg_weight (lambda) must be >= 0, got {reg_weight}")
        if deep_supervision < 0:
            raise ValueError(f"deep_supervision (the deep heads' loss weight) must be >= 0, got {deep_supervision}")
        rgb_arch, aux_arch = parse_encoders(encoders)
        self.reg_weight = float(reg_weight)
        self.deep_supervision = float(deep_supervision)
        self.keep_confidence = True  # the deploy form keeps it only when asked
        self.rgb_encoder = build_encoder(rgb_arch, pretrained)
        self.aux_encoder = build_encoder(aux_arch, pretrained)
        self.rgb_confidence = ConfidenceHead(self.rgb_encoder.channels[-1], confidence_hidden)
        self.aux_confidence = ConfidenceHead(self.aux_encoder.channels[-1], confidence_hidden)
        # Stage 1..4 (the stem is not fused); the 1x1 reductions absorb any width mismatch of the encoders.
        self.fusions = nn.ModuleList(
            ResidualSpatialFusion(c_rgb, c_aux, c, fusion_channels, kernel_size)
            for c_rgb, c_aux, c in zip(self.rgb_encoder.channels[1:], self.aux_encoder.channels[1:], stage_channels)
        )
        self.decoder = TwoStreamDecoder(stage_channels)
        self.head = SegHead(stage_channels[0], num_classes)
        # None in the deploy form, or when deep_supervision is 0
        self.deep_heads = (
            nn.ModuleList(SegHead(c, num_classes) for c in stage_channels[1:3]) if deep_supervision > 0 else None
        )

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
        decoded = self.decoder(enhanced_rgb, enhanced_aux)  # summed streams at 1/4, 1/8, 1/16
        size = rgb.shape[-2:]
        logits = _upsample(self.head(decoded[0]), size)
        extras = {"confidence": torch.cat([p_rgb, p_aux], dim=1)} if self.keep_confidence else {}
        if self.training and self.deep_heads is not None:
            for name, head, x in zip(DEEP_SCALES, self.deep_heads, decoded[1:]):
                extras[name] = _upsample(head(x), size)
        return SegOutput(logits, extras)

    def compute_loss(self, output: SegOutput, batch: dict, seg_loss) -> tuple[torch.Tensor, dict[str, float]]:
        seg = seg_loss(output.logits, batch["label"])
        loss, parts = seg, {"seg": float(seg.detach())}
        deep = [seg_loss(output.extras[name], batch["label"]) for name in DEEP_SCALES if name in output.extras]
        if deep:  # training mode only: in eval mode the deep heads do not run
            deep_loss = sum(deep)
            loss = loss + self.deep_supervision * deep_loss
            parts["deep"] = float(deep_loss.detach())
        if self.reg_weight == 0:
            return loss, parts
        target = batch.get("confidence_target")
        if target is None:
            raise KeyError(
                "rsfnet's confidence regression needs batch['confidence_target'] (N x 2 saliency pseudo-labels, "
                "offline/pseudo_labels.py); set model.options.reg_weight: 0 to train without it"
            )
        predicted = output.extras["confidence"].float()
        # eq. 8-9: smooth-L1 (beta 1) per modality, summed over the two, averaged over the images
        regression = F.smooth_l1_loss(predicted, target.to(predicted), reduction="none").sum(dim=1).mean()
        loss = loss + self.reg_weight * regression  # eq. 6
        parts["confidence"] = float(regression.detach())
        return loss, parts

    def deploy(self, keep_extras: tuple[str, ...] = ()) -> "RSFNet":
        """A copy in eval mode with every RSF KxK block merged into one convolution, without the deep-
        supervision heads, and with the confidences only if `keep_extras` names them (this model is kept)."""
        unknown = sorted(set(keep_extras) - set(self.serving_extras))
        if unknown:
            raise ValueError(
                f"rsfnet's deploy form can keep {', '.join(self.serving_extras)}, not {', '.join(unknown)}"
            )
        heads, self.deep_heads = self.deep_heads, None  # not copied into the deploy form
        try:
            deployed = deploy_copy(self)
        finally:
            self.deep_heads = heads
        deployed.keep_confidence = "confidence" in keep_extras
        return deployed


def _upsample(logits: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
