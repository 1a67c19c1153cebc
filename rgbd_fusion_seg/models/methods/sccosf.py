"""SC-CoSF (Yang, Qiao, Shu, "SC-CoSF: Self-Correcting Collaborative and Co-Training for Image Fusion and
Semantic Segmentation", Sensors 2025, 25(12), 3575; docs/sccosf.md): segmentation and infrared-visible image
fusion trained jointly on one shared encoder.

- Weight-shared ConvNeXt encoder (§4.1.2, timm): RGB and the one-channel image repeated to three channels
  (§4.1.2) go through the same network, 4 stages (strides 4..32). `encoder`: tiny | small | base (the paper
  names no variant; base comes closest to Table 3's size, docs/sccosf.md) or micro (depths 1,1,1,1, widths
  16..128: tests). Inputs in [0, 1] (configs: rgb_mean 0, rgb_std 1); the model applies the ImageNet
  statistics for the encoder itself. ImageNet weights only from a local file (`pretrained`).
- Sc-CFM at each stage (§3.2.1, sccosf_blocks.py): Sc-LRB (S6 self-correction, Cross S6 exchanging C,
  channel attention), Sc-FGB (3/5/7 kernels, channel attention, gated split), DCR (coordinate attention).
- ICRM decoder (§3.2.2): ICRVSS blocks (SS2D + CBAM gate, ssm.py) top-down -> segmentation logits.
- ReAW decoder (§3.2.3): region-weighted multi-kernel features of every stage + source-image features ->
  an RGB fused image in [0, 1], the extra "fused".
- Loss (§3.3): cross-entropy (the trainer's seg_loss) + fusion_weight x (con_weight L_con + grad_weight
  L_grad + color_weight L_color) against gamma / contrast positive samples (MRFS, the paper's [42]).

Choices where the paper is silent (all listed in docs/sccosf.md): the encoder variant, expand E = 1 (with
ConvNeXt-B the size is then 139.67 M against Table 3's 139.62 M; E = 2, VMamba's, gives 167.8 M),
d_state 16, dt_rank ceil(C/16), 2 ICRVSS blocks per decoder stage, VMamba's scan order, ReAW kernels 1/3/5
and width 32, the loss weights 0.5/1/1 and fusion_weight 0.1 (MRFS's), the paper's S(w) term left out.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..base import FusionSegmenter, PublishedFigures, SegOutput
from ..blocks import PretrainedWeightsMissing
from ..registry import register
from ..sccosf_blocks import ICRMDecoder, ReAWDecoder, ScCFM, fusion_loss
from ..ssm import SCAN_BACKENDS, SCAN_ORDERS

# timm model and overrides of each encoder option; "micro" is a test size with no published weights.
CONVNEXT_VARIANTS = {
    "micro": ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)}),
    "tiny": ("convnext_tiny", {}),
    "small": ("convnext_small", {}),
    "base": ("convnext_base", {}),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvNeXtWeightsMismatch(ValueError):
    """A ConvNeXt weight file whose keys or shapes do not fit the encoder."""


def convnext_weights_path(encoder: str) -> tuple[Path, str]:
    """Where the ImageNet-1k ConvNeXt file of `encoder` is read from, and the address it comes from."""
    name = f"convnext_{encoder}_1k_224_ema.pth"  # the file names of facebookresearch/ConvNeXt's releases
    return Path(torch.hub.get_dir()) / "checkpoints" / name, f"https://dl.fbaipublicfiles.com/convnext/{name}"


def _load_convnext_weights(model: nn.Module, encoder: str) -> None:
    from timm.models.convnext import checkpoint_filter_fn

    path, url = convnext_weights_path(encoder)
    if not path.is_file():
        raise PretrainedWeightsMissing(
            f"ImageNet ConvNeXt weights for encoder {encoder!r} were asked for (pretrained: true) but {path} does "
            f"not exist (folder {path.parent}). Fetch {url} on a connected machine and put the file there "
            f"(TORCH_HOME moves the folder; a timm state dict under that name works too), or set pretrained: false."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    if any(key.startswith("downsample_layers.") for key in state):  # the official release's key names
        try:
            state = checkpoint_filter_fn(state, model)
        except KeyError as error:
            raise ConvNeXtWeightsMismatch(f"{path} does not fit the ConvNeXt {encoder!r} encoder: key {error}") from None
    state = {key: value for key, value in state.items() if not key.startswith(("head.", "norm_pre."))}
    expected = model.state_dict()
    for key in sorted(set(expected) | set(state)):
        if key not in state or key not in expected or state[key].shape != expected[key].shape:
            found = "missing" if key not in state else "unexpected" if key not in expected else f"shape {tuple(state[key].shape)}"
            want = f", the encoder has {tuple(expected[key].shape)}" if key in expected and key in state else ""
            raise ConvNeXtWeightsMismatch(f"{path} does not fit the ConvNeXt {encoder!r} encoder: first differing key {key!r} ({found}{want})")
    model.load_state_dict(state)


class SharedConvNeXt(nn.Module):
    """A timm ConvNeXt without its head; forward returns the four stage outputs (strides 4, 8, 16, 32)."""

    def __init__(self, encoder: str, pretrained: bool):
        super().__init__()
        import timm

        if encoder not in CONVNEXT_VARIANTS:
            raise ValueError(f"unknown encoder {encoder!r}; available: {', '.join(CONVNEXT_VARIANTS)}")
        name, overrides = CONVNEXT_VARIANTS[encoder]
        self.net = timm.create_model(name, pretrained=False, num_classes=0, **overrides)
        self.net.head = nn.Identity()
        self.channels = tuple(self.net.feature_info[i]["num_chs"] for i in range(4))
        if pretrained:
            _load_convnext_weights(self.net, encoder)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.net.stem(x)
        features = []
        for stage in self.net.stages:
            x = stage(x)
            features.append(x)
        return features


@register
class SCCoSF(FusionSegmenter):
    method = "sccosf"
    serving_extras = ("fused",)
    # A checkpoint serves on any device: the scan backend it was trained with (mamba_ssm on a GPU) is not kept.
    weight_file_options = {"pretrained": False, "scan_backend": "auto"}
    expects_unit_rgb = True  # the fusion loss and ReAW read the input images; the encoder normalises itself
    published = (
        PublishedFigures(
            source="SC-CoSF paper, Table 3",
            size=(600, 800),
            num_classes=9,
            params_m=139.62,
            gmacs=304.52,
            options={"encoder": "base", "expand": 1.0},
            label="ConvNeXt-B, E = 1 (our reading)",
            note=(
                "Table 3's 'FLOPs' read as multiply-accumulates: the two ConvNeXt-B passes alone measure 289.84 "
                "GMACs at 600x800 (579.7 GFLOPs, more than the 304.52 G total), so only MACs can fit; the paper "
                "names neither the encoder variant nor the scan width E"
            ),
        ),
    )

    def __init__(
        self,
        num_classes: int,
        *,
        encoder: str = "base",
        pretrained: bool = False,
        scan_backend: str = "auto",
        d_state: int = 16,
        expand: float = 1.0,  # choice: with ConvNeXt-B the total is then 139.67 M, Table 3's 139.62 M
        blocks_per_stage: int = 2,
        scan_order: str = "vmamba",
        reaw_kernels: tuple[int, ...] = (1, 3, 5),
        reaw_width: int = 32,
        fusion_weight: float = 0.1,
        con_weight: float = 0.5,
        grad_weight: float = 1.0,
        color_weight: float = 1.0,
        gamma: float = 0.8,
        grad_abs: bool = False,
    ):
        super().__init__(num_classes)
        _check_options(scan_backend, scan_order, d_state, expand, blocks_per_stage, reaw_kernels, reaw_width,
                       {"fusion_weight": fusion_weight, "con_weight": con_weight, "grad_weight": grad_weight,
                        "color_weight": color_weight, "gamma": gamma})
        self.fusion_weight = float(fusion_weight)
        self.loss_options = {"con_weight": float(con_weight), "grad_weight": float(grad_weight),
                             "color_weight": float(color_weight), "gamma": float(gamma), "grad_abs": bool(grad_abs)}
        self.encoder = SharedConvNeXt(encoder, pretrained)
        channels = self.encoder.channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.fusions = nn.ModuleList(ScCFM(c, expand, d_state, scan_backend) for c in channels)
        self.decoder = ICRMDecoder(channels, num_classes, blocks_per_stage, d_state, expand, scan_order, scan_backend)
        # None in the deploy form when no one asked for the fused image
        self.reaw: ReAWDecoder | None = ReAWDecoder(channels, reaw_width, tuple(reaw_kernels))

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        aux3 = aux.expand(-1, 3, -1, -1)
        # one pass of the shared encoder over both modalities (ConvNeXt has no batch statistics)
        both = self.encoder((torch.cat([rgb, aux3], dim=0) - self.mean) / self.std)
        batch = rgb.shape[0]  # sliced, not chunked: a chunk of a dynamic batch does not export
        fused = [fusion(f[:batch], f[batch:]) for fusion, f in zip(self.fusions, both)]
        logits = F.interpolate(self.decoder(fused), size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        if self.reaw is None:
            return SegOutput(logits)
        return SegOutput(logits, {"fused": self.reaw(fused, rgb, aux)})

    def compute_loss(self, output: SegOutput, batch: dict, seg_loss) -> tuple[torch.Tensor, dict[str, float]]:
        seg = seg_loss(output.logits, batch["label"])
        if "fused" not in output.extras:
            raise KeyError("sccosf's fusion loss needs the fused image: train the full model, not its deploy form")
        rgb01, aux01 = batch["rgb"].float(), batch["aux"].float()  # the configs feed both in [0, 1]
        # MRFS masks crop padding only: ignore-labelled pixels still hold an image to fuse. Augmented training
        # samples carry "valid" (False on padding, datasets/base.py); without it every pixel is image.
        valid = batch["valid"].unsqueeze(1) if "valid" in batch else None
        fusion, parts = fusion_loss(output.extras["fused"].float(), rgb01, aux01, valid, **self.loss_options)
        loss = seg + self.fusion_weight * fusion
        reported = {"seg": float(seg.detach()), "fusion": float(fusion.detach())}
        reported.update({name: float(value.detach()) for name, value in parts.items()})
        return loss, reported

    def deploy(self, keep_extras: tuple[str, ...] = ()) -> "SCCoSF":
        """A copy in eval mode; without "fused" in keep_extras the ReAW branch is left out (logits unchanged)."""
        reaw = self.reaw
        if "fused" not in keep_extras:
            self.reaw = None
        try:
            served = copy.deepcopy(self)
        finally:
            self.reaw = reaw
        return served.eval()


def _check_options(scan_backend, scan_order, d_state, expand, blocks_per_stage, reaw_kernels, reaw_width, weights):
    if scan_backend not in SCAN_BACKENDS:
        raise ValueError(f"unknown scan_backend {scan_backend!r}; available: {', '.join(SCAN_BACKENDS)}")
    if scan_order not in SCAN_ORDERS:
        raise ValueError(f"unknown scan_order {scan_order!r}; available: {', '.join(SCAN_ORDERS)}")
    for name, value in (("d_state", d_state), ("blocks_per_stage", blocks_per_stage), ("reaw_width", reaw_width)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if expand <= 0:
        raise ValueError(f"expand must be > 0, got {expand}")
    if not reaw_kernels or any(int(k) != k or k < 1 or k % 2 == 0 for k in reaw_kernels):
        raise ValueError(f"reaw_kernels must be odd positive kernel sizes, got {list(reaw_kernels)}")
    negative = [name for name, value in weights.items() if value < 0]
    if negative:
        raise ValueError(f"{', '.join(negative)} must be >= 0")
