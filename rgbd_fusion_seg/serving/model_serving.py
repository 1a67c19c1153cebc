"""The models the node serves, without ROS imports: checking a checkpoint, loading it, swapping it in.

- `read_checkpoint_summary` / `inspect_checkpoint`: a cheap check that a checkpoint file can be served (format,
  method, modality, and whether its weights fit the method), memory-mapped so the weights are not read;
  `CheckpointSummary.require` matches one read against a method and a modality.
- `Runtime`: how a file is served (backend, device, precision, compile, the ONNX and TensorRT caches), and
  `check_runtime`, the cheap check that a file can be served so.
- `ServedModel` and `load_served_model`: the full load that builds the engine, replaced whole, never mutated;
  a `.pt` checkpoint served by ONNX Runtime is exported first (`exported_for_serving`, cached by content).
- `BackgroundLoader`: a daemon thread that loads the newest requested model (`LoadRequest`) and hands it over;
  the caller swaps it in, so the old model serves until then.

Which file a configuration serves is `model_selection.py`.
"""
from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..core.preprocessing import Preprocessing, PreprocessingError
from .inference_worker import InferenceWorker

if TYPE_CHECKING:  # torch and the models are imported on first use, so the node starts (and stops) quickly
    from ..core.engine import SegmentationEngine


@dataclass(frozen=True)
class CheckpointSummary:
    """What one cheap read of a checkpoint file found; `require` says whether it can serve a configuration."""

    path: str
    method: str
    num_classes: int
    modality: str
    unit: str
    uses_aux: bool
    weights_problem: str | None = None  # why the weights do not fit the method, when they do not
    classes: tuple[str, ...] = ()
    aux_dropout: float = 0.0  # train.aux_dropout it was trained with (Checkpoint.aux_dropout)

    @property
    def is_onnx(self) -> bool:
        return is_onnx_file(self.path)

    def fallback_refusal(self, main_classes: tuple[str, ...] | None) -> str | None:
        """Why this file cannot be the node's fallback_checkpoint (served from colour alone while the aux
        camera is missing, in place of a model with `main_classes`; None: not known yet), or None if it can.
        The node's own rule for colour alone: a method that uses no aux, or one trained with aux dropout."""
        if self.uses_aux and self.aux_dropout <= 0:
            return (f"fallback_checkpoint {self.path} holds {self.method!r}, a fusion model not trained with "
                    "train.aux_dropout: it cannot serve colour alone (use an RGB method such as 'rgb', or a model "
                    "trained with aux dropout)")
        if main_classes is not None and tuple(self.classes) != tuple(main_classes):
            return (f"fallback_checkpoint {self.path} has other classes than the served model "
                    f"({len(self.classes)}: {', '.join(self.classes[:4])}... vs {len(main_classes)}: "
                    f"{', '.join(main_classes[:4])}...): its masks would mean other things")
        return None

    def require(self, *, method: str | None = None, modality: str | None = None) -> "CheckpointSummary":
        """This summary if the file can serve `method` / `modality` (None: any); else CheckpointError."""
        from ..core.checkpoint import CheckpointError

        if method and self.method != method:
            raise CheckpointError(f"checkpoint {self.path} holds method {self.method!r}, not {method!r}")
        if modality and self.uses_aux and self.modality != modality:
            raise CheckpointError(
                f"checkpoint {self.path} was trained on {self.modality} ({self.unit}), but modality is {modality!r}"
            )
        if self.weights_problem:
            raise CheckpointError(f"checkpoint {self.path}: {self.weights_problem}")
        return self


def _method_uses_aux(method: str) -> bool:
    from ..models.registry import method_class

    return bool(method_class(method).uses_aux)


def _weights_fit(method: str, num_classes: int, options: dict, state_dict: dict) -> str | None:
    """Compare key names and shapes with the method built on the meta device (no memory, no maths).

    Returns the reason the weights do not fit, or None (also when the check cannot be made: the full load
    checks again).
    """
    import torch

    from ..models import build_model

    try:
        with torch.device("meta"):
            expected = build_model(method, num_classes, **options).state_dict()
    except Exception:  # noqa: BLE001 - e.g. a constructor that reads files; leave it to the full load
        return None
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{name} {tuple(state_dict[name].shape)} vs {tuple(expected[name].shape)}"
        for name in expected
        if name in state_dict and hasattr(state_dict[name], "shape") and state_dict[name].shape != expected[name].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
    if problems:
        return f"weights do not fit method {method!r} with {num_classes} classes: " + "; ".join(problems)
    return None


def is_onnx_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def read_checkpoint_summary(path: str | os.PathLike) -> CheckpointSummary:
    """Read a checkpoint cheaply: memory-mapped, so the weights are not read, only their names and shapes
    compared with the method's; an exported `.onnx` file's description from its metadata (the graph is
    checked by ONNX Runtime at load). Raises CheckpointError for a file that is no servable model at all."""
    from ..core.checkpoint import CheckpointError, check_architecture, read_checkpoint_dict

    path = Path(path)
    if is_onnx_file(path):
        from ..core.onnx_model import checkpoint_from_description, read_onnx_description

        described = checkpoint_from_description(read_onnx_description(path))
        aux = described.preprocessing.aux
        return CheckpointSummary(str(path), described.method, described.num_classes, aux.modality, aux.unit,
                                 _method_uses_aux(described.method), classes=tuple(described.classes),
                                 aux_dropout=described.aux_dropout)
    raw = read_checkpoint_dict(path, mmap=True)
    check_architecture(raw, path)
    try:
        found_method = str(raw["model"]["method"])
        num_classes = int(raw["model"]["num_classes"])
        options = dict(raw["model"].get("options", {}))
        spec = Preprocessing.from_dict(raw["preprocessing"])
        state_dict = raw["state_dict"]
        classes = tuple(str(name) for name in raw["classes"])
        aux_dropout = float((raw.get("data") or {}).get("aux_dropout") or 0.0)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is missing or has a malformed field: {error}") from None
    uses_aux = _method_uses_aux(found_method)
    return CheckpointSummary(str(path), found_method, num_classes, spec.aux.modality, spec.aux.unit, uses_aux,
                             weights_problem=_weights_fit(found_method, num_classes, options, state_dict),
                             classes=classes, aux_dropout=aux_dropout)


def inspect_checkpoint(path: str | os.PathLike, *, method: str | None = None, modality: str | None = None) -> CheckpointSummary:
    """Check, cheaply, that `path` can be served (with `method` / `modality`, when given, matching the
    checkpoint's); raise CheckpointError with the reason if not."""
    return read_checkpoint_summary(path).require(method=method, modality=modality)


@dataclass(frozen=True)
class Runtime:
    """How a model file is served. `backend` auto: ONNX Runtime for an exported `.onnx` file, PyTorch for a
    checkpoint; onnxruntime for a checkpoint exports it first (into `onnx_cache`, '' = `default_onnx_cache()`).
    `tensorrt_cache` ('' = none): ONNX Runtime tries TensorRT first on CUDA, keeping its engines there."""

    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    tensorrt_cache: str = ""
    onnx_cache: str = ""

    def backend_for(self, path: str | os.PathLike) -> str:
        if self.backend != "auto":
            return self.backend
        return "onnxruntime" if is_onnx_file(path) else "torch"


def check_runtime(summary: CheckpointSummary, runtime: Runtime, extras: tuple[str, ...] = ()) -> None:
    """CheckpointError with the reason when `summary`'s file cannot be served with `runtime` (cheap: no load)."""
    from ..core.checkpoint import CheckpointError

    backend = runtime.backend_for(summary.path)
    if backend == "torch":
        if summary.is_onnx:
            raise CheckpointError(f"{summary.path} is an exported ONNX file, served by ONNX Runtime: set backend "
                                  "to onnxruntime or auto, or serve its .pt checkpoint")
        return
    asked = [what for what, wrong in (  # fp16: TensorRT's engines, refused on load where they cannot run
        (f"precision {runtime.precision}", runtime.precision not in ("fp32", "fp16")), ("compile", runtime.compile),
        (f"the {', '.join(extras)} output", bool(extras))) if wrong]
    if asked:
        raise CheckpointError(f"backend onnxruntime serves the exported graph in fp32 (fp16 as TensorRT engines on "
                              f"CUDA) and its mask and confidence only; {' and '.join(asked)} need backend torch")
    if not summary.is_onnx:  # exported into the cache first: refused now, not after minutes of export
        from ..core.writable_folder import UnwritableFolderError, check_writable_folder

        try:  # the .onnx holds the same weights: about the checkpoint's size
            check_writable_folder(runtime.onnx_cache or default_onnx_cache(), os.path.getsize(summary.path))
        except UnwritableFolderError as error:
            raise CheckpointError(f"onnx_cache_dir: {error} (backend onnxruntime exports {summary.path} there "
                                  "before serving it)") from None


def default_onnx_cache() -> Path:
    """Where checkpoints served by ONNX Runtime are exported: $ROS_HOME/rgbd_fusion_seg/onnx (ROS_HOME
    defaults to ~/.ros, as in ROS 2)."""
    return Path(os.environ.get("ROS_HOME") or Path.home() / ".ros") / "rgbd_fusion_seg" / "onnx"


def exported_for_serving(checkpoint_path: str | os.PathLike, cache: str | os.PathLike) -> Path:
    """`checkpoint_path` exported to ONNX in `cache`, named by its content: exported once, then reused (an
    export takes seconds to minutes). A cached file that is damaged, or was exported before weight digests
    were recorded, is exported again."""
    from ..core.onnx_model import OnnxModelError, read_onnx_description
    from ..core.onnx_export import export_onnx

    digest = hashlib.sha256()
    with open(checkpoint_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    exported = Path(cache) / f"{Path(checkpoint_path).stem}-{digest.hexdigest()[:16]}.onnx"
    if exported.is_file():
        try:
            read_onnx_description(exported)
            return exported
        except OnnxModelError:
            pass
    # force: replaces the damaged file; atomic: a failed export leaves none. Refused before the work when the
    # cache folder is a file, read-only or too full (the error names it).
    export_onnx(checkpoint_path, exported, force=True)
    return exported


@dataclass(frozen=True)
class ServedModel:
    """The engine being served plus what the node needs around it. Replaced whole, never mutated."""

    engine: SegmentationEngine
    path: str
    method: str
    modality: str
    unit: str
    uses_aux: bool
    palette: np.ndarray  # num_classes x 3 uint8
    base_preprocessing: Preprocessing  # the checkpoint's own, before any aux_range override
    runtime: Runtime  # as asked for; the engine says how it runs
    exported_to: str = ""  # the ONNX file ONNX Runtime runs, when it was exported from `path` for serving

    @property
    def aux_range(self) -> tuple[float, float]:
        aux = self.engine.preprocessing.aux
        return aux.low, aux.high

    def with_aux_range(self, aux_range) -> "ServedModel":
        """The same network with the aux normalisation range overridden ([] restores the checkpoint's)."""
        base = self.base_preprocessing
        if aux_range:
            low, high = float(aux_range[0]), float(aux_range[1])
            spec = replace(base, aux=replace(base.aux, low=low, high=high))
        else:
            spec = base
        engine = copy.copy(self.engine)  # shares the network; only the preprocessing differs
        engine.checkpoint = replace(self.engine.checkpoint, preprocessing=spec)
        return replace(self, engine=engine)

    def describe(self) -> str:
        low, high = self.aux_range
        return (
            f"method {self.method!r} from {self.path}"
            + (f" (exported to {self.exported_to})" if self.exported_to else "")
            + f" by {self.engine.describe_runtime()}; "
            f"{self.engine.checkpoint.num_classes} classes; aux {self.modality} in {self.unit} [{low:g}, {high:g}]"
            + ("" if self.uses_aux else " (aux not used by this method)")
            + "".join(f"; serving its {name} output" for name in self.engine.extras)
            + (f"; trained with aux dropout {self.engine.checkpoint.aux_dropout:g}"
               if self.engine.checkpoint.aux_dropout > 0 else "")
        )


def load_served_model(path: str, runtime: Runtime = Runtime(), aux_range=(), warm_up: bool = True,
                      extras: tuple[str, ...] = ()) -> ServedModel:
    """Load a model file fully and build its engine (deploy form with `extras` kept, as `runtime` says); one
    warm-up pass by default (which also compiles, with `runtime.compile`).

    Raises CheckpointError (missing, unreadable, weights that do not fit, an export that fails) or ValueError
    (device, precision).
    """
    from ..core.checkpoint import CheckpointError
    from ..core.engine import SegmentationEngine

    exported = ""
    served_file = path
    if runtime.backend_for(path) == "onnxruntime" and not is_onnx_file(path):
        served_file = exported = str(exported_for_serving(path, runtime.onnx_cache or default_onnx_cache()))
    engine = SegmentationEngine.from_file(served_file, device=runtime.device, precision=runtime.precision,
                                          extras=extras, compile=runtime.compile,
                                          tensorrt_cache=runtime.tensorrt_cache or None)
    checkpoint = engine.checkpoint
    # The network holds the weights now: keep the description, drop the second copy of the state dict.
    engine.checkpoint = replace(checkpoint, state_dict={}, train_state=None)
    spec = checkpoint.preprocessing
    served = ServedModel(
        engine=engine,
        path=str(path),
        method=checkpoint.method,
        modality=spec.aux.modality,
        unit=spec.aux.unit,
        uses_aux=_method_uses_aux(checkpoint.method),
        palette=np.asarray(checkpoint.palette, np.uint8).reshape(-1, 3),
        base_preprocessing=spec,
        runtime=runtime,
        exported_to=exported,
    )
    if aux_range:
        served = served.with_aux_range(aux_range)
    if warm_up:
        try:
            engine.warm_up(*(spec.input_size or (240, 320)))
        except PreprocessingError as error:
            raise CheckpointError(f"checkpoint {path}: warm-up inference failed: {error}") from None
    return served


@dataclass(frozen=True)
class LoadRequest:
    generation: int
    path: str
    runtime: Runtime
    aux_range: tuple[float, ...]
    reason: str  # what asked for it, for the log
    extras: tuple[str, ...] = ()  # the method's extra outputs to serve (SC-CoSF's "fused")


class BackgroundLoader:
    """Loads models on a daemon thread, newest request first; a request replaced before it starts is skipped.

    `on_loaded(request, served)` or `on_failed(request, error)` is called on the loader thread; any failure
    keeps the old model serving.
    """

    def __init__(self, on_loaded: Callable[[LoadRequest, ServedModel], None],
                 on_failed: Callable[[LoadRequest, BaseException], None],
                 load: Callable[..., ServedModel] = load_served_model):
        self._load = load
        self._on_loaded = on_loaded
        self._worker = InferenceWorker(self._load_one, on_failed, name="model-loader").start()

    def request(self, request: LoadRequest) -> None:
        self._worker.submit(request)

    def stop(self, timeout: float = 30.0) -> None:
        """Skip what is queued and wait for a load in progress: exiting while it runs in C++ aborts the process."""
        self._worker.stop(timeout)

    def _load_one(self, request: LoadRequest) -> None:
        served = self._load(request.path, request.runtime, request.aux_range, extras=request.extras)
        self._on_loaded(request, served)
