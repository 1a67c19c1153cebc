"""Experiment configuration: one YAML file per experiment, validated in full before anything runs.

A file may start from another with `base: other.yaml` (a path relative to the file); the two are merged
section by section (mappings merge key by key, everything else, lists included, is replaced). Command-line
overrides (`--set train.epochs=2`) are applied after the merge and before validation, so a typo there is
reported like a typo in the file. `${experiment}` (or any `${section.field}`) in a string is replaced by
that field's value. Relative `data.root` and `out_dir` are resolved against the current directory (not the
YAML file), so the same config works from the repository root with `--data-root` / `--out-dir`.

Every field is declared once, in `CONFIG` below: its default (the MM5 study's published recipe), its
validator and its meaning, and whether it may change when a run resumes. The typed sections (`ModelConfig`,
`DataConfig`, `TrainConfig`, `LossConfig`, `StudyConfig` and `ExperimentConfig`, declared after it with each
field's type) take their defaults from it (test_config checks that names, types and defaults agree); the
resumable fields (`RESUMABLE_FIELDS`) and the table of fields in docs/training.md derive from it:

    python -m rgbd_fusion_seg.offline.config --table                       # print the table
    python -m rgbd_fusion_seg.offline.config --update-docs docs/training.md  # rewrite it between the markers

Checks that relate several fields (the aux choice of the chosen dataset, class weights against the class
count, ...) are in `_check_consistency`.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from rgbd_fusion_seg.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD

from .datasets.mm5 import MM5_LIGHTINGS  # noqa: F401 (study.py and the tests import it from here)
from .datasets.synth import generate_mm5


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the file and the field."""


# ----------------------------------------------------------------------------------------------------
# Field validators: each takes (value, where) and returns the normalised value or raises ConfigError.

Validator = Callable[[Any, str], Any]


def _fail(where: str, message: str):
    raise ConfigError(f"{where}: {message}")


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _int(minimum: int | None = None, optional: bool = False) -> Validator:
    def check(value, where):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, f"expected an integer{' or null' if optional else ''}, got {_describe(value)}")
        if minimum is not None and value < minimum:
            _fail(where, f"must be at least {minimum}, got {value}")
        return value

    return check


def _float(minimum: float | None = None, optional: bool = False, exclusive: bool = False,
           below: float | None = None, at_most: float | None = None) -> Validator:
    def check(value, where):
        if value is None and optional:
            return None
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (without a dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(where, f"expected a number{' or null' if optional else ''}, got {_describe(value)}")
        value = float(value)
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            _fail(where, f"must be {'greater than' if exclusive else 'at least'} {minimum}, got {value}")
        if below is not None and value >= below:
            _fail(where, f"must be below {below:g}, got {value}")
        if at_most is not None and value > at_most:
            _fail(where, f"must be at most {at_most:g}, got {value}")
        return value

    return check


def _bool(value, where):
    if not isinstance(value, bool):
        _fail(where, f"expected true or false, got {_describe(value)}")
    return value


def _str(value, where):
    if not isinstance(value, str) or not value.strip():
        _fail(where, f"expected a non-empty string, got {_describe(value)}")
    return value


def _optional_str(value, where):
    return None if value is None else _str(value, where)


def _choice(choices) -> Validator:
    def check(value, where):
        if value not in choices:
            _fail(where, f"{value!r} is not one of {', '.join(map(str, choices))}")
        return value

    return check


def _mapping(value, where):
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(where, f"expected a mapping, got {_describe(value)}")
    return dict(value)


def _str_list(value, where, allow_all: bool = False):
    if allow_all and value == "all":
        return "all"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        extra = ' or "all"' if allow_all else ""
        _fail(where, f"expected a non-empty list of names{extra}, got {_describe(value)}")
    if len(set(value)) != len(value):
        _fail(where, f"lists a name twice: {value}")
    return list(value)


def _optional_str_list(value, where):
    return None if value is None else _str_list(value, where)


def _lightings(value, where):
    return _str_list(value, where, allow_all=True)


def _split(value, where):
    if isinstance(value, list):
        return _str_list(value, where)
    return _str(value, where)


def _input_size(value, where):
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in value)
    ):
        _fail(where, f"expected [height, width] (integers >= 8) or null for native size, got {_describe(value)}")
    return list(value)


def _aux_range(value, where):
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        _fail(where, f"expected [low, high] or null, got {_describe(value)}")
    low, high = (_float()(v, where) for v in value)
    if not high > low:
        _fail(where, f"[low, high] = [{low}, {high}] is empty: high must exceed low")
    return [low, high]


def _rgb_triple(positive: bool) -> Validator:
    def check(value, where):
        if not isinstance(value, list) or len(value) != 3:
            _fail(where, f"expected [r, g, b] (three numbers), got {_describe(value)}")
        return [_float(minimum=0.0, exclusive=True)(v, where) if positive else _float()(v, where) for v in value]

    return check


def _scale_range(value, where):
    if not isinstance(value, list) or len(value) != 2:
        _fail(where, f"expected [low, high] zoom factors, got {_describe(value)}")
    low, high = (_float(minimum=0.0, exclusive=True)(v, where) for v in value)
    if high < low:
        _fail(where, f"[low, high] = [{low}, {high}]: high must be at least low")
    return [low, high]


def _degrees(value, where):
    degrees = _float(minimum=0.0)(value, where)
    if degrees > 180:
        _fail(where, f"a rotation range of +-{degrees} degrees is more than a half turn")
    return degrees


def _jitter(value, where):
    strength = _float(minimum=0.0)(value, where)
    if strength >= 1:
        _fail(where, f"must be below 1 (factors drawn from [1 - j, 1 + j]), got {strength}")
    return strength


def _class_weights(value, where):
    if value is None or value == "log_frequency":
        return value
    if isinstance(value, list) and value:
        return [_float(minimum=0.0)(v, f"{where}[{i}]") for i, v in enumerate(value)]
    _fail(where, f'expected null, "log_frequency" or a list of per-class weights, got {_describe(value)}')


def _dataset(value, where):
    from .datasets.registry import layout_names  # every layout module registers itself there

    return _choice(layout_names())(value, where)


def _method(value, where):
    from rgbd_fusion_seg.models import available_methods

    methods = available_methods()
    if value not in methods:
        _fail(where, f"unknown fusion method {value!r}; available: {', '.join(methods)}")
    return value


def _methods(value, where):
    if value is None:
        return None
    names = _str_list(value, where)
    for i, name in enumerate(names):
        _method(name, f"{where}[{i}]")
    return names


def _ohem_bounds(checked: dict, where: str) -> dict:
    if not 0 < checked["threshold"] <= 1 or checked["min_kept_fraction"] > 1:
        _fail(where, f"threshold must lie in (0, 1] and min_kept_fraction in [0, 1], got {checked}")
    return checked


# ----------------------------------------------------------------------------------------------------
# The declaration of every field


@dataclass(frozen=True)
class Field:
    """One config field: everything about it is said here and nowhere else."""

    default: Any  # deep-copied into each config; for a mapping of sub-fields, see `_sub_fields`
    check: Validator
    doc: str
    resumable: bool = False  # may change between a run and its resumption: it does not change what was trained


@dataclass(frozen=True)
class Section:
    doc: str
    fields: dict[str, Field]


def _defaults(fields: dict[str, Field]) -> dict:
    return {key: copy.deepcopy(item.default) for key, item in fields.items()}


def _sub_fields(fields: dict[str, Field], *, optional: bool, defaults: bool, then=None) -> Validator:
    """A mapping of named sub-fields (null allowed when `optional`); with `defaults`, unset sub-fields
    take theirs. `then(checked, where)` checks the sub-fields together."""

    def check(value, where):
        if value is None and optional:
            return None
        value = _mapping(value, where)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            _fail(where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        checked = {key: fields[key].check(v, f"{where}.{key}") for key, v in value.items()}
        if defaults:
            checked = _defaults(fields) | checked
        return then(checked, where) if then else checked

    check.sub_fields = fields  # for the docs table
    return check


AUGMENTATION = {  # data.augmentation (datasets/augment.py)
    "hflip": Field(True, _bool, "a horizontal flip with probability 0.5"),
    "scale": Field([1.0, 1.25], _scale_range, "[low, high]: random zoom factor (1.25 = objects 25 % larger)"),
    "crop": Field(None, _input_size, "[h, w] output crop (null = the frame's own size), cut at a random place, "
                                      "padded with 'no reading' / ignore where the zoomed frame is smaller"),
    "rotate": Field(0.0, _degrees, "degrees: a random rotation in [-rotate, rotate] (0 = off)"),
    "colour_jitter": Field(0.0, _jitter, "j: brightness, contrast and saturation each scaled by U(1-j, 1+j) (0 = off)"),
}
OHEM = {  # loss.ohem (models/losses.py)
    "threshold": Field(0.7, _float(minimum=0.0), "pixels whose true-class probability is below it are hard"),
    "min_kept_fraction": Field(1.0 / 16, _float(minimum=0.0), "at least this share of the pixels is kept"),
}
_GENERATOR = inspect.signature(generate_mm5).parameters
GENERATE = {  # study.generate: synth.generate_mm5's arguments; an unset one keeps the generator's default
    "num_frames": Field(_GENERATOR["num_frames"].default, _int(minimum=2), "frames to generate"),
    "seed": Field(_GENERATOR["seed"].default, _int(), "the generator's seed"),
    "height": Field(_GENERATOR["height"].default, _int(minimum=8), "image height"),
    "width": Field(_GENERATOR["width"].default, _int(minimum=8), "image width"),
    "val_fraction": Field(_GENERATOR["val_fraction"].default, _float(minimum=0.0), "share of the frames in the "
                                                                                   "validation list"),
}

CONFIG: dict[str, Field | Section] = {
    "experiment": Field("experiment", _str, "the run's name: in out_dir's default and in the checkpoint",
                        resumable=True),
    "model": Section("which network is trained", {
        "method": Field("rgb", _method, "fusion method, a name of the model registry (docs/methods.md)"),
        "pretrained": Field(False, _bool, "start the encoder from ImageNet weights (methods that have them)"),
        "options": Field({}, _mapping, "the method's keyword options: build_model(method, num_classes, **options)"),
    }),
    "data": Section("the data set and how its frames become network inputs (offline/datasets/)", {
        "dataset": Field("mm5", _dataset, "the layout, a name of the dataset registry (docs/datasets.md)"),
        "root": Field("data/MM5_SEG", _str, "the data set folder; --data-root overrides it", resumable=True),
        "lightings": Field(["RGB3"], _lightings, 'mm5 only: the lighting folders RGB1..RGB8 trained on, or "all"'),
        "aux_folder": Field(None, _optional_str, "the auxiliary image fed to the model, named as the layout names "
                                                 "it (mm5: D_FocusN, D16, T16, ...); null: the layout's default"),
        "label_folder": Field(None, _optional_str, "mm5: the label folder (null: ANNO_CLASS); the other layouts fix "
                                                   "theirs (leave it null)"),
        "train_split": Field("train_dataset.csv", _split, "mm5: list_*_f.txt, *_dataset.csv or a list of stems; "
                             "mfnet: train, val, test, test_day or test_night; pst900 and fmb: train or test (the "
                             "folder); folder: <split>.txt; mfnet and folder also take a list of names"),
        "val_split": Field("eval_dataset.csv", _split, "the validation split, in train_split's forms"),
        "input_size": Field([224, 224], _input_size, "[height, width] the network sees; null: each frame's own size"),
        "num_classes": Field(32, _int(minimum=2, optional=True), "null: the layout's class list; mfnet 9, pst900 5, "
                                                                 "fmb 15 or 14 (see fmb_classes)"),
        "aux_range": Field(None, _aux_range, "[low, high] in the aux image's unit, mapped to [0, 1] instead of the "
                                             "layout's default range"),
        "fmb_classes": Field(15, _choice((14, 15)), 'fmb only: 15 counts "unlabeled" as class 0; 14 makes it '
                                                    "ignore (255) and shifts the ids down by 1"),
        "augmentation": Field(_defaults(AUGMENTATION), _sub_fields(AUGMENTATION, optional=False, defaults=True),
                              "used when train.augment is true; the default is the MM5 study's zoom-and-flip"),
        "rgb_mean": Field(list(IMAGENET_MEAN), _rgb_triple(positive=False),
                          "colour normalisation mean (ImageNet's; [0, 0, 0] with std [1, 1, 1] feeds [0, 1])"),
        "rgb_std": Field(list(IMAGENET_STD), _rgb_triple(positive=True), "colour normalisation standard deviation"),
    }),
    "train": Section("the optimisation (offline/train.py)", {
        "epochs": Field(300, _int(minimum=1), "passes over the training split", resumable=True),
        "batch_size": Field(32, _int(minimum=1), "frames per step; under torchrun the global batch, split between "
                                                 "the ranks (offline/distributed.py)"),
        "optimizer": Field("adamw", _choice(("adamw", "adam", "sgd")), "adamw, adam or sgd"),
        "lr": Field(1.0e-3, _float(minimum=0.0, exclusive=True), "the learning rate after the warm-up"),
        "momentum": Field(0.9, _float(minimum=0.0, below=1.0), "sgd only (RSFNet: sgd, lr 0.01, momentum 0.9, "
                                                               "weight_decay 5e-4, poly 0.9)"),
        "weight_decay": Field(1.0e-2, _float(minimum=0.0), "the optimiser's weight decay"),
        "no_decay_1d": Field(False, _bool, "no weight decay on one-dimensional parameters (biases, norms)"),
        # The MM5 study does not say which schedule it used; cosine is the common choice for AdamW on
        # segmentation and needs no tuning of decay epochs.
        "lr_schedule": Field("cosine", _choice(("cosine", "constant", "poly")), "cosine: per step from lr to "
                             "lr * min_lr_ratio over the run; poly: lr * (1 - progress) ** poly_power; constant"),
        "poly_power": Field(0.9, _float(minimum=0.0, exclusive=True), "poly's power (RSFNet, DeepLab)"),
        "warmup_steps": Field(0, _int(minimum=0), "steps of linear warm-up to lr before the schedule"),
        "warmup_start_ratio": Field(0.0, _float(minimum=0.0, below=1.0), "the warm-up rises linearly from lr * "
                                    "this to lr (SARTM's recipe: 0.1)"),
        "min_lr_ratio": Field(0.0, _float(minimum=0.0, at_most=1.0), "cosine ends at lr * min_lr_ratio"),
        "amp": Field(True, _bool, "mixed precision (fp16 autocast) on CUDA; the CPU trains in fp32"),
        "num_workers": Field(2, _int(minimum=0), "data loader worker processes", resumable=True),
        "seed": Field(0, _int(minimum=0), "seeds the initial weights, each epoch's order and the augmentation"),
        "max_steps": Field(None, _int(minimum=1, optional=True), "stop after this many steps (null: every epoch)",
                           resumable=True),
        "val_every": Field(1, _int(minimum=1), "validate every n-th epoch", resumable=True),
        "augment": Field(True, _bool, "augment the training frames with data.augmentation"),
        "aux_dropout": Field(0.0, _float(minimum=0.0, at_most=1.0), "p in [0, 1]: modality dropout, each training "
                             "sample's aux input replaced by the 'no reading' input (what the node feeds without an "
                             "aux camera) with probability p; methods without aux (rgb) ignore it"),
        "checkpoint_every_steps": Field(200, _int(minimum=1, optional=True), "write last.pt every n steps (null: "
                                        "only at epoch ends)", resumable=True),
        "checkpoint_every_epochs": Field(1, _int(minimum=1), "write last.pt at the end of every n-th epoch",
                                         resumable=True),
        "save_best": Field(True, _bool, "write best.pt whenever the validation mIoU improves", resumable=True),
        "grad_clip": Field(None, _float(minimum=0.0, optional=True, exclusive=True), "clip the gradient norm to "
                                                                                     "this (null: no clipping)"),
    }),
    "loss": Section("what is minimised (models/losses.py)", {
        "ce": Field(1.0, _float(minimum=0.0), "weight of the cross-entropy"),
        "dice": Field(1.0, _float(minimum=0.0), "weight of the Dice loss"),
        "class_weights": Field(None, _class_weights, 'null, one weight per class, or "log_frequency": w_c = '
                               "1 / ln(1.05 + p_c) from the training labels' class frequencies (RSFNet)"),
        "ohem": Field(None, _sub_fields(OHEM, optional=True, defaults=True, then=_ohem_bounds),
                      "null, or a mapping: OHEM cross-entropy over the hard pixels (SARTM)"),
        "ignore_index": Field(255, _int(), "the label id no loss or metric counts"),
    }),
    "study": Section("only read by `rgbd-fusion-seg study` (offline/study.py)", {
        "methods": Field(None, _methods, "the methods trained (null: every registered one)", resumable=True),
        "lightings": Field(None, _optional_str_list, "the lightings trained on (null: RGB1..RGB8)", resumable=True),
        "checkpoint": Field("last", _choice(("last", "best")), "which checkpoint of each run is scored: last, or "
                                                               "best (by validation mIoU)", resumable=True),
        "generate": Field(None, _sub_fields(GENERATE, optional=True, defaults=False), "null, or a mapping: "
                          "generate MM5-layout data at data.root when it is missing", resumable=True),
        "slim_checkpoints": Field(True, _bool, "drop the optimiser and RNG state from a run's last.pt once it is "
                                               "scored", resumable=True),
    }),
    "out_dir": Field("runs/${experiment}", _str, "where checkpoints and logs go; --out-dir overrides it",
                     resumable=True),
}


# ----------------------------------------------------------------------------------------------------
# What derives from the declaration: the typed sections, the defaults, the resumable fields


SECTIONS = {name: item for name, item in CONFIG.items() if isinstance(item, Section)}
SCALARS = {name: item for name, item in CONFIG.items() if isinstance(item, Field)}
DEFAULT_AUGMENTATION = _defaults(AUGMENTATION)  # the loaders' default (test_datasets_rgbt checks they agree)


def _resumable_fields() -> frozenset[str]:
    """Fields that may change between a run and its resumption: a section's name when all of it may."""
    names = {name for name, item in SCALARS.items() if item.resumable}
    for name, section in SECTIONS.items():
        resumable = [key for key, item in section.fields.items() if item.resumable]
        names |= {name} if len(resumable) == len(section.fields) else {f"{name}.{key}" for key in resumable}
    return frozenset(names)


RESUMABLE_FIELDS = _resumable_fields()


def _default_of(item: Field):
    return field(default_factory=lambda: copy.deepcopy(item.default))


def _default(section: str, key: str):
    """The default of CONFIG's `section.key` as a dataclass field (a fresh copy for each config)."""
    return _default_of(CONFIG[section].fields[key])


# The typed sections: one attribute per field of CONFIG's section, its type that of the validated value.


@dataclass
class ModelConfig:
    """The validated `model` section: which network is trained."""

    method: str = _default("model", "method")
    pretrained: bool = _default("model", "pretrained")
    options: dict = _default("model", "options")


@dataclass
class DataConfig:
    """The validated `data` section: the data set and how its frames become network inputs."""

    dataset: str = _default("data", "dataset")
    root: str = _default("data", "root")
    lightings: list[str] | str = _default("data", "lightings")  # or "all"
    aux_folder: str | None = _default("data", "aux_folder")
    label_folder: str | None = _default("data", "label_folder")
    train_split: str | list[str] = _default("data", "train_split")
    val_split: str | list[str] = _default("data", "val_split")
    input_size: list[int] | None = _default("data", "input_size")
    num_classes: int | None = _default("data", "num_classes")
    aux_range: list[float] | None = _default("data", "aux_range")
    fmb_classes: int = _default("data", "fmb_classes")
    augmentation: dict = _default("data", "augmentation")
    rgb_mean: list[float] = _default("data", "rgb_mean")
    rgb_std: list[float] = _default("data", "rgb_std")


@dataclass
class TrainConfig:
    """The validated `train` section: the optimisation."""

    epochs: int = _default("train", "epochs")
    batch_size: int = _default("train", "batch_size")
    optimizer: str = _default("train", "optimizer")
    lr: float = _default("train", "lr")
    momentum: float = _default("train", "momentum")
    weight_decay: float = _default("train", "weight_decay")
    no_decay_1d: bool = _default("train", "no_decay_1d")
    lr_schedule: str = _default("train", "lr_schedule")
    poly_power: float = _default("train", "poly_power")
    warmup_steps: int = _default("train", "warmup_steps")
    warmup_start_ratio: float = _default("train", "warmup_start_ratio")
    min_lr_ratio: float = _default("train", "min_lr_ratio")
    amp: bool = _default("train", "amp")
    num_workers: int = _default("train", "num_workers")
    seed: int = _default("train", "seed")
    max_steps: int | None = _default("train", "max_steps")
    val_every: int = _default("train", "val_every")
    augment: bool = _default("train", "augment")
    aux_dropout: float = _default("train", "aux_dropout")
    checkpoint_every_steps: int | None = _default("train", "checkpoint_every_steps")
    checkpoint_every_epochs: int = _default("train", "checkpoint_every_epochs")
    save_best: bool = _default("train", "save_best")
    grad_clip: float | None = _default("train", "grad_clip")


@dataclass
class LossConfig:
    """The validated `loss` section: what is minimised."""

    ce: float = _default("loss", "ce")
    dice: float = _default("loss", "dice")
    class_weights: list[float] | str | None = _default("loss", "class_weights")  # str: "log_frequency"
    ohem: dict | None = _default("loss", "ohem")
    ignore_index: int = _default("loss", "ignore_index")


@dataclass
class StudyConfig:
    """The validated `study` section: only read by `rgbd-fusion-seg study`."""

    methods: list[str] | None = _default("study", "methods")
    lightings: list[str] | None = _default("study", "lightings")
    checkpoint: str = _default("study", "checkpoint")
    generate: dict | None = _default("study", "generate")
    slim_checkpoints: bool = _default("study", "slim_checkpoints")


SECTION_TYPES = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "loss": LossConfig,
                 "study": StudyConfig}


@dataclass
class ExperimentConfig:
    """A validated experiment config: one attribute per section and top-level field of CONFIG."""

    experiment: str = _default_of(CONFIG["experiment"])
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    out_dir: str = _default_of(CONFIG["out_dir"])
    source: str | None = None  # the YAML file it came from (for messages); not part of the schema

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("source")
        return data

    @property
    def data_root(self) -> Path:
        return resolve_path(self.data.root)

    @property
    def out_path(self) -> Path:
        return resolve_path(self.out_dir)

    def model_kwargs(self) -> dict:
        """Keyword options for build_model: the method's options plus `pretrained` where it takes one."""
        from rgbd_fusion_seg.models import method_options

        kwargs = dict(self.model.options)
        if "pretrained" in method_options(self.model.method):
            kwargs["pretrained"] = self.model.pretrained
        return kwargs


def resolve_path(value: str | os.PathLike) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


# ----------------------------------------------------------------------------------------------------
# The table of fields in docs/training.md

DOCS_MARKERS = ("<!-- config:fields -->", "<!-- /config:fields -->")


_MARKDOWN_ESCAPES = str.maketrans({"|": "\\|", "*": "\\*", "<": "&lt;", ">": "&gt;"})


def _cell(text: str) -> str:
    return text.translate(_MARKDOWN_ESCAPES)


def _field_rows(dotted: str, item: Field) -> list[str]:
    sub_fields = getattr(item.check, "sub_fields", None)
    default = "the fields below" if sub_fields and item.default is not None else f"`{json.dumps(item.default)}`"
    rows = [f"| `{dotted}` | {_cell(default)} | {'yes' if item.resumable else ''} | {_cell(item.doc)} |"]
    for key, sub in (sub_fields or {}).items():
        rows += _field_rows(f"{dotted}.{key}", sub)
    return rows


def fields_table() -> str:
    """Every field as a markdown table: name, default, whether it may change on resume, meaning."""
    rows = ["| field | default | may change on resume | meaning |", "| --- | --- | --- | --- |"]
    for name, item in CONFIG.items():
        if isinstance(item, Field):
            rows += _field_rows(name, item)
            continue
        rows.append(f"| **{name}** | | | {_cell(item.doc)} |")
        for key, sub in item.fields.items():
            rows += _field_rows(f"{name}.{key}", sub)
    return "\n".join(rows) + "\n"


def docs_with_table(text: str, where: str) -> str:
    """`text` (docs/training.md) with the region between DOCS_MARKERS replaced by `fields_table()`."""
    start, end = DOCS_MARKERS
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise ConfigError(f"{where} lacks the markers {start} ... {end} around the table of config fields")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{fields_table()}{end}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="the table of experiment config fields, from CONFIG")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--table", action="store_true", help="print the markdown table")
    group.add_argument("--update-docs", metavar="MD", help="rewrite the table between the markers in MD")
    args = parser.parse_args(argv)
    if args.table:
        print(fields_table(), end="")
        return 0
    path = Path(args.update_docs)
    updated = docs_with_table(path.read_text(), str(path))
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(updated)
    os.replace(staged, path)  # whole, or not at all
    print(f"wrote the table of {sum(1 for _ in fields_table().splitlines()) - 2} rows into {path}")
    return 0


# ----------------------------------------------------------------------------------------------------
# Loading


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`: mappings merge key by key, any other value replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def load_raw(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """The YAML file with its `base:` chain merged in (no validation, no defaults)."""
    path = Path(path).expanduser().resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"config files include each other through base: {cycle}")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: field 'base': expected a path to another YAML file, got {_describe(base)}")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.is_file():
        raise ConfigError(f"{path}: field 'base': {base_path} does not exist")
    return deep_merge(load_raw(base_path, (*_chain, path)), raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.epochs=2` -> (["train", "epochs"], 2); the value is read as YAML (numbers, lists, null)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r} must look like section.field=value (e.g. train.epochs=2)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {error}") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides) -> dict:
    raw = copy.deepcopy(raw)
    for text in overrides or ():
        keys, value = parse_override(text)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                dotted = ".".join(keys[: depth + 1])
                raise ConfigError(f"override {text!r}: {dotted} is not a section")
            node = child
        node[keys[-1]] = value
    return raw


_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def _interpolate(raw: dict, where: str) -> dict:
    def lookup(dotted: str, origin: str):
        node: Any = raw
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{where}: field '{origin}' refers to ${{{dotted}}}, which is not set")
            node = node[part]
        if isinstance(node, (dict, list)):
            raise ConfigError(f"{where}: field '{origin}' refers to ${{{dotted}}}, which is not a single value")
        return str(node)

    def walk(node, dotted):
        if isinstance(node, dict):
            return {k: walk(v, f"{dotted}.{k}" if dotted else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{dotted}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str):
            for _ in range(10):  # references to references, without looping forever
                replaced = _REFERENCE.sub(lambda m: lookup(m.group(1), dotted), node)
                if replaced == node:
                    break
                node = replaced
        return node

    return walk(raw, "")


def validate(raw: dict, source: str = "<config>") -> ExperimentConfig:
    """Check every section and field (unknown ones included) and build the typed configuration."""
    raw = dict(raw)
    for name, item in SCALARS.items():  # before interpolation: out_dir's default refers to ${experiment}
        raw.setdefault(name, item.default)
    raw = _interpolate(raw, source)
    known = set(CONFIG)
    unknown = sorted(str(k) for k in set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name, item in SCALARS.items():
        if name in raw:
            values[name] = item.check(raw[name], f"{source}: field '{name}'")
    for section, declared in SECTIONS.items():
        fields = declared.fields
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping, got {_describe(given)}")
        unknown = sorted(str(k) for k in set(given) - set(fields))
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                f"known in '{section}': {', '.join(fields)}"
            )
        checked = {key: fields[key].check(value, f"{source}: field '{section}.{key}'") for key, value in given.items()}
        values[section] = SECTION_TYPES[section](**checked)
    config = ExperimentConfig(**values, source=source)
    _check_consistency(config)
    return config


def _check_data(config: ExperimentConfig) -> None:
    """The data fields that depend on each other: the aux choice and class count of the chosen dataset.
    Fills aux_folder / label_folder left null with the dataset's defaults."""
    from .datasets.catalog import check_data_config

    try:
        check_data_config(config.data)
    except ValueError as error:
        raise ConfigError(f"{config.source}: {error}") from None


def _check_consistency(config: ExperimentConfig) -> None:
    from rgbd_fusion_seg.models import method_class, method_options

    source = config.source
    _check_data(config)
    accepted = method_options(config.model.method)
    options = config.model.options
    if "pretrained" in options:
        raise ConfigError(f"{source}: field 'model.options.pretrained': set model.pretrained instead")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{source}: field 'model.options': fusion method {config.model.method!r} has no option(s) "
            f"{', '.join(unknown)}; it accepts: {', '.join(k for k in accepted if k != 'pretrained') or 'none'}"
        )
    if config.model.pretrained and "pretrained" not in accepted:
        raise ConfigError(f"{source}: field 'model.pretrained': method {config.model.method!r} has no pretrained weights")
    if method_class(config.model.method).expects_unit_rgb and (list(config.data.rgb_mean) != [0.0, 0.0, 0.0]
                                                               or list(config.data.rgb_std) != [1.0, 1.0, 1.0]):
        raise ConfigError(
            f"{source}: fields 'data.rgb_mean' / 'data.rgb_std' are {list(config.data.rgb_mean)} / "
            f"{list(config.data.rgb_std)}, but method {config.model.method!r} needs RGB in [0, 1] (its fusion loss "
            "compares images): set rgb_mean [0, 0, 0] and rgb_std [1, 1, 1] (it normalises for its encoder itself)"
        )
    weights = config.loss.class_weights
    if isinstance(weights, list) and config.data.num_classes is not None and len(weights) != config.data.num_classes:
        raise ConfigError(
            f"{source}: field 'loss.class_weights' has {len(weights)} entries but data.num_classes is "
            f"{config.data.num_classes}"
        )
    if config.loss.ce == 0 and config.loss.dice == 0:
        raise ConfigError(f"{source}: fields 'loss.ce' and 'loss.dice' are both 0: nothing would be trained")
    if config.loss.ohem is not None and config.loss.ce == 0:
        raise ConfigError(f"{source}: field 'loss.ohem' selects pixels for the cross-entropy, but loss.ce is 0")


def load_config(
    path: str | os.PathLike,
    overrides=(),
    *,
    data_root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
) -> ExperimentConfig:
    """Read, merge (`base:`), override (`--set`, `--data-root`, `--out-dir`) and validate one config."""
    raw = apply_overrides(load_raw(path), overrides)
    if data_root is not None:
        raw.setdefault("data", {})
        if not isinstance(raw["data"], dict):
            raise ConfigError(f"{path}: section 'data' must be a mapping")
        raw["data"]["root"] = str(data_root)
    if out_dir is not None:
        raw["out_dir"] = str(out_dir)
    return validate(raw, source=str(path))


def config_from_dict(raw: dict, source: str = "<dict>") -> ExperimentConfig:
    return validate(copy.deepcopy(raw), source=source)


def replace_fields(config: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """A copy with dotted fields changed (`replace_fields(c, **{"model.method": "mid"})`), re-validated."""
    raw = config.to_dict()
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return validate(raw, source=config.source or "<config>")


def dump_config(config: ExperimentConfig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


if __name__ == "__main__":
    raise SystemExit(main())
