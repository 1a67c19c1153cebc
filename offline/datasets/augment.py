"""Training augmentation of a decoded frame (colour, aux in physical units, labels), applied identically to all
three before `prepare_inputs`.

Steps, in this order (each off when its setting says so):

    rotate         a rotation about the centre by U(-rotate, rotate) degrees; corners that come from outside
                   the frame are "no reading" (aux NaN), ignore (labels 255) and black (colour)
    hflip          a horizontal flip with probability 0.5
    scale, crop    zoom by s = U(scale) and cut an output window of `crop` (h, w) pixels (default: the frame's
                   size) at a random place. The window is cut from the unzoomed frame (crop / s pixels) and
                   resized to the output size later by `prepare_inputs` (or to the model's input size when it
                   has one), zoom and resize in one interpolation; where the window reaches past the frame
                   (s < 1) it is padded as above
    colour_jitter  brightness, contrast and saturation each scaled by U(1 - j, 1 + j) (colour only)

The random numbers come from torch's generator, so DataLoader worker seeding makes them reproducible. The
default (flip + zoom in [1, 1.25], no crop size) is the MM5 study's augmentation, drawn exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .imageio import DatasetError

IGNORE_INDEX = 255  # the label of pixels without a class, for every loader (base.py imports it from here)


@dataclass(frozen=True)
class Augmentation:
    hflip: bool = True
    scale: tuple[float, float] = (1.0, 1.25)
    crop: tuple[int, int] | None = None  # (height, width) of the output window; None = the frame's size
    rotate: float = 0.0  # degrees
    colour_jitter: float = 0.0

    def __post_init__(self):
        low, high = self.scale
        if not 0 < low <= high:
            raise DatasetError(f"augmentation scale range {self.scale} must satisfy 0 < low <= high")
        if self.crop is not None and min(self.crop) < 1:
            raise DatasetError(f"augmentation crop size {self.crop} must be positive")
        if not 0 <= self.rotate <= 180 or not 0 <= self.colour_jitter < 1:
            raise DatasetError(f"augmentation rotate {self.rotate} must be in [0, 180], colour_jitter in [0, 1)")

    @classmethod
    def from_config(cls, spec: dict) -> "Augmentation":
        crop = spec.get("crop")
        return cls(
            hflip=bool(spec.get("hflip", True)),
            scale=tuple(float(v) for v in spec.get("scale", (1.0, 1.25))),
            crop=tuple(int(v) for v in crop) if crop is not None else None,
            rotate=float(spec.get("rotate", 0.0)),
            colour_jitter=float(spec.get("colour_jitter", 0.0)),
        )


def _rotate(rgb, aux, labels, degrees: float):
    height, width = labels.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), degrees, 1.0)
    size = (width, height)
    rgb = cv2.warpAffine(rgb, matrix, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    labels = cv2.warpAffine(labels, matrix, size, flags=cv2.INTER_NEAREST, borderValue=IGNORE_INDEX)
    if aux is not None:
        aux = cv2.warpAffine(aux, matrix, size, flags=cv2.INTER_NEAREST, borderValue=float("nan"))
    return rgb, aux, labels


def _window(image: np.ndarray, y0: int, x0: int, height: int, width: int, fill) -> np.ndarray:
    """image[y0:y0+height, x0:x0+width], padded with `fill` where the window leaves the image."""
    rows, cols = image.shape[:2]
    if y0 >= 0 and x0 >= 0 and y0 + height <= rows and x0 + width <= cols:
        return image[y0 : y0 + height, x0 : x0 + width]
    out = np.full((height, width, *image.shape[2:]), fill, image.dtype)
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + height, rows), min(x0 + width, cols)
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    return out


def _jitter_colour(rgb: np.ndarray, strength: float) -> np.ndarray:
    brightness, contrast, saturation = (1.0 + strength * (2.0 * torch.rand(3) - 1.0)).tolist()
    values = rgb.astype(np.float32) * np.float32(brightness)
    grey = values @ np.array([0.299, 0.587, 0.114], np.float32)
    values = values * np.float32(contrast) + np.float32((1.0 - contrast) * grey.mean())
    grey = values @ np.array([0.299, 0.587, 0.114], np.float32)
    values = values * np.float32(saturation) + (np.float32(1.0 - saturation) * grey)[..., None]
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def augment_frame(rgb: np.ndarray, aux: np.ndarray | None, labels: np.ndarray, spec: Augmentation):
    """(rgb, aux, labels, output_size): the window to feed `prepare_inputs`, and the (h, w) it should become
    when the model keeps native sizes (the crop size, or the frame's size)."""
    if spec.rotate > 0:
        rgb, aux, labels = _rotate(rgb, aux, labels, spec.rotate * (2.0 * float(torch.rand(1)) - 1.0))
    # Same draws, in the same order, as the MM5 loader always made: flip, zoom, window position.
    flip, zoom_draw, dy, dx = torch.rand(4).tolist()
    if spec.hflip and flip < 0.5:
        rgb, labels = rgb[:, ::-1], labels[:, ::-1]
        aux = aux[:, ::-1] if aux is not None else None
    height, width = labels.shape[:2]
    out_h, out_w = spec.crop if spec.crop is not None else (height, width)
    low, high = spec.scale
    zoom = low + (high - low) * zoom_draw
    if zoom != 1.0 or (out_h, out_w) != (height, width):
        crop_h, crop_w = max(int(round(out_h / zoom)), 1), max(int(round(out_w / zoom)), 1)
        y0 = int(dy * (height - crop_h + 1)) if crop_h <= height else -int(dy * (crop_h - height + 1))
        x0 = int(dx * (width - crop_w + 1)) if crop_w <= width else -int(dx * (crop_w - width + 1))
        rgb = _window(rgb, y0, x0, crop_h, crop_w, 0)
        labels = _window(labels, y0, x0, crop_h, crop_w, IGNORE_INDEX)
        aux = _window(aux, y0, x0, crop_h, crop_w, np.nan) if aux is not None else None
    if spec.colour_jitter > 0:
        rgb = _jitter_colour(rgb, spec.colour_jitter)
    contiguous = np.ascontiguousarray
    return contiguous(rgb), (contiguous(aux) if aux is not None else None), contiguous(labels), (out_h, out_w)

