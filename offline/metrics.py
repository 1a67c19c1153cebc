"""Confusion-matrix segmentation metrics, accumulated batch by batch (plain torch/numpy, no torchmetrics).

The confusion matrix has ground truth in rows and prediction in columns; pixels whose label is
`ignore_index` (255) are not counted. From it:

- IoU_k  = TP / (TP + FP + FN). A class absent from both the ground truth and the prediction has no
  IoU (NaN) and is left out of mIoU; a class that is predicted but absent from the ground truth has
  IoU 0 and counts. This is the rule of torchmetrics' MulticlassJaccardIndex(average="macro").
- Acc_k  = TP / (TP + FN), the per-class recall. A class without ground-truth pixels has no recall (NaN)
  and is left out of mAcc (the mmsegmentation convention). torchmetrics' MulticlassAccuracy("macro")
  differs only there: it scores a class that is predicted but absent from the ground truth as 0.
- pixel accuracy = sum(TP) / labelled pixels.
- `exclude_from_mean` (e.g. (0,) for "background excluded"): those classes keep their IoU / Acc in the
  per-class table but are left out of mIoU and mAcc. This is not the same as ignoring their pixels (a
  label of 255): their pixels still count as false positives of the classes predicted there. MFNet and
  PST900 papers count the unlabeled / background class, so the default excludes nothing.

Usable by the offline tools and the node alike: `update()` takes torch tensors (on any device) or numpy
arrays of class ids of the same shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = 255


@dataclass
class SegmentationMetrics:
    miou: float  # mean IoU over classes present in ground truth or prediction (NaN if none)
    macc: float  # mean recall over classes present in the ground truth (NaN if none)
    pixel_accuracy: float
    iou: np.ndarray  # per class, NaN where excluded
    accuracy: np.ndarray  # per class recall, NaN where the class has no ground-truth pixel
    confusion: np.ndarray  # CxC int64, rows = ground truth, columns = prediction
    excluded_from_mean: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return self.confusion.shape[0]

    def to_dict(self, class_names=None) -> dict:
        """JSON-ready (NaN -> None)."""
        names = list(class_names) if class_names is not None else [str(k) for k in range(self.num_classes)]
        gt_pixels = self.confusion.sum(axis=1)
        pred_pixels = self.confusion.sum(axis=0)
        return {
            "miou": _json_float(self.miou),
            "macc": _json_float(self.macc),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "per_class": [
                {
                    "id": k,
                    "name": names[k] if k < len(names) else str(k),
                    "iou": _json_float(self.iou[k]),
                    "accuracy": _json_float(self.accuracy[k]),
                    "gt_pixels": int(gt_pixels[k]),
                    "predicted_pixels": int(pred_pixels[k]),
                }
                for k in range(self.num_classes)
            ],
            "excluded_from_mean": list(self.excluded_from_mean),
            "confusion_matrix": self.confusion.tolist(),
        }


def _json_float(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def metrics_from_confusion(confusion: np.ndarray, exclude_from_mean=()) -> SegmentationMetrics:
    confusion = np.asarray(confusion, dtype=np.int64)
    excluded = tuple(sorted({int(k) for k in exclude_from_mean}))
    if any(not 0 <= k < confusion.shape[0] for k in excluded):
        raise ValueError(f"exclude_from_mean {excluded} names classes outside 0..{confusion.shape[0] - 1}")
    in_mean = np.ones(confusion.shape[0], bool)
    in_mean[list(excluded)] = False
    true_positive = np.diag(confusion).astype(np.float64)
    gt_pixels = confusion.sum(axis=1).astype(np.float64)  # TP + FN
    pred_pixels = confusion.sum(axis=0).astype(np.float64)  # TP + FP
    union = gt_pixels + pred_pixels - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        # Explicit exclusion: a class with an empty union (absent from ground truth AND prediction)
        # gets NaN and drops out of the mean; so does a class without ground truth for the accuracy.
        iou = np.where(union > 0, true_positive / union, np.nan)
        accuracy = np.where(gt_pixels > 0, true_positive / gt_pixels, np.nan)
    labelled = gt_pixels.sum()
    return SegmentationMetrics(
        miou=float(np.nanmean(iou[in_mean])) if np.any(union[in_mean] > 0) else float("nan"),
        macc=float(np.nanmean(accuracy[in_mean])) if np.any(gt_pixels[in_mean] > 0) else float("nan"),
        pixel_accuracy=float(true_positive.sum() / labelled) if labelled > 0 else float("nan"),
        iou=iou,
        accuracy=accuracy,
        confusion=confusion,
        excluded_from_mean=excluded,
    )


class ConfusionMatrix:
    """Accumulates a CxC confusion matrix over batches; `compute()` turns it into metrics."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix: torch.Tensor | None = None

    def reset(self) -> None:
        self._matrix = None

    @torch.no_grad()
    def update(self, prediction, target) -> None:
        """prediction, target: class ids of the same shape (torch or numpy); target == ignore_index is skipped.

        A label outside [0, num_classes) that is not the ignore index is an error, not silently dropped;
        a predicted id outside that range is likewise refused.
        """
        prediction = torch.as_tensor(prediction)
        target = torch.as_tensor(target, device=prediction.device)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        prediction = prediction.reshape(-1).long()
        target = target.reshape(-1).long()
        keep = target != self.ignore_index
        prediction, target = prediction[keep], target[keep]
        if target.numel():
            low, high = int(target.min()), int(target.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"label ids must lie in [0, {self.num_classes - 1}] or be {self.ignore_index}; found {low}..{high}"
                )
            low, high = int(prediction.min()), int(prediction.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(f"predicted ids must lie in [0, {self.num_classes - 1}]; found {low}..{high}")
        counts = torch.bincount(target * self.num_classes + prediction, minlength=self.num_classes**2)
        counts = counts.reshape(self.num_classes, self.num_classes)
        if self._matrix is None:
            self._matrix = counts
        else:
            self._matrix += counts.to(self._matrix.device)

    @property
    def matrix(self) -> np.ndarray:
        if self._matrix is None:
            return np.zeros((self.num_classes, self.num_classes), np.int64)
        return self._matrix.cpu().numpy().astype(np.int64)

    def merge(self, other: "ConfusionMatrix") -> None:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge confusion matrices of different class counts")
        if other._matrix is not None:
            self.update_matrix(other.matrix)

    def update_matrix(self, matrix) -> None:
        matrix = torch.as_tensor(np.asarray(matrix, np.int64))
        if self._matrix is None:
            self._matrix = matrix
        else:
            self._matrix += matrix.to(self._matrix.device)

    def compute(self, exclude_from_mean=()) -> SegmentationMetrics:
        return metrics_from_confusion(self.matrix, exclude_from_mean)


def markdown_table(rows: dict[str, dict], class_names, with_accuracy: bool = True) -> str:
    """A per-class table as the RGB-T papers print it: one row per entry of `rows` (label -> a
    `SegmentationMetrics.to_dict()`), per class an Acc and an IoU column (in %), then mAcc and mIoU.
    Classes left out of the mean are marked with a *."""
    excluded = {k for row in rows.values() for k in row.get("excluded_from_mean", ())}
    columns = []
    for k, name in enumerate(class_names):
        star = "*" if k in excluded else ""
        if with_accuracy:
            columns.append(f"{name}{star} Acc")
        columns.append(f"{name}{star} IoU")
    columns += (["mAcc"] if with_accuracy else []) + ["mIoU"]
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, row in rows.items():
        cells = []
        for entry in row["per_class"]:
            if with_accuracy:
                cells.append(_percent(entry["accuracy"]))
            cells.append(_percent(entry["iou"]))
        cells += ([_percent(row["macc"])] if with_accuracy else []) + [_percent(row["miou"])]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.1f}"
