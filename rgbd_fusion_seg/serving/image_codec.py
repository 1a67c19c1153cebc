"""sensor_msgs/Image <-> numpy, without cv_bridge.

The functions here work on the raw fields of an image message (encoding, height, width, step,
is_bigendian, data) and import nothing from ROS, so they are unit-tested without rclpy; the wrappers that
take or build a message (`colour_from_msg`, `aux_from_msg`, `mask_to_msg`, ...) are `rgbd_fusion_seg.ros.messages`.

Decoding reads the message buffer through a numpy view whose row stride is the message's `step` (row
padding is skipped, not copied) and whose byte order follows `is_bigendian`; a copy is made only where
the conversion itself produces new values (channel reordering, unit scaling, NaN marking).

Decoded units (the contract with `rgbd_fusion_seg.core.preprocessing.AUX_UNITS`):

    colour   rgb8 bgr8 rgba8 bgra8 mono8              -> HxWx3 uint8 RGB
    depth    16UC1 (millimetres, 0 = no reading)      -> HxW float32 metres ("m"), no reading -> NaN
             32FC1 (metres, NaN = no reading)         -> "m"; NaN, +-inf and <= 0 -> NaN
             mono8 / mono16 (already scaled, raw)     -> "raw8" / "raw16"
    thermal  mono8 / 8UC1                             -> "raw8"
             mono16 / 16UC1 (raw counts)              -> "raw16"
             32FC1 (degrees Celsius)                  -> "celsius"; NaN and +-inf -> NaN

sensor_msgs/CompressedImage (`decompress` / `compress`), the formats of image_transport's plugins:

    "<enc>; jpeg compressed <target>"  / "<enc>; png compressed <target>"   (compressed_image_transport;
        colour is stored in BGR order when <target> starts with "bgr" (what its publisher writes), else in
        RGB order, as its subscriber reads it; a plain "jpeg" or "png" from older publishers decodes to
        bgr8 / mono8 / mono16 as stored)
    "<enc>; compressedDepth png" (or "<enc>; compressedDepth"), "<enc>; compressedDepth rvl"
                                                                          (compressed_depth_image_transport)
        a 12-byte ConfigHeader (int32 format, 0 = INV_DEPTH; float32 depthQuantA, depthQuantB; little
        endian) followed by a PNG, or for rvl by uint32 width, uint32 height and an RVL stream (`rvl.py`).
        16UC1: the image holds the raw 16-bit values (exact). 32FC1: it holds inverse depth,
        inv = uint16(A / d + B), 0 = no reading; decoded as d = A / (inv - B).
Decompressing yields the pixels of the original encoding, so the result goes through the decoders above.
"""
from __future__ import annotations

import array
import struct
from dataclasses import dataclass

import cv2
import numpy as np

from ..core.preprocessing import depth_to_metres
from . import rvl

# encoding -> (element dtype, channels)
_LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

COLOUR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
# modality -> encoding -> decoded unit
AUX_ENCODINGS: dict[str, dict[str, str]] = {
    "depth": {"16UC1": "m", "32FC1": "m", "mono8": "raw8", "8UC1": "raw8", "mono16": "raw16"},
    "thermal": {"mono8": "raw8", "8UC1": "raw8", "mono16": "raw16", "16UC1": "raw16", "32FC1": "celsius"},
}


class ImageDecodeError(ValueError):
    """An image message that cannot be decoded: unsupported encoding, empty, truncated or inconsistent."""


@dataclass
class DecodedAux:
    image: np.ndarray  # HxW float32 in `unit`, NaN = no reading
    unit: str  # one of core.preprocessing.AUX_UNITS
    encoding: str


def _describe(encoding, height, width, step, size) -> str:
    return f"encoding {encoding!r}, {width}x{height}, step {step}, {size} data bytes"


def _byte_buffer(data) -> np.ndarray:
    """A flat uint8 view of a message's `data` (no copy where its buffer can be shared)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, np.uint8)
    except TypeError:  # a plain sequence of ints
        return np.asarray(data, np.uint8)


def pixel_view(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data) -> np.ndarray:
    """A read-through numpy view of the pixels: HxW (one channel) or HxWxC, honouring `step` and byte order.

    `data` is anything with the buffer protocol (array.array from rclpy, bytes, a uint8 numpy array from
    rosbags). Raises ImageDecodeError for an unknown encoding or a buffer that does not hold the image.
    """
    try:
        dtype, channels = _LAYOUTS[encoding]
    except KeyError:
        raise ImageDecodeError(f"unsupported encoding {encoding!r}; supported: {', '.join(_LAYOUTS)}") from None
    buffer = _byte_buffer(data)
    size = buffer.size
    if height <= 0 or width <= 0 or size == 0:
        raise ImageDecodeError(f"empty image: {_describe(encoding, height, width, step, size)}")
    pixel_bytes = dtype.itemsize * channels
    if step < width * pixel_bytes:
        raise ImageDecodeError(
            f"step too small: {_describe(encoding, height, width, step, size)}; "
            f"a row needs at least {width * pixel_bytes} bytes"
        )
    if size < step * height:
        raise ImageDecodeError(
            f"truncated image: {_describe(encoding, height, width, step, size)}; expected {step * height} bytes"
        )
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if is_bigendian else "<")
    shape = (height, width) if channels == 1 else (height, width, channels)
    strides = (step, dtype.itemsize) if channels == 1 else (step, pixel_bytes, dtype.itemsize)
    return np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)


def decode_colour(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data) -> np.ndarray:
    """Colour image -> HxWx3 uint8 RGB (a view for rgb8 and rgba8, one conversion copy otherwise)."""
    if encoding not in COLOUR_ENCODINGS:
        raise ImageDecodeError(
            f"unsupported colour encoding {encoding!r}; supported: {', '.join(COLOUR_ENCODINGS)}"
        )
    view = pixel_view(encoding, height, width, step, is_bigendian, data)
    if encoding == "rgb8":
        return view
    if encoding == "rgba8":
        return view[..., :3]
    if encoding == "bgr8":
        return cv2.cvtColor(view, cv2.COLOR_BGR2RGB)
    if encoding == "bgra8":
        return cv2.cvtColor(view, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(view, cv2.COLOR_GRAY2RGB)  # mono8


def decode_aux(
    modality: str,
    encoding: str,
    height: int,
    width: int,
    step: int,
    is_bigendian: bool,
    data,
    depth_scale: float = 0.001,
) -> DecodedAux:
    """Depth or thermal image -> HxW float32 in its physical unit (see the module docstring), NaN = no reading."""
    try:
        units = AUX_ENCODINGS[modality]
    except KeyError:
        raise ImageDecodeError(f"unknown aux modality {modality!r}; expected one of {', '.join(AUX_ENCODINGS)}") from None
    if encoding not in units:
        raise ImageDecodeError(
            f"unsupported {modality} encoding {encoding!r}; supported: {', '.join(units)}"
        )
    view = pixel_view(encoding, height, width, step, is_bigendian, data)
    unit = units[encoding]
    if modality == "depth" and encoding == "16UC1":
        image = depth_to_metres(view, depth_scale)
    elif encoding == "32FC1":
        image = view.astype(np.float32)  # always a copy (native byte order, contiguous)
        invalid = ~np.isfinite(image)
        if modality == "depth":
            invalid |= image <= 0
        image[invalid] = np.nan
    else:  # raw counts: only the type changes
        image = view.astype(np.float32)
    return DecodedAux(image, unit, encoding)


def encode_array(image: np.ndarray) -> tuple[str, int, int, int, array.array]:
    """HxW uint8 -> mono8, HxW uint16 -> 16UC1, HxW float32 -> 32FC1, HxWx3 uint8 -> rgb8.

    Returns (encoding, height, width, step, data) with little-endian, unpadded rows; `data` is an
    array.array('B'), which rclpy's message setter takes without a per-element check.
    """
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        encoding = "rgb8"
    elif image.ndim == 2 and image.dtype == np.uint8:
        encoding = "mono8"
    elif image.ndim == 2 and image.dtype == np.uint16:
        encoding = "16UC1"
    elif image.ndim == 2 and image.dtype == np.float32:
        encoding = "32FC1"
    else:
        raise ValueError(f"cannot encode an array of shape {image.shape} and dtype {image.dtype} as an image")
    return encode_as(image, encoding)


def encode_as(image: np.ndarray, encoding: str) -> tuple[str, int, int, int, array.array]:
    """Like `encode_array`, for an explicit encoding (bgr8, mono16, ...) whose layout the array must have."""
    if encoding not in _LAYOUTS:
        raise ValueError(f"cannot encode as {encoding!r}; supported: {', '.join(_LAYOUTS)}")
    dtype, channels = _LAYOUTS[encoding]
    shape_ok = image.ndim == 2 if channels == 1 else (image.ndim == 3 and image.shape[2] == channels)
    if image.dtype.newbyteorder("=") != dtype or not shape_ok:  # either byte order: written little endian
        raise ValueError(f"an array of shape {image.shape} and dtype {image.dtype} is not a {encoding!r} image "
                         f"({channels} channel(s) of {dtype.name})")
    contiguous = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    height, width = contiguous.shape[:2]
    data = array.array("B")
    data.frombytes(memoryview(contiguous.reshape(-1)).cast("B"))
    return encoding, height, width, contiguous.strides[0], data


# ---- sensor_msgs/CompressedImage ---------------------------------------------------------------------

_DEPTH_HEADER = struct.Struct("<iff")  # ConfigHeader: compressionFormat (INV_DEPTH = 0), depthQuantA, depthQuantB
_INV_DEPTH = 0
_DEPTH_CODECS = {"compressedDepth": "png", "compressedDepth png": "png", "compressedDepth rvl": "rvl"}
_RVL_SIZE = struct.Struct("<II")  # width, height before the RVL stream
_RVL_MAX_PIXELS = 1 << 28  # a size beyond any depth camera: the header is corrupt
# compress() kinds for compressed_depth_image_transport -> its codec
DEPTH_KINDS = {"compressedDepth": "png", "compressedDepth-rvl": "rvl"}
# compressed_depth_image_transport's defaults for 32FC1: farthest depth coded, and the quantisation depth
DEPTH_MAX_M = 10.0
DEPTH_QUANTIZATION = 100.0


def _imdecode(data, what: str) -> np.ndarray:
    buffer = _byte_buffer(data)
    if buffer.size == 0:
        raise ImageDecodeError(f"empty compressed image ({what})")
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"cannot decode the compressed data ({what}, {buffer.size} bytes): corrupt or truncated")
    return image


def _decoded_to_encoding(image: np.ndarray, encoding: str, stored_bgr: bool, what: str) -> np.ndarray:
    """An OpenCV-decoded image -> the pixel layout of `encoding`.

    `stored_bgr`: the colour was compressed in BGR order (OpenCV's, what imdecode assumes); otherwise it was
    compressed in RGB order, so the decoded channels are swapped back to BGR first.
    """
    dtype, channels = _LAYOUTS[encoding]
    if image.dtype != dtype:
        raise ImageDecodeError(f"{what}: decoded pixels are {image.dtype}, but {encoding!r} needs {dtype.name}")
    have = 1 if image.ndim == 2 else image.shape[2]
    if have > 1 and channels > 1 and not stored_bgr:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if have == 3 else cv2.COLOR_RGBA2BGRA)
    conversions = {
        (3, 3): None if encoding.startswith("bgr") else cv2.COLOR_BGR2RGB,
        (3, 4): cv2.COLOR_BGR2BGRA if encoding.startswith("bgr") else cv2.COLOR_BGR2RGBA,
        (4, 4): None if encoding.startswith("bgr") else cv2.COLOR_BGRA2RGBA,
        (4, 3): cv2.COLOR_BGRA2BGR if encoding.startswith("bgr") else cv2.COLOR_BGRA2RGB,
        (1, 3): cv2.COLOR_GRAY2BGR if encoding.startswith("bgr") else cv2.COLOR_GRAY2RGB,
        (3, 1): cv2.COLOR_BGR2GRAY,
        (1, 1): None,
    }
    if (have, channels) not in conversions:
        raise ImageDecodeError(f"{what}: {have}-channel pixels cannot become {encoding!r}")
    code = conversions[(have, channels)]
    return image if code is None else cv2.cvtColor(image, code)


def decompress(format: str, data) -> tuple[np.ndarray, str]:
    """CompressedImage (format, data) -> (pixels laid out as the original encoding, that encoding).

    The encoding is the part of `format` before ';'; a bare "jpeg"/"png" keeps what OpenCV decodes (bgr8,
    bgra8, mono8 or mono16). Raises ImageDecodeError naming the format for anything it cannot decode.
    """
    what = f"format {format!r}"
    original, _, transport = (part.strip() for part in format.partition(";"))
    if "compressedDepth" in transport:
        return _decompress_depth(original, transport, data, what)
    if not transport:  # "jpeg", "png" (older publishers): no original encoding is stated
        if original.lower() not in ("jpeg", "jpg", "png"):
            raise ImageDecodeError(f"unsupported compressed {what}; expected jpeg, png or compressedDepth")
        image = _imdecode(data, what)
        channels = 1 if image.ndim == 2 else image.shape[2]
        encoding = {1: "mono16" if image.dtype == np.uint16 else "mono8", 3: "bgr8", 4: "bgra8"}[channels]
        if image.dtype != _LAYOUTS[encoding][0]:
            raise ImageDecodeError(f"{what}: {channels}-channel {image.dtype} pixels have no supported encoding")
        return image, encoding
    if not (transport.startswith("jpeg") or transport.startswith("png")):
        raise ImageDecodeError(f"unsupported compressed {what}; expected jpeg, png or compressedDepth")
    if original not in _LAYOUTS:
        raise ImageDecodeError(f"{what}: unsupported original encoding {original!r}; supported: {', '.join(_LAYOUTS)}")
    stored_bgr = "compressed bgr" in transport  # compressed_image_transport's subscriber makes the same test
    return _decoded_to_encoding(_imdecode(data, what), original, stored_bgr, what), original


def _rvl_image(payload: np.ndarray, what: str) -> np.ndarray:
    """uint32 width, uint32 height, then the RVL stream -> the uint16 image."""
    if payload.size < _RVL_SIZE.size:
        raise ImageDecodeError(f"{what}: {payload.size} bytes after the header, too short for RVL's width and height")
    width, height = _RVL_SIZE.unpack_from(payload)
    if not 0 < width * height <= _RVL_MAX_PIXELS:
        raise ImageDecodeError(f"{what}: the RVL data says {width}x{height} pixels: corrupt")
    try:
        return rvl.decode(payload[_RVL_SIZE.size:], width * height).reshape(height, width)
    except rvl.RVLError as error:
        raise ImageDecodeError(f"{what}: {error}") from None


def _decompress_depth(original: str, transport: str, data, what: str) -> tuple[np.ndarray, str]:
    codec = _DEPTH_CODECS.get(transport)
    if codec is None:
        raise ImageDecodeError(f"unsupported compressedDepth {what}; expected png or rvl")
    if original not in ("16UC1", "32FC1"):
        raise ImageDecodeError(f"{what}: compressedDepth carries 16UC1 or 32FC1, not {original!r}")
    raw = _byte_buffer(data)
    if raw.size <= _DEPTH_HEADER.size:
        raise ImageDecodeError(f"{what}: {raw.size} bytes, too short for the {_DEPTH_HEADER.size}-byte header and an image")
    kind, quant_a, quant_b = _DEPTH_HEADER.unpack_from(raw)
    if kind != _INV_DEPTH:
        raise ImageDecodeError(f"{what}: unknown compression format {kind} in the header (expected 0, INV_DEPTH)")
    payload = raw[_DEPTH_HEADER.size:]
    stored = _rvl_image(payload, what) if codec == "rvl" else _imdecode(payload, what)
    if stored.dtype != np.uint16 or stored.ndim != 2:
        raise ImageDecodeError(f"{what}: the PNG holds {stored.dtype} x {1 if stored.ndim == 2 else stored.shape[2]}"
                               " channels; expected one 16-bit channel")
    if original == "16UC1":
        return stored, original
    with np.errstate(divide="ignore"):
        depth = np.float32(quant_a) / (stored.astype(np.float32) - np.float32(quant_b))  # float32, as the C++ decoder
    depth[stored == 0] = np.nan
    return depth, original


def compress(image: np.ndarray, encoding: str, kind: str = "jpeg", jpeg_quality: int = 95,
             depth_max: float = DEPTH_MAX_M, depth_quantization: float = DEPTH_QUANTIZATION) -> tuple[str, bytes]:
    """Pixels of `encoding` -> (CompressedImage format, data), as image_transport's publishers write them.

    kind: "jpeg" (lossy; 8-bit colour or mono8), "png" (lossless) or "compressedDepth" / "compressedDepth-rvl"
    (png or RVL inside; 16UC1 exact; 32FC1 by inverse-depth quantisation up to `depth_max` metres, farther
    or invalid -> no reading).
    Colour is stored in BGR order ("... compressed bgr8"), a one-channel image under its own encoding ("mono8;
    jpeg compressed mono8"; older publishers leave that target empty, which `decompress` reads alike).
    compressed_depth_image_transport also zeroes 16UC1 values beyond depth_max; here 16UC1 is kept exact.
    """
    encode_as(image, encoding)  # checks that the array fits the encoding
    if kind in DEPTH_KINDS:
        if encoding == "16UC1":
            header, stored = _DEPTH_HEADER.pack(_INV_DEPTH, 0.0, 0.0), image
        elif encoding == "32FC1":
            quant_a = np.float32(depth_quantization * (depth_quantization + 1.0))
            quant_b = np.float32(1.0 - quant_a / np.float32(depth_max))
            valid = np.isfinite(image) & (image > 0) & (image < depth_max)
            with np.errstate(divide="ignore", invalid="ignore"):
                inverse = np.where(valid, quant_a / image + quant_b, 0.0)
            stored = np.clip(inverse, 0, 65535).astype(np.uint16)
            header = _DEPTH_HEADER.pack(_INV_DEPTH, float(quant_a), float(quant_b))
        else:
            raise ValueError(f"compressedDepth carries 16UC1 or 32FC1, not {encoding!r}")
        codec = DEPTH_KINDS[kind]
        if codec == "rvl":
            body = _RVL_SIZE.pack(stored.shape[1], stored.shape[0]) + rvl.encode(stored)
        else:
            ok, png = cv2.imencode(".png", stored)
            if not ok:
                raise ValueError(f"OpenCV could not encode a {encoding!r} image as compressedDepth png")
            body = png.tobytes()
        return f"{encoding}; compressedDepth {codec}", header + body
    if kind not in ("jpeg", "png"):
        raise ValueError(f"unknown compression {kind!r}; expected jpeg, png, {' or '.join(DEPTH_KINDS)}")
    channels = _LAYOUTS[encoding][1]
    if channels == 1:
        if kind == "jpeg" and image.dtype != np.uint8:
            raise ValueError(f"jpeg holds 8-bit images, not {encoding!r}; use png")
        if image.dtype == np.float32:
            raise ValueError(f"{kind} cannot hold 32FC1; use compressedDepth for depth")
        stored, target = image, encoding
    else:
        code = {"rgb8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGBA2BGR, "bgra8": cv2.COLOR_BGRA2BGR}.get(encoding)
        stored, target = (image if code is None else cv2.cvtColor(image, code)), "bgr8"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if kind == "jpeg" else []
    ok, encoded = cv2.imencode(f".{'jpg' if kind == 'jpeg' else 'png'}", np.ascontiguousarray(stored), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {encoding!r} image as {kind}")
    return f"{encoding}; {kind} compressed {target}", encoded.tobytes()
