"""PST900 (RGB-T subterranean scenes, Shivakumar et al. 2020) as a frame dataset (base.FrameDataset).

On-disk layout of the public release (1280x720 frames, the same stem in every folder of a split):

    train/ and test/, each with
        rgb/<stem>.png          8-bit colour
        thermal/<stem>.png      uint8 thermal aligned to the colour camera; 0 = outside the thermal view
                                (no reading)                                       aux "thermal", unit raw8
        thermal_raw/<stem>.png  uint16 raw thermal counts, 0 = no reading          aux "thermal_raw", raw16
        depth/<stem>.png        uint16 depth in millimetres, 0 = no reading        aux "depth", metres
        labels/<stem>.png       uint8 ids 0..4 (PST900_CLASSES; background counted in the papers' mIoU)

The split is the folder name; a sample's group is the split. Default normalisation ranges (override with
data.aux_range): thermal [0, 255]; thermal_raw the full 16-bit range (the release does not document the
camera's count range: read it off your data); depth 0-10 m.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation

from .base import FrameDataset, Sample, check_aux_choice
from .imageio import depth_from_mm
from .registry import register_layout

PST900_CLASSES = ("background", "fire_extinguisher", "backpack", "hand_drill", "survivor")
PST900_SPLITS = ("train", "test")
PST900_LAYOUT = "train/ and test/, each with rgb/ thermal/ thermal_raw/ depth/ labels/ (<stem>.png in each)"


def _with_holes(image: np.ndarray) -> np.ndarray:
    values = image.astype(np.float32)
    values[image == 0] = np.nan
    return values


# aux choice -> (modality, unit, stored dtype, default range, decode)
PST900_AUX = {
    "thermal": ("thermal", "raw8", np.uint8, (0.0, 255.0), _with_holes),
    "thermal_raw": ("thermal", "raw16", np.uint16, (0.0, 65535.0), _with_holes),
    "depth": ("depth", "m", np.uint16, (0.0, 10.0), depth_from_mm),
}


# where the other thermal image is, for a file of the wrong depth
PST900_OTHER_THERMAL = {"thermal": "thermal_raw holds 16-bit raw thermal", "thermal_raw": "thermal holds 8-bit thermal"}


def default_aux_normalisation(aux_folder: str = "thermal") -> AuxNormalisation:
    check_aux_choice("PST900", aux_folder, PST900_AUX)
    modality, unit, _, (low, high), _ = PST900_AUX[aux_folder]
    return AuxNormalisation(modality=modality, unit=unit, low=low, high=high)


@register_layout
class PST900Dataset(FrameDataset):
    """One split folder of PST900. `preprocessing=None`: native 720x1280, ImageNet mean/std, the aux
    choice's default range."""

    dataset_name = "pst900"
    title = "PST900"
    METAINFO = {"classes": PST900_CLASSES, "palette": None}
    aux_choices = tuple(PST900_AUX)
    aux_defaults = staticmethod(default_aux_normalisation)

    def list_samples(self, split, aux_folder: str) -> tuple[list[Sample], str]:
        return self.split_folder_samples(split, PST900_SPLITS, ("rgb", aux_folder, "labels"), PST900_LAYOUT)

    def decode_aux(self, path: Path) -> np.ndarray:
        _, _, dtype, _, decode = PST900_AUX[self.aux_name]
        return decode(self.read_stored_aux(path, dtype, hint=PST900_OTHER_THERMAL.get(self.aux_name, "")))
