"""Semantic point cloud: depth + mask (+ colour, confidence) + camera -> labelled points -> sensor_msgs/PointCloud2.

ROS-free: the message wrappers (`cloud_to_msg`, `cloud_from_msg`, `camera_info_at_size`) are
`rgbd_fusion_seg.ros.messages`; `CameraModel.from_camera_info` only reads the fields of a CameraInfo (k, d, p,
distortion_model, width, height, roi), so it takes any object that has them.

Per frame the node calls, with a camera model made once per CameraInfo:

    camera = CameraModel.from_camera_info(info_msg)              # ValueError naming the field it refuses
    points = labelled_points(depth_m, mask, rgb, camera, confidence, options)   # structured POINT_DTYPE
    cloud = cloud_to_msg(points, header)                         # sensor_msgs/PointCloud2
    info = camera_info_at_size(info_msg, mask_width, mask_height, header)       # ~/camera_info beside the mask

Conventions and the choices made here:
- Points are in the camera's optical frame (REP 103 "_optical": x right, y down, z forward), metres; depth is
  z along the optical axis (what depth images hold), so a pixel (u, v) with depth z is z * (xn, yn, 1), where
  (xn, yn) is its undistorted normalised ray.
- Distortion: plumb_bob and rational_polynomial (OpenCV's model) and equidistant (OpenCV's fisheye) are
  undistorted exactly per pixel (rays computed once per camera and size, cached); any model with all-zero
  coefficients is an undistorted image (registered depth) and is taken as a pinhole.
  `rectified=True` reads P with no distortion instead, as depth_image_proc does for image_rect topics.
- Pixel-centre convention for resizing: pixel i covers [i - 0.5, i + 0.5], so an image scaled by s maps
  u -> (u + 0.5) * s - 0.5 and cx' = (cx + 0.5) * s - 0.5, fx' = fx * s. This is what cv2.resize (linear, area)
  and n x n binning do; image_geometry's cx * s is off by (1 - s) / 2 pixel (a quarter pixel at half size).
- Range limits are on z (the depth the camera reports, and what its datasheet range is given on).
- Voxel decimation keeps, per occupied voxel, the real point nearest the centroid of the voxel's points
  (ties: the first in row-major pixel order): its colour, label and confidence belong to one pixel.
- rgb is float32 holding the bits of uint32 0x00RRGGBB: the layout pcl's PointXYZRGB and RViz's "RGB8" colour
  transformer read. Its values are tiny or denormal floats: copy the bytes, never compute with them.
- confidence is NaN when none is given: unknown, not certain.
- Invalid depth (NaN, +-inf, <= 0) gives no point; the cloud is unorganised (height 1) and dense.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

# The distortion models undistorted here, and the coefficient counts OpenCV takes for each (plumb_bob: k1 k2 p1
# p2 [k3]; rational_polynomial adds k4 k5 k6; equidistant: k1..k4). Others ('' included) only with all-zero d.
_COEFFICIENT_COUNTS = {"plumb_bob": (4, 5), "rational_polynomial": (8,), "equidistant": (4,)}
# sensor_msgs/PointField datatypes (the message's constants; a test checks them) <-> numpy
POINT_FIELD_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_NUMPY_TO_FIELD = {np.dtype(code).newbyteorder("<"): datatype for datatype, code in POINT_FIELD_TYPES.items()}
# 4-byte aligned (consumers that cast field pointers need it); label then 2 bytes of padding; 24 bytes a point
POINT_DTYPE = np.dtype({
    "names": ["x", "y", "z", "rgb", "label", "confidence"],
    "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
    "offsets": [0, 4, 8, 12, 16, 20],
    "itemsize": 24,
})
# "Within a pixel": the depth image's size may differ from the calibration's scaled size by this much per side
SIZE_TOLERANCE_PX = 1.0
# OpenCV's default of 5 iterations leaves errors over 1e-3 px at strong distortion (the distortion test fails)
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)


# ---- camera model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics (pixels) of an image of width x height, with the distortion its pixels carry."""
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion_model: str = ""
    d: tuple[float, ...] = field(default=())

    def __post_init__(self):
        for name in ("fx", "fy"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"camera {name} must be finite and > 0, got {value!r}")
        for name in ("cx", "cy"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"camera {name} must be finite, got {getattr(self, name)!r}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got width={self.width} height={self.height}")
        _check_distortion(self.distortion_model, self.d)

    @property
    def distorted(self) -> bool:
        return any(c != 0.0 for c in self.d)

    @classmethod
    def from_camera_info(cls, msg, rectified: bool = False) -> "CameraModel":
        """sensor_msgs/CameraInfo -> model. rectified: use P and no distortion (an image_rect topic)."""
        width, height = int(msg.width), int(msg.height)
        if width <= 0 or height <= 0:
            raise ValueError(f"CameraInfo width/height is {width}x{height}: the camera is not calibrated")
        roi = getattr(msg, "roi", None)
        if roi is not None and roi.width and (roi.width, roi.height) != (width, height):
            raise ValueError(f"CameraInfo roi is {roi.width}x{roi.height} at ({roi.x_offset}, {roi.y_offset}) "
                             f"of {width}x{height}: cropped images are not supported")
        source, values = ("p", [float(v) for v in msg.p]) if rectified else ("k", [float(v) for v in msg.k])
        stride = 4 if rectified else 3  # row length of P (3x4) or K (3x3)
        if len(values) != 3 * stride:
            raise ValueError(f"CameraInfo {source} has {len(values)} values, expected {3 * stride}")
        fx, skew, cx, fy, cy = values[0], values[1], values[2], values[stride + 1], values[stride + 2]
        for name, value in (("fx", fx), ("fy", fy)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"CameraInfo {source}: {name} = {value!r} is not a finite positive focal length "
                                 "(an all-zero matrix means the camera is uncalibrated)")
        if skew != 0.0:
            raise ValueError(f"CameraInfo {source}: skew {source}[1] = {skew!r}; only zero skew is supported")
        model, d = ("", ()) if rectified else (str(msg.distortion_model), tuple(float(c) for c in msg.d))
        return cls(fx, fy, cx, cy, width, height, model, d)

    def for_image(self, width: int, height: int) -> "CameraModel":
        """The model of this camera's image resized to width x height (self when the size is the same)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = scale_factors((self.width, self.height), (width, height))
        return CameraModel(self.fx * sx, self.fy * sy, _centre_scaled(self.cx, sx), _centre_scaled(self.cy, sy),
                           width, height, self.distortion_model, self.d)


def _check_distortion(model: str, d: tuple[float, ...]) -> None:
    if not all(math.isfinite(c) for c in d):
        raise ValueError(f"CameraInfo d has non-finite coefficients: {list(d)}")
    if not any(c != 0.0 for c in d):
        return  # an undistorted image, whatever the model's name
    if model not in _COEFFICIENT_COUNTS:
        raise ValueError(f"CameraInfo distortion_model {model!r} with non-zero coefficients d={list(d)} is not "
                         f"supported; supported: {', '.join(_COEFFICIENT_COUNTS)} (or all-zero d)")
    if len(d) not in _COEFFICIENT_COUNTS[model]:
        counts = " or ".join(str(n) for n in _COEFFICIENT_COUNTS[model])
        raise ValueError(f"CameraInfo distortion_model {model!r} takes {counts} coefficients, "
                         f"d has {len(d)}: {list(d)}")


def _centre_scaled(c: float, s: float) -> float:
    return (c + 0.5) * s - 0.5  # pixel-centre convention (module docstring)


def scale_factors(size: tuple[int, int], new_size: tuple[int, int]) -> tuple[float, float]:
    """(sx, sy) from (width, height) to new (width, height); ValueError when the aspect ratio differs by more
    than a pixel (another field of view or a crop, which scaling cannot describe)."""
    (width, height), (new_width, new_height) = size, new_size
    if min(width, height, new_width, new_height) <= 0:
        raise ValueError(f"cannot scale a camera from {width}x{height} to {new_width}x{new_height}")
    # some one scale s must give both sides within a pixel: the intervals of s that each side allows overlap
    low = max((new_width - SIZE_TOLERANCE_PX) / width, (new_height - SIZE_TOLERANCE_PX) / height)
    high = min((new_width + SIZE_TOLERANCE_PX) / width, (new_height + SIZE_TOLERANCE_PX) / height)
    if low > high:
        raise ValueError(f"the camera calibration is for {width}x{height} but the image is {new_width}x{new_height}: "
                         "the aspect ratios differ by more than a pixel, so the intrinsics cannot be scaled")
    return new_width / width, new_height / height  # each side its own factor: exact for a resize to that size


def scaled_calibration(k, p, size: tuple[int, int], new_size: tuple[int, int]) -> dict:
    """CameraInfo K (9) and P (12) at (width, height) -> {"k", "p", "width", "height"} at new_size."""
    sx, sy = scale_factors(size, new_size)
    k = np.asarray(k, np.float64).reshape(3, 3).copy()
    p = np.asarray(p, np.float64).reshape(3, 4).copy()
    for matrix in (k, p):
        matrix[0, :2] *= sx  # fx, skew
        matrix[1, 1] *= sy
        matrix[0, 2] = _centre_scaled(matrix[0, 2], sx)
        matrix[1, 2] = _centre_scaled(matrix[1, 2], sy)
    p[0, 3] *= sx  # Tx = -fx' * baseline
    p[1, 3] *= sy
    return {"k": k.reshape(-1), "p": p.reshape(-1), "width": int(new_size[0]), "height": int(new_size[1])}


@functools.lru_cache(maxsize=4)  # a few cameras; 2 x 4 bytes a pixel each
def rays(camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel undistorted normalised ray (xn, yn), each HxW float32; cached per camera and size. A distorted
    640x480 camera takes ~0.3 s: call it (with `for_image`) when a CameraInfo arrives, not on the first frame."""
    u = np.arange(camera.width, dtype=np.float64)
    v = np.arange(camera.height, dtype=np.float64)
    if not camera.distorted:
        xn = np.broadcast_to((u - camera.cx) / camera.fx, (camera.height, camera.width))
        yn = np.broadcast_to(((v - camera.cy) / camera.fy)[:, None], (camera.height, camera.width))
        return xn.astype(np.float32), yn.astype(np.float32)
    grid = np.stack(np.meshgrid(u, v), axis=-1).reshape(-1, 1, 2)
    k = np.array([[camera.fx, 0, camera.cx], [0, camera.fy, camera.cy], [0, 0, 1]], np.float64)
    d = np.array(camera.d, np.float64)
    if camera.distortion_model == "equidistant":
        normalised = cv2.fisheye.undistortPoints(grid, k, d, criteria=_UNDISTORT_CRITERIA)
    else:
        normalised = cv2.undistortPoints(grid, k, d, criteria=_UNDISTORT_CRITERIA)
    normalised = normalised.reshape(camera.height, camera.width, 2).astype(np.float32)
    return normalised[..., 0].copy(), normalised[..., 1].copy()


# ---- labelled points ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudOptions:
    """stride: every n-th pixel in both axes; voxel_size: metres, 0 = no decimation; min_z/max_z: metres on z;
    exclude_classes: class ids that give no point."""
    stride: int = 1
    voxel_size: float = 0.0
    min_z: float = 0.0
    max_z: float = math.inf
    exclude_classes: tuple[int, ...] = ()

    def __post_init__(self):
        if not isinstance(self.stride, int) or isinstance(self.stride, bool) or self.stride < 1:
            raise ValueError(f"point cloud stride must be an integer >= 1, got {self.stride!r}")
        if not (math.isfinite(self.voxel_size) and self.voxel_size >= 0):
            raise ValueError(f"point cloud voxel_size must be >= 0 metres (0 = off), got {self.voxel_size!r}")
        if not (math.isfinite(self.min_z) and self.min_z >= 0 and self.max_z > self.min_z):
            raise ValueError(f"point cloud range must be 0 <= min_z < max_z metres, got {self.min_z!r}..{self.max_z!r}")
        bad = [c for c in self.exclude_classes if not (isinstance(c, (int, np.integer)) and 0 <= c <= 65535)]
        if bad:
            raise ValueError(f"point cloud exclude_classes must be class ids in [0, 65535], got {bad}")


def _check_inputs(depth, mask, rgb, confidence) -> None:
    shape = depth.shape
    if depth.ndim != 2 or depth.dtype.kind != "f":
        raise ValueError(f"depth must be HxW float metres (image_codec decodes 16UC1 millimetres to them), "
                         f"got shape {shape} dtype {depth.dtype}")
    if mask.shape != shape or mask.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"mask must be {shape} uint8/uint16 like the depth, got shape {mask.shape} dtype {mask.dtype}")
    if rgb.shape != (*shape, 3) or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be {(*shape, 3)} uint8 like the depth, got shape {rgb.shape} dtype {rgb.dtype}")
    if confidence is not None and confidence.shape != shape:
        raise ValueError(f"confidence must be {shape} like the depth, got shape {confidence.shape}")


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Nx3 uint8 -> N float32 whose bits are 0x00RRGGBB (pcl / RViz)."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """N float32 packed by `pack_rgb` -> Nx3 uint8."""
    bits = np.ascontiguousarray(packed, np.float32).view(np.uint32)
    return np.stack([(bits >> 16) & 0xFF, (bits >> 8) & 0xFF, bits & 0xFF], axis=-1).astype(np.uint8)


def _write_rgb(points: np.ndarray, rgb: np.ndarray, index: np.ndarray) -> None:
    """points["rgb"] = pack_rgb(rgb pixels at index), writing the bytes in place (3x faster than packing)."""
    pixels = np.ascontiguousarray(rgb).reshape(-1, 3).view("V3").reshape(-1)  # one 3-byte item a pixel
    chosen = np.take(pixels, index).view(np.uint8).reshape(-1, 3)
    offset = POINT_DTYPE.fields["rgb"][1]
    packed = points.view(np.uint8).reshape(points.size, POINT_DTYPE.itemsize)[:, offset:offset + 4]
    packed[:, :3] = chosen[:, ::-1]  # little endian 0x00RRGGBB: bytes B, G, R, 0
    packed[:, 3] = 0


def labelled_points(depth: np.ndarray, mask: np.ndarray, rgb: np.ndarray, camera: CameraModel,
                    confidence: np.ndarray | None = None, options: CloudOptions = CloudOptions()) -> np.ndarray:
    """HxW depth (metres; NaN, inf or <= 0 = no reading), HxW class ids, HxWx3 uint8 RGB and optional HxW
    confidence, all of one size -> the labelled points (POINT_DTYPE), in row-major pixel order unless voxelised.

    `camera` may be calibrated at another size of the same aspect: it is scaled to the depth's (`for_image`).
    """
    _check_inputs(depth, mask, rgb, confidence)
    xn, yn = rays(camera.for_image(depth.shape[1], depth.shape[0]))
    s = options.stride
    z = np.asarray(depth[::s, ::s], np.float32)
    with np.errstate(invalid="ignore"):  # comparisons with NaN are False: no point
        keep = (z > 0) & (z >= options.min_z) & (z <= options.max_z) & np.isfinite(z)
    labels = mask[::s, ::s]
    if options.exclude_classes:
        allowed = np.ones(65536, bool)
        allowed[list(options.exclude_classes)] = False
        keep &= allowed[labels]
    index = np.flatnonzero(keep)
    points = np.empty(index.size, POINT_DTYPE)
    zs = np.take(z.reshape(-1), index)
    np.multiply(np.take(xn[::s, ::s].reshape(-1), index), zs, out=points["x"])  # written in place: no temporary
    np.multiply(np.take(yn[::s, ::s].reshape(-1), index), zs, out=points["y"])
    points["z"] = zs
    _write_rgb(points, rgb[::s, ::s], index)
    points["label"] = labels.reshape(-1)[index]
    points["confidence"] = np.nan if confidence is None else confidence[::s, ::s].reshape(-1)[index]
    return voxel_decimate(points, options.voxel_size) if options.voxel_size > 0 else points


def voxel_decimate(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """One point per occupied voxel (cubes of voxel_size metres aligned at 0): the point nearest the centroid
    of the voxel's points, ties to the earliest; the result is in voxel-key order."""
    if points.size == 0:
        return points
    columns = [points[name] for name in ("x", "y", "z")]  # 1-D columns: gathers of rows are ~3x slower
    cells = [np.floor(column / np.float32(voxel_size)).astype(np.int64) for column in columns]
    cells = [cell - cell.min() for cell in cells]
    extent = [int(cell.max()) + 1 for cell in cells]
    if float(np.prod(np.array(extent, np.float64))) >= 2.0 ** 62:
        raise ValueError(f"voxel_size {voxel_size} m is too small for a cloud {extent} voxels across")
    keys = (cells[0] * extent[1] + cells[1]) * extent[2] + cells[2]
    order = np.argsort(keys)  # not stable: ties are broken by pixel index below (np.lexsort is ~10x slower)
    sorted_keys = keys[order]
    change = sorted_keys[1:] != sorted_keys[:-1]
    starts = np.flatnonzero(np.r_[True, change])
    voxel = np.cumsum(np.r_[False, change])  # voxel number of each sorted point
    counts = np.diff(np.r_[starts, keys.size])
    distance = np.zeros(keys.size, np.float64)
    for column in columns:
        values = column[order].astype(np.float64)
        distance += (values - (np.add.reduceat(values, starts) / counts)[voxel]) ** 2
    nearest = distance == np.minimum.reduceat(distance, starts)[voxel]
    return points[np.minimum.reduceat(np.where(nearest, order, keys.size), starts)]


# ---- PointCloud2 layout (ROS-free) -------------------------------------------------------------------


def cloud_fields(dtype: np.dtype) -> list[tuple[str, int, int, int]]:
    """A structured dtype -> PointField (name, offset, datatype, count) rows, little-endian fields only."""
    rows = []
    for name in dtype.names:
        base, offset = dtype.fields[name][:2]
        element, shape = (base.subdtype if base.subdtype else (base, ()))
        datatype = _NUMPY_TO_FIELD.get(element.newbyteorder("<") if element.byteorder in "=|" else element)
        if datatype is None:
            raise ValueError(f"field {name!r} of dtype {element} has no little-endian PointField datatype")
        rows.append((name, offset, datatype, int(np.prod(shape)) if shape else 1))
    return rows


def read_points(fields, point_step: int, row_step: int, width: int, height: int, is_bigendian: bool,
                data) -> np.ndarray:
    """A PointCloud2's layout and data -> structured array of width * height points (row padding skipped).

    `fields`: PointField messages or (name, offset, datatype, count) tuples.
    """
    rows = [(f.name, f.offset, f.datatype, f.count) if hasattr(f, "name") else tuple(f) for f in fields]
    order = ">" if is_bigendian else "<"
    unknown = [(name, datatype) for name, _, datatype, _ in rows if datatype not in POINT_FIELD_TYPES]
    if unknown:
        raise ValueError(f"PointCloud2 fields with unknown datatypes (name, datatype): {unknown}")
    formats = [(order + POINT_FIELD_TYPES[dt], (count,)) if count > 1 else order + POINT_FIELD_TYPES[dt]
               for _, _, dt, count in rows]
    dtype = np.dtype({"names": [r[0] for r in rows], "formats": formats, "offsets": [r[1] for r in rows],
                      "itemsize": point_step})
    buffer = np.frombuffer(memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data, np.uint8)
    if row_step < width * point_step or buffer.size < height * row_step:
        raise ValueError(f"PointCloud2 data has {buffer.size} bytes, too few for {height} rows of {width} points "
                         f"of {point_step} bytes (row_step {row_step})")
    table = buffer[:height * row_step].reshape(height, row_step)[:, :width * point_step]
    return table.copy().view(dtype).reshape(-1)  # a copy: never a view over the message's buffer


# ---- benchmark ---------------------------------------------------------------------------------------


def benchmark_point_cloud(height: int = 480, width: int = 640, strides=(1, 4), repeats: int = 20,
                          voxel_size: float = 0.0, seed: int = 0) -> dict[int, float]:
    """{stride: median milliseconds of `labelled_points`} on a synthetic frame (a tilted plane 1-3 m, 5% invalid
    depth, 8 classes, confidence given). `cloud_to_msg` (a copy of the bytes) is not included."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = 1.0 + 2.0 * (u / width) + 0.01 * rng.standard_normal((height, width)).astype(np.float32)
    depth[rng.random((height, width)) < 0.05] = np.nan
    mask = rng.integers(0, 8, (height, width), dtype=np.uint8)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    confidence = rng.random((height, width), dtype=np.float32)
    camera = CameraModel(525.0 * width / 640, 525.0 * width / 640, (width - 1) / 2, (height - 1) / 2, width, height)
    result = {}
    for stride in strides:
        options = CloudOptions(stride=stride, voxel_size=voxel_size)
        times = []
        for _ in range(repeats + 1):  # the first builds the ray cache
            start = time.perf_counter()
            labelled_points(depth, mask, rgb, camera, confidence, options)
            times.append(time.perf_counter() - start)
        result[stride] = float(np.median(times[1:]) * 1000.0)
    return result
