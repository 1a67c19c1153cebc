"""What every frame dataset shares (MM5, MFNet, PST900, FMB, the generic folder layout).

A loader lists a split's `Sample`s (`list_samples`): the files of one training sample by role ("rgb", "aux",
"label"; MFNet's colour and thermal share one file), its stem, its evaluation group (MM5: the lighting; MFNet:
day / night; the others: the split) and any extra fields it returns (MM5: "lighting"). It decodes each role
into the units of core.preprocessing (`decode_rgb`, `decode_aux`, `decode_labels`), and `FrameDataset` does
the rest, from its constructor on (the root and the aux choice checked, the preprocessing, the class list):

- the layout check when the dataset is built: every folder and file present, and the files of a frame the
  same size (read from the PNG headers, so a whole split is checked in well under a second);
- `read_raw(i)`: the decoded frame; `__getitem__(i)`: augmented (augment.py) and turned into network
  tensors by `prepare_inputs` with the `Preprocessing` stored in checkpoints, so training, evaluation and
  the ROS node cannot drift apart:
      {"rgb": 3xhxw float32, "aux": 1xhxw float32 (zeros without aux), "label": hxw int64 (255 = ignore),
       "stem": str, "group": str, **extra}
  and, when augmented, "valid": hxw bool, False on crop padding and rotated-in corners (labels 255 there too)
- `validate(full=True)`: decodes every file once, checks pixel types, sizes and every label value, counts
  label pixels per class, and raises one DatasetError listing every problem found;
- `describe()`: what the dataset is (loader, root, split, aux choice, groups, sizes), for logs and reports.
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from rgbd_fusion_seg.core.palette import default_palette
from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing, prepare_inputs, resize_labels

from .augment import IGNORE_INDEX, Augmentation, augment_frame
from .imageio import DatasetError, png_size, read_labels, read_rgb, read_single


class Sample(NamedTuple):
    stem: str
    group: str
    files: dict[str, Path]  # role -> file; "aux" absent for RGB-only, "label" absent when unlabelled
    extra: dict = {}  # more fields of the returned sample (MM5: lighting); never mutated


# ----------------------------------------------------------------------------------------------------
# Lists of stems


_IMAGE_SUFFIX = re.compile(r"\.(png|jpg|jpeg|tif|tiff|bmp)$", re.IGNORECASE)
_PANDAS_FLOAT = re.compile(r"^(\d+)\.0+$")
_STEM_COLUMNS = ("id", "stem", "name", "file", "filename", "image", "image_id", "frame")


def clean_stem(entry: str) -> str:
    """A list entry -> stem: an image suffix is dropped, and pandas' "17.0" is read as "17"."""
    entry = _IMAGE_SUFFIX.sub("", entry.strip())
    match = _PANDAS_FLOAT.match(entry)
    return match.group(1) if match else entry


def checked_entry(entry: str, where: str) -> str:
    """`entry` if it names a file inside the layout's folders. An absolute path or one that climbs out
    with '..' would make the loader read a file from anywhere on the machine, so it is refused."""
    normal = os.path.normpath(entry)
    if os.path.isabs(entry) or normal == os.pardir or normal.startswith(os.pardir + os.sep):
        raise DatasetError(
            f"{where}: entry {entry!r} leaves the data root (absolute paths and '..' are refused): "
            "a split lists stems, relative to the layout's folders"
        )
    return entry


def checked_entries(entries) -> list[str]:
    """The stems of a split given as a list (e.g. in the config), each inside the data root."""
    return [checked_entry(str(entry), f"split list item {i}") for i, entry in enumerate(entries)]


def read_text_list(path: Path) -> list[str]:
    """One stem per line (first word; blank lines and # comments skipped)."""
    stems = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            stems.append(checked_entry(clean_stem(line.split()[0]), f"{path} line {line_no}"))
    return stems


def read_csv_list(path: Path) -> list[str]:
    """Stems from a csv's ID (or stem/name/file/...) column, else its first column."""
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
        stems.append(checked_entry(clean_stem(row[column]), f"{path} line {line_no}"))
    return stems


def read_named_split(root: Path, split, title: str, layout: str) -> tuple[list[str], str]:
    """(names, split name): `split` is a list of names, a .txt path, or the name of <root>/<split>.txt."""
    if isinstance(split, (list, tuple)):
        return checked_entries(split), "list"
    path = Path(split)
    if path.suffix != ".txt":
        path = root / f"{split}.txt"
    elif not path.is_absolute():
        path = root / path
    if not path.is_file():
        present = sorted(p.name for p in root.glob("*.txt"))
        raise DatasetError(
            f"{title} root {root} has no split file {path.name}; it has: {', '.join(present) or 'no .txt files'}; "
            f"expected the {title} layout: {layout}"
        )
    return read_text_list(path), path.stem


def check_aux_choice(title: str, aux_folder, choices) -> None:
    if aux_folder not in choices:
        raise DatasetError(f"unknown {title} aux choice {aux_folder!r}; {title} has: {', '.join(choices)}")


def raise_problems(problems: list[str], headline: str, limit: int = 12) -> None:
    if not problems:
        return
    shown = problems[:limit]
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    raise DatasetError(f"{headline} ({len(problems)} problem(s)):\n  " + "\n  ".join(shown) + more)


def check_root(root, title: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{title} root {root} does not exist or is not a folder")
    return root


def require_folders(root: Path, title: str, folders: Sequence[str], layout: str) -> None:
    """DatasetError naming the missing folders, what the root holds and the layout that was expected."""
    missing = [folder for folder in folders if not (root / folder).is_dir()]
    if missing:
        present = sorted(p.name + "/" for p in root.iterdir() if p.is_dir()) + sorted(
            p.name for p in root.iterdir() if p.is_file()
        )
        raise DatasetError(
            f"{title} root {root} lacks folder(s) {', '.join(m + '/' for m in missing)}; "
            f"it has: {', '.join(present[:20]) or 'nothing'}; expected the {title} layout: {layout}"
        )


# ----------------------------------------------------------------------------------------------------
# The dataset


class OpenOptions(NamedTuple):
    """What the catalogue (catalog.open_dataset) passes to a layout's `open`; each layout reads its own."""

    split: object
    preprocessing: Preprocessing | None
    num_classes: int | None
    aux_folder: str
    augment: bool
    augmentation: Augmentation | None
    lightings: object = "all"  # MM5
    label_folder: str | None = None  # MM5
    fmb_classes: int | None = None  # FMB
    require_labels: bool = True  # the folder layout


class FrameDataset(Dataset):
    """Base class; a subclass lists its samples (`list_samples`) and decodes its files (module docstring). A
    subclass registered with registry.register_layout describes its layout in the class attributes below; one
    with options of its own sets them in its constructor, then calls this one."""

    dataset_name = "frames"  # the catalogue's name, `data.dataset` ("mm5", "mfnet", ...)
    title = "frame"  # for messages ("MM5", "MFNet", ...)
    # Class names by id (None: read from the data set) and their colours (None: core.palette's default).
    METAINFO: dict = {"classes": None, "palette": None}
    classes_fixed = True  # METAINFO's classes are the layout's (MM5: only a default; classes.txt may differ)
    aux_choices: tuple[str, ...] = ()  # values of data.aux_folder; the first is the default
    aux_optional = False  # MM5: aux_folder None gives an RGB-only data set (the aux input a zero map)
    # aux choice -> its default AuxNormalisation, where the choice alone decides it (the layout module's
    # default_aux_normalisation, set as `aux_defaults = staticmethod(default_aux_normalisation)`).
    aux_defaults: Callable[[str], AuxNormalisation] | None = None
    default_label_folder = "labels"
    label_folder_configurable = False  # MM5: data.label_folder may name another folder
    config_options: dict = {}  # data-section fields only this layout reads, with their defaults
    # Files besides the samples' that decoding depends on (folder: dataset.yaml); dataset_cache.py
    # fingerprints them with the samples' files, so editing one makes a cached validation report stale.
    settings_files: tuple[Path, ...] = ()

    # -- the layout, for the catalogue and the config (subclasses override what differs) ---------------

    @classmethod
    def open(cls, root: Path, options: OpenOptions) -> "FrameDataset":
        """One split of the data set at `root` (catalog.open_dataset)."""
        return cls(root, split=options.split, aux_folder=options.aux_folder, preprocessing=options.preprocessing,
                   num_classes=options.num_classes, augment=options.augment, augmentation=options.augmentation)

    @classmethod
    def aux_normalisation(cls, aux_folder: str, root: Path | None = None) -> AuxNormalisation:
        """The aux range a model trained on this aux choice uses unless data.aux_range overrides it: the
        layout's `aux_defaults(aux_folder)`. A layout whose range depends on its data overrides this (folder:
        the unit is in <root>/dataset.yaml)."""
        if cls.aux_defaults is None:
            raise NotImplementedError(f"{cls.__name__} must set aux_defaults or define aux_normalisation")
        return cls.aux_defaults(aux_folder)

    @classmethod
    def expected_num_classes(cls, data) -> int | None:
        """The class count a validated config `data` section implies (None: read from the data set)."""
        classes = cls.METAINFO.get("classes")
        return len(classes) if cls.classes_fixed and classes else None

    @classmethod
    def palette(cls, num_classes: int) -> list[tuple[int, int, int]]:
        palette = cls.METAINFO.get("palette")
        if palette is not None and len(palette) >= num_classes:
            return [tuple(colour) for colour in palette[:num_classes]]
        return default_palette(num_classes)

    # -- construction -------------------------------------------------------------------------------

    def __init__(
        self,
        root,
        *,
        split="train",
        aux_folder: str | None = None,
        preprocessing: Preprocessing | None = None,
        num_classes: int | None = None,
        augment: bool = False,
        augmentation: Augmentation | None = None,
    ):
        """One split of the data set at `root`. `aux_folder` None: the layout's default, its first aux choice
        (no aux image where the aux is optional). `preprocessing` None: the native size, ImageNet mean/std
        and the aux choice's default range."""
        self.root = check_root(root, self.title)
        if aux_folder is None and not self.aux_optional:
            aux_folder = self.aux_choices[0]
        default_aux = self.aux_normalisation(aux_folder, self.root) if aux_folder is not None else None
        self.aux_name = aux_folder  # the folder the aux images are in (list_samples may name it more exactly)
        samples, split_name = self.list_samples(split, aux_folder)
        self.split = str(split_name)
        self.samples = samples
        self.stems = list(dict.fromkeys(sample.stem for sample in samples))
        if not samples:
            raise DatasetError(f"split {self.split!r} of {self.title} data set {self.root} lists no frames")
        self.preprocessing = self._checked_preprocessing(preprocessing, default_aux)
        self.num_classes, self.classes = self._class_list(list(self.class_names()), num_classes)
        self.augment = bool(augment)
        self.augmentation = augmentation or Augmentation()
        self.labelled = all("label" in sample.files for sample in samples)
        if self.augment and not self.labelled:
            raise DatasetError(f"{self.title} data set {self.root} has no labels: it cannot be augmented for training")
        self._check_layout()

    def list_samples(self, split, aux_folder: str | None) -> tuple[list[Sample], str]:
        """The samples of `split` (the layout's forms of it) and the split's name, the layout's folders checked."""
        raise NotImplementedError(f"{type(self).__name__} must list its samples")

    def split_folder_samples(self, split, splits: Sequence[str], folders: tuple[str, str, str], layout: str,
                             note: str = "") -> tuple[list[Sample], str]:
        """`list_samples` of a layout with one folder per split holding its colour, aux and label `folders`,
        <stem>.png in each (PST900, FMB): the samples in stem order, their group the split. `note` follows the
        refusal of a split the layout lacks."""
        if split not in splits:
            raise DatasetError(f"{self.title} has the splits {', '.join(splits)} (its folders), not {split!r}{note}")
        require_folders(self.root, self.title, [f"{split}/{name}" for name in folders], layout)
        rgb, aux, label = (self.root / split / name for name in folders)
        samples = [
            Sample(path.stem, split, {"rgb": path, "aux": aux / path.name, "label": label / path.name})
            for path in sorted(rgb.glob("*.png"), key=lambda path: path.stem)
        ]
        return samples, split

    def class_names(self) -> Sequence[str]:
        """The class names by id of this data set (num_classes may add unnamed ids): the layout's, by default."""
        return self.METAINFO["classes"]

    def _checked_preprocessing(self, preprocessing, default_aux) -> Preprocessing:
        if preprocessing is None:  # native size, ImageNet mean/std, the aux choice's default range
            return Preprocessing(input_size=None, aux=default_aux or AuxNormalisation())
        expected = preprocessing.aux
        if default_aux is not None and (expected.modality, expected.unit) != (default_aux.modality, default_aux.unit):
            raise DatasetError(
                f"preprocessing expects {expected.modality} in {expected.unit!r} but {self.aux_name} holds "
                f"{default_aux.modality} in {default_aux.unit!r}; build it from {type(self).__name__}'s "
                f"default_aux_normalisation({self.aux_name!r})"
            )
        return preprocessing

    def _class_list(self, names: list[str], num_classes: int | None) -> tuple[int, list[str]]:
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
                stacklevel=3,
            )
            names = names + [f"class_{i}" for i in range(len(names), num_classes)]
        if not 1 <= num_classes <= IGNORE_INDEX:
            raise DatasetError(f"num_classes for {self.root} must be in 1..{IGNORE_INDEX}, got {num_classes}")
        return int(num_classes), names

    def _folder_of(self, path: Path) -> str:
        try:
            return path.parent.relative_to(self.root).as_posix()
        except ValueError:
            return str(path.parent)

    def _check_layout(self) -> None:
        """Every file present (one listdir per folder) and, for PNG files, a frame's files of one size."""
        listings: dict[Path, set[str]] = {}
        problems: list[str] = []
        seen: set[Path] = set()
        for sample in self.samples:
            for path in sample.files.values():
                if path in seen:
                    continue
                seen.add(path)
                if path.parent not in listings:
                    listings[path.parent] = set(os.listdir(path.parent)) if path.parent.is_dir() else set()
                if path.name not in listings[path.parent]:
                    problems.append(f"frame {sample.stem!r} missing in {self._folder_of(path)}/ (no {path})")
        raise_problems(problems, f"{self.title} data set {self.root} is incomplete")
        sizes: dict[Path, tuple[int, int]] = {}
        for sample in self.samples:
            pngs = [p for p in dict.fromkeys(sample.files.values()) if p.suffix.lower() == ".png"]
            for path in pngs:
                if path not in sizes:
                    sizes[path] = png_size(path)
            if len({sizes[p] for p in pngs}) > 1:
                detail = ", ".join(f"{self._folder_of(p)} {sizes[p][0]}x{sizes[p][1]}" for p in pngs)
                problems.append(f"frame {sample.stem!r} has images of different sizes: {detail}")
        raise_problems(list(dict.fromkeys(problems)), f"{self.title} data set {self.root} has misaligned frames")

    # -- decoding (subclasses override what their layout needs) --------------------------------------

    def decode_rgb(self, path: Path) -> np.ndarray:
        return read_rgb(path)

    def read_stored_aux(self, path: Path, dtype, hint: str = "") -> np.ndarray:
        """The single-channel aux image at `path` as stored, which must be `dtype`; else a DatasetError naming
        the file, what it holds and what the aux folder must hold (`hint`: where the other kind is)."""
        stored = read_single(path)
        if stored.dtype != dtype:
            bits = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit"}.get(stored.dtype, str(stored.dtype))
            raise DatasetError(f"{path} is {bits} ({stored.dtype}), but {self.title} {self.aux_name}/ images must be "
                               f"{np.dtype(dtype).name}" + (f" ({hint})" if hint else ""))
        return stored

    def decode_aux(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def decode_labels(self, path: Path) -> np.ndarray:
        labels = read_labels(path)
        self.check_label_values(labels, path)
        return labels

    def check_label_values(self, labels: np.ndarray, path) -> None:
        if int(labels.max(initial=0)) >= self.num_classes:
            bad = np.unique(labels[(labels >= self.num_classes) & (labels != IGNORE_INDEX)])
            if bad.size:
                shown = ", ".join(str(v) for v in bad[:20]) + (" ..." if bad.size > 20 else "")
                raise DatasetError(
                    f"label {path} has class id(s) {shown} >= num_classes {self.num_classes} "
                    f"(ids must be 0..{self.num_classes - 1}, or {IGNORE_INDEX} = ignore)"
                )

    def _decode(self, role: str, path: Path) -> np.ndarray:
        return {"rgb": self.decode_rgb, "aux": self.decode_aux, "label": self.decode_labels}[role](path)

    # -- reading ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(sample.group for sample in self.samples))

    def read_raw(self, index: int) -> dict:
        """Sample `index` decoded, not preprocessed: rgb HxWx3 uint8, aux HxW float32 in its unit (NaN = no
        reading; None without aux), label HxW ids (None when unlabelled), stem, group and the extras."""
        sample = self.samples[index]
        decoded = {role: self._decode(role, path) for role, path in sample.files.items()}
        shapes = {self._folder_of(sample.files[role]) + f" ({role})": image.shape[:2] for role, image in decoded.items()}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{name} {h}x{w}" for name, (h, w) in shapes.items())
            raise DatasetError(f"frame {sample.stem!r} in {self.root} has images of different sizes: {detail}")
        return {
            "rgb": decoded["rgb"],
            "aux": decoded.get("aux"),
            "label": decoded.get("label"),
            "stem": sample.stem,
            "group": sample.group,
            **sample.extra,
        }

    def __getitem__(self, index: int) -> dict:
        raw = self.read_raw(index)
        rgb, aux, labels = raw["rgb"], raw["aux"], raw["label"]
        spec = self.preprocessing
        valid = None
        if self.augment:
            rgb, aux, labels, valid, out_size = _augment_marking_padding(rgb, aux, labels, self.augmentation)
            if spec.input_size is None:  # crops and zoomed windows become the output size via the same path
                spec = replace(spec, input_size=tuple(out_size))
        rgb_tensor, aux_tensor = prepare_inputs(rgb, aux, spec)
        sample = {"rgb": torch.from_numpy(rgb_tensor), "aux": torch.from_numpy(aux_tensor)}
        if labels is not None:
            sample["label"] = torch.from_numpy(resize_labels(labels, spec.input_size).astype(np.int64))
        if valid is not None:
            sample["valid"] = torch.from_numpy(resize_labels(valid.view(np.uint8), spec.input_size).view(np.bool_))
        return sample | {key: value for key, value in raw.items() if key not in ("rgb", "aux", "label")}

    # -- checks and description ---------------------------------------------------------------------

    def validate(self, full: bool = True, workers: int = 4) -> dict:
        """Check the data set before training. The layout was checked at construction; `full=True` also
        decodes every file once, checks pixel types, sizes and every label value, and counts label pixels
        per class. Raises DatasetError listing every problem found.

        Returns {"frames", "samples", "files_checked", "class_pixels" (list, one count per class id),
        "ignore_pixels", "aux_valid_fraction" (share of aux pixels with a reading, or None),
        "aux_value_range" ([lowest 1st, highest 99th percentile] of the aux readings per file, in the aux
        unit: what data.aux_range should about cover; or None)}.
        """
        report = {"frames": len(self.stems), "samples": len(self.samples), "files_checked": 0}
        if not full:
            return report
        jobs = list(dict.fromkeys((role, path) for sample in self.samples for role, path in sample.files.items()))

        def check(job):
            role, path = job
            try:
                image = self._decode(role, path)
            except DatasetError as error:
                return None, None, None, str(error)
            if role == "label":
                ids = image.ravel().astype(np.int64)
                ids[ids == IGNORE_INDEX] = self.num_classes  # last bin: ignore
                return image.shape[:2], np.bincount(ids, minlength=self.num_classes + 1), None, None
            if role == "aux":
                values = image[~np.isnan(image)]
                spread = np.percentile(values, (1, 99)).tolist() if values.size else None
                return image.shape[:2], None, (values.size, image.size, spread), None
            return image.shape[:2], None, None, None

        with ThreadPoolExecutor(max_workers=max(int(workers), 1)) as pool:
            results = dict(zip(jobs, pool.map(check, jobs)))
        problems = [error for _, _, _, error in results.values() if error]
        for sample in self.samples:
            known = [(path, results[(role, path)][0]) for role, path in sample.files.items() if results[(role, path)][0]]
            first_path, first = known[0] if known else (None, None)
            for path, shape in known[1:]:
                if shape != first:
                    problems.append(
                        f"{path} is {shape[0]}x{shape[1]}, {first_path} of frame {sample.stem!r} is {first[0]}x{first[1]}"
                    )
        raise_problems(list(dict.fromkeys(problems)), f"{self.title} data set {self.root} failed validation")
        counts = np.zeros(self.num_classes + 1, np.int64)
        aux_valid = aux_total = 0
        lows, highs = [], []
        for shape, label_counts, aux_counts, _ in results.values():
            if label_counts is not None:
                counts += label_counts
            if aux_counts is not None:
                aux_valid, aux_total = aux_valid + aux_counts[0], aux_total + aux_counts[1]
                if aux_counts[2] is not None:
                    lows.append(aux_counts[2][0])
                    highs.append(aux_counts[2][1])
        report["files_checked"] = len({path for _, path in jobs})
        report["class_pixels"] = counts[: self.num_classes].tolist() if self.labelled else None
        report["ignore_pixels"] = int(counts[self.num_classes])
        report["aux_valid_fraction"] = (aux_valid / aux_total) if aux_total else None
        report["aux_value_range"] = [float(min(lows)), float(max(highs))] if lows else None
        return report

    def describe(self) -> dict:
        """What this data set is (module docstring)."""
        return {
            "dataset": self.dataset_name,
            "root": str(self.root),
            "split": self.split,
            "aux_folder": self.aux_name,
            "groups": self.groups,
            "frames": len(self.stems),
            "samples": len(self.samples),
            "augment": self.augment,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, aux={self.aux_name!r}, "
            f"frames={len(self.stems)}, samples={len(self)}, classes={self.num_classes}, "
            f"input_size={self.preprocessing.input_size}, augment={self.augment})"
        )


_OWN_IGNORE = -1.0  # the frame's own ignore pixels while augmenting: augment_frame pads with IGNORE_INDEX


def _augment_marking_padding(rgb, aux, labels, spec: Augmentation):
    """augment_frame, plus `valid` (HxW bool): False where the window holds no image (crop padding, rotated-in
    corners). Both kinds of pixel end as label IGNORE_INDEX, but SC-CoSF's fusion loss (after MRFS) masks only
    the padding: the labels are augmented as float32 with the frame's own ignore pixels moved to -1, so that
    afterwards IGNORE_INDEX means padding alone (nearest-neighbour warps keep every id exact)."""
    marked = labels.astype(np.float32)
    marked[labels == IGNORE_INDEX] = _OWN_IGNORE
    rgb, aux, marked, out_size = augment_frame(rgb, aux, marked, spec)
    valid = marked != IGNORE_INDEX
    labels = np.where(marked == _OWN_IGNORE, IGNORE_INDEX, marked).astype(labels.dtype)
    return rgb, aux, labels, valid, out_size
