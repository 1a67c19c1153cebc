"""The one preprocessing path shared by training, evaluation and the ROS node.

Inputs arrive already decoded into physical units (see `AUX_UNITS`): the colour image as HxWx3 uint8 RGB,
the auxiliary image (depth or thermal) as HxW float32 with NaN where the sensor gave no reading. The
`Preprocessing` spec, stored in every checkpoint, says how those become network tensors. Training and the
node both call `prepare_inputs`, so the two can never drift apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MODALITIES = ("depth", "thermal")
# Physical unit of a decoded auxiliary image:
#   m        depth in metres (16UC1 millimetres and 32FC1 metres both decode to this)
#   celsius  thermal in degrees Celsius (MM5 T16 raw/64 - 273.15, 32FC1 thermal)
#   raw8     8-bit intensity as stored (MM5 D_FocusN, T8, MFNet/PST900 8-bit thermal, mono8)
#   raw16    16-bit counts as stored (PST900 thermal_raw, mono16 of an uncalibrated camera)
AUX_UNITS = ("m", "celsius", "raw8", "raw16")


# Colour and aux images of different sizes are taken as one view at two resolutions: the aux image is
# resized to the colour size. Aligned pairs differ in aspect ratio by rounding only (1280x720 against 848x480:
# 0.6 %); 4:3 against 16:9 (33 %) or 5:4 against 4:3 (6.7 %) are different fields of view, a misconfigured pair
# that resizing would silently misalign. 3 % lies well between the two.
MAX_ASPECT_DIFFERENCE = 0.03
# Enlarged more than this along a side, an aux image says next to nothing about the colour pixels it is
# stretched over (a 1x1 placeholder, a thumbnail topic); 16x still admits an 80x60 thermal under 1280x960.
MAX_AUX_UPSCALE = 16


class PreprocessingError(ValueError):
    """An input does not fit the preprocessing a model was trained with."""


def check_aux_size(colour_hw: tuple[int, int], aux_hw: tuple[int, int]) -> None:
    """Raise PreprocessingError when an aux image of another size cannot be the colour image's view."""
    (colour_h, colour_w), (aux_h, aux_w) = colour_hw, aux_hw
    if (colour_h, colour_w) == (aux_h, aux_w):
        return
    sizes = f"aux {aux_h}x{aux_w} and colour {colour_h}x{colour_w} (HxW)"
    if min(colour_h, colour_w, aux_h, aux_w) < 1:
        raise PreprocessingError(f"{sizes}: an image is empty")
    colour_aspect, aux_aspect = colour_w / colour_h, aux_w / aux_h
    difference = abs(aux_aspect - colour_aspect) / colour_aspect
    if difference > MAX_ASPECT_DIFFERENCE:
        raise PreprocessingError(
            f"{sizes}: aspect ratios {aux_aspect:.3f} and {colour_aspect:.3f} differ by {difference:.1%} (more than "
            f"{MAX_ASPECT_DIFFERENCE:.0%}), so they are not one view at two resolutions; publish an aux image "
            "registered to the colour camera (e.g. the driver's aligned depth)"
        )
    upscale = max(colour_h / aux_h, colour_w / aux_w)
    if upscale > MAX_AUX_UPSCALE:
        raise PreprocessingError(
            f"{sizes}: the aux image would be enlarged {upscale:.0f}x (more than {MAX_AUX_UPSCALE}x) to the colour "
            "size; is it the right topic?"
        )


@dataclass(frozen=True)
class AuxNormalisation:
    """Maps auxiliary values in `unit` linearly from [low, high] to [0, 1] (clipped); no reading -> 0."""

    modality: str = "depth"
    unit: str = "raw8"
    low: float = 0.0
    high: float = 255.0

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise PreprocessingError(f"aux modality {self.modality!r} is not one of {MODALITIES}")
        if self.unit not in AUX_UNITS:
            raise PreprocessingError(f"aux unit {self.unit!r} is not one of {AUX_UNITS}")
        if not self.high > self.low:
            raise PreprocessingError(f"aux range [{self.low}, {self.high}] is empty: high must exceed low")


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn decoded images into network inputs; serialised into checkpoints."""

    input_size: tuple[int, int] | None = (224, 224)  # (height, width); None keeps the native size
    rgb_mean: tuple[float, float, float] = IMAGENET_MEAN
    rgb_std: tuple[float, float, float] = IMAGENET_STD
    aux: AuxNormalisation = field(default_factory=AuxNormalisation)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        size = data.get("input_size")
        return cls(
            input_size=tuple(int(v) for v in size) if size is not None else None,
            rgb_mean=tuple(float(v) for v in data.get("rgb_mean", IMAGENET_MEAN)),
            rgb_std=tuple(float(v) for v in data.get("rgb_std", IMAGENET_STD)),
            aux=AuxNormalisation(**data.get("aux", {})),
        )


def depth_to_metres(raw: np.ndarray, scale: float = 0.001) -> np.ndarray:
    """Integer depth (16UC1 / 16-bit PNG, `scale` metres per unit) -> float32 metres, 0 (no reading) -> NaN.

    Shared by the dataset loaders and the node's image codec, so a depth image means the same in both.
    """
    metres = raw.astype(np.float32) * np.float32(scale)
    metres[raw == 0] = np.nan
    return metres


def normalise_aux(aux: np.ndarray, spec: AuxNormalisation) -> np.ndarray:
    """HxW float32 in `spec.unit` (NaN = no reading) -> HxW float32 in [0, 1], no reading -> 0."""
    scaled = (aux.astype(np.float32, copy=False) - spec.low) / (spec.high - spec.low)
    return np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0)


def prepare_inputs(rgb: np.ndarray, aux: np.ndarray | None, spec: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images -> (3xhxw, 1xhxw) float32 network inputs, resized to `spec.input_size`.

    `aux` may be None for an RGB-only model; a zero map is returned in its place so that every model
    keeps the same call signature.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise PreprocessingError(f"colour image must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    height, width = rgb.shape[:2]
    if aux is not None:
        if aux.ndim != 2:
            raise PreprocessingError(f"aux image must be HxW (one channel), got shape {aux.shape}")
        if aux.shape != (height, width):
            # Aligned sensors often differ in resolution; nearest keeps "no reading" pixels from bleeding.
            check_aux_size((height, width), aux.shape)
            aux = cv2.resize(aux.astype(np.float32, copy=False), (width, height), interpolation=cv2.INTER_NEAREST)
    if spec.input_size is not None and spec.input_size != (height, width):
        out_h, out_w = spec.input_size
        rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        if aux is not None:
            aux = cv2.resize(aux.astype(np.float32, copy=False), (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    mean = np.asarray(spec.rgb_mean, np.float32)
    std = np.asarray(spec.rgb_std, np.float32)
    rgb_tensor = ((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
    if aux is None:
        aux_tensor = np.zeros((1, *rgb_tensor.shape[1:]), np.float32)
    else:
        aux_tensor = normalise_aux(aux, spec.aux)[None]
    return np.ascontiguousarray(rgb_tensor), np.ascontiguousarray(aux_tensor)


def resize_labels(labels: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Label maps are resized with nearest neighbour only: class ids must never be blended."""
    if size is None or labels.shape[:2] == tuple(size):
        return labels
    return cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
