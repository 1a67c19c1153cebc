"""Which loader serves which `data.dataset`, read from the layout registry (registry.py); used by config
validation, training, evaluation and `bag import`. Each layout's aux choices, label folder, classes and
default normalisation are class attributes and class methods of its FrameDataset (base.py).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing

from .augment import Augmentation
from .base import OpenOptions
from .registry import layout, layout_names


def _check_foreign_options(data, name: str) -> None:
    """A data-section field that only another layout reads must keep its default."""
    for other in layout_names():
        for option, default in layout(other).config_options.items():
            if other != name and getattr(data, option) != default:
                raise ValueError(f"field 'data.{option}' applies to dataset {other} only (dataset is {name})")


def check_data_config(data) -> None:
    """Check a validated `data` section against its dataset; fill null aux_folder / label_folder with the
    dataset's defaults. Raises ValueError naming the field."""
    name = data.dataset
    cls = layout(name)
    choices = cls.aux_choices
    if data.aux_folder is None:
        data.aux_folder = choices[0]
    elif data.aux_folder not in choices:
        raise ValueError(f"field 'data.aux_folder': {data.aux_folder!r} is not an aux choice of {name}; "
                         f"choose one of {', '.join(choices)}")
    if data.label_folder is None:
        data.label_folder = cls.default_label_folder
    elif not cls.label_folder_configurable and data.label_folder != cls.default_label_folder:
        raise ValueError(f"field 'data.label_folder': the {name} layout keeps its labels in "
                         f"{cls.default_label_folder}/, not {data.label_folder!r} (leave it out)")
    _check_foreign_options(data, name)
    expected = cls.expected_num_classes(data)
    if expected is not None and data.num_classes not in (None, expected):
        why = "".join(f" with {option} {getattr(data, option)}" for option in cls.config_options)
        raise ValueError(f"field 'data.num_classes' is {data.num_classes} but {name}{why} has {expected} classes "
                         f"(set {expected} or null)")


def default_aux_normalisation(dataset: str, aux_folder: str, root=None) -> AuxNormalisation:
    """The aux range a model trained on (dataset, aux choice) uses unless data.aux_range overrides it
    (the folder layout reads its unit from <root>/dataset.yaml)."""
    return layout(dataset).aux_normalisation(aux_folder, root)


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
    cls = layout(dataset)
    if isinstance(augmentation, dict):
        augmentation = Augmentation.from_config(augmentation)
    options = OpenOptions(split=split, preprocessing=preprocessing, num_classes=num_classes,
                          aux_folder=aux_folder or cls.aux_choices[0], augment=augment, augmentation=augmentation,
                          lightings=lightings, label_folder=label_folder, fmb_classes=fmb_classes,
                          require_labels=require_labels)
    return cls.open(root, options)
