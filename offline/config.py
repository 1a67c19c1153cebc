"""Experiment configuration: one YAML file per experiment, validated in full before anything runs.

A file may start from another with `base: other.yaml` (a path relative to the file); the two are merged
section by section (mappings merge key by key, everything else, lists included, is replaced). Command-line
overrides (`--set train.epochs=2`) are applied after the merge and before validation, so a typo there is
reported like a typo in the file. `${experiment}` (or any `${section.field}`) in a string is replaced by
that field's value.

Sections and their fields (defaults = the MM5 study's published recipe):

    experiment: name                      # used for out_dir and in the checkpoint
    model:  method, pretrained, options    # options go to build_model(method, num_classes, **options)
    data:   dataset, root, lightings, aux_folder, label_folder, train_split, val_split,
            input_size, num_classes, aux_range, fmb_classes, augmentation, rgb_mean, rgb_std
            (see "The data section" below)
    train:  epochs, batch_size, optimizer, lr, momentum, weight_decay, lr_schedule, poly_power,
            warmup_steps, min_lr_ratio, amp, num_workers, seed, max_steps, val_every, augment,
            checkpoint_every_steps, checkpoint_every_epochs, save_best, grad_clip
            (batch_size is the global batch under torchrun: offline/distributed.py)
    loss:   ce, dice, class_weights (null | [w0, ...] | log_frequency),
            ohem (null | {threshold, min_kept_fraction}), ignore_index
    study:  methods, lightings, checkpoint, generate, slim_checkpoints   # only read by `study`
    out_dir: where checkpoints and logs go

The data section (one loader per `dataset`: offline/datasets/catalog.py):

    dataset       mm5 | mfnet | pst900 | fmb | folder
    aux_folder    which auxiliary image feeds the model, named as the layout names it (null or absent:
                  the dataset's default, the first choice listed):
                    mm5     D_FocusN | D_Focus | D | D16 | D_16 | T8 | T16   (the MM5 folder)
                    mfnet   thermal                  (the 4th channel of images/<name>.png)
                    pst900  thermal | thermal_raw | depth   (the folder in train/ and test/)
                    fmb     Infrared
                    folder  auto | depth | thermal   (auto: the modality dataset.yaml names)
    label_folder  mm5: the label folder (ANNO_CLASS); the other layouts fix theirs (null = that one)
    lightings     mm5 only: RGB1..RGB8 or "all"
    train_split, val_split   mm5: list_*_f.txt / *_dataset.csv / a list of stems; mfnet: train | val | test |
                  test_day | test_night; pst900 and fmb: train | test (the folder); folder: <split>.txt;
                  mfnet and folder also take a list of names
    num_classes   null = the dataset's class list; mfnet 9, pst900 5, fmb 15 or 14 (see fmb_classes)
    fmb_classes   15: "unlabeled" is class 0 and counted; 14: unlabeled -> ignore (255), ids shift down by 1
    aux_range     [low, high] in the aux image's unit replacing the loader's default normalisation range
    rgb_mean, rgb_std   colour normalisation (ImageNet by default; [0,0,0] / [1,1,1] feeds inputs in [0, 1])
    augmentation  used when train.augment is true, in this order:
                    rotate         degrees: a random rotation in [-rotate, rotate] (0 = off)
                    hflip          a horizontal flip with probability 0.5
                    scale          [low, high]: random zoom factor (1.25 = objects 25 % larger)
                    crop           [h, w] output crop (null = the frame's own size), cut at a random place,
                                   padded with "no reading" / ignore where the zoomed frame is smaller
                    colour_jitter  j: brightness, contrast and saturation each scaled by U(1-j, 1+j) (0 = off)
                  The default ({hflip: true, scale: [1.0, 1.25], crop: null, rotate: 0, colour_jitter: 0})
                  is the MM5 study's zoom-and-flip.

Relative `data.root` and `out_dir` are resolved against the current directory (not the YAML file), so
the same config works from the repository root with `--data-root` / `--out-dir` overriding them.
"""
from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from rgbd_fusion_seg.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD

from .datasets.mm5 import MM5_LIGHTINGS  # noqa: F401 (study.py and the tests import it from here)

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant", "poly")


# The MM5 study's augmentation (random horizontal flip, random zoom up to 1.25); see offline/datasets/augment.py
DEFAULT_AUGMENTATION = {"hflip": True, "scale": [1.0, 1.25], "crop": None, "rotate": 0.0, "colour_jitter": 0.0}

DEFAULT_EXPERIMENT = "experiment"
DEFAULT_OUT_DIR = "runs/${experiment}"


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the file and the field."""


# ----------------------------------------------------------------------------------------------------
# Typed view of a validated configuration


@dataclass
class ModelConfig:
    method: str = "rgb"
    pretrained: bool = False
    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "mm5"
    root: str = "data/MM5_SEG"
    lightings: list[str] | str = field(default_factory=lambda: ["RGB3"])
    aux_folder: str | None = None  # null: the dataset's default (mm5: D_FocusN), filled in by validate()
    label_folder: str | None = None  # null: the layout's label folder (mm5: ANNO_CLASS)
    train_split: str | list[str] = "train_dataset.csv"
    val_split: str | list[str] = "eval_dataset.csv"
    input_size: list[int] | None = field(default_factory=lambda: [224, 224])
    num_classes: int | None = 32
    aux_range: list[float] | None = None
    fmb_classes: int = 15
    augmentation: dict = field(default_factory=lambda: dict(DEFAULT_AUGMENTATION))
    rgb_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    rgb_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1.0e-3
    momentum: float = 0.9  # SGD only (RSFNet: SGD, lr 0.01, momentum 0.9, weight decay 5e-4, poly 0.9)
    weight_decay: float = 1.0e-2
    # The MM5 study does not say which schedule it used. Cosine decay per step from lr to
    # lr * min_lr_ratio over the whole run (after an optional linear warm-up) is the default here:
    # it is the common choice for AdamW on segmentation and does not need tuning of decay epochs.
    lr_schedule: str = "cosine"
    poly_power: float = 0.9  # `poly`: lr * (1 - progress) ** poly_power after the warm-up (RSFNet, DeepLab)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    amp: bool = True
    num_workers: int = 2
    seed: int = 0
    max_steps: int | None = None
    val_every: int = 1
    augment: bool = True
    checkpoint_every_steps: int | None = 200
    checkpoint_every_epochs: int = 1
    save_best: bool = True
    grad_clip: float | None = None


@dataclass
class LossConfig:
    ce: float = 1.0
    dice: float = 1.0
    # null, one weight per class, or "log_frequency": w_c = 1 / ln(1.05 + p_c) from the training labels
    # (RSFNet); the class pixel counts come from the dataset's full validation, cached per dataset.
    class_weights: list[float] | str | None = None
    # null, or {threshold: 0.7, min_kept_fraction: 0.0625}: OHEM cross-entropy (SARTM; see models/losses.py)
    ohem: dict | None = None
    ignore_index: int = 255


@dataclass
class StudyConfig:
    methods: list[str] | None = None  # None = every registered method
    lightings: list[str] | None = None  # None = RGB1..RGB8
    checkpoint: str = "last"  # which checkpoint of each run is evaluated: "last" or "best" (by val mIoU)
    generate: dict | None = None  # {num_frames, seed, height, width, val_fraction}: synthesise data if missing
    slim_checkpoints: bool = True  # drop optimiser/RNG state from a run's last.pt once it is scored


@dataclass
class ExperimentConfig:
    experiment: str = DEFAULT_EXPERIMENT
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    out_dir: str = DEFAULT_OUT_DIR
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


def _float(minimum: float | None = None, optional: bool = False, exclusive: bool = False) -> Validator:
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


def _dataset(value, where):
    from .datasets.registry import layout_names  # every layout module registers itself there

    return _choice(layout_names())(value, where)


def _optional_str(value, where):
    return None if value is None else _str(value, where)


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


AUGMENTATION_FIELDS = {
    "hflip": _bool,
    "scale": _scale_range,
    "crop": _input_size,
    "rotate": _degrees,
    "colour_jitter": _jitter,
}


def _augmentation(value, where):
    value = _mapping(value, where)
    unknown = sorted(set(value) - set(AUGMENTATION_FIELDS))
    if unknown:
        _fail(where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(AUGMENTATION_FIELDS)}")
    checked = {key: AUGMENTATION_FIELDS[key](v, f"{where}.{key}") for key, v in value.items()}
    return DEFAULT_AUGMENTATION | checked


def _check_data(config: "ExperimentConfig") -> None:
    """The data fields that depend on each other: the aux choice and class count of the chosen dataset.
    Fills aux_folder / label_folder left null with the dataset's defaults."""
    from .datasets.catalog import check_data_config

    try:
        check_data_config(config.data)
    except ValueError as error:
        raise ConfigError(f"{config.source}: {error}") from None


def _class_weights(value, where):
    if value is None or value == "log_frequency":
        return value
    if isinstance(value, list) and value:
        return [_float(minimum=0.0)(v, f"{where}[{i}]") for i, v in enumerate(value)]
    _fail(where, f'expected null, "log_frequency" or a list of per-class weights, got {_describe(value)}')


OHEM_DEFAULTS = {"threshold": 0.7, "min_kept_fraction": 1.0 / 16}


def _ohem(value, where):
    if value is None:
        return None
    value = _mapping(value, where)
    unknown = sorted(set(value) - set(OHEM_DEFAULTS))
    if unknown:
        _fail(where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(OHEM_DEFAULTS)}")
    checked = OHEM_DEFAULTS | {key: _float(minimum=0.0)(v, f"{where}.{key}") for key, v in value.items()}
    if not 0 < checked["threshold"] <= 1 or checked["min_kept_fraction"] > 1:
        _fail(where, f"threshold must lie in (0, 1] and min_kept_fraction in [0, 1], got {checked}")
    return checked


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


def _optional_str_list(value, where):
    return None if value is None else _str_list(value, where)


GENERATE_FIELDS = {
    "num_frames": _int(minimum=2),
    "seed": _int(),
    "height": _int(minimum=8),
    "width": _int(minimum=8),
    "val_fraction": _float(minimum=0.0),
}


def _generate(value, where):
    if value is None:
        return None
    value = _mapping(value, where)
    unknown = sorted(set(value) - set(GENERATE_FIELDS))
    if unknown:
        _fail(where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(GENERATE_FIELDS)}")
    return {key: GENERATE_FIELDS[key](v, f"{where}.{key}") for key, v in value.items()}


SCHEMA: dict[str, dict[str, Validator]] = {
    "model": {"method": _method, "pretrained": _bool, "options": _mapping},
    "data": {
        "dataset": _dataset,
        "root": _str,
        "lightings": _lightings,
        "aux_folder": _optional_str,
        "label_folder": _optional_str,
        "train_split": _split,
        "val_split": _split,
        "input_size": _input_size,
        "num_classes": _int(minimum=2, optional=True),
        "aux_range": _aux_range,
        "fmb_classes": _choice((14, 15)),
        "augmentation": _augmentation,
        "rgb_mean": _rgb_triple(positive=False),
        "rgb_std": _rgb_triple(positive=True),
    },
    "train": {
        "epochs": _int(minimum=1),
        "batch_size": _int(minimum=1),
        "optimizer": _choice(OPTIMIZERS),
        "lr": _float(minimum=0.0, exclusive=True),
        "momentum": _float(minimum=0.0),
        "weight_decay": _float(minimum=0.0),
        "lr_schedule": _choice(LR_SCHEDULES),
        "poly_power": _float(minimum=0.0, exclusive=True),
        "warmup_steps": _int(minimum=0),
        "min_lr_ratio": _float(minimum=0.0),
        "amp": _bool,
        "num_workers": _int(minimum=0),
        "seed": _int(minimum=0),
        "max_steps": _int(minimum=1, optional=True),
        "val_every": _int(minimum=1),
        "augment": _bool,
        "checkpoint_every_steps": _int(minimum=1, optional=True),
        "checkpoint_every_epochs": _int(minimum=1),
        "save_best": _bool,
        "grad_clip": _float(minimum=0.0, optional=True, exclusive=True),
    },
    "loss": {
        "ce": _float(minimum=0.0),
        "dice": _float(minimum=0.0),
        "class_weights": _class_weights,
        "ohem": _ohem,
        "ignore_index": _int(),
    },
    "study": {
        "methods": _methods,
        "lightings": _optional_str_list,
        "checkpoint": _choice(("last", "best")),
        "generate": _generate,
        "slim_checkpoints": _bool,
    },
}
SCALARS: dict[str, Validator] = {"experiment": _str, "out_dir": _str}
SECTION_TYPES = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "loss": LossConfig, "study": StudyConfig}


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
    raw.setdefault("experiment", DEFAULT_EXPERIMENT)
    raw.setdefault("out_dir", DEFAULT_OUT_DIR)
    raw = _interpolate(raw, source)
    known = set(SCHEMA) | set(SCALARS)
    unknown = sorted(str(k) for k in set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name, check in SCALARS.items():
        if name in raw:
            values[name] = check(raw[name], f"{source}: field '{name}'")
    for section, fields in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping, got {_describe(given)}")
        unknown = sorted(str(k) for k in set(given) - set(fields))
        if unknown:
            raise ConfigError(
                f"{source}: unknown field(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                f"known in '{section}': {', '.join(fields)}"
            )
        checked = {key: fields[key](value, f"{source}: field '{section}.{key}'") for key, value in given.items()}
        values[section] = SECTION_TYPES[section](**checked)
    config = ExperimentConfig(**values, source=source)
    _check_consistency(config)
    return config


def _check_consistency(config: ExperimentConfig) -> None:
    from rgbd_fusion_seg.models import method_options

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
    if config.train.min_lr_ratio > 1:
        raise ConfigError(f"{source}: field 'train.min_lr_ratio' must be at most 1, got {config.train.min_lr_ratio}")
    if config.train.momentum >= 1:
        raise ConfigError(f"{source}: field 'train.momentum' must be below 1, got {config.train.momentum}")


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
