"""MM5 (aligned) as a PyTorch dataset, through the core's one preprocessing path.

On-disk layout (MM5_ALIGNED, and what `synth.generate_mm5` writes): one folder per modality, frames share
a file stem across folders (`RGB3/17.png`, `D_FocusN/17.png`, `ANNO_CLASS/17.png`, ...):

    RGB1..RGB8       8-bit colour, one folder per lighting
    D_FocusN, D_Focus, D   8-bit depth (MM5: per-image "focus" compression), 0 = no reading
    D16 (MM5's tree also spells it D_16)   uint16 depth in millimetres, 0 = no reading
    T8               8-bit thermal
    T16              uint16 raw thermal, deg C = raw / 64 - 273.15
    ANNO_CLASS       class ids (uint8; some files have 3 channels: OpenCV channel 0 is read, as the public
                     MM5 loader does; see imageio.read_labels)
    classes.txt      optional: one class name per line, id = line index (see `mm5_class_names`)

Splits are lists of stems, in either form: a text file with one stem per line (the public loader's
`list_train_f.txt` / `list_eval_f.txt`) or a csv file whose `ID` column (or `stem`/`name`/`file`/`filename`
column, else the first column) holds the stems (the seed study's `train_dataset.csv` / `eval_dataset.csv`).
A ".png" ending on an entry is dropped, and pandas' "17.0" is read as "17".

Every sample is a (stem, lighting) pair: `lightings="all"` uses each frame under all eight lightings,
the lighting study's "lightings as augmentation". Auxiliary images are decoded to physical units (`AUX_FOLDERS`)
and then normalised by `prepare_inputs` with the `Preprocessing` that is stored in the checkpoint, so
training and the ROS node cannot drift apart. `default_aux_normalisation(folder)` is the range each folder
uses unless the experiment overrides it.

Layout checks, reading, augmentation, `validate` and `describe` are the shared ones of base.FrameDataset.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing

from .augment import Augmentation
from .base import (
    FrameDataset, OpenOptions, Sample, checked_entries, clean_stem, read_csv_list, read_text_list,
    require_folders,
)  # fmt: skip
from .imageio import DatasetError, celsius_from_t16, depth_from_mm, raw8, raw8_with_holes
from .registry import register_layout

MM5_LIGHTINGS = tuple(f"RGB{k}" for k in range(1, 9))
DEPTH16_RANGE_M = (0.0, 4.0)  # D16 default: metres; the Azure Kinect's NFOV range is about 0.5-3.9 m
THERMAL_RANGE_C = (10.0, 70.0)  # T16 default: deg C; room, people, fruit, hot drinks (same as synth T8)

# The 32 classes of MM5 aligned since the 2025-06-23 release ("sliced" classes removed), in id order, as
# in the public GF-Net configuration. Used when a data set has neither classes.txt nor label_mapping.csv.
MM5_CLASSES = (
    "Background", "Lemon", "Lemon Bad", "Lemon Fake", "Mirror", "Bowl", "Mandarin", "Mandarin Bad",
    "Mandarin Fake", "Kettle", "Lemon Half", "Mandarin Half", "Mandarin Peel", "Cup Hot", "Onion Red",
    "Onion", "Grapes Green", "Grapes Green Bad", "Grapes Green Fake", "Grapes Blue Fake", "Grapes Blue",
    "Grapes Blue Bad", "Apple", "Apple Fake", "Apple Green", "Apple Green Bad", "Apple Green Fake",
    "Cup Cold", "Pear", "Pear Bad", "Carrot", "Carrot Fake",
)  # fmt: skip


@dataclass(frozen=True)
class AuxFolder:
    """How one MM5 auxiliary folder is stored and decoded."""

    modality: str  # "depth" | "thermal"
    unit: str  # unit after decoding (core AUX_UNITS)
    dtype: type  # stored pixel type
    decode: Callable[..., np.ndarray]  # stored array (and path, for errors) -> float32 in `unit`, NaN = none
    default_range: tuple[float, float]
    description: str


_FOCUS = AuxFolder("depth", "raw8", np.uint8, raw8_with_holes, (0.0, 255.0), "8-bit focus-compressed depth, 0 = none")
_D16 = AuxFolder("depth", "m", np.uint16, depth_from_mm, DEPTH16_RANGE_M, "uint16 millimetres, 0 = no reading")
AUX_FOLDERS: dict[str, AuxFolder] = {
    "D_FocusN": _FOCUS,
    "D_Focus": _FOCUS,
    "D": AuxFolder("depth", "raw8", np.uint8, raw8_with_holes, (0.0, 255.0), "8-bit depth, 0 = no reading"),
    "D16": _D16,
    "D_16": _D16,  # the spelling in MM5's README tree
    "T8": AuxFolder("thermal", "raw8", np.uint8, raw8, (0.0, 255.0), "8-bit thermal"),
    "T16": AuxFolder("thermal", "celsius", np.uint16, celsius_from_t16, THERMAL_RANGE_C, "raw / 64 - 273.15 = deg C"),
}


def aux_folder_info(aux_folder: str) -> AuxFolder:
    try:
        return AUX_FOLDERS[aux_folder]
    except KeyError:
        raise DatasetError(
            f"unknown MM5 auxiliary folder {aux_folder!r}; supported: {', '.join(AUX_FOLDERS)} "
            "(colour-encoded T24, UV and IR folders are not depth or thermal inputs)"
        ) from None


def default_aux_normalisation(aux_folder: str) -> AuxNormalisation:
    """The normalisation a model trained on `aux_folder` uses unless the experiment sets another range."""
    info = aux_folder_info(aux_folder)
    low, high = info.default_range
    return AuxNormalisation(modality=info.modality, unit=info.unit, low=low, high=high)


def default_preprocessing(aux_folder: str | None, input_size: tuple[int, int] | None = (224, 224)) -> Preprocessing:
    """The seed study's recipe: resize to 224x224, ImageNet mean/std, the aux folder's range to [0, 1]."""
    aux = default_aux_normalisation(aux_folder) if aux_folder is not None else AuxNormalisation()
    return Preprocessing(input_size=None if input_size is None else tuple(input_size), aux=aux)


# ----------------------------------------------------------------------------------------------------
# Class names


def _read_label_mapping(path: Path) -> dict[int, str]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DatasetError(f"{path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    try:
        id_col = header.index("id")
        name_col = next(i for i, cell in enumerate(header) if cell in ("label name", "name", "label", "class"))
    except (ValueError, StopIteration):
        raise DatasetError(f"{path} must have columns 'ID' and 'Label Name', got header {rows[0]}") from None
    mapping = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            mapping[int(float(row[id_col]))] = row[name_col].strip()
        except (ValueError, IndexError):
            raise DatasetError(f"{path} line {line_no}: cannot read an integer ID and a name from {row}") from None
    return mapping


def mm5_class_names(root, default: Sequence[str] | None = MM5_CLASSES) -> list[str]:
    """Class names by id for the data set at `root`.

    - `classes.txt`: one name per line, id = line index, background first. The seed study wrote its
      classes.txt *without* the background line, next to a `label_mapping.csv` (`ID,Label Name`, ids from
      1); when both are present and line 0 of classes.txt is the name of id 1, "background" is put first.
    - else `label_mapping.csv`: names by ID, id 0 = "background" unless listed, gaps "class_<id>".
    - else `default` (the 32 MM5 classes); with `default=None` a missing class list is an error.
    """
    root = Path(root)
    classes_txt, mapping_csv = root / "classes.txt", root / "label_mapping.csv"
    mapping = _read_label_mapping(mapping_csv) if mapping_csv.is_file() else None
    if classes_txt.is_file():
        names = [line.strip() for line in classes_txt.read_text().splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"{classes_txt} is empty")
        if mapping and 0 not in mapping and mapping.get(1) == names[0]:
            names = ["background", *names]
        return names
    if mapping:
        count = max(mapping) + 1
        return [mapping.get(i, "background" if i == 0 else f"class_{i}") for i in range(count)]
    if default is None:
        raise DatasetError(f"no class list in {root}: expected classes.txt (one name per line, background first)")
    return list(default)


# ----------------------------------------------------------------------------------------------------
# Splits


_SPLIT_FILES = {
    "train": ("list_train_f.txt", "train_dataset.csv"),
    "eval": ("list_eval_f.txt", "eval_dataset.csv"),
    "val": ("list_eval_f.txt", "eval_dataset.csv"),
    "test": ("list_test_f.txt", "test_dataset.csv"),
}


def read_split(root, split) -> list[str]:
    """Stems of a split: a list of stems, a .txt/.csv path (relative paths against `root`), or one of
    "train" / "eval" / "val" / "test" (the public loader's list_<name>_f.txt, else the seed study's csv)."""
    root = Path(root)
    if isinstance(split, (list, tuple)):
        stems = checked_entries(clean_stem(str(s)) for s in split)
        source = "list"
    else:
        path = Path(split)
        if not path.is_absolute():
            path = root / path
        if not path.exists() and str(split) in _SPLIT_FILES:
            candidates = [root / name for name in _SPLIT_FILES[str(split)]]
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                raise DatasetError(f"no {split} split in {root}: expected {' or '.join(map(str, candidates))}")
        if not path.is_file():
            raise DatasetError(f"split file {path} does not exist")
        stems = read_csv_list(path) if path.suffix.lower() == ".csv" else read_text_list(path)
        source = str(path)
    if not stems:
        raise DatasetError(f"split {source} lists no frames")
    return stems


# ----------------------------------------------------------------------------------------------------
# The dataset


def _as_lightings(lightings) -> list[str]:
    if isinstance(lightings, str):
        return list(MM5_LIGHTINGS) if lightings.lower() == "all" else [lightings]
    names = list(lightings)
    if not names:
        raise DatasetError(f"no MM5 lighting given; name some of {', '.join(MM5_LIGHTINGS)} or 'all'")
    if any(str(name).lower() == "all" for name in names):
        return list(MM5_LIGHTINGS)
    return [str(name) for name in names]


MM5_LAYOUT = "RGB1..RGB8/, an aux folder (D_FocusN, D16, T8, T16, ...), ANNO_CLASS/, frames sharing a stem"


@register_layout
class MM5Dataset(FrameDataset):
    """(stem, lighting) samples of MM5, returned as network-ready tensors (base.FrameDataset).

    Samples carry "lighting" and group = the lighting. `aux_folder=None` gives an RGB-only data set (aux is
    a zero map). `preprocessing=None` uses `default_preprocessing(aux_folder)` (224x224, ImageNet mean/std,
    the folder's default range); `input_size=None` in it keeps the native 480x640.

    `augment=True`: `augmentation` (augment.py), by default a random horizontal flip and a random zoom
    (crop of 1/zoom of each side, zoom uniform in [1, max_zoom]) applied identically to colour, aux and
    labels before normalisation.
    """

    dataset_name = "mm5"
    title = "MM5"
    METAINFO = {"classes": MM5_CLASSES, "palette": None}
    classes_fixed = False  # classes.txt or label_mapping.csv may list others (mm5_class_names)
    aux_choices = tuple(AUX_FOLDERS)
    aux_defaults = staticmethod(default_aux_normalisation)
    aux_optional = True  # aux_folder None: RGB-only
    default_label_folder = "ANNO_CLASS"
    label_folder_configurable = True

    @classmethod
    def open(cls, root, options: OpenOptions) -> "MM5Dataset":
        return cls(root, lightings=options.lightings, label_folder=options.label_folder or cls.default_label_folder,
                   split=options.split, aux_folder=options.aux_folder, preprocessing=options.preprocessing,
                   num_classes=options.num_classes, augment=options.augment, augmentation=options.augmentation)

    def __init__(
        self,
        root,
        *,
        lightings,
        split,
        aux_folder: str | None = "D_FocusN",
        label_folder: str = "ANNO_CLASS",
        preprocessing: Preprocessing | None = None,
        num_classes: int | None = None,
        augment: bool = False,
        max_zoom: float = 1.25,
        augmentation: Augmentation | None = None,
        ext: str = ".png",
    ):
        self.lightings = _as_lightings(lightings)
        self.aux_folder = aux_folder
        self.aux_info = aux_folder_info(aux_folder) if aux_folder is not None else None
        self.label_folder = label_folder
        self.ext = ext if ext.startswith(".") else f".{ext}"
        if max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {max_zoom}")
        self.max_zoom = float(max_zoom)
        super().__init__(root, split=split, aux_folder=aux_folder,
                         preprocessing=preprocessing or default_preprocessing(aux_folder), num_classes=num_classes,
                         augment=augment, augmentation=augmentation or Augmentation(scale=(1.0, self.max_zoom)))

    def list_samples(self, split, aux_folder: str | None) -> tuple[list[Sample], str]:
        stems = read_split(self.root, split)
        require_folders(self.root, "MM5", self.folders, MM5_LAYOUT)
        samples = []
        for stem in stems:
            files = {"aux": self.path(aux_folder, stem)} if aux_folder is not None else {}
            files["label"] = self.path(self.label_folder, stem)
            samples += [Sample(stem, lighting, {"rgb": self.path(lighting, stem), **files}, {"lighting": lighting})
                        for lighting in self.lightings]
        return samples, str(split) if isinstance(split, (str, os.PathLike)) else "list"

    def class_names(self) -> list[str]:
        return mm5_class_names(self.root)

    @property
    def folders(self) -> list[str]:
        """Every folder a sample reads from: the lightings, the aux folder (if any), the labels."""
        extra = [self.aux_folder] if self.aux_folder is not None else []
        return [*self.lightings, *extra, self.label_folder]

    def path(self, folder: str, stem: str) -> Path:
        return self.root / folder / f"{stem}{self.ext}"

    def decode_aux(self, path: Path) -> np.ndarray:
        return self.aux_info.decode(self.read_stored_aux(path, self.aux_info.dtype), path)

    def read_aux(self, stem: str) -> np.ndarray | None:
        """HxW float32 in the aux folder's physical unit, NaN = no reading (None without an aux folder)."""
        return self.decode_aux(self.path(self.aux_folder, stem)) if self.aux_info is not None else None

    def read_labels(self, stem: str) -> np.ndarray:
        """HxW class ids (uint8/uint16), checked against num_classes (255 = ignore is allowed)."""
        return self.decode_labels(self.path(self.label_folder, stem))

    def describe(self) -> dict:
        return super().describe() | {"lightings": list(self.lightings), "label_folder": self.label_folder}
