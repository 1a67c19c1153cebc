"""The generic folder layout: a user's own RGB-D or RGB-T data, and what the bag export writes.

    <root>/
      dataset.yaml        format: rgbd_fusion_seg/folder/1
                          modality: depth | thermal        (the aux folder is named after it)
                          aux_unit: mm | m | raw8 | raw16 | celsius
                            depth:   mm = uint16 PNG millimetres, 0 = no reading
                                     m  = float32 TIFF metres, NaN or 0 = no reading
                            thermal: raw8 = uint8 PNG, raw16 = uint16 PNG, celsius = float32 TIFF
                          classes: [background, ...]       (optional until labelled; id = list index)
                          ignore_index: 255                (optional; other values are mapped to 255)
      rgb/<stem>.png      8-bit colour (.jpg also accepted)
      depth/<stem>.png|tiff or thermal/<stem>.png|tiff
      labels/<stem>.png   uint8 class ids (absent in an unlabelled export)
      <split>.txt         one stem per line (train.txt, val.txt, test.txt, all.txt ...)
      stamps.csv          optional (the bag export writes it); not read here

aux_unit maps to core.preprocessing's units: mm and m -> "m", raw8, raw16 and celsius as they are. Default
normalisation ranges (data.aux_range overrides): depth 0-10 m, raw8 0-255, raw16 0-65535, celsius -20-80.
`split` is a <split>.txt name or path, or a list of stems; a sample's group is the split name. Unlabelled
data (no labels/) can be read for its images with `require_labels=False`; training and evaluation need
labels and say so.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing

from .augment import Augmentation
from .base import IGNORE_INDEX, FrameDataset, OpenOptions, Sample, read_named_split, require_folders
from .imageio import DatasetError, depth_from_mm, read_image, read_labels, read_single
from .registry import register_layout

FORMAT = "rgbd_fusion_seg/folder/1"
FOLDER_LAYOUT = "dataset.yaml, rgb/, depth/ or thermal/, labels/, <split>.txt (see offline/datasets/folder.py)"
# aux_unit -> (modality, core unit, stored dtype, file suffixes, default range)
AUX_UNITS = {
    "mm": ("depth", "m", np.uint16, (".png",), (0.0, 10.0)),
    "m": ("depth", "m", np.float32, (".tiff", ".tif"), (0.0, 10.0)),
    "raw8": ("thermal", "raw8", np.uint8, (".png",), (0.0, 255.0)),
    "raw16": ("thermal", "raw16", np.uint16, (".png",), (0.0, 65535.0)),
    "celsius": ("thermal", "celsius", np.float32, (".tiff", ".tif"), (-20.0, 80.0)),
}
FOLDER_AUX = ("auto", "depth", "thermal")
RGB_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_description(root) -> dict:
    """dataset.yaml, checked: {"modality", "aux_unit", "classes" (list or None), "ignore_index"}."""
    path = Path(root) / "dataset.yaml"
    if not path.is_file():
        raise DatasetError(f"{path} is missing; a folder data set starts with it (expected layout: {FOLDER_LAYOUT})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DatasetError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a mapping of fields, got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise DatasetError(f"{path}: field 'format' must be {FORMAT!r}, got {raw.get('format')!r}")
    unit = raw.get("aux_unit")
    if unit not in AUX_UNITS:
        raise DatasetError(f"{path}: field 'aux_unit' must be one of {', '.join(AUX_UNITS)}, got {unit!r}")
    modality = raw.get("modality")
    if modality != AUX_UNITS[unit][0]:
        units = [name for name, info in AUX_UNITS.items() if info[0] == modality]
        raise DatasetError(
            f"{path}: modality {modality!r} with aux_unit {unit!r}: "
            + (f"{modality} takes {', '.join(units)}" if units else "modality must be depth or thermal")
        )
    classes = raw.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes)
    ):
        raise DatasetError(f"{path}: field 'classes' must be a non-empty list of names, got {classes!r}")
    ignore = raw.get("ignore_index", IGNORE_INDEX)
    if isinstance(ignore, bool) or not isinstance(ignore, int) or not 0 <= ignore <= 65535:
        raise DatasetError(f"{path}: field 'ignore_index' must be an integer id, got {ignore!r}")
    return {"modality": modality, "aux_unit": unit, "classes": classes, "ignore_index": ignore}


def check_aux(aux_folder: str, description: dict, root) -> None:
    if aux_folder not in FOLDER_AUX:
        raise DatasetError(f"unknown folder-layout aux choice {aux_folder!r}; choose {', '.join(FOLDER_AUX)}")
    if aux_folder != "auto" and aux_folder != description["modality"]:
        raise DatasetError(
            f"aux choice {aux_folder!r} but {Path(root) / 'dataset.yaml'} says the data set holds "
            f"{description['modality']}"
        )


def default_aux_normalisation(root, aux_folder: str = "auto") -> AuxNormalisation:
    description = read_description(root)
    check_aux(aux_folder, description, root)
    modality, unit, _, _, (low, high) = AUX_UNITS[description["aux_unit"]]
    return AuxNormalisation(modality=modality, unit=unit, low=low, high=high)


def _find(listing: dict[str, str], stem: str, folder: Path, suffixes) -> Path:
    """The file of `stem` in `folder` with one of `suffixes` (or the .png path, reported missing later)."""
    for suffix in suffixes:
        if stem + suffix in listing:
            return folder / (stem + suffix)
    return folder / (stem + suffixes[0])


@register_layout
class FolderDataset(FrameDataset):
    """A split of a folder-layout data set. `preprocessing=None`: native size, ImageNet mean/std, the
    unit's default range."""

    dataset_name = "folder"
    title = "folder"
    aux_choices = FOLDER_AUX

    @classmethod
    def open(cls, root, options: OpenOptions) -> "FolderDataset":
        return cls(root, split=options.split, aux_folder=options.aux_folder, preprocessing=options.preprocessing,
                   num_classes=options.num_classes, augment=options.augment, augmentation=options.augmentation,
                   require_labels=options.require_labels)

    @classmethod
    def aux_normalisation(cls, aux_folder: str, root=None) -> AuxNormalisation:
        return default_aux_normalisation(root, aux_folder)  # the unit is in <root>/dataset.yaml

    def __init__(
        self,
        root,
        *,
        split="train",
        aux_folder: str = "auto",
        preprocessing: Preprocessing | None = None,
        num_classes: int | None = None,
        augment: bool = False,
        augmentation: Augmentation | None = None,
        require_labels: bool = True,
    ):
        self.require_labels = require_labels
        super().__init__(root, split=split, aux_folder=aux_folder, preprocessing=preprocessing, num_classes=num_classes,
                         augment=augment, augmentation=augmentation)

    def list_samples(self, split, aux_folder: str) -> tuple[list[Sample], str]:
        root = self.root
        self.description = description = read_description(root)  # aux_folder was checked against it
        self.settings_files = (root / "dataset.yaml",)  # its aux_unit and ignore_index change the decoding
        modality = self.aux_name = description["modality"]  # the aux images' folder ("auto" names none)
        self.aux_unit = description["aux_unit"]
        labelled = (root / "labels").is_dir()
        if self.require_labels and not labelled:
            raise DatasetError(
                f"{root} has no labels/ folder (an unlabelled export): its images can be read "
                "(FolderDataset(..., require_labels=False)), but training and evaluation need labels/<stem>.png "
                "for every frame and the class list in dataset.yaml"
            )
        if labelled and description["classes"] is None:
            raise DatasetError(f"{root / 'dataset.yaml'} lists no classes, but {root / 'labels'} holds labels")
        require_folders(root, "folder", ["rgb", modality], FOLDER_LAYOUT)
        stems, split_name = read_named_split(root, split, "folder", FOLDER_LAYOUT)
        rgb_listing = dict.fromkeys(os.listdir(root / "rgb"))
        aux_listing = dict.fromkeys(os.listdir(root / modality))
        suffixes = AUX_UNITS[self.aux_unit][3]
        samples = []
        for stem in stems:
            files = {
                "rgb": _find(rgb_listing, stem, root / "rgb", RGB_SUFFIXES),
                "aux": _find(aux_listing, stem, root / modality, suffixes),
            }
            if labelled:
                files["label"] = root / "labels" / f"{stem}.png"
            samples.append(Sample(stem, split_name, files))
        return samples, split_name

    def class_names(self) -> list[str]:
        return self.description["classes"] or ["unknown"]

    def decode_aux(self, path: Path) -> np.ndarray:
        _, _, dtype, _, _ = AUX_UNITS[self.aux_unit]
        stored = read_single(path) if dtype != np.float32 else read_image(path)
        if stored.ndim != 2 or stored.dtype != dtype:
            raise DatasetError(
                f"{path} is {stored.dtype} with shape {stored.shape}, but aux_unit {self.aux_unit!r} "
                f"(dataset.yaml) means single-channel {np.dtype(dtype).name}"
            )
        if self.aux_unit == "mm":
            return depth_from_mm(stored, path)
        values = stored.astype(np.float32)
        if self.aux_unit == "m":
            values[values == 0] = np.nan
        return values

    def decode_labels(self, path: Path) -> np.ndarray:
        labels = read_labels(path)
        ignore = self.description["ignore_index"]
        if ignore != IGNORE_INDEX:
            labels = np.where(labels == ignore, IGNORE_INDEX, labels).astype(labels.dtype)
        self.check_label_values(labels, path)
        return labels

    def describe(self) -> dict:
        return super().describe() | {"aux_unit": self.aux_unit}
