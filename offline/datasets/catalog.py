"""The one place that knows which loader serves which `data.dataset`, its aux choices, class counts and
default normalisation; used by config validation, training and evaluation.

    mm5     MM5Dataset      aux: an MM5 folder (D_FocusN default)   classes: classes.txt (32 for MM5)
    mfnet   MFNetDataset    aux: thermal                            9 classes
    pst900  PST900Dataset   aux: thermal | thermal_raw | depth      5 classes
    fmb     FMBDataset      aux: Infrared                           15 or 14 (data.fmb_classes)
    folder  FolderDataset   aux: auto | depth | thermal             dataset.yaml's class list
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing

from . import fmb, folder, mfnet, mm5, pst900
from .augment import Augmentation
from .imageio import DatasetError

AUX_CHOICES = {
    "mm5": tuple(mm5.AUX_FOLDERS),
    "mfnet": mfnet.MFNET_AUX,
    "pst900": tuple(pst900.PST900_AUX),
    "fmb": fmb.FMB_AUX,
    "folder": folder.FOLDER_AUX,
}
# The label folder each layout fixes (MM5's is configurable: ANNO_CLASS by default).
LABEL_FOLDERS = {"mm5": "ANNO_CLASS", "mfnet": "labels", "pst900": "labels", "fmb": "Label", "folder": "labels"}
FIXED_CLASS_COUNTS = {"mfnet": len(mfnet.MFNET_CLASSES), "pst900": len(pst900.PST900_CLASSES)}


def check_data_config(data) -> None:
    """Check a validated `data` section against its dataset; fill null aux_folder / label_folder with the
    dataset's defaults. Raises ValueError naming the field."""
    name = data.dataset
    choices = AUX_CHOICES[name]
    if data.aux_folder is None:
        data.aux_folder = choices[0]
    elif data.aux_folder not in choices:
        raise ValueError(f"field 'data.aux_folder': {data.aux_folder!r} is not an aux choice of {name}; "
                         f"choose one of {', '.join(choices)}")
    if data.label_folder is None:
        data.label_folder = LABEL_FOLDERS[name]
    elif name != "mm5" and data.label_folder != LABEL_FOLDERS[name]:
        raise ValueError(f"field 'data.label_folder': the {name} layout keeps its labels in "
                         f"{LABEL_FOLDERS[name]}/, not {data.label_folder!r} (leave it out)")
    if data.fmb_classes != 15 and name != "fmb":
        raise ValueError(f"field 'data.fmb_classes' applies to dataset fmb only (dataset is {name})")
    expected = data.fmb_classes if name == "fmb" else FIXED_CLASS_COUNTS.get(name)
    if expected is not None and data.num_classes not in (None, expected):
        why = f" with fmb_classes {data.fmb_classes}" if name == "fmb" else ""
        raise ValueError(f"field 'data.num_classes' is {data.num_classes} but {name}{why} has {expected} classes "
                         f"(set {expected} or null)")


def default_aux_normalisation(dataset: str, aux_folder: str, root=None) -> AuxNormalisation:
    """The aux range a model trained on (dataset, aux choice) uses unless data.aux_range overrides it
    (the folder layout reads its unit from <root>/dataset.yaml)."""
    if dataset == "folder":
        return folder.default_aux_normalisation(root, aux_folder)
    module = {"mm5": mm5, "mfnet": mfnet, "pst900": pst900, "fmb": fmb}.get(dataset)
    if module is None:
        raise DatasetError(f"dataset {dataset!r} has no loader; known: {', '.join(AUX_CHOICES)}")
    return module.default_aux_normalisation(aux_folder)


def build_preprocessing(config) -> Preprocessing:
    """The Preprocessing stored in the checkpoint: input size, colour mean/std, the aux normalisation."""
    data = config.data
    aux = default_aux_normalisation(data.dataset, data.aux_folder, config.data_root)
    if data.aux_range is not None:
        low, high = data.aux_range
        aux = dataclasses.replace(aux, low=float(low), high=float(high))
    size = tuple(data.input_size) if data.input_size is not None else None
    return Preprocessing(input_size=size, rgb_mean=tuple(data.rgb_mean), rgb_std=tuple(data.rgb_std), aux=aux)


def open_dataset(
    *,
    dataset: str,
    root: str | Path,
    split,
    preprocessing: Preprocessing,
    num_classes: int | None = None,
    aux_folder: str | None = None,
    label_folder: str | None = None,
    lightings="all",
    augment: bool = False,
    augmentation: dict | Augmentation | None = None,
    fmb_classes: int | None = None,
    require_labels: bool = True,
):
    """One split of a dataset on disk. `lightings` and `label_folder` are MM5's; `fmb_classes` defaults to
    `num_classes` (14 or 15) for FMB, so a checkpoint's class count is enough to reopen its data."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (set data.root or pass --data-root)")
    if dataset not in AUX_CHOICES:
        raise DatasetError(f"dataset {dataset!r} has no loader; known: {', '.join(AUX_CHOICES)}")
    aux_folder = aux_folder or AUX_CHOICES[dataset][0]
    if isinstance(augmentation, dict):
        augmentation = Augmentation.from_config(augmentation)
    common = dict(preprocessing=preprocessing, augment=augment, augmentation=augmentation, aux_folder=aux_folder)
    if dataset == "mm5":
        return mm5.MM5Dataset(root, lightings=lightings, label_folder=label_folder or "ANNO_CLASS", split=split,
                              num_classes=num_classes, **common)
    if dataset == "mfnet":
        return mfnet.MFNetDataset(root, split=split, num_classes=num_classes, **common)
    if dataset == "pst900":
        return pst900.PST900Dataset(root, split=split, num_classes=num_classes, **common)
    if dataset == "fmb":
        classes = fmb_classes or num_classes or 15
        if num_classes is not None and num_classes != classes:
            raise DatasetError(f"num_classes={num_classes} does not match fmb_classes={classes}")
        return fmb.FMBDataset(root, split=split, fmb_classes=classes, **common)
    return folder.FolderDataset(root, split=split, num_classes=num_classes, require_labels=require_labels, **common)
