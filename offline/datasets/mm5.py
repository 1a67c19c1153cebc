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

The whole layout (folders, every needed file of every stem, and that all of a frame's images have the
same size, read from the PNG headers) is checked when the dataset is built; `validate(full=True)` also
decodes every file and checks every label value, and returns per-class pixel counts.
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing, prepare_inputs, resize_labels

from .imageio import (
    DatasetError,
    celsius_from_t16,
    depth_from_mm,
    png_size,
    raw8,
    raw8_with_holes,
    read_labels,
    read_rgb,
    read_single,
)

MM5_LIGHTINGS = tuple(f"RGB{k}" for k in range(1, 9))
IGNORE_INDEX = 255
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

_STEM_COLUMNS = ("id", "stem", "name", "file", "filename", "image", "image_id", "frame")
_IMAGE_SUFFIX = re.compile(r"\.(png|jpg|jpeg|tif|tiff|bmp)$", re.IGNORECASE)
_PANDAS_FLOAT = re.compile(r"^(\d+)\.0+$")


def _clean_stem(entry: str) -> str:
    entry = entry.strip()
    entry = _IMAGE_SUFFIX.sub("", entry)
    match = _PANDAS_FLOAT.match(entry)
    return match.group(1) if match else entry


def _read_csv_split(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in _STEM_COLUMNS if name in header), None)
    body = rows[1:] if column is not None else rows
    column = column or 0
    stems = []
    for line_no, row in enumerate(body, start=2 if body is not rows else 1):
        if column >= len(row):
            raise DatasetError(f"{path} line {line_no}: no column {column} in {row}")
        stems.append(_clean_stem(row[column]))
    return stems


def _read_text_split(path: Path) -> list[str]:
    stems = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            stems.append(_clean_stem(line.split()[0]))
    return stems


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
        stems = [_clean_stem(str(s)) for s in split]
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
        stems = _read_csv_split(path) if path.suffix.lower() == ".csv" else _read_text_split(path)
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
        raise DatasetError("no lighting given")
    if any(str(name).lower() == "all" for name in names):
        return list(MM5_LIGHTINGS)
    return [str(name) for name in names]


class MM5Dataset(Dataset):
    """(stem, lighting) samples of MM5, returned as network-ready tensors.

    `__getitem__` gives {"rgb": 3xhxw float32, "aux": 1xhxw float32, "label": hxw int64 (255 = ignore),
    "stem": str, "lighting": str}. `aux_folder=None` gives an RGB-only data set (aux is a zero map).
    `preprocessing=None` uses `default_preprocessing(aux_folder)` (224x224, ImageNet mean/std, the
    folder's default range); `input_size=None` in it keeps the native 480x640.

    `augment=True`: a random horizontal flip and a random zoom (crop of 1/zoom of each side, zoom uniform
    in [1, max_zoom]) applied identically to colour, aux and labels before normalisation; the random
    numbers come from torch's generator, so DataLoader worker seeding makes them reproducible.
    """

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
        ext: str = ".png",
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"MM5 root {self.root} does not exist or is not a folder")
        self.lightings = _as_lightings(lightings)
        self.aux_folder = aux_folder
        self.aux_info = aux_folder_info(aux_folder) if aux_folder is not None else None
        self.label_folder = label_folder
        self.ext = ext if ext.startswith(".") else f".{ext}"
        self.augment = bool(augment)
        if max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {max_zoom}")
        self.max_zoom = float(max_zoom)

        if preprocessing is None:
            preprocessing = default_preprocessing(aux_folder)
        elif self.aux_info is not None and (
            preprocessing.aux.modality != self.aux_info.modality or preprocessing.aux.unit != self.aux_info.unit
        ):
            raise DatasetError(
                f"preprocessing expects {preprocessing.aux.modality} in {preprocessing.aux.unit!r} but "
                f"{aux_folder} holds {self.aux_info.modality} in {self.aux_info.unit!r}; build it from "
                f"default_aux_normalisation({aux_folder!r})"
            )
        self.preprocessing = preprocessing

        self.split = split if isinstance(split, (str, os.PathLike)) else "list"
        self.stems = read_split(self.root, split)

        names = mm5_class_names(self.root)
        if num_classes is None:
            num_classes = len(names)
        elif num_classes < len(names):
            raise DatasetError(
                f"num_classes={num_classes} but the class list of {self.root} names {len(names)} classes"
            )
        elif num_classes > len(names):
            warnings.warn(
                f"num_classes={num_classes} but the class list of {self.root} names {len(names)}; "
                "the extra ids are named class_<id>",
                stacklevel=2,
            )
            names = names + [f"class_{i}" for i in range(len(names), num_classes)]
        if not 1 <= num_classes <= IGNORE_INDEX:
            raise DatasetError(f"num_classes must be in 1..{IGNORE_INDEX}, got {num_classes}")
        self.num_classes = int(num_classes)
        self.classes = names

        self.samples = [(stem, lighting) for stem in self.stems for lighting in self.lightings]
        self._check_layout()

    # -- layout -------------------------------------------------------------------------------------

    @property
    def folders(self) -> list[str]:
        """Every folder a sample reads from: the lightings, the aux folder (if any), the labels."""
        extra = [self.aux_folder] if self.aux_folder is not None else []
        return [*self.lightings, *extra, self.label_folder]

    def path(self, folder: str, stem: str) -> Path:
        return self.root / folder / f"{stem}{self.ext}"

    def _check_layout(self) -> None:
        missing_folders = [f for f in self.folders if not (self.root / f).is_dir()]
        if missing_folders:
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise DatasetError(
                f"MM5 root {self.root} lacks folder(s) {', '.join(missing_folders)}; "
                f"it has: {', '.join(present) or 'none'}"
            )
        problems = []
        unique_stems = list(dict.fromkeys(self.stems))
        for folder in self.folders:
            present = set(os.listdir(self.root / folder))
            for stem in unique_stems:
                if f"{stem}{self.ext}" not in present:
                    problems.append(f"frame {stem!r} missing in {folder}/ (no {self.path(folder, stem)})")
        _raise_problems(problems, f"MM5 data set {self.root} is incomplete")
        if self.ext.lower() != ".png":
            return  # sizes are checked on reading (and by validate) for other formats
        for stem in unique_stems:
            sizes = {folder: png_size(self.path(folder, stem)) for folder in self.folders}
            if len(set(sizes.values())) > 1:
                detail = ", ".join(f"{folder} {h}x{w}" for folder, (h, w) in sizes.items())
                problems.append(f"frame {stem!r} has images of different sizes: {detail}")
        _raise_problems(problems, f"MM5 data set {self.root} has misaligned frames")

    # -- reading ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    def read_aux(self, stem: str) -> np.ndarray | None:
        """HxW float32 in the aux folder's physical unit, NaN = no reading (None without an aux folder)."""
        if self.aux_info is None:
            return None
        path = self.path(self.aux_folder, stem)
        stored = read_single(path)
        if stored.dtype != self.aux_info.dtype:
            raise DatasetError(
                f"{path} is {stored.dtype}, but {self.aux_folder} images must be {np.dtype(self.aux_info.dtype).name}"
            )
        return self.aux_info.decode(stored, path)

    def read_labels(self, stem: str) -> np.ndarray:
        """HxW class ids (uint8/uint16), checked against num_classes (255 = ignore is allowed)."""
        path = self.path(self.label_folder, stem)
        labels = read_labels(path)
        self._check_label_values(labels, path)
        return labels

    def _check_label_values(self, labels: np.ndarray, path) -> None:
        if int(labels.max(initial=0)) >= self.num_classes:
            bad = np.unique(labels[(labels >= self.num_classes) & (labels != IGNORE_INDEX)])
            if bad.size:
                shown = ", ".join(str(v) for v in bad[:20]) + (" ..." if bad.size > 20 else "")
                raise DatasetError(
                    f"label {path} has class id(s) {shown} >= num_classes {self.num_classes} "
                    f"(ids must be 0..{self.num_classes - 1}, or {IGNORE_INDEX} = ignore)"
                )

    def read_raw(self, index: int) -> dict:
        """Sample `index` decoded but not preprocessed: rgb HxWx3 uint8, aux HxW float32 (or None), label."""
        stem, lighting = self.samples[index]
        rgb = read_rgb(self.path(lighting, stem))
        aux = self.read_aux(stem)
        labels = self.read_labels(stem)
        shapes = {lighting: rgb.shape[:2], self.label_folder: labels.shape[:2]}
        if aux is not None:
            shapes[self.aux_folder] = aux.shape[:2]
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{folder} {h}x{w}" for folder, (h, w) in shapes.items())
            raise DatasetError(f"frame {stem!r} in {self.root} has images of different sizes: {detail}")
        return {"rgb": rgb, "aux": aux, "label": labels, "stem": stem, "lighting": lighting}

    def _augment(self, rgb, aux, labels):
        flip, zoom_draw, dy, dx = torch.rand(4).tolist()
        if flip < 0.5:
            rgb, labels = rgb[:, ::-1], labels[:, ::-1]
            aux = aux[:, ::-1] if aux is not None else None
        zoom = 1.0 + (self.max_zoom - 1.0) * zoom_draw
        if zoom > 1.0:
            height, width = labels.shape[:2]
            crop_h, crop_w = max(int(round(height / zoom)), 1), max(int(round(width / zoom)), 1)
            y0, x0 = int(dy * (height - crop_h + 1)), int(dx * (width - crop_w + 1))
            window = (slice(y0, y0 + crop_h), slice(x0, x0 + crop_w))
            rgb, labels = rgb[window], labels[window]
            aux = aux[window] if aux is not None else None
        contiguous = np.ascontiguousarray
        return contiguous(rgb), (contiguous(aux) if aux is not None else None), contiguous(labels)

    def __getitem__(self, index: int) -> dict:
        raw = self.read_raw(index)
        rgb, aux, labels = raw["rgb"], raw["aux"], raw["label"]
        spec = self.preprocessing
        if self.augment:
            native = labels.shape[:2]
            rgb, aux, labels = self._augment(rgb, aux, labels)
            if spec.input_size is None:  # zoomed crops go back to the native size, via the same path
                spec = replace(spec, input_size=tuple(native))
        rgb_tensor, aux_tensor = prepare_inputs(rgb, aux, spec)
        labels = resize_labels(labels, spec.input_size)
        return {
            "rgb": torch.from_numpy(rgb_tensor),
            "aux": torch.from_numpy(aux_tensor),
            "label": torch.from_numpy(labels.astype(np.int64)),
            "stem": raw["stem"],
            "lighting": raw["lighting"],
        }

    # -- checks and description ---------------------------------------------------------------------

    def validate(self, full: bool = True, workers: int = 4) -> dict:
        """Check the data set before training. The layout was checked at construction; `full=True` also
        decodes every file a sample reads (every lighting), checks pixel types and sizes and every label
        value, and counts label pixels per class. Raises DatasetError listing every problem found.

        Returns {"frames", "samples", "files_checked", "class_pixels" (list, one count per class id),
        "ignore_pixels", "aux_valid_fraction" (share of aux pixels with a reading, or None)}.
        """
        report = {"frames": len(set(self.stems)), "samples": len(self.samples), "files_checked": 0}
        if not full:
            return report
        unique_stems = list(dict.fromkeys(self.stems))

        def check(stem: str):
            problems, size, files = [], None, 0
            counts = np.zeros(self.num_classes + 1, np.int64)  # last bin: ignore
            aux_valid = aux_total = 0
            for folder in self.folders:
                path = self.path(folder, stem)
                try:
                    if folder == self.label_folder:
                        labels = read_labels(path)
                        self._check_label_values(labels, path)
                        ids = labels.ravel().astype(np.int64)
                        ids[ids == IGNORE_INDEX] = self.num_classes
                        counts += np.bincount(ids, minlength=self.num_classes + 1)
                        shape = labels.shape[:2]
                    elif folder == self.aux_folder:
                        aux = self.read_aux(stem)
                        aux_valid += int(np.count_nonzero(~np.isnan(aux)))
                        aux_total += aux.size
                        shape = aux.shape[:2]
                    else:
                        shape = read_rgb(path).shape[:2]
                    files += 1
                except DatasetError as error:
                    problems.append(str(error))
                    continue
                if size is None:
                    size = shape
                elif shape != size:
                    problems.append(
                        f"{path} is {shape[0]}x{shape[1]}, other images of frame {stem!r} are {size[0]}x{size[1]}"
                    )
            return problems, files, counts, aux_valid, aux_total

        problems: list[str] = []
        counts = np.zeros(self.num_classes + 1, np.int64)
        aux_valid = aux_total = 0
        with ThreadPoolExecutor(max_workers=max(int(workers), 1)) as pool:
            for found, files, frame_counts, valid, total in pool.map(check, unique_stems):
                problems += found
                report["files_checked"] += files
                counts += frame_counts
                aux_valid += valid
                aux_total += total
        _raise_problems(problems, f"MM5 data set {self.root} failed validation")
        report["class_pixels"] = counts[: self.num_classes].tolist()
        report["ignore_pixels"] = int(counts[self.num_classes])
        report["aux_valid_fraction"] = (aux_valid / aux_total) if aux_total else None
        return report

    def describe(self) -> dict:
        """What this data set is, for a checkpoint's `data` field."""
        return {
            "dataset": "mm5",
            "root": str(self.root),
            "lightings": list(self.lightings),
            "aux_folder": self.aux_folder,
            "label_folder": self.label_folder,
            "split": str(self.split),
            "frames": len(set(self.stems)),
            "samples": len(self.samples),
            "augment": self.augment,
        }

    def __repr__(self) -> str:
        return (
            f"MM5Dataset({str(self.root)!r}, lightings={self.lightings}, aux_folder={self.aux_folder!r}, "
            f"split={str(self.split)!r}, frames={len(set(self.stems))}, samples={len(self)}, "
            f"classes={self.num_classes}, input_size={self.preprocessing.input_size}, augment={self.augment})"
        )


def _raise_problems(problems: list[str], headline: str, limit: int = 12) -> None:
    if not problems:
        return
    shown = problems[:limit]
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    raise DatasetError(f"{headline} ({len(problems)} problem(s)):\n  " + "\n  ".join(shown) + more)


def lighting_datasets(root, lightings: Iterable[str] = MM5_LIGHTINGS, **kwargs) -> dict[str, MM5Dataset]:
    """One data set per lighting (the lighting study evaluates every model under each one separately)."""
    return {lighting: MM5Dataset(root, lightings=lighting, **kwargs) for lighting in lightings}
