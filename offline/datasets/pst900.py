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

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing

from .augment import Augmentation
from .base import FrameDataset, Sample, check_aux_choice, check_root, require_folders
from .imageio import DatasetError, depth_from_mm, read_single
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

    def __init__(
        self,
        root,
        *,
        split: str = "train",
        aux_folder: str = "thermal",
        preprocessing: Preprocessing | None = None,
        num_classes: int | None = None,
        augment: bool = False,
        augmentation: Augmentation | None = None,
    ):
        root = check_root(root, "PST900")
        default_aux = default_aux_normalisation(aux_folder)
        if split not in PST900_SPLITS:
            raise DatasetError(f"PST900 has the splits {', '.join(PST900_SPLITS)} (its folders), not {split!r}")
        require_folders(root, "PST900", [f"{split}/{name}" for name in ("rgb", aux_folder, "labels")], PST900_LAYOUT)
        folder = root / split
        stems = sorted(path.stem for path in (folder / "rgb").glob("*.png"))
        self.aux_folder = aux_folder
        samples = [
            Sample(stem, split, {"rgb": folder / "rgb" / f"{stem}.png", "aux": folder / aux_folder / f"{stem}.png",
                                 "label": folder / "labels" / f"{stem}.png"})
            for stem in stems
        ]  # fmt: skip
        self._setup(
            root,
            samples=samples,
            split=split,
            class_names=PST900_CLASSES,
            num_classes=num_classes,
            default_aux=default_aux,
            aux_name=aux_folder,
            preprocessing=preprocessing,
            augment=augment,
            augmentation=augmentation,
        )

    def decode_aux(self, path: Path) -> np.ndarray:
        _, _, dtype, _, decode = PST900_AUX[self.aux_folder]
        stored = read_single(path)
        if stored.dtype != dtype:
            bits = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit"}.get(stored.dtype, str(stored.dtype))
            hint = {"thermal": "thermal_raw holds 16-bit raw thermal", "thermal_raw": "thermal holds 8-bit thermal"}
            raise DatasetError(
                f"{path} is {bits} ({stored.dtype}), but PST900 {self.aux_folder}/ images must be "
                f"{np.dtype(dtype).name}" + (f" ({hint[self.aux_folder]})" if self.aux_folder in hint else "")
            )
        return decode(stored)
