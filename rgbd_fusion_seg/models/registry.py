"""Name -> method class. Methods register themselves when their module is imported (see __init__)."""
from __future__ import annotations

import inspect

from .base import FusionSegmenter

_METHODS: dict[str, type[FusionSegmenter]] = {}


class UnknownMethodError(ValueError):
    """A method name or option that no registered method accepts."""


def register(cls: type[FusionSegmenter]) -> type[FusionSegmenter]:
    if not cls.method:
        raise TypeError(f"{cls.__name__} must set a `method` name to be registered")
    if cls.method in _METHODS:
        raise TypeError(f"fusion method {cls.method!r} is registered twice")
    _METHODS[cls.method] = cls
    return cls


def available_methods() -> list[str]:
    return list(_METHODS)


def method_class(method: str) -> type[FusionSegmenter]:
    try:
        return _METHODS[method]
    except KeyError:
        raise UnknownMethodError(f"unknown fusion method {method!r}; available: {', '.join(_METHODS)}") from None


def method_options(method: str) -> dict[str, object]:
    """The keyword options a method accepts, with their defaults (num_classes excluded)."""
    signature = inspect.signature(method_class(method).__init__)
    return {
        name: param.default
        for name, param in signature.parameters.items()
        if name not in ("self", "num_classes") and param.kind is param.KEYWORD_ONLY
    }


def build_model(method: str, num_classes: int, **options) -> FusionSegmenter:
    """Build a registered method; an option the method does not take is refused with the ones it does."""
    cls = method_class(method)
    accepted = method_options(method)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UnknownMethodError(
            f"fusion method {method!r} has no option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'none'}"
        )
    if num_classes < 2:
        raise UnknownMethodError(f"num_classes must be at least 2, got {num_classes}")
    return cls(num_classes=num_classes, **options)
