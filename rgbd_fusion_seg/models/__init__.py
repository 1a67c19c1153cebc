"""Model zoo: every fusion method behind one interface (see base.py), built by name from the registry."""
from . import methods  # noqa: F401  (registers the methods)
from .base import FusionSegmenter, SegOutput
from .registry import UnknownMethodError, available_methods, build_model, method_class, method_options

__all__ = ["FusionSegmenter", "SegOutput", "UnknownMethodError", "available_methods", "build_model", "method_class",
           "method_options"]
