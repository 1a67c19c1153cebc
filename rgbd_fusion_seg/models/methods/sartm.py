"""SARTM (Xing et al., "Segment Any RGB-Thermal Model with Language-aided Distillation", arXiv 2505.01950;
docs/sartm.md).

- Encoder (III-B): SAM2's Hiera trunk + FPN neck (sam2_backbone.py), frozen, shared by both modalities, with
  q/v LoRA (eq. 6-7, rank 16, Table IV) on every block's qkv: one adapter per modality (`lora_mode:
  per_modality`, the paper's "modality-specific" LoRA; both modalities go through the encoder as one batch,
  each part with its own adapter) or one for both (`shared`, what the official code amounts to: there its
  three sets are all applied to every input, so set lora_rank 48 to match it). Thermal is repeated to three
  channels and kept in [0, 1] (not ImageNet-normalised, as SARTM's code); the RGB arrives normalised by the
  checkpoint's preprocessing (ImageNet).
- Levels (III-C): the neck's 1/4, 1/8, 1/16 maps; SAM2's conv_s0 / conv_s1 reduce the first two to d/8 and
  d/4 channels (F_0, F_1), F_n keeps d. `fpn_fuse`: "sum" (SAM2's trained neck, the code) or "avg" (eq. 8).
- Fusion (III-A/E): one FRM + FFM pair (CMX) per level, widths d/8, d/4, d, FFM heads 1, 2, 4, initialised as
  CMX's, fusing RGB with thermal (the official code passes RGB twice: thermal never reaches its fusion; not
  reproduced).
- Path 1 (III-D, eq. 9): SAM2's mask decoder with one mask token per class and no prompt (SAM2's "not a
  point" padding and no-mask embedding), image PE made for the actual grid; `logits` = its C masks (tokens
  1..C) upsampled. SAM2's object-score gate is not applied. `decoder_input`: "fused" (the paper) or
  "modality_mean" (the code: the decoder on each modality's unfused features, logits averaged).
  Trained: mask tokens, IoU and object-score tokens (as the code), hypernetwork MLPs, output upscaling,
  conv_s0/s1; the two-way transformer stays frozen as the paper says (`train_decoder_transformer: true`
  trains it, as the code does); IoU and object-score heads and the prompt encoder are frozen.
- Path 2 (eq. 10): the auxiliary FPN head (registered modules; the code rebuilt its convs at every call),
  extras["aux_logits"] in training only.
- Language-aided distillation (III-E, eq. 12-14) on the fused F_n: L_cr against an EMA of the class
  prototypes, L_se between the prototypes' and the class names' CLIP-text self-similarities
  (text_embeddings.py; table kept as a buffer so checkpoints carry it). Present classes only.
- Loss (eq. 15): seg_loss(S_0) + aux_weight seg_loss(S_1) + cr_weight L_cr + se_weight L_se; seg_loss is the
  trainer's (SARTM: OHEM CE). aux_weight 0.008 is Table VII's w1. cr_weight 300 and se_weight 40 follow the
  balance rule (docs/sartm.md, "Loss balance": at initialisation each weighted distillation term is a tenth of
  the segmentation loss; offline/sartm_loss_balance.py measures it): Table VII's 1e4 was tuned against the
  official code's L_cr, whose prototypes are divided by the pixel count twice, and with true means it gives
  L_cr several times the segmentation loss. `cr_weight: 1e4, se_weight: 100` is the paper's literal choice;
  the official code uses 1 / 1 / 1 (config sartm_official.yaml).
- Inputs of any size: padded with zeros to multiples of 32 inside forward, logits cropped back.

Weight files: `pretrained: true` reads Meta's sam2_hiera_<size>.pt from $TORCH_HOME/hub/checkpoints (or
`sam2_checkpoint`); `text_weights` ("default": $TORCH_HOME/hub/checkpoints/<text_encoder>.pt) is read once per
class list. Checkpoints store both switched off: the state dict holds the weights and the text table.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FusionSegmenter, SegOutput
from ..registry import register
from ..sam2_backbone import (build_image_encoder, build_mask_decoder, build_prompt_encoder, default_checkpoint_path,
                             load_meta_checkpoint, pad_to_multiple, require_sam2, sam2_size)
from ..sartm_blocks import AuxFPNHead, FeatureFusion, FeatureRectify, PrototypeDistillation, add_lora
from ..text_embeddings import class_text_embeddings, default_text_weights, standin_table

LORA_MODES = ("per_modality", "shared")
DECODER_INPUTS = ("fused", "modality_mean")
FFM_HEADS = (1, 2, 4)  # per level, as the official code
TEXT_FROM_CLIP, TEXT_STANDIN = 1, 2  # PrototypeDistillation.text_source
# decoder parts trained (the rest of SAM2 stays frozen): the class-dependent ones start from random. The IoU
# and object-score tokens are trained as the official code does: their heads are unused here, but they sit
# beside the class tokens in the two-way transformer's self-attention, so they shape every class mask.
DECODER_TRAINED = ("mask_tokens", "iou_token", "obj_score_token", "output_hypernetworks_mlps", "output_upscaling",
                   "conv_s0", "conv_s1")


@register
class SARTM(FusionSegmenter):
    method = "sartm"
    wants_class_names = True
    weight_file_options = {"pretrained": False, "sam2_checkpoint": None, "text_weights": None}

    def __init__(
        self,
        num_classes: int,
        *,
        encoder: str = "base_plus",
        pretrained: bool = False,
        sam2_checkpoint: str | None = None,
        lora_rank: int = 16,
        lora_mode: str = "per_modality",
        decoder_input: str = "fused",
        fpn_fuse: str = "sum",
        train_decoder_transformer: bool = False,
        aux_weight: float = 0.008,
        cr_weight: float = 300.0,
        se_weight: float = 40.0,
        ema_momentum: float = 0.9,
        text_encoder: str = "ViT-B-32",
        text_weights: str | None = "default",
        text_standin: bool = False,
        class_names: list[str] | None = None,
    ):
        super().__init__(num_classes)
        require_sam2()
        _check_choice("lora_mode", lora_mode, LORA_MODES)
        _check_choice("decoder_input", decoder_input, DECODER_INPUTS)
        for name, weight in (("aux_weight", aux_weight), ("cr_weight", cr_weight), ("se_weight", se_weight)):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        size = sam2_size(encoder)
        self.encoder, self.lora_mode, self.decoder_input = encoder, lora_mode, decoder_input
        self.aux_weight, self.cr_weight, self.se_weight = float(aux_weight), float(cr_weight), float(se_weight)
        self.image_encoder = build_image_encoder(size, fpn_fuse)
        self.sam_prompt_encoder = build_prompt_encoder(size)
        self.sam_mask_decoder = build_mask_decoder(size, num_classes)
        self.requires_grad_(False)  # SAM2 frozen; what is trained is switched on below
        self.lora = add_lora(self.image_encoder.trunk, lora_rank, 2 if lora_mode == "per_modality" else 1)
        self.sam2_load_report = None
        if pretrained or sam2_checkpoint:
            path = sam2_checkpoint or default_checkpoint_path(encoder)
            lora_keys = {k for k in self.state_dict() if ".lora_" in k}
            self.sam2_load_report = load_meta_checkpoint(self, path, encoder, skip=lora_keys)
        for name, module in self.sam_mask_decoder.named_children():
            module.requires_grad_(name in DECODER_TRAINED or (train_decoder_transformer and name == "transformer"))
        d = size.d_model
        widths = (d // 8, d // 4, d)
        self.rectify = nn.ModuleList(FeatureRectify(c) for c in widths)
        self.fuse = nn.ModuleList(FeatureFusion(c, heads) for c, heads in zip(widths, FFM_HEADS))
        self.aux_head = AuxFPNHead(d, num_classes) if aux_weight else None  # Table V "w/o Aux_Seg_Head": 0
        self.distillation = None
        if cr_weight or se_weight:
            self.distillation = PrototypeDistillation(num_classes, d, ema_momentum)
            if se_weight:
                self._set_text_table(class_names, text_encoder, text_weights, text_standin)

    def _set_text_table(self, class_names, text_encoder: str, text_weights, text_standin: bool) -> None:
        if class_names is None:
            raise ValueError("sartm's language-aided distillation (se_weight > 0) needs the class names "
                             "(model.options.class_names; the trainer passes the data set's), or set se_weight: 0")
        if len(class_names) != self.num_classes:
            raise ValueError(f"sartm: {len(class_names)} class names for {self.num_classes} classes")
        if text_standin:  # explicit only: a random table is never a silent fallback for missing CLIP weights
            self.distillation.set_text_table(standin_table(class_names), TEXT_STANDIN)
        elif text_weights is not None:  # None: no file read, the table comes from a checkpoint's state dict
            path = default_text_weights(text_encoder) if text_weights == "default" else text_weights
            table, _ = class_text_embeddings(class_names, text_encoder, path)
            self.distillation.set_text_table(table, TEXT_FROM_CLIP)

    def _encode(self, rgb: torch.Tensor, thermal: torch.Tensor) -> list[list[torch.Tensor]]:
        """[[F_0 (d/8, 1/4), F_1 (d/4, 1/8), F_n (d, 1/16)] of RGB, the same of thermal] through the shared SAM2
        encoder in one pass: the two stacked on the batch, each part adapted by its own LoRA (LoRAQV)."""
        batch = rgb.shape[0]
        fpn = self.image_encoder(torch.cat([rgb, thermal]))["backbone_fpn"]  # 1/4, 1/8, 1/16 (scalp drops 1/32)
        features = [self.sam_mask_decoder.conv_s0(fpn[0]), self.sam_mask_decoder.conv_s1(fpn[1]), fpn[2]]
        return [[f[:batch] for f in features], [f[batch:] for f in features]]  # sliced: a dynamic batch exports

    def _decode(self, f0: torch.Tensor, f1: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
        """SAM2's mask decoder without prompts: N x C x H/4 x W/4, one mask per class token."""
        n, _, h, w = fn.shape
        prompts = self.sam_prompt_encoder
        sparse = prompts.not_a_point_embed.weight.view(1, 1, -1).expand(n, 2, -1)  # SAM2's no-point padding
        dense = prompts.no_mask_embed.weight.view(1, -1, 1, 1).expand(n, -1, h, w)
        masks = self.sam_mask_decoder.predict_masks(
            image_embeddings=fn, image_pe=prompts.pe_layer((h, w)).unsqueeze(0), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, repeat_image=False, high_res_features=[f0, f1])[0]
        return masks[:, 1:]  # token 0 is SAM2's single-mask output

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        height, width = rgb.shape[-2:]
        images = (pad_to_multiple(rgb), pad_to_multiple(aux.expand(-1, 3, -1, -1)))
        per_modality = self._encode(*images)
        fused = [fuse(*rectify(x_rgb, x_thermal)) for rectify, fuse, x_rgb, x_thermal
                 in zip(self.rectify, self.fuse, *per_modality)]
        if self.decoder_input == "fused":
            masks = self._decode(*fused)
        else:
            masks = (self._decode(*per_modality[0]) + self._decode(*per_modality[1])) / 2
        padded = images[0].shape[-2:]
        logits = F.interpolate(masks, size=padded, mode="bilinear", align_corners=False)[..., :height, :width]
        extras = {}
        if self.training and self.aux_head is not None:
            extras["aux_logits"] = self.aux_head(*fused, padded)[..., :height, :width]
        if self.training and self.distillation is not None:
            extras["sfm"] = fused[2]  # on the padded grid
        return SegOutput(logits, extras)

    def loss_terms(self, output: SegOutput, batch: dict, seg_loss) -> dict[str, torch.Tensor]:
        """Eq. 15's four terms, unweighted: {"seg": S_0's, "aux": S_1's, "cr": L_cr, "se": L_se} (a term whose
        part is switched off is 0). Updates the prototype EMA, as a training step does."""
        label = batch["label"]
        seg = seg_loss(output.logits, label)
        zero = seg.new_zeros(())
        aux = seg_loss(output.extras["aux_logits"], label) if "aux_logits" in output.extras else zero
        cr = se = zero
        if "sfm" in output.extras:
            if self.se_weight and int(self.distillation.text_source) == 0:
                raise RuntimeError("sartm: se_weight > 0 but no class-name text table was made (text_weights is "
                                   "null); set model.options.text_weights to the CLIP file, text_standin: true, or "
                                   "se_weight: 0")
            padded_label = F.pad(label, (0, -label.shape[-1] % 32, 0, -label.shape[-2] % 32), value=255)
            cr, se = self.distillation(output.extras["sfm"], padded_label)
        return {"seg": seg, "aux": aux, "cr": cr, "se": se}

    def loss_weights(self) -> dict[str, float]:
        """Eq. 15's w0..w3, keyed as loss_terms."""
        return {"seg": 1.0, "aux": self.aux_weight, "cr": self.cr_weight, "se": self.se_weight}

    def compute_loss(self, output: SegOutput, batch: dict, seg_loss) -> tuple[torch.Tensor, dict[str, float]]:
        terms = self.loss_terms(output, batch, seg_loss)
        weights = self.loss_weights()
        loss = sum(weights[name] * term for name, term in terms.items())  # eq. 15
        return loss, {name: float(term.detach()) for name, term in terms.items()}

    def deploy(self, keep_extras: tuple[str, ...] = ()) -> "SARTM":
        """An eval copy without the auxiliary head and the distillation state; a shared LoRA is merged into
        SAM2's qkv (per-modality adapters stay: the two modalities share the frozen weights)."""
        deployed = copy.deepcopy(self).eval()
        deployed.aux_head = None
        deployed.distillation = None
        if self.lora_mode == "shared":
            for block in deployed.image_encoder.trunk.blocks:
                block.attn.qkv = block.attn.qkv.merged_linear()
            deployed.lora = []
        return deployed


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"sartm option {option} must be one of {', '.join(choices)}, got {value!r}")
