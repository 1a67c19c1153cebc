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
    like the torch model with tensors on `device`; `backend` says which runs.
    """

    def __init__(self, checkpoint: Checkpoint, device: str = "auto", precision: str = "fp32",
                 extras: tuple[str, ...] = (), model=None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        servable = method_class(checkpoint.method).serving_extras
        unknown = [name for name in extras if name not in servable]
        if unknown:
            raise ValueError(f"method {checkpoint.method!r} has no extra output {', '.join(unknown)} to serve; "
                             f"it has: {', '.join(servable) or 'none'}")
        self.extras = tuple(extras)
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        # Half precision on CPU is slow or unsupported for many kernels: fall back to fp32 there.
        self.precision = precision if self.device.type == "cuda" else "fp32"
        # channels_last: oneDNN's and cuDNN's fast convolution layout (forward ~20 % faster on the CPU here)
        self.model = model if model is not None else (checkpoint.build_model().deploy(keep_extras=self.extras)
                                                      .eval().to(self.device, memory_format=torch.channels_last))
        self.backend = getattr(model, "backend", "torch")
        self._mask_dtype = np.uint8 if checkpoint.num_classes <= 256 else np.uint16

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str = "auto", precision: str = "fp32",
                  extras: tuple[str, ...] = (), tensorrt_cache: str | os.PathLike | None = None) -> "SegmentationEngine":
        """A `.pt` checkpoint served by PyTorch, or an exported `.onnx` file by ONNX Runtime (its providers
        chosen by `device`, TensorRT first on CUDA when `tensorrt_cache` names a folder for its engines)."""
        if Path(path).suffix.lower() != ".onnx":
            return cls(load_checkpoint(path), device=device, precision=precision, extras=extras)
        from .onnx_model import OnnxRuntimeModel  # onnxruntime is needed only for .onnx files

        if precision != "fp32" or extras:
            raise ValueError(f"{path}: an exported ONNX file runs in fp32 with logits only (asked for precision "
                             f"{precision!r}, extras {list(extras)}); serve the .pt checkpoint for those")
        model = OnnxRuntimeModel(path, device=device, tensorrt_cache=tensorrt_cache)
        # ONNX Runtime takes and gives CPU tensors, whatever device it runs on: pre/post-processing stay there
        return cls(model.checkpoint, device="cpu", model=model)

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
        rgb_t = _channels_last(torch.from_numpy(rgb_in)[None].to(self.device, non_blocking=True))
        aux_t = _channels_last(torch.from_numpy(aux_in)[None].to(self.device, non_blocking=True))
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


def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def _image_at(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A 1x3xhxw image in [0, 1] -> HxWx3 uint8 at `size` (bilinear)."""
    image = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)[0]
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
