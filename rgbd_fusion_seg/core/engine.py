"""Inference on decoded images: the one place where the node (and offline prediction) touches tensors."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import method_class
from .checkpoint import Checkpoint, load_checkpoint
from .onnx_model import mask_dtype
from .preprocessing import prepare_inputs

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else must be a device torch knows and can use."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available on this machine")
    return resolved


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix instructions, which make bf16 autocast faster than fp32 (emulated
    bf16, on AVX512 alone, is slower). torch exposes the check only as these private helpers."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(device: torch.device, precision: str) -> tuple[str, str]:
    """The precision that runs on `device` when `precision` is asked for, and why, when they differ."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if device.type == "cuda" or precision == "fp32":
        return precision, ""
    if precision == "bf16":
        if cpu_has_native_bf16():
            return "bf16", ""
        return "fp32", "bf16 was asked for, but this CPU has no bf16 instructions (AVX512-BF16 or AMX): running fp32"
    return "fp32", "fp16 was asked for, but a CPU emulates half precision, slower than fp32: running fp32"


@dataclass
class Prediction:
    mask: np.ndarray  # HxW class ids at the colour image's size (uint8, or uint16 beyond 255 classes)
    confidence: np.ndarray | None  # HxW float32 softmax probability of the chosen class, when asked for
    fused: np.ndarray | None = None  # HxWx3 uint8 fused RGB-X image (SC-CoSF), when the engine keeps it


class SegmentationEngine:
    """A served model: the checkpoint's deploy-form network plus its preprocessing, on one device.

    `extras`: the method's extra outputs to keep in the deploy form and return (e.g. ("fused",)); a branch
    not asked for is dropped from the network, so it costs nothing.
    `model`: a network to serve in place of the checkpoint's (an OnnxRuntimeModel: see `from_file`), called
    like the torch model with tensors on `device`, or one that gives masks itself (`gives_masks`, an exported
    mask graph: `model.masks(rgb, aux, size, with_confidence)`); `backend` says which runs, and such a model's own
    `precision` is the one that runs.
    `precision`: the autocast precision asked for; `self.precision` is the one that runs and `precision_note`
    says why when they differ (fp16 on a CPU, bf16 on a CPU without bf16 instructions).
    On CUDA the inputs pass through page-locked host buffers kept from frame to frame (`PinnedInputs`).
    `compile`: torch.compile the network; it compiles at the first `predict` (`warm_up`), and a network that
    does not compile is served eagerly, with the reason in `compile_note`.
    """

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", precision: str = "fp32",
                 extras: tuple[str, ...] = (), model=None, compile: bool = False):
        servable = method_class(checkpoint.method).serving_extras
        unknown = [name for name in extras if name not in servable]
        if unknown:
            raise ValueError(f"method {checkpoint.method!r} has no extra output {', '.join(unknown)} to serve; "
                             f"it has: {', '.join(servable) or 'none'}")
        self.extras = tuple(extras)
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        self.precision, self.precision_note = resolve_precision(self.device, precision)
        if model is not None and hasattr(model, "precision"):  # it runs its own precision (TensorRT's fp16)
            self.precision, self.precision_note = model.precision, model.precision_note
        # channels_last: oneDNN's and cuDNN's fast convolution layout (forward ~20 % faster on the CPU here)
        self.model = model if model is not None else (checkpoint.build_model().deploy(keep_extras=self.extras)
                                                      .eval().to(self.device, memory_format=torch.channels_last))
        self.backend = getattr(model, "backend", "torch")
        self.compile_note = ""
        self._eager_model = self.model
        if compile:
            if model is not None:
                raise ValueError(f"compile applies to the torch backend only, not {self.backend}")
            self.model = torch.compile(self.model, dynamic=False)  # the engine feeds one input size
            self.backend = "torch (compiled)"
        self._mask_dtype = mask_dtype(checkpoint.num_classes)
        self._gives_masks = getattr(self.model, "gives_masks", False)
        self._inputs = PinnedInputs() if self.device.type == "cuda" else None

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str = "auto", precision: str = "fp32",
                  extras: tuple[str, ...] = (), compile: bool = False,
                  tensorrt_cache: str | os.PathLike | None = None) -> "SegmentationEngine":
        """A `.pt` checkpoint served by PyTorch, or an exported `.onnx` file by ONNX Runtime (its providers
        chosen by `device`, TensorRT first on CUDA when `tensorrt_cache` names a folder for its engines; fp16
        as TensorRT fp16 engines, refused with the reason elsewhere: see onnx_model.choose_providers)."""
        if Path(path).suffix.lower() != ".onnx":
            return cls(load_checkpoint(path), device=device, precision=precision, extras=extras, compile=compile)
        from .onnx_model import OnnxRuntimeModel  # onnxruntime is needed only for .onnx files

        if extras or compile:
            raise ValueError(f"{path}: an exported ONNX file serves its mask (or logits) only, uncompiled (asked "
                             f"for extras {list(extras)}, compile {compile}); serve the .pt checkpoint with the "
                             "torch backend for those")
        model = OnnxRuntimeModel(path, device=device, tensorrt_cache=tensorrt_cache, precision=precision)
        # ONNX Runtime takes and gives CPU tensors, whatever device it runs on: pre/post-processing stay there
        return cls(model.checkpoint, device="cpu", model=model)

    def warm_up(self, height: int, width: int) -> None:
        """One prediction on blank images (compiling a compiled network); a network that fails to compile is
        served eagerly from then on, and `compile_note` says why."""
        rgb, aux = np.zeros((height, width, 3), np.uint8), np.zeros((height, width), np.float32)
        try:
            self.predict(rgb, aux)
        except Exception as error:  # torch.compile raises many types (dynamo, inductor, the C++ compiler)
            if self.model is self._eager_model:
                raise
            self.model, self.backend = self._eager_model, "torch"
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            self.compile_note = f"torch.compile failed ({type(error).__name__}: {reason}): serving eagerly"
            self.predict(rgb, aux)

    def describe_runtime(self) -> str:
        """Backend, device and precision as they run, with why they differ from what was asked for."""
        notes = "; ".join(note for note in (self.precision_note, self.compile_note) if note)
        graph = f", {self.model.graph_kind}" if hasattr(self.model, "graph_kind") else ""  # an exported file's kind
        return f"{self.backend}{graph} on {self.device} ({self.precision})" + (f" [{notes}]" if notes else "")

    @property
    def method(self) -> str:
        return self.checkpoint.method

    @property
    def preprocessing(self):
        return self.checkpoint.preprocessing

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray, aux: np.ndarray | None, with_confidence: bool = False) -> Prediction:
        """rgb: HxWx3 uint8; aux: HxW float32 in the checkpoint's aux unit (NaN = no reading), or None.

        The softmax for `confidence` is computed only when asked for: at camera resolution it costs as
        much as the upsampling itself on a CPU.
        """
        rgb_in, aux_in = prepare_inputs(rgb, aux, self.preprocessing)
        if self._inputs is not None:  # CUDA: from reused page-locked buffers, asynchronously
            rgb_t = self._inputs.to_device("rgb", rgb_in, self.device)
            aux_t = self._inputs.to_device("aux", aux_in, self.device)
        else:
            rgb_t, aux_t = torch.from_numpy(rgb_in)[None], torch.from_numpy(aux_in)[None]
        if self._gives_masks:
            return self._from_mask_graph(rgb_t, aux_t, rgb.shape[:2], with_confidence)
        rgb_t, aux_t = _channels_last(rgb_t), _channels_last(aux_t)
        with torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], enabled=self.precision != "fp32"):
            output = self.model(rgb_t, aux_t)
        # Upsampling and the argmax over classes in channels_last: each pixel's class scores lie together, so
        # both run 3-4x faster than over NCHW planes, and give the same values (the masks are bit-identical).
        logits = F.interpolate(_channels_last(output.logits.float()), size=rgb.shape[:2], mode="bilinear",
                               align_corners=False)
        fused = _image_at(output.extras["fused"], rgb.shape[:2]) if "fused" in self.extras else None
        if with_confidence:
            confidence, mask = torch.softmax(logits[0], dim=0).max(dim=0)
            confidence = confidence.cpu().numpy()
        else:
            mask, confidence = logits[0].argmax(dim=0), None
        if self._mask_dtype == np.uint8:  # narrowed on the device: an eighth of the copy of int64 ids
            return Prediction(mask.to(torch.uint8).cpu().numpy(), confidence, fused)
        return Prediction(mask.to(torch.int32).cpu().numpy().astype(self._mask_dtype), confidence, fused)

    def _from_mask_graph(self, rgb_t, aux_t, size: tuple[int, int], with_confidence: bool) -> Prediction:
        """A mask graph's output at the colour image's `size`: the graph upsamples its logits to it (as the
        logits path does) before the argmax, so the masks are the same at any size."""
        mask, confidence = self.model.masks(rgb_t, aux_t, size, with_confidence)
        return Prediction(mask[0].numpy().astype(self._mask_dtype, copy=False),
                          None if confidence is None else confidence[0].numpy())


class PinnedInputs:
    """Page-locked host buffers, one per input and kept while its shape holds: each frame is copied once from
    NumPy into its buffer, and from there to the device asynchronously (a pageable array is staged by the
    driver through a pinned buffer of its own, synchronously). A buffer is overwritten only after the previous
    frame's copy has finished: `predict` waits for its mask on the host before it returns. `pin_memory=False`
    keeps the reuse without page-locking (page-locking needs CUDA; the tests run this way)."""

    def __init__(self, pin_memory: bool = True):
        self.pin_memory = pin_memory
        self.buffers: dict[str, torch.Tensor] = {}

    def to_device(self, name: str, array: np.ndarray, device: torch.device) -> torch.Tensor:
        """`array` (CxHxW) as a 1xCxHxW tensor on `device`."""
        buffer = self.buffers.get(name)
        if buffer is None or tuple(buffer.shape) != (1, *array.shape) or buffer.numpy().dtype != array.dtype:
            buffer = torch.empty((1, *array.shape), dtype=torch.from_numpy(array).dtype, pin_memory=self.pin_memory)
            self.buffers[name] = buffer
        buffer[0].numpy()[...] = array
        return buffer.to(device, non_blocking=True)


def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def _image_at(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A 1x3xhxw image in [0, 1] -> HxWx3 uint8 at `size` (bilinear)."""
    image = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)[0]
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
