"""Which checkpoint file a configuration of the node serves, and whether serving it needs a (re)load.

The node asks this for every model parameter change (`params.MODEL_PARAMETERS`: the file, the method, the
modality, the backend and where and how it runs, `outputs.fused_image`) and at start. A set-parameters
request must be answered at once, accepted or refused with the reason, so the files are inspected while it
waits; each file is read once per decision (memory-mapped: names and shapes, not the weights), and the full
load runs later on the loader thread.

No ROS import: plain functions over the configuration dict, tested without rclpy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

from . import parameters as params
from .model_serving import CheckpointSummary, Runtime, check_runtime, read_checkpoint_summary

# Asking for one of these again reloads the file, even when it is the one being served.
RELOAD_PARAMETERS = frozenset({"checkpoint", "fusion_method"})


@dataclass(frozen=True)
class ModelChoice:
    """The checkpoint a configuration serves, checked against it, and how it runs."""

    summary: CheckpointSummary
    runtime: Runtime
    extras: tuple[str, ...] = ()  # extra outputs kept in the deploy form

    @property
    def target(self) -> tuple:
        """What identifies a served model: two choices with the same target serve the same engine."""
        return os.path.abspath(self.summary.path), self.runtime, self.extras


def runtime_from(config: Mapping) -> Runtime:
    return Runtime(backend=config["backend"], device=config["device"], precision=config["precision"],
                   compile=config["compile"], tensorrt_cache=config["tensorrt_cache_dir"],
                   onnx_cache=config["onnx_cache_dir"])


class _Inspections:
    """Reads each file once per decision; a failure is remembered as well as a summary."""

    def __init__(self, read: Callable[[str], CheckpointSummary]):
        self._read = read
        self._results: dict[str, CheckpointSummary | ValueError] = {}

    def __call__(self, path: str) -> CheckpointSummary:
        key = os.path.abspath(path)
        if key not in self._results:
            try:
                self._results[key] = self._read(path)
            except ValueError as error:  # CheckpointError is a ValueError
                self._results[key] = error
        result = self._results[key]
        if isinstance(result, ValueError):
            raise result
        return result


def choose_model(config: Mapping, changed: set[str], *, serving: bool, startup: bool = False,
                 read: Callable[[str], CheckpointSummary] = read_checkpoint_summary) -> ModelChoice | None:
    """The model `config` asks for, or None when it asks for none (no checkpoint at start).

    `changed`: the parameters this request sets (at start: those given). `serving`: a model is served now.
    Raises ValueError (CheckpointError) with the reason the configuration cannot be served.
    """
    for name in sorted(params.MODEL_PARAMETERS - changed):
        # A value refused at start stays set (the node idles): no change may load a model around it.
        reason = params.validate(name, config[name])
        if reason:
            raise ValueError(f"{reason} (set {name} too, in the same request)")
    inspect = _Inspections(read)
    checkpoint, method, modality = config["checkpoint"], config["fusion_method"], config["modality"] or None
    if not startup and "checkpoint" in changed and checkpoint:
        # A checkpoint set at runtime is checked even when fusion_method will pick the file to serve.
        summary = inspect(checkpoint).require(modality=modality)
        if method and summary.method != method and "fusion_method" not in changed:
            raise ValueError(
                f"checkpoint {checkpoint} holds method {summary.method!r} but fusion_method is {method!r}; set "
                f"fusion_method to '' or {summary.method!r} in the same request"
            )
    path = _model_path(config, inspect)
    if path is None:
        if serving and not startup:
            raise ValueError("checkpoint '' would leave nothing to serve; set another checkpoint instead")
        return None
    summary = inspect(path).require(method=method or None, modality=modality)
    choice = ModelChoice(summary, runtime_from(config), served_extras(config, summary.method))
    check_runtime(summary, choice.runtime, choice.extras)
    return choice


def served_extras(config: Mapping, method: str) -> tuple[str, ...]:
    """The extra outputs the outputs.* parameters ask of `method` that it has (a method without them
    serves masks only; the node says so)."""
    from ..models import method_class

    wanted = ("fused",) if config["outputs.fused_image"] else ()
    return tuple(name for name in wanted if name in method_class(method).serving_extras)


def _model_path(config: Mapping, inspect: _Inspections) -> str | None:
    """The file to serve: the checkpoint, unless fusion_method names another method (<folder>/<method>.pt, or
    the exported <folder>/<method>.onnx when there is no .pt)."""
    checkpoint, method, folder = config["checkpoint"], config["fusion_method"], config["checkpoint_dir"]
    if not method:
        return checkpoint or None
    if checkpoint:
        try:
            if inspect(checkpoint).method == method:
                return checkpoint
        except ValueError:
            pass  # fusion_method decides which file is served; the checkpoint need not be valid here
    folder = folder or (os.path.dirname(os.path.abspath(checkpoint)) if checkpoint else "")
    if not folder:
        raise ValueError(f"fusion_method {method!r} needs checkpoint_dir (or a checkpoint beside the <method>.pt files)")
    for path in (os.path.join(folder, f"{method}{suffix}") for suffix in (".pt", ".onnx")):
        if os.path.isfile(path):
            return path
    raise ValueError(f"fusion_method {method!r}: no checkpoint {os.path.join(folder, method)}.pt (nor .onnx)")


def needs_load(choice: ModelChoice, current_target: tuple | None, changed: set[str]) -> bool:
    """Whether serving `choice` means loading it: another file, runtime (backend, device, precision, ...) or
    set of extra outputs, or a file asked for again."""
    return choice.target != current_target or bool(changed & RELOAD_PARAMETERS)
