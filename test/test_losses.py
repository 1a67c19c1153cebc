"""CE + soft Dice + OHEM: hand-computed values, agreement with torch's cross-entropy, ignore index, weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rgbd_fusion_seg.models.losses import (
    SegmentationLoss,
    build_seg_loss,
    log_frequency_weights,
    ohem_cross_entropy,
    soft_dice_loss,
)
from rgbd_fusion_seg.offline.config import ConfigError, config_from_dict


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


def test_log_frequency_weights_match_hand_computation_and_builder():
    weights = log_frequency_weights([900, 100, 0])  # shares 0.9, 0.1, 0
    assert weights.tolist() == pytest.approx([1 / math.log(1.95), 1 / math.log(1.15), 1 / math.log(1.05)])
    assert weights[0] == pytest.approx(1.4974, abs=1e-4) and weights[2] == pytest.approx(20.4959, abs=1e-4)
    loss = build_seg_loss(3, class_weights="log_frequency", pixel_counts=[900, 100, 0])
    assert torch.allclose(loss.class_weights, weights)
    with pytest.raises(ValueError, match="pixel counts"):
        build_seg_loss(3, class_weights="log_frequency")
    with pytest.raises(ValueError, match="entries"):
        SegmentationLoss(3, class_weights=[1.0, 2.0])


def direct_ohem(logits, target, threshold, fraction, weight=None):
    """OHEM written out pixel by pixel, the reference for ohem_cross_entropy."""
    num_classes = logits.shape[1]
    weight = torch.ones(num_classes) if weight is None else weight
    pixels = []  # (true-class probability, weighted loss, weight)
    for n, y, x in torch.nonzero(target != 255).tolist():
        label = int(target[n, y, x])
        probs = torch.softmax(logits[n, :, y, x].double(), dim=0)
        pixels.append((float(probs[label]), -float(weight[label]) * math.log(probs[label]), float(weight[label])))
    hard = [p for p in pixels if p[0] < threshold]
    min_kept = max(1, int(len(pixels) * fraction))
    if len(hard) < min_kept:
        hard = sorted(pixels)[:min_kept]
    return sum(p[1] for p in hard) / sum(p[2] for p in hard), len(hard)


@pytest.mark.parametrize("threshold, fraction", [(0.7, 1 / 16), (0.05, 0.5), (1.0, 0.0)])
def test_ohem_matches_a_direct_computation(threshold, fraction):
    torch.manual_seed(2)
    logits = torch.randn(2, 4, 5, 6) * 2
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    weights = torch.tensor([0.5, 1.0, 3.0, 2.0])
    for weight in (None, weights):
        expected, kept = direct_ohem(logits, target, threshold, fraction, weight)
        value = ohem_cross_entropy(logits, target, threshold=threshold, min_kept_fraction=fraction, weight=weight)
        assert value.item() == pytest.approx(expected, rel=1e-5)
    if threshold == 1.0:  # every pixel is hard: plain (weighted) cross-entropy
        plain = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
        assert value.item() == pytest.approx(plain.item(), rel=1e-5)
    if threshold == 0.05:  # 19 of 48 pixels that unsure: the minimum count (half) is kept
        assert kept == 24


def test_ohem_through_the_loss_and_config():
    torch.manual_seed(3)
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (1, 4, 4))
    loss = build_seg_loss(3, dice=0.0, ohem={"threshold": 0.7, "min_kept_fraction": 0.5})
    value = loss(logits, target)
    assert value.item() == pytest.approx(direct_ohem(logits.detach(), target, 0.7, 0.5)[0], rel=1e-5)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    assert loss(logits, torch.full((1, 4, 4), 255)).item() == 0.0
    with pytest.raises(ValueError, match="ohem"):
        SegmentationLoss(3, ohem=(1.5, 0.1))
    config = config_from_dict({"loss": {"ohem": {"threshold": 0.6}, "class_weights": "log_frequency"}})
    assert config.loss.ohem == {"threshold": 0.6, "min_kept_fraction": 1 / 16}
    with pytest.raises(ConfigError, match="loss.ohem.*min_kept"):
        config_from_dict({"loss": {"ohem": {"min_kept": 100}}})
    with pytest.raises(ConfigError, match="loss.class_weights"):
        config_from_dict({"loss": {"class_weights": "inverse_frequency"}})
