"""Segmentation losses: cross-entropy (plain, class-weighted or OHEM) + soft Dice.

`SegmentationLoss(logits, target)` is a `SegLoss` (see base.py): logits NxCxHxW, target NxHxW int64 with
`ignore_index` (255) for pixels that carry no label. The loss is `ce_weight * CE + dice_weight * Dice`;
CE + Dice is the MM5 study's loss, CE weighted by w_c = 1 / ln(1.05 + p_c) RSFNet's (p_c = class c's
share of the training pixels), OHEM CE (hard pixels only) SARTM's.

OHEM (online hard example mining) as in SARTM's OhemCrossEntropy (the CMX/DELIVER code): a labelled pixel
is hard when the softmax probability of its true class is below `threshold` (0.7); only hard pixels
count, but never fewer than `min_kept_fraction` (1/16, SARTM's n_total / 16) of the batch's labelled
pixels: when too few are hard, the least confident ones are taken instead. The kept pixels' losses are
averaged as F.cross_entropy does (a weighted mean when class weights are given). Selecting by
probability rather than by the (possibly class-weighted) loss keeps "hard" independent of the weights.

Soft Dice here: softmax probabilities against one-hot targets, summed over the whole batch (batch Dice,
steadier than per-image Dice when a class covers few pixels), ignored pixels masked out, then averaged
over the classes that occur in the batch's labels. A class absent from the labels has no overlap to
reward; counting it would punish every bit of probability spread on it (the cross-entropy already does
that), so it is left out of the mean.

Both parts are computed in float32 even under autocast.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = 255


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0
) -> torch.Tensor:
    """1 - mean over classes present in `target` of (2|P∩G| + s) / (|P| + |G| + s), P = softmax(logits)."""
    num_classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1)
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    one_hot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    mask = valid.unsqueeze(1).to(probs.dtype)
    probs = probs * mask
    one_hot = one_hot * mask
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    cardinality = probs.sum(dims) + one_hot.sum(dims)
    dice = (2.0 * intersection + smooth) / (cardinality + smooth)
    present = one_hot.sum(dims) > 0
    if not bool(present.any()):
        # Nothing labelled in this batch: no Dice term (keeps the graph so backward still works).
        return logits.sum() * 0.0
    return 1.0 - dice[present].mean()


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    threshold: float = 0.7,
    min_kept_fraction: float = 1.0 / 16,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (module docstring); 0 (with a graph) when nothing is labelled."""
    pixel_losses = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="none")
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    safe_target = torch.where(valid, target, torch.zeros_like(target))
    with torch.no_grad():
        true_prob = torch.softmax(logits, dim=1).gather(1, safe_target.unsqueeze(1)).squeeze(1)[valid]
        min_kept = max(1, int(true_prob.numel() * min_kept_fraction))
        hard = true_prob < threshold
        if int(hard.sum()) < min_kept:
            hard = torch.zeros_like(hard)
            hard[torch.topk(true_prob, min_kept, largest=False).indices] = True
    kept_losses = pixel_losses[valid][hard]
    if weight is None:
        return kept_losses.mean()
    return kept_losses.sum() / weight[safe_target[valid][hard]].sum()


class SegmentationLoss(nn.Module):
    """Weighted sum of cross-entropy (optionally class-weighted, optionally OHEM) and soft Dice, both
    ignoring `ignore_index`. `ohem=(threshold, min_kept_fraction)` switches the CE part to OHEM."""

    def __init__(
        self,
        num_classes: int,
        *,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        class_weights: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        dice_smooth: float = 1.0,
        ohem: tuple[float, float] | None = None,
    ):
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got ce={ce_weight}, dice={dice_weight}")
        self.num_classes = num_classes
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index
        self.dice_smooth = dice_smooth
        if ohem is not None and not (0 < ohem[0] <= 1 and 0 <= ohem[1] <= 1):
            raise ValueError(f"ohem (threshold, min_kept_fraction) must lie in (0, 1] and [0, 1], got {ohem}")
        self.ohem = ohem
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.shape != (num_classes,):
                raise ValueError(f"class_weights has {class_weights.numel()} entries for {num_classes} classes")
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.last_parts: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        total = logits.new_zeros(())
        parts = {}
        if self.ce_weight:
            if self.ohem is not None:
                ce = ohem_cross_entropy(logits, target, threshold=self.ohem[0], min_kept_fraction=self.ohem[1],
                                        weight=self.class_weights, ignore_index=self.ignore_index)
            elif bool((target != self.ignore_index).any()):
                ce = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
            else:  # all pixels ignored: cross_entropy would return NaN
                ce = logits.sum() * 0.0
            total = total + self.ce_weight * ce
            parts["ce"] = float(ce.detach())
        if self.dice_weight:
            dice = soft_dice_loss(logits, target, ignore_index=self.ignore_index, smooth=self.dice_smooth)
            total = total + self.dice_weight * dice
            parts["dice"] = float(dice.detach())
        self.last_parts = parts
        return total


def log_frequency_weights(pixel_counts: Sequence[int] | torch.Tensor, c: float = 1.05) -> torch.Tensor:
    """w_k = 1 / ln(c + p_k), p_k the class's share of labelled pixels (ENet's weighting; c = 1.05 is
    RSFNet's choice, ENet used 1.02). Rare classes get up to 1/ln(1.05) ≈ 20.5, a class covering
    everything 1/ln(2.05) ≈ 1.39. Classes that never occur get the largest weight (no effect on the loss
    until they appear)."""
    counts = torch.as_tensor(pixel_counts, dtype=torch.float64)
    total = counts.sum()
    share = counts / total if total > 0 else torch.zeros_like(counts)
    return (1.0 / torch.log(c + share)).to(torch.float32)


def build_seg_loss(
    num_classes: int,
    *,
    ce: float = 1.0,
    dice: float = 1.0,
    class_weights=None,
    ignore_index: int = IGNORE_INDEX,
    pixel_counts=None,
    ohem: dict | None = None,
) -> SegmentationLoss:
    """The configured loss (config `loss` section). `class_weights`: None, a list, or "log_frequency"
    (needs the training labels' per-class `pixel_counts`). `ohem`: None or {"threshold",
    "min_kept_fraction"}."""
    if isinstance(class_weights, str):
        if class_weights != "log_frequency":
            raise ValueError(f"class_weights {class_weights!r} is not null, a list or 'log_frequency'")
        if pixel_counts is None:
            raise ValueError("class_weights 'log_frequency' needs the per-class pixel counts of the training set")
        class_weights = log_frequency_weights(pixel_counts)
    if class_weights is not None and not all(math.isfinite(float(w)) for w in class_weights):
        raise ValueError("class_weights must be finite numbers")
    ohem_pair = None if ohem is None else (float(ohem["threshold"]), float(ohem["min_kept_fraction"]))
    return SegmentationLoss(
        num_classes, ce_weight=ce, dice_weight=dice, class_weights=class_weights, ignore_index=ignore_index,
        ohem=ohem_pair,
    )
