"""The contract every fusion method follows, so that training, evaluation and the node treat them alike.

- `forward(rgb, aux)` takes Nx3xHxW normalised RGB and Nx1xHxW auxiliary (depth or thermal) in [0, 1] and
  returns a `SegOutput`: the segmentation logits at the input resolution plus any extra outputs the
  method has (RSFNet's confidence scores, SC-CoSF's fused image, SARTM's second prediction path).
- `compute_loss(output, batch, seg_loss)` returns the method's own training loss and its named parts.
  The default is the segmentation loss on the logits; a method with extra outputs adds its terms here
  (confidence regression, fusion loss, distillation), reading what it needs from the batch dict.
- `deploy(keep_extras)` returns the form to serve (e.g. after structural re-parameterisation), with only
  the extra outputs named in `keep_extras` (those in `serving_extras`) kept: a branch whose output no one
  asked for is dropped. It is called once, before inference, by the engine; the default is the model.

Class attributes the trainer and the checkpoints read:
- `architecture_version`: raised whenever a change makes old weights of the method not fit (or fit with a
  different meaning); a checkpoint records it, and one of another version is refused, never half-loaded.
- `weight_file_options`: options that tie a model to the machine it was trained on (a pretrained-weight
  file to read, a GPU-only kernel), with the value that serves anywhere. A checkpoint stores those
  values: its state dict already holds every weight, so serving must not need the files (`serving_options`).
- `serving_extras`: the extras the deploy form can keep on request (SC-CoSF: "fused", its fused image).
- `published`: the sizes and compute the method's authors report (`PublishedFigures`), which
  `rgbd-fusion-seg bench --published` measures side by side.
- `expects_unit_rgb`: the method needs RGB in [0, 1] (rgb_mean 0, rgb_std 1); a config that normalises
  otherwise is refused (SC-CoSF: its fusion loss compares the fused image with the input images).
- `wants_class_names`: the trainer passes the data set's class names as the `class_names` option (SARTM's
  language-aided distillation embeds them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch import nn

# seg_loss(logits NxCxHxW, target NxHxW long) -> scalar
SegLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PublishedFigures:
    """One published configuration of a method and its reported size and compute."""

    source: str  # where the figures are printed, e.g. "RSFNet paper, Table III"
    size: tuple[int, int]  # the input height and width they are given at
    num_classes: int
    params_m: float | None  # millions
    gmacs: float | None  # multiply-accumulates, in G (a paper's "FLOPs" that are MACs are given here)
    options: dict = field(default_factory=dict)  # the build options of that configuration
    label: str = ""  # how the configuration is named in the table, e.g. "resnet50-resnet18"
    note: str = ""  # e.g. how a paper's "FLOPs" were read
    fps: tuple[tuple[str, float], ...] = ()  # (GPU, frames per second) as reported


@dataclass
class SegOutput:
    logits: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class FusionSegmenter(nn.Module):
    """Base class of every registered method; subclasses set `method` and implement `forward`."""

    method: ClassVar[str] = ""
    uses_aux: ClassVar[bool] = True
    architecture_version: ClassVar[int] = 1
    weight_file_options: ClassVar[dict[str, object]] = {"pretrained": False}
    wants_class_names: ClassVar[bool] = False
    expects_unit_rgb: ClassVar[bool] = False
    serving_extras: ClassVar[tuple[str, ...]] = ()
    published: ClassVar[tuple[PublishedFigures, ...]] = ()

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_loss(self, output: SegOutput, batch: dict, seg_loss: SegLoss) -> tuple[torch.Tensor, dict[str, float]]:
        loss = seg_loss(output.logits, batch["label"])
        return loss, {"seg": float(loss.detach())}

    def deploy(self, keep_extras: tuple[str, ...] = ()) -> "FusionSegmenter":
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs for the optimiser: by default those with requires_grad. A method that
        freezes part of itself for a while and releases it later lists that part here too (a parameter
        without a gradient is skipped by the optimiser until it has one)."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def before_train_step(self, step: int) -> None:
        """Called by the trainer before optimiser step `step` (0-based): schedules inside the model."""

    @classmethod
    def serving_options(cls, options: dict) -> dict:
        """`options` with every weight-file read switched off (see `weight_file_options`)."""
        return {**options, **{k: v for k, v in cls.weight_file_options.items() if k in options}}
