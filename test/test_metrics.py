"""Confusion-matrix metrics against hand counts and torchmetrics (used only here, never at run time)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from rgbd_fusion_seg.offline.metrics import ConfusionMatrix, markdown_table, metrics_from_confusion


def random_batch(generator, num_classes, shape=(2, 17, 23), ignore_share=0.1):
    target = torch.randint(0, num_classes, shape, generator=generator)
    pred = torch.where(
        torch.rand(shape, generator=generator) < 0.6, target, torch.randint(0, num_classes, shape, generator=generator)
    )
    target[torch.rand(shape, generator=generator) < ignore_share] = 255
    return pred, target


def test_hand_counted_example():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    m = cm.compute()
    np.testing.assert_array_equal(m.confusion, [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    # IoU: class 0: 1/(2+2-1) = 1/3; class 1: 3/(3+4-3) = 3/4; class 2: 1/(2+1-1) = 1/2; class 3 absent: excluded
    np.testing.assert_allclose(m.iou[:3], [1 / 3, 3 / 4, 1 / 2])
    assert math.isnan(m.iou[3])
    assert m.miou == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    np.testing.assert_allclose(m.accuracy[:3], [1 / 2, 1, 1 / 2])
    assert m.macc == pytest.approx(2 / 3)
    assert m.pixel_accuracy == pytest.approx(5 / 7)


@pytest.mark.parametrize("num_classes", [2, 5, 12])
def test_agrees_with_torchmetrics_on_random_batches(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    ours = ConfusionMatrix(num_classes)
    jaccard = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=255)
    accuracy = MulticlassAccuracy(num_classes, average="macro", ignore_index=255)
    per_class = MulticlassJaccardIndex(num_classes, average="none", ignore_index=255)
    for _ in range(4):  # accumulation over batches
        pred, target = random_batch(generator, num_classes)
        ours.update(pred, target)
        jaccard.update(pred, target)
        accuracy.update(pred, target)
        per_class.update(pred, target)
    m = ours.compute()
    assert m.miou == pytest.approx(jaccard.compute().item(), abs=1e-6)
    assert m.macc == pytest.approx(accuracy.compute().item(), abs=1e-6)
    np.testing.assert_allclose(m.iou, per_class.compute().numpy(), atol=1e-6)


def test_classes_absent_from_both_are_excluded_like_torchmetrics():
    generator = torch.Generator().manual_seed(3)
    pred, target = random_batch(generator, 4)  # ids 0..3 only, evaluated with 7 classes
    m = ConfusionMatrix(7)
    m.update(pred, target)
    result = m.compute()
    assert np.isnan(result.iou[4:]).all() and np.isnan(result.accuracy[4:]).all()
    assert result.miou == pytest.approx(np.mean(result.iou[:4]))
    expected = MulticlassJaccardIndex(7, average="macro", ignore_index=255)(pred, target).item()
    assert result.miou == pytest.approx(expected, abs=1e-6)
    expected_acc = MulticlassAccuracy(7, average="macro", ignore_index=255)(pred, target).item()
    assert result.macc == pytest.approx(expected_acc, abs=1e-6)


def test_predicted_but_absent_class_counts_in_miou_not_in_macc():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # class 2 predicted, never labelled
    m = ConfusionMatrix(3)
    m.update(pred, target)
    result = m.compute()
    assert result.iou[2] == 0.0
    assert result.miou == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert result.miou == pytest.approx(MulticlassJaccardIndex(3, average="macro")(pred, target).item())
    # mAcc: class 2 has no recall (no ground truth) and is left out; torchmetrics scores it as 0.
    assert result.macc == pytest.approx((0.5 + 1.0) / 2)
    assert MulticlassAccuracy(3, average="macro")(pred, target).item() == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_numpy_inputs_merge_and_errors():
    a = ConfusionMatrix(3)
    a.update(np.array([0, 1, 2]), np.array([0, 1, 1]))
    b = ConfusionMatrix(3)
    b.update(torch.tensor([2, 2]), torch.tensor([2, 255]))
    a.merge(b)
    np.testing.assert_array_equal(a.matrix, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="label ids"):
        a.update(np.array([0]), np.array([7]))
    with pytest.raises(ValueError, match="shape"):
        a.update(np.zeros(3), np.zeros(4))
    empty = ConfusionMatrix(3).compute()
    assert math.isnan(empty.miou) and math.isnan(empty.pixel_accuracy)
    d = metrics_from_confusion(a.matrix).to_dict(["bg", "x", "y"])
    assert d["per_class"][1]["name"] == "x" and d["confusion_matrix"] == a.matrix.tolist()


def test_metrics_module_does_not_import_torchmetrics():
    code = "import sys, rgbd_fusion_seg.offline.metrics; assert 'torchmetrics' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_background_excluded_from_the_means_agrees_with_torchmetrics():
    generator = torch.Generator().manual_seed(11)
    pred, target = random_batch(generator, 6)
    counted = ConfusionMatrix(6)
    counted.update(pred, target)
    per_class_iou = MulticlassJaccardIndex(6, average="none", ignore_index=255)(pred, target).numpy()
    per_class_acc = MulticlassAccuracy(6, average="none", ignore_index=255)(pred, target).numpy()
    excluded = counted.compute(exclude_from_mean=(0,))
    assert excluded.miou == pytest.approx(per_class_iou[1:].mean(), abs=1e-6)
    assert excluded.macc == pytest.approx(per_class_acc[1:].mean(), abs=1e-6)
    # the per-class values and pixel accuracy do not change; only the means do
    plain = counted.compute()
    np.testing.assert_allclose(excluded.iou, plain.iou)
    assert plain.miou == pytest.approx(per_class_iou.mean(), abs=1e-6) and plain.miou != excluded.miou
    assert excluded.pixel_accuracy == plain.pixel_accuracy
    assert excluded.to_dict()["excluded_from_mean"] == [0]
    with pytest.raises(ValueError, match="exclude_from_mean"):
        counted.compute(exclude_from_mean=(6,))


def test_markdown_table_has_acc_and_iou_per_class_then_the_means():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    rows = {"ours": cm.compute().to_dict(), "ours bg excluded": cm.compute((0,)).to_dict()}
    header, rule, first, second = markdown_table(rows, ["bg", "car", "person"]).splitlines()
    assert header.split("|")[2:-1] == [" bg* Acc ", " bg* IoU ", " car Acc ", " car IoU ",
                                       " person Acc ", " person IoU ", " mAcc ", " mIoU "]
    # bg 100/100, car 100/50, person 50/50; mAcc 83.3, mIoU 66.7 (all), 75.0 / 50.0 without bg
    assert first == "| ours | 100.0 | 100.0 | 100.0 | 50.0 | 50.0 | 50.0 | 83.3 | 66.7 |"
    assert second.endswith("| 75.0 | 50.0 |") and rule.count("---:") == 8
