"""Reading dataset images with OpenCV, with errors that name the file.

Shared by every dataset loader (base.py and the layouts). The decoders return images *in the units of
`rgbd_fusion_seg.core.preprocessing.AUX_UNITS`*:

    read_rgb            HxWx3 uint8, RGB order (OpenCV's BGR is swapped once, here)
    read_single         HxW as stored (uint8 / uint16 / ...), 3-channel copies of one channel collapsed
    read_labels         HxW integer class ids; a 3- or 4-channel label keeps OpenCV channel 0 (see below)
    depth_from_mm       uint16 millimetres      -> float32 metres,   0 -> NaN (no reading)
    raw8_with_holes     uint8 intensity         -> float32 as stored, 0 -> NaN (no reading)
    raw8                uint8 intensity         -> float32 as stored (every value a reading)
    celsius_from_t16    uint16 raw (MM5 T16)    -> float32 deg C = raw / 64 - 273.15, 0 -> NaN

Label channel convention: when a label file has 3 (or 4) channels, the class id is taken from OpenCV's
channel index 0 of `cv2.imread(path, cv2.IMREAD_UNCHANGED)`, exactly as the public MM5 loader
(GF-Net `dataloader/MM5Dataset.py`: `label = label[:, :, 0]`). In the file's own RGB order that is the
*blue* channel. A label saved as grey-in-colour carries the id in every channel and reads the same either
way; only for files whose channels differ does the index matter, and there we follow the public loader.

`png_size` reads a PNG's width and height from its header without decoding it, so a loader can check
every file of a dataset for presence and size mismatches in well under a second before training starts.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from rgbd_fusion_seg.core.preprocessing import depth_to_metres

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DatasetError(ValueError):
    """A dataset on disk that is missing, incomplete or malformed; the message names the file or folder."""


def _check_exists(path: Path) -> None:
    if not path.is_file():
        if path.exists():
            raise DatasetError(f"{path} is not a file")
        raise DatasetError(f"missing file {path}")


def read_image(path: str | os.PathLike, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """cv2.imread that raises DatasetError naming the file when it is missing, unreadable or corrupt."""
    path = Path(path)
    _check_exists(path)
    try:
        image = cv2.imread(str(path), flags)
    except cv2.error as error:  # pragma: no cover - OpenCV reports most corrupt files by returning None
        raise DatasetError(f"cannot decode image {path}: {error}") from error
    if image is None or image.size == 0:
        raise DatasetError(f"cannot decode image {path} (corrupt, truncated or not an image)")
    return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Colour image -> HxWx3 uint8 in RGB order. 16-bit colour is reduced to 8 bits by OpenCV."""
    image = read_image(path, cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_single(path: str | os.PathLike) -> np.ndarray:
    """Single-channel image as stored (uint8 or uint16). A 3/4-channel file whose colour channels are all
    equal (a grey image saved as colour) is collapsed to one channel; a truly colour-encoded file is an
    error, because a colour map is not an intensity."""
    image = read_image(path, cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        colour = image[..., :3]
        if colour.shape[2] == 1 or (
            np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
        ):
            return np.ascontiguousarray(colour[..., 0])
        raise DatasetError(
            f"{path} has {image.shape[2]} different colour channels; expected a single-channel image "
            "(colour-encoded images such as MM5 T24 are not supported as an auxiliary input)"
        )
    return image


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Label map -> HxW uint8/uint16 class ids. Multi-channel files: OpenCV channel 0 (module docstring)."""
    image = read_image(path, cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        image = np.ascontiguousarray(image[..., 0])
    if not np.issubdtype(image.dtype, np.integer):
        raise DatasetError(f"label image {path} has dtype {image.dtype}; expected integer class ids")
    return image


def png_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a PNG from its IHDR chunk, without decoding. DatasetError if it is not a PNG."""
    path = Path(path)
    _check_exists(path)
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DatasetError(f"{path} is not a readable PNG file (bad or missing PNG header)")
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


def _require_dtype(image: np.ndarray, dtype, what: str, path) -> None:
    if image.dtype != dtype:
        where = f" ({path})" if path is not None else ""
        raise DatasetError(f"{what} must be {np.dtype(dtype).name}, got {image.dtype}{where}")


def depth_from_mm(image: np.ndarray, path=None) -> np.ndarray:
    """uint16 millimetres -> float32 metres with NaN where the sensor gave no reading (0)."""
    _require_dtype(image, np.uint16, "16-bit depth", path)
    return depth_to_metres(image, 0.001)


def raw8_with_holes(image: np.ndarray, path=None) -> np.ndarray:
    """uint8 intensity -> float32 (same values) with NaN where the value is 0 (no reading)."""
    _require_dtype(image, np.uint8, "8-bit image", path)
    values = image.astype(np.float32)
    values[image == 0] = np.nan
    return values


def raw8(image: np.ndarray, path=None) -> np.ndarray:
    """uint8 intensity -> float32, every value a reading (8-bit thermal has no 'no reading' code)."""
    _require_dtype(image, np.uint8, "8-bit image", path)
    return image.astype(np.float32)


def celsius_from_t16(image: np.ndarray, path=None) -> np.ndarray:
    """MM5 T16 raw counts -> float32 degrees Celsius (raw / 64 - 273.15); raw 0 -> NaN (no reading)."""
    _require_dtype(image, np.uint16, "16-bit thermal", path)
    celsius = image.astype(np.float32) / np.float32(64.0) - np.float32(273.15)
    celsius[image == 0] = np.nan
    return celsius


def celsius_to_t16(celsius: np.ndarray) -> np.ndarray:
    """Inverse of `celsius_from_t16` (for writers and tests): deg C -> uint16 raw counts, rounded."""
    raw = (np.asarray(celsius) + 273.15) * 64.0
    return np.clip(np.rint(raw), 1, 65535).astype(np.uint16)
