"""RSFNet's saliency pseudo-labels (Pseudo-Label Generation, section III-C of the RSFNet paper).

For each training frame and each modality: the fine-grained static saliency map (Montabone & Soto, OpenCV
contrib's `StaticSaliencyFineGrained`), binarised with Otsu's threshold, scored by its IoU (eq. 1) with the
binary ground truth (foreground = every labelled class except background 0; ignored pixels, 255, count in
neither). The two IoUs (p_rgb, p_aux) are the targets the model's confidence scores regress onto.

They depend on the raw images only (not on augmentation), so they are computed once per dataset and kept
in a JSON file named after the dataset's identity (loader, root, split, classes, the files and samples in
order, the aux normalisation that renders the one-channel image to 8 bits, and this algorithm's version),
beside the validation reports (dataset_cache.py: in the data root, else the user's cache), and trusted
while the fingerprint of the samples' files (path, size, mtime) is unchanged: a second run reads no image.

`with_extra_targets(dataset, method)` is what the trainer calls: it wraps the training set so that every
sample carries "confidence_target" (2 floats) when the method's class declares `extra_targets =
("confidence",)`, and returns the dataset unchanged otherwise.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, normalise_aux
from rgbd_fusion_seg.models.registry import method_class

from .dataset_cache import cached_for_dataset
from .datasets.base import IGNORE_INDEX
from .datasets.imageio import DatasetError

# Bump when the computation changes, so that older cached targets are not trusted.
ALGORITHM = "static-saliency-fine-grained/otsu/iou-v1"


def binary_saliency(image: np.ndarray) -> np.ndarray:
    """HxW bool: the fine-grained saliency map of an 8-bit image (HxW or HxWx3), Otsu-thresholded."""
    ok, saliency = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(np.ascontiguousarray(image))
    if not ok:
        raise RuntimeError(f"OpenCV's fine-grained saliency failed on an image of shape {image.shape}")
    saliency8 = cv2.normalize(saliency, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)
    _, binary = cv2.threshold(saliency8, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return binary > 0


def saliency_iou(image: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Eq. 1: IoU of the binary saliency map of `image` and the labelled foreground (class ids > 0)."""
    valid = labels != ignore_index
    foreground = valid & (labels != 0)
    salient = binary_saliency(image) & valid
    union = int(np.count_nonzero(salient | foreground))
    if union == 0:  # nothing salient and nothing labelled: the two maps agree
        return 1.0
    return int(np.count_nonzero(salient & foreground)) / union


def aux_as_image(aux: np.ndarray, spec: AuxNormalisation) -> np.ndarray:
    """The one-channel image in physical units -> 8 bits through the model's own aux normalisation."""
    return np.round(normalise_aux(aux, spec) * 255.0).astype(np.uint8)


def frame_pseudo_labels(raw: dict, aux_spec: AuxNormalisation) -> tuple[float, float]:
    """(p_rgb, p_aux) of one decoded frame (a dataset's `read_raw` dict)."""
    if raw.get("label") is None or raw.get("aux") is None:
        missing = "labels" if raw.get("label") is None else "a second modality"
        raise DatasetError(f"frame {raw.get('stem')!r} has no {missing}: RSFNet's pseudo-labels need both")
    labels = raw["label"]
    return saliency_iou(raw["rgb"], labels), saliency_iou(aux_as_image(raw["aux"], aux_spec), labels)


def _sample_keys(dataset) -> list[str]:
    return [f"{sample.stem}/{sample.group}" for sample in dataset.samples]


def _cache_identity(dataset) -> dict:
    """What the pseudo-labels depend on besides the dataset's files."""
    keys = _sample_keys(dataset)  # in order: row i of the targets belongs to sample i
    return {
        "algorithm": ALGORITHM,
        "aux_normalisation": asdict(dataset.preprocessing.aux),
        "samples": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
        "num_samples": len(keys),
    }


def compute_pseudo_labels(dataset, workers: int = 4) -> np.ndarray:
    """N x 2 float32 (p_rgb, p_aux), one row per sample of `dataset`, from its raw (unaugmented) frames."""
    aux_spec = dataset.preprocessing.aux

    def one(index: int):
        return frame_pseudo_labels(dataset.read_raw(index), aux_spec)

    with ThreadPoolExecutor(max_workers=max(int(workers), 1)) as pool:  # OpenCV releases the GIL
        rows = list(pool.map(one, range(len(dataset))))
    return np.asarray(rows, np.float32).reshape(-1, 2)


def cached_pseudo_labels(dataset, workers: int = 4) -> tuple[np.ndarray, bool]:
    """(N x 2 pseudo-labels, whether they came from the cache); computed and stored when stale or absent."""
    targets, from_cache = cached_for_dataset(
        dataset, "pseudo-labels", lambda: compute_pseudo_labels(dataset, workers).tolist(), _cache_identity(dataset)
    )
    return np.asarray(targets, np.float32).reshape(-1, 2), from_cache


class WithConfidenceTargets(Dataset):
    """`dataset` whose samples also carry "confidence_target": float32 tensor (p_rgb, p_aux).

    Every other attribute (classes, validate, describe, ...) is the wrapped dataset's.
    """

    def __init__(self, dataset, targets: np.ndarray):
        if len(targets) != len(dataset):
            raise ValueError(f"{len(targets)} pseudo-labels for {len(dataset)} samples")
        self.dataset = dataset
        self.targets = torch.from_numpy(np.asarray(targets, np.float32))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index] | {"confidence_target": self.targets[index]}

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def with_extra_targets(dataset, method: str, options: dict | None = None, workers: int = 4):
    """The training set with the extra targets the method's class asks for (`extra_targets`), if any;
    none when the method's options switch the confidence loss off (`reg_weight: 0`)."""
    if "confidence" not in getattr(method_class(method), "extra_targets", ()):
        return dataset
    if (options or {}).get("reg_weight") == 0:
        return dataset
    targets, _ = cached_pseudo_labels(dataset, workers)
    return WithConfidenceTargets(dataset, targets)
