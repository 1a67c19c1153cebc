"""FMB (RGB-infrared urban scenes of SegMiF, Liu et al. 2023) as a frame dataset (base.FrameDataset).

On-disk layout (600x800 frames, the same stem in every folder of a split; no validation split):

    train/ and test/, each with
        Visible/<stem>.png    8-bit colour
        Infrared/<stem>.png   8-bit infrared intensity (a grey image saved with 3 equal channels is accepted)
        Label/<stem>.png      uint8 ids 0..14 (FMB_CLASSES; 0 = unlabeled)

Codebases disagree on the class count, so it is an explicit option, `fmb_classes`:

    15  every id as stored; "unlabeled" (0) is a class and counts in mIoU
    14  "unlabeled" becomes ignore (255) and ids 1..14 become 0..13 (names without "unlabeled")

Label values are checked against the 15 stored ids before the mapping, so an error names the ids as they
are in the file. The split is the folder name; a sample's group is the split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing

from .augment import Augmentation
from .base import IGNORE_INDEX, FrameDataset, OpenOptions, Sample, check_aux_choice
from .imageio import DatasetError, raw8, read_labels
from .registry import register_layout

FMB_CLASSES = (
    "unlabeled", "road", "sidewalk", "building", "lamp", "sign", "vegetation", "sky", "person", "car",
    "truck", "bus", "motorcycle", "bicycle", "pole",
)  # fmt: skip
FMB_SPLITS = ("train", "test")
FMB_AUX = ("Infrared",)
FMB_CLASS_COUNTS = (15, 14)
FMB_LAYOUT = "train/ and test/, each with Visible/ Infrared/ Label/ (<stem>.png in each)"


def default_aux_normalisation(aux_folder: str = "Infrared") -> AuxNormalisation:
    check_aux_choice("FMB", aux_folder, FMB_AUX)
    return AuxNormalisation(modality="thermal", unit="raw8", low=0.0, high=255.0)


def fmb_class_names(fmb_classes: int) -> tuple[str, ...]:
    if fmb_classes not in FMB_CLASS_COUNTS:
        raise DatasetError(f"fmb_classes must be 15 (unlabeled counted) or 14 (unlabeled ignored), got {fmb_classes}")
    return FMB_CLASSES if fmb_classes == 15 else FMB_CLASSES[1:]


@register_layout
class FMBDataset(FrameDataset):
    """One split folder of FMB. `preprocessing=None`: native 600x800, ImageNet mean/std, infrared [0, 255]."""

    dataset_name = "fmb"
    title = "FMB"
    METAINFO = {"classes": FMB_CLASSES, "palette": None}
    aux_choices = FMB_AUX
    aux_defaults = staticmethod(default_aux_normalisation)
    default_label_folder = "Label"
    config_options = {"fmb_classes": 15}

    @classmethod
    def open(cls, root, options: OpenOptions) -> "FMBDataset":
        """`fmb_classes` defaults to `num_classes` (14 or 15), so a checkpoint's class count reopens its data."""
        classes = options.fmb_classes or options.num_classes or 15
        if options.num_classes is not None and options.num_classes != classes:
            raise DatasetError(f"num_classes={options.num_classes} does not match fmb_classes={classes}")
        return cls(root, split=options.split, fmb_classes=classes, aux_folder=options.aux_folder,
                   preprocessing=options.preprocessing, augment=options.augment, augmentation=options.augmentation)

    @classmethod
    def expected_num_classes(cls, data) -> int:
        return data.fmb_classes

    def __init__(
        self,
        root,
        *,
        split: str = "train",
        fmb_classes: int = 15,
        aux_folder: str = "Infrared",
        preprocessing: Preprocessing | None = None,
        augment: bool = False,
        augmentation: Augmentation | None = None,
    ):
        self._class_names = fmb_class_names(fmb_classes)  # refused before anything is read
        self.fmb_classes = int(fmb_classes)
        super().__init__(root, split=split, aux_folder=aux_folder, preprocessing=preprocessing, augment=augment,
                         augmentation=augmentation)

    def list_samples(self, split, aux_folder: str) -> tuple[list[Sample], str]:
        note = " (FMB has no validation split: validate on test, as the papers report)" if split == "val" else ""
        return self.split_folder_samples(split, FMB_SPLITS, ("Visible", aux_folder, "Label"), FMB_LAYOUT, note)

    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def decode_aux(self, path: Path) -> np.ndarray:
        return raw8(self.read_stored_aux(path, np.uint8), path)

    def decode_labels(self, path: Path) -> np.ndarray:
        stored = read_labels(path)
        bad = np.unique(stored[(stored >= len(FMB_CLASSES)) & (stored != IGNORE_INDEX)])
        if bad.size:
            raise DatasetError(
                f"label {path} has class id(s) {', '.join(map(str, bad[:20]))} outside FMB's 0..14 "
                f"(or {IGNORE_INDEX} = ignore)"
            )
        if self.fmb_classes == 15:
            return stored
        labels = stored.astype(np.int16) - 1  # unlabeled (0) -> -1 -> ignore; 255 stays ignore
        labels[(stored == 0) | (stored == IGNORE_INDEX)] = IGNORE_INDEX
        return labels.astype(np.uint8)
