"""MFNet (RGB-T urban driving scenes, Ha et al. 2017) as a frame dataset (base.FrameDataset).

On-disk layout of the public release:

    images/<name>.png   4 channels, 8-bit: colour + thermal as the 4th channel. OpenCV reads it in the order
                        B, G, R, thermal (BGRA); the colour is swapped to RGB once, here.
    labels/<name>.png   uint8 class ids 0..8 (MFNET_CLASSES; 0 = unlabeled, counted in the papers' mIoU)
    train.txt val.txt test.txt test_day.txt test_night.txt   one name per line (no suffix)

Names end in D (day) or N (night): a sample's group is "day" or "night" (evaluation reports both), or
"other" for a name ending otherwise. The thermal channel is 8-bit with no "no reading" code (unit raw8,
normalised from [0, 255] by default). Frames are 480x640; the papers evaluate the 393 test images whole.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation

from .base import FrameDataset, Sample, check_aux_choice, read_named_split, require_folders
from .imageio import DatasetError, raw8, read_image
from .registry import register_layout

MFNET_CLASSES = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
MFNET_AUX = ("thermal",)
MFNET_LAYOUT = "images/<name>.png (4 channels: colour + thermal), labels/<name>.png, train.txt val.txt test.txt ..."
GROUPS = {"D": "day", "N": "night"}


def default_aux_normalisation(aux_folder: str = "thermal") -> AuxNormalisation:
    check_aux_choice("MFNet", aux_folder, MFNET_AUX)
    return AuxNormalisation(modality="thermal", unit="raw8", low=0.0, high=255.0)


def day_or_night(name: str) -> str:
    return GROUPS.get(name[-1:].upper(), "other")


@register_layout
class MFNetDataset(FrameDataset):
    """MFNet frames; samples carry group "day" / "night". `preprocessing=None`: native size, ImageNet
    mean/std, thermal [0, 255] -> [0, 1]."""

    dataset_name = "mfnet"
    title = "MFNet"
    METAINFO = {"classes": MFNET_CLASSES, "palette": None}
    aux_choices = MFNET_AUX
    aux_defaults = staticmethod(default_aux_normalisation)

    def list_samples(self, split, aux_folder: str) -> tuple[list[Sample], str]:
        root = self.root
        require_folders(root, "MFNet", ("images", "labels"), MFNET_LAYOUT)
        names, split_name = read_named_split(root, split, "MFNet", MFNET_LAYOUT)
        samples = [
            Sample(name, day_or_night(name), {"rgb": root / "images" / f"{name}.png",
                                              "aux": root / "images" / f"{name}.png",
                                              "label": root / "labels" / f"{name}.png"})
            for name in names
        ]  # fmt: skip
        return samples, split_name

    def _four_channels(self, path: Path) -> np.ndarray:
        last_path, last_image = getattr(self, "_last_decoded", (None, None))
        if last_path == path:  # colour and thermal come from one file: decode it once per sample
            return last_image
        image = read_image(path, cv2.IMREAD_UNCHANGED)
        channels = image.shape[2] if image.ndim == 3 else 1
        if channels != 4 or image.dtype != np.uint8:
            raise DatasetError(
                f"{path} has {channels} channel(s) of {image.dtype}; MFNet images must have 4 8-bit channels "
                "(colour + thermal as the 4th): is this a colour-only copy without the thermal channel?"
            )
        self._last_decoded = (path, image)
        return image

    def decode_rgb(self, path: Path) -> np.ndarray:
        return np.ascontiguousarray(self._four_channels(path)[..., 2::-1])  # B, G, R -> R, G, B

    def decode_aux(self, path: Path) -> np.ndarray:
        return raw8(np.ascontiguousarray(self._four_channels(path)[..., 3]), path)
