"""Name -> dataset layout, like models/registry.py for the fusion methods.

A layout is a `base.FrameDataset` subclass that registers itself with `@register_layout` and describes itself
in class attributes (base.FrameDataset lists them): its name, its classes and palette (`METAINFO`, as in
mmsegmentation), its aux choices, its label folder and the data-section options only it reads. A function
that writes a small synthetic copy of the layout registers with `@register_replica(name)`. The config
schema, the catalogue (catalog.py), the replica writer (replicas.py) and `bag import` read this registry, so
a new layout is one new module in this package plus its test: every module of the package is imported the
first time the registry is read.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from .imageio import DatasetError

_LAYOUTS: dict[str, type] = {}
_REPLICAS: dict[str, Callable[..., dict]] = {}
_discovered = False


def register_layout(cls: type) -> type:
    """Class decorator: make `cls` (a FrameDataset with `dataset_name` and `aux_choices`) a layout."""
    name = getattr(cls, "dataset_name", None)
    if not name or not getattr(cls, "aux_choices", None):
        raise TypeError(f"{cls.__name__} must set `dataset_name` and `aux_choices` to be registered")
    if name in _LAYOUTS:
        raise TypeError(f"dataset layout {name!r} is registered twice ({_LAYOUTS[name].__name__}, {cls.__name__})")
    _LAYOUTS[name] = cls
    return cls


def register_replica(name: str) -> Callable:
    """Function decorator: `write(root, num_frames, height, width, seed) -> {"root", "splits", "classes"}`
    writes a small synthetic data set in layout `name`'s on-disk form."""

    def register(write: Callable[..., dict]) -> Callable[..., dict]:
        known = _REPLICAS.get(name)
        if known is not None and _source(known) != _source(write):
            raise TypeError(f"a replica writer for {name!r} is registered twice")
        _REPLICAS[name] = write  # the same function again: its module was run with -m, then imported
        return write

    return register


def _source(function: Callable) -> tuple[str, str]:
    return function.__code__.co_filename, function.__qualname__


def _discover() -> None:
    """Import every module of this package once, so each layout has registered itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__package__}.{module.name}")


def layout_names() -> list[str]:
    _discover()
    return sorted(_LAYOUTS)


def layout(name: str) -> type:
    """The FrameDataset class of layout `name`; DatasetError naming the known layouts otherwise."""
    _discover()
    try:
        return _LAYOUTS[name]
    except (KeyError, TypeError):
        raise DatasetError(f"dataset {name!r} has no loader; known: {', '.join(layout_names())}") from None


def replica_names() -> list[str]:
    _discover()
    return sorted(_REPLICAS)


def replica_writer(name: str) -> Callable[..., dict]:
    _discover()
    try:
        return _REPLICAS[name]
    except KeyError:
        raise DatasetError(f"no replica writer for dataset {name!r}; there are: {', '.join(replica_names())}") from None
