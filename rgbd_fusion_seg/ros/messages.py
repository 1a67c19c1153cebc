"""The message wrappers: sensor_msgs messages <-> the arrays of `rgbd_fusion_seg.serving`.

Readers (`colour_from_msg`, `aux_from_msg`, `cloud_from_msg`) only read a message's fields, so they take
rclpy's messages and those `rosbags` deserialises alike (the bag tools use them without ROS installed);
builders import sensor_msgs when called, for the same reason.

- images: `colour_from_msg` / `aux_from_msg` (Image or CompressedImage in; the codec is
  `serving.image_codec`), `array_to_msg`, `mask_to_msg`, `rgb_to_msg`, `float_to_msg` (Image out)
- point clouds: `cloud_to_msg` / `cloud_from_msg` (PointCloud2; the layout is `serving.point_cloud`),
  `camera_info_at_size` (a CameraInfo for the image at another size)
- `frame_messages`: every message of one served frame (`serving.frame_pipeline.FrameOutputs`), by output name
"""
from __future__ import annotations

import array
import functools
from typing import TYPE_CHECKING

import numpy as np

from ..serving.image_codec import DecodedAux, ImageDecodeError, decode_aux, decode_colour, decompress, encode_array
from ..serving.point_cloud import cloud_fields, read_points, scaled_calibration

if TYPE_CHECKING:  # the bag tools read messages without the serving pipeline's imports (torch)
    from ..serving.frame_pipeline import FrameOutputs

# ---- images ------------------------------------------------------------------------------------------


def _decode_msg(msg, decode):
    """`decode(encoding, height, width, step, is_bigendian, data)` of an Image or of the image a CompressedImage
    holds (told apart by its `format` field, which Image lacks); errors of a compressed one name its format."""
    if not hasattr(msg, "format"):
        return decode(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
    pixels, encoding = decompress(msg.format, msg.data)
    pixels = np.ascontiguousarray(pixels)  # native byte order, as OpenCV decodes
    try:
        return decode(encoding, pixels.shape[0], pixels.shape[1], pixels.strides[0], not np.little_endian, pixels)
    except ImageDecodeError as error:
        raise ImageDecodeError(f"format {msg.format!r}: {error}") from None


def colour_from_msg(msg) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> HxWx3 uint8 RGB."""
    return _decode_msg(msg, decode_colour)


def aux_from_msg(msg, modality: str, depth_scale: float = 0.001) -> DecodedAux:
    """sensor_msgs/Image or CompressedImage -> depth or thermal in its unit (see `decode_aux`)."""
    return _decode_msg(msg, functools.partial(decode_aux, modality, depth_scale=depth_scale))


def array_to_msg(image: np.ndarray, header):
    """Any array `encode_array` takes -> sensor_msgs/Image carrying a copy of `header` (stamp and frame_id)."""
    from sensor_msgs.msg import Image

    encoding, height, width, step, data = encode_array(image)
    msg = Image()
    msg.header.stamp.sec = header.stamp.sec
    msg.header.stamp.nanosec = header.stamp.nanosec
    msg.header.frame_id = header.frame_id
    msg.height, msg.width, msg.step = height, width, step
    msg.encoding = encoding
    msg.is_bigendian = False
    msg.data = data
    return msg


def mask_to_msg(mask: np.ndarray, header):
    """HxW class ids (uint8 -> mono8, uint16 -> 16UC1)."""
    if mask.ndim != 2 or mask.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"a mask must be HxW uint8 or uint16, got shape {mask.shape} dtype {mask.dtype}")
    return array_to_msg(mask, header)


def rgb_to_msg(rgb: np.ndarray, header):
    """HxWx3 uint8 RGB -> rgb8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"an RGB image must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    return array_to_msg(rgb, header)


def float_to_msg(image: np.ndarray, header):
    """HxW float32 -> 32FC1."""
    if image.ndim != 2:
        raise ValueError(f"a float image must be HxW, got shape {image.shape}")
    return array_to_msg(image.astype(np.float32, copy=False), header)


# ---- point clouds and calibration ------------------------------------------------------------------


def _copy_header(target, header) -> None:
    target.stamp.sec = header.stamp.sec
    target.stamp.nanosec = header.stamp.nanosec
    target.frame_id = header.frame_id


def cloud_to_msg(points: np.ndarray, header):
    """Structured points -> sensor_msgs/PointCloud2 (unorganised: height 1, width n; dense; little endian)."""
    from sensor_msgs.msg import PointCloud2, PointField

    msg = PointCloud2()
    _copy_header(msg.header, header)
    msg.fields = [PointField(name=name, offset=offset, datatype=datatype, count=count)
                  for name, offset, datatype, count in cloud_fields(points.dtype)]
    msg.height, msg.width = 1, int(points.size)
    msg.point_step = points.dtype.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.is_bigendian = False
    msg.is_dense = True  # invalid depth gives no point, so no NaN coordinates
    data = array.array("B")
    data.frombytes(memoryview(np.ascontiguousarray(points).view(np.uint8)))  # one copy (tobytes would add one)
    msg.data = data
    return msg


def cloud_from_msg(msg) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> structured array (for tests, and users without sensor_msgs_py)."""
    return read_points(msg.fields, msg.point_step, msg.row_step, msg.width, msg.height, msg.is_bigendian, msg.data)


def camera_info_at_size(msg, width: int, height: int, header=None):
    """A copy of a CameraInfo for its image resized to width x height (K and P scaled; D, R and the model kept;
    binning and roi cleared), with `header` when given (the mask's), else the original's."""
    from sensor_msgs.msg import CameraInfo

    scaled = scaled_calibration(msg.k, msg.p, (msg.width, msg.height), (width, height))
    out = CameraInfo()
    _copy_header(out.header, msg.header if header is None else header)
    out.width, out.height = scaled["width"], scaled["height"]
    out.k, out.p = scaled["k"], scaled["p"]
    out.distortion_model = msg.distortion_model
    out.d = [float(c) for c in msg.d]
    out.r = np.asarray(msg.r, np.float64)
    return out


# ---- one frame's outputs -----------------------------------------------------------------------------


def frame_messages(outputs: FrameOutputs) -> dict:
    """{output name (the topic under ~/): message} of every output the frame has, each with its header."""
    header = outputs.header
    messages = {"mask": mask_to_msg(outputs.mask, header), "mask_color": rgb_to_msg(outputs.mask_color, header)}
    if outputs.overlay is not None:
        messages["overlay"] = rgb_to_msg(outputs.overlay, header)
    if outputs.confidence is not None:
        messages["confidence"] = float_to_msg(outputs.confidence, header)
    if outputs.fused is not None:
        messages["fused_image"] = rgb_to_msg(outputs.fused, header)
    if outputs.points is not None:
        messages["points"] = cloud_to_msg(outputs.points, header)
        messages["points"].header.frame_id = outputs.points_frame_id  # the depth camera's optical frame
    if outputs.camera_info is not None:
        calibration = outputs.camera_info
        messages["camera_info"] = camera_info_at_size(calibration.source, calibration.width, calibration.height,
                                                      header)
    return messages
