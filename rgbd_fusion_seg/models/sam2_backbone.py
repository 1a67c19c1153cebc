"""SAM2's image encoder (Hiera trunk + FPN neck), prompt encoder and mask decoder, built from rf-sam-2's modules
for SARTM (models/methods/sartm.py), and the reader of Meta's SAM2 checkpoint files.

`sam2` is imported lazily, inside the builders: no other method needs it. Two PyPI packages install the
import name `sam2`: `rf-sam-2` (Roboflow's packaging of Meta's code, a pure-Python wheel: the one we use) and
`sam2` (a third-party sdist that needs torch at build time); `require_sam2` says which one is there.

Sizes follow Meta's `sam2_hiera_{t,s,b+,l}.yaml` (the trunk kwargs; neck d = 256, top-down into the two
deepest levels, nearest upsampling, the 1/32 output dropped; decoder = TwoWayTransformer depth 2, 8 heads,
MLP 2048). `micro` is ours: a few-thousand-parameter model with the same structure for the CPU tests.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .blocks import PretrainedWeightsMissing

LOG = logging.getLogger(__name__)

SAM2_RELEASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
# Hiera needs H, W multiples of 32: the 1/4 grid is tiled by the 8x8 windowed position embedding.
INPUT_MULTIPLE = 32


@dataclass(frozen=True)
class SAM2Size:
    trunk: dict  # Hiera kwargs
    d_model: int = 256  # FPN / decoder width ("d")
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp: int = 2048
    file: str | None = None  # Meta's checkpoint file name (SAM 2.0 release 072824)

    @property
    def trunk_channels(self) -> list[int]:
        """The trunk's stage widths, deepest first (the order FpnNeck takes)."""
        stages = len(self.trunk.get("stages", (2, 3, 16, 3)))
        return [self.trunk["embed_dim"] * 2**i for i in range(stages)][::-1]


SAM2_SIZES: dict[str, SAM2Size] = {
    # ours, for tests: 5 blocks, the global block inside stage 3 (one at a stage start divides by zero in
    # SAM2's window code), d = 32 so that F_0 / F_1 get 4 / 8 channels
    "micro": SAM2Size(
        trunk=dict(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,), window_spec=(8, 4, 4, 2),
                   window_pos_embed_bkg_spatial_size=(4, 4)),
        d_model=32, decoder_depth=1, decoder_heads=2, decoder_mlp=64),
    "tiny": SAM2Size(trunk=dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                                window_pos_embed_bkg_spatial_size=(7, 7)), file="sam2_hiera_tiny.pt"),
    "small": SAM2Size(trunk=dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                                 window_pos_embed_bkg_spatial_size=(7, 7)), file="sam2_hiera_small.pt"),
    "base_plus": SAM2Size(trunk=dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                                     window_pos_embed_bkg_spatial_size=(14, 14)), file="sam2_hiera_base_plus.pt"),
    "large": SAM2Size(trunk=dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                                 window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7)),
                      file="sam2_hiera_large.pt"),
}

# Meta checkpoint keys we read; of those, the decoder parts whose shapes depend on the number of masks
# (SAM2's 3 + 1 tokens vs our C + 1): they start from random, as in SAM2's own fine-tuning code.
LOADED_PREFIXES = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.")
CLASS_DEPENDENT_PREFIXES = ("sam_mask_decoder.mask_tokens.", "sam_mask_decoder.output_hypernetworks_mlps.",
                            "sam_mask_decoder.iou_prediction_head.")


class SAM2PackageError(ImportError):
    """`sam2` is absent or is not rf-sam-2."""


def require_sam2() -> None:
    """Raise SAM2PackageError unless the installed `sam2` is rf-sam-2 (checked at model build)."""
    owners = [name.lower() for name in importlib.metadata.packages_distributions().get("sam2", [])]
    if not owners:
        raise SAM2PackageError("SARTM needs SAM2's modules from the rf-sam-2 package, which is not installed: "
                               "pip install rf-sam-2==1.0.3 (it imports as `sam2`)")
    if "rf-sam-2" not in owners:
        raise SAM2PackageError(
            f"the installed `sam2` module comes from {', '.join(owners)}, not rf-sam-2 (both use the import name "
            "`sam2`); fix: pip uninstall -y sam2 && pip install rf-sam-2==1.0.3")


def sam2_size(name: str) -> SAM2Size:
    if name not in SAM2_SIZES:
        raise ValueError(f"unknown SAM2 encoder {name!r}; choose one of {', '.join(SAM2_SIZES)}")
    return SAM2_SIZES[name]


class NoPositionEncoding(nn.Module):
    """In place of SAM2's sine encoding of each neck level (it has no weights): SARTM reads only the neck's
    maps (its mask decoder takes the prompt encoder's PE), so the encoding would be computed and dropped, and
    its cache, keyed by the map's size, cannot hold the symbolic sizes of an export. `vision_pos_enc` is empty."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(0)


def build_image_encoder(size: SAM2Size, fpn_fuse: str = "sum") -> nn.Module:
    """SAM2's ImageEncoder: Hiera trunk + FpnNeck, keys as in Meta's `image_encoder.*`."""
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder

    if fpn_fuse not in ("sum", "avg"):
        raise ValueError(f"fpn_fuse must be 'sum' (SAM2's trained neck) or 'avg' (eq. 8), got {fpn_fuse!r}")
    neck = FpnNeck(NoPositionEncoding(), d_model=size.d_model, backbone_channel_list=size.trunk_channels,
                   fpn_top_down_levels=[2, 3], fpn_interp_model="nearest", fuse_type=fpn_fuse)
    with _LinspaceOnCPU():
        trunk = Hiera(**size.trunk)
    return ImageEncoder(trunk=trunk, neck=neck, scalp=1)


class _LinspaceOnCPU(TorchFunctionMode):
    """Hiera reads its drop-path rates with linspace(...).item(), which fails on the meta device (the node
    builds a model there to check a checkpoint's keys): make that one call on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.linspace:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def build_prompt_encoder(size: SAM2Size) -> nn.Module:
    """SAM2's PromptEncoder (we use its no-point / no-mask embeddings and its random-Fourier image PE)."""
    from sam2.modeling.sam.prompt_encoder import PromptEncoder

    # the grid sizes only feed get_dense_pe(), which we do not call (the PE is made for the actual grid)
    return PromptEncoder(embed_dim=size.d_model, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                         mask_in_chans=16)


def build_mask_decoder(size: SAM2Size, num_masks: int) -> nn.Module:
    """SAM2's MaskDecoder with `num_masks` multimask tokens (one per class) and the high-res skip inputs."""
    from sam2.modeling.sam.mask_decoder import MaskDecoder
    from sam2.modeling.sam.transformer import TwoWayTransformer

    transformer = TwoWayTransformer(depth=size.decoder_depth, embedding_dim=size.d_model,
                                    num_heads=size.decoder_heads, mlp_dim=size.decoder_mlp)
    # the SAM2 configs' flags, so every pretrained decoder key has its place
    return MaskDecoder(transformer_dim=size.d_model, transformer=transformer, num_multimask_outputs=num_masks,
                       iou_head_depth=3, iou_head_hidden_dim=size.d_model, use_high_res_features=True,
                       iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
                       use_multimask_token_for_obj_ptr=True)


def pad_to_multiple(x: torch.Tensor, multiple: int = INPUT_MULTIPLE) -> torch.Tensor:
    """Zero-pad the bottom and right of an N x C x H x W tensor to multiples of `multiple`."""
    height, width = x.shape[-2:]
    # Written as multiple x ceil(size / multiple) so that an export's symbolic sizes stay visibly divisible
    # (with size % multiple, torch.export's reasoning about Hiera's windows ran for tens of minutes); padded
    # also by zero, as a branch on the pad would fix the traced size.
    padded_h, padded_w = (height + multiple - 1) // multiple * multiple, (width + multiple - 1) // multiple * multiple
    return F.pad(x, (0, padded_w - width, 0, padded_h - height))


def default_checkpoint_path(encoder: str) -> Path:
    """Where Meta's file for `encoder` is looked for: $TORCH_HOME/hub/checkpoints/<file>."""
    file = sam2_size(encoder).file
    if file is None:
        raise ValueError(f"there is no Meta SAM2 file for encoder {encoder!r}: give model.options.sam2_checkpoint "
                         "or use pretrained: false")
    return Path(torch.hub.get_dir()) / "checkpoints" / file


@dataclass
class LoadReport:
    path: str
    loaded: int  # tensors copied into the model
    skipped: list[str]  # class-dependent decoder keys left at their random init
    ignored: int  # keys of parts SARTM has no use for (memory attention / encoder, object pointers)


def read_meta_state(path: Path, encoder: str) -> dict[str, torch.Tensor]:
    """The `model` dict of a Meta SAM2 checkpoint, or a clear error for a missing or foreign file."""
    if not path.is_file():
        file = sam2_size(encoder).file
        fetch = f"Fetch {SAM2_RELEASE_URL}{file} on a connected machine and put it" if file else "Put the file"
        raise PretrainedWeightsMissing(
            f"SAM2 weights for encoder {encoder!r} were asked for but {path} does not exist. {fetch} in "
            f"{path.parent} (TORCH_HOME moves the default folder, model.options.sam2_checkpoint names another "
            "file), or use pretrained: false.")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise ValueError(f"{path} is not a SAM2 checkpoint in Meta's layout (a dict with a 'model' state dict)")
    return raw["model"]


def load_meta_checkpoint(model: nn.Module, path: str | os.PathLike, encoder: str, skip=()) -> LoadReport:
    """Copy the encoder, prompt-encoder and decoder weights of Meta's file at `path` into `model`, whose
    SAM2 parts are attributes named as in Meta's SAM2Base (image_encoder, sam_prompt_encoder,
    sam_mask_decoder). `skip`: model keys that are not SAM2's (LoRA adapters). A file of another size is
    refused, naming the first key that does not fit."""
    path = Path(path)
    state = read_meta_state(path, encoder)
    wanted = {k: v for k, v in model.state_dict().items()
              if k.startswith(LOADED_PREFIXES) and not k.startswith(CLASS_DEPENDENT_PREFIXES) and k not in skip}
    for key, target in wanted.items():
        if key not in state or state[key].shape != target.shape:
            found = "absent" if key not in state else f"{tuple(state[key].shape)}"
            raise ValueError(f"{path} does not fit SAM2 encoder {encoder!r}: first mismatching key {key} "
                             f"(file: {found}, {encoder}: {tuple(target.shape)}); is it another model size?")
    missing, unexpected = model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    assert not unexpected and not set(wanted) & set(missing)
    skipped = sorted(k for k in state if k.startswith(CLASS_DEPENDENT_PREFIXES))
    report = LoadReport(str(path), len(wanted), skipped, len(state) - len(wanted) - len(skipped))
    LOG.info("SAM2 %s: %d tensors loaded, %d class-dependent skipped, %d unused (memory) ignored",
             path, report.loaded, len(report.skipped), report.ignored)
    return report
