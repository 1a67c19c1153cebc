"""CE + soft Dice: hand-computed values, agreement with torch's cross-entropy, ignore index, weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rgbd_fusion_seg.models.losses import (
    SegmentationLoss,
    build_seg_loss,
    inverse_log_frequency_weights,
    soft_dice_loss,
)


def tiny_example():
    """Softmax probabilities [0.8, 0.2, ~0] and [0.4, 0.6, ~0]; labels 0 and 1; a third pixel ignored."""
    probs = torch.tensor([[0.8, 0.2, 1e-30], [0.4, 0.6, 1e-30], [0.1, 0.1, 0.8]])
    logits = probs.log().T.reshape(1, 3, 1, 3)  # N=1, C=3, H=1, W=3
    target = torch.tensor([[[0, 1, 255]]])
    return logits, target


def test_dice_matches_hand_computation():
    logits, target = tiny_example()
    # class 0: |P∩G| = 0.8, |P| + |G| = 1.2 + 1; class 1: 0.6 and 0.8 + 1; class 2 absent from the labels
    with_smooth = 1 - ((2 * 0.8 + 1) / (2.2 + 1) + (2 * 0.6 + 1) / (1.8 + 1)) / 2
    without = 1 - (1.6 / 2.2 + 1.2 / 1.8) / 2
    assert soft_dice_loss(logits, target, smooth=1.0).item() == pytest.approx(with_smooth, abs=1e-6)
    assert soft_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(without, abs=1e-6)
    assert with_smooth == pytest.approx(0.200893, abs=1e-6)


def test_dice_is_zero_for_a_perfect_prediction():
    target = torch.randint(0, 4, (2, 8, 9))
    target[0, 0, :3] = 255
    logits = 40.0 * F.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    total = SegmentationLoss(4)(logits, target)
    assert total.item() == pytest.approx(0.0, abs=1e-6)


def test_ce_part_equals_torch_cross_entropy_with_weights_and_ignore():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 6, 7))
    target[:, :2] = 255
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.1])
    loss = SegmentationLoss(5, ce_weight=1.0, dice_weight=0.0, class_weights=weights)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    combined = SegmentationLoss(5, ce_weight=1.0, dice_weight=0.5)
    value = combined(logits, target)
    plain_ce = F.cross_entropy(logits, target, ignore_index=255)
    assert value.item() == pytest.approx(plain_ce.item() + 0.5 * soft_dice_loss(logits, target).item(), rel=1e-6)
    assert set(combined.last_parts) == {"ce", "dice"}


def test_ignored_pixels_do_not_matter_and_all_ignored_is_finite():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (1, 4, 4))
    target[0, 0] = 255
    loss_fn = SegmentationLoss(3)
    changed = logits.detach().clone()
    changed[0, :, 0] = torch.randn(3, 4) * 10  # only ignored pixels change
    assert loss_fn(logits, target).item() == pytest.approx(loss_fn(changed, target).item(), rel=1e-6)
    everything_ignored = torch.full((1, 4, 4), 255)
    value = loss_fn(logits, everything_ignored)
    assert math.isfinite(value.item()) and value.item() == 0.0
    value.backward()
    assert logits.grad is not None


def test_gradients_and_half_precision_inputs():
    logits = torch.randn(2, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 5))
    SegmentationLoss(3)(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    half = SegmentationLoss(3)(logits.detach().half(), target)
    assert half.dtype == torch.float32


def test_inverse_log_frequency_weights_and_builder():
    weights = inverse_log_frequency_weights([900, 100, 0])
    assert weights[0] == pytest.approx(1 / math.log(1.02 + 0.9))
    assert weights[2] == pytest.approx(1 / math.log(1.02))
    assert weights[1] > weights[0]
    loss = build_seg_loss(3, class_weights="inverse_log_freq", pixel_counts=[900, 100, 0])
    assert torch.allclose(loss.class_weights, weights)
    with pytest.raises(ValueError, match="pixel counts"):
        build_seg_loss(3, class_weights="inverse_log_freq")
    with pytest.raises(ValueError, match="entries"):
        SegmentationLoss(3, class_weights=[1.0, 2.0])
