"""The contract every fusion method follows, so that training, evaluation and the node treat them alike.

- `forward(rgb, aux)` takes Nx3xHxW normalised RGB and Nx1xHxW auxiliary (depth or thermal) in [0, 1] and
  returns a `SegOutput`: the segmentation logits at the input resolution plus any extra outputs the
  method has (RSFNet's confidence scores, SC-CoSF's fused image, SARTM's second prediction path).
- `compute_loss(output, batch, seg_loss)` returns the method's own training loss and its named parts.
  The default is the segmentation loss on the logits; a method with extra outputs adds its terms here
  (confidence regression, fusion loss, distillation), reading what it needs from the batch dict.
- `deploy()` returns the form to serve (e.g. after structural re-parameterisation). It is called once,
  before inference, by the engine; the default is the model itself.
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
