"""The node's semantic point cloud outputs (~/points, ~/camera_info), without ROS imports beyond the message
builders of point_cloud.py.

`CameraInfoState` keeps the newest aux/camera_info and its camera model, or the reason it is refused
(camera_info arrives on the executor thread, frames are built on the inference worker: one lock).
`cloud_points` puts one prediction at the depth image's size and makes its labelled points.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from .point_cloud import CameraModel, CloudOptions, labelled_points


def cloud_options(config) -> CloudOptions:
    """The CloudOptions the points.* parameters ask for (validated by the parameter table)."""
    low, high = config["points.z_range"] or (0.0, math.inf)
    return CloudOptions(stride=config["points.stride"], voxel_size=config["points.voxel_size"], min_z=low,
                        max_z=high, exclude_classes=tuple(config["points.exclude_classes"]))


@dataclass(frozen=True)
class CameraInfoSnapshot:
    msg: object | None  # the newest CameraInfo (None: none yet)
    camera: CameraModel | None  # its model, when it could be made
    refusal: str  # why it was refused, when it was
    age_s: float  # since it arrived (inf: never)


class CameraInfoState:
    def __init__(self):
        self._lock = threading.Lock()
        self._msg = None
        self._camera: CameraModel | None = None
        self._refusal = ""
        self._key = None  # the calibration the model was made from: rebuilt only when it changes
        self._received_at: float | None = None

    def update(self, msg) -> str:
        """Take a new CameraInfo; the reason it is refused ('' if it is not), for the caller to log and count.
        A refused message replaces the good one: points from a calibration the driver no longer sends would
        be wrong."""
        key = (tuple(msg.k), tuple(msg.d), tuple(msg.p), msg.distortion_model, msg.width, msg.height)
        with self._lock:
            self._msg, self._received_at = msg, time.monotonic()
            if key == self._key:
                return self._refusal
            self._key = key
            try:
                self._camera, self._refusal = CameraModel.from_camera_info(msg), ""
            except ValueError as error:
                self._camera, self._refusal = None, str(error)
            return self._refusal

    def snapshot(self) -> CameraInfoSnapshot:
        with self._lock:
            age = math.inf if self._received_at is None else time.monotonic() - self._received_at
            return CameraInfoSnapshot(self._msg, self._camera, self._refusal, age)


def at_size(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An image (mask, colour, confidence) at the depth's size; nearest-exact keeps class ids and matches the
    pixel-centre convention that point_cloud.py scales intrinsics by."""
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def cloud_points(depth_m: np.ndarray, mask: np.ndarray, rgb: np.ndarray, confidence: np.ndarray | None,
                 camera: CameraModel, options: CloudOptions) -> np.ndarray:
    """Labelled points of one prediction: the mask, colour and confidence (colour-image sized) are brought to
    the depth image's size, the camera to that size too (ValueError when its aspect differs)."""
    height, width = depth_m.shape
    return labelled_points(depth_m, at_size(mask, height, width), at_size(rgb, height, width), camera,
                           None if confidence is None else at_size(confidence, height, width), options)
