"""The contract every fusion method follows, so that training, evaluation and the node treat them alike.

- `forward(rgb, aux)` takes Nx3xHxW normalised RGB and Nx1xHxW auxiliary (depth or thermal) in [0, 1] and
  returns a `SegOutput`: the segmentation logits at the input resolution plus any extra outputs the
  method has (RSFNet's confidence scores, SC-CoSF's fused image, SARTM's second prediction path).
- `compute_loss(output, batch, seg_loss)` returns the method's own training loss and its named parts.
  The default is the segmentation loss on the logits; a method with extra outputs adds its terms here
  (confidence regression, fusion loss, distillation), reading what it needs from the batch dict.
- `deploy()` returns the form to serve (e.g. after structural re-parameterisation). It is called once,
  before inference, by the engine; the default is the model itself.

Class attributes the trainer and the checkpoints read:
- `architecture_version`: raised whenever a change makes old weights of the method not fit (or fit with a
  different meaning); a checkpoint records it, and one of another version is refused, never half-loaded.
- `weight_file_options`: options that read pretrained weights from a file, with the value that switches
  the read off. A checkpoint stores the switched-off values: its state dict already holds every weight,
  so serving must not need the files (`serving_options`).
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

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_loss(self, output: SegOutput, batch: dict, seg_loss: SegLoss) -> tuple[torch.Tensor, dict[str, float]]:
        loss = seg_loss(output.logits, batch["label"])
        return loss, {"seg": float(loss.detach())}

    def deploy(self) -> "FusionSegmenter":
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
