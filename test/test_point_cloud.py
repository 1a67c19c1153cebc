"""point_cloud: hand-worked back-projection, filters, voxels, rgb packing, PointCloud2 and CameraInfo handling."""
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, PointCloud2, PointField
from std_msgs.msg import Header

from rgbd_fusion_seg.ros.messages import camera_info_at_size, cloud_from_msg, cloud_to_msg
from rgbd_fusion_seg.serving.point_cloud import (
    POINT_DTYPE,
    POINT_FIELD_TYPES,
    CameraModel,
    CloudOptions,
    benchmark_point_cloud,
    cloud_fields,
    labelled_points,
    pack_rgb,
    rays,
    read_points,
    unpack_rgb,
    voxel_decimate,
)

W, H = 8, 6
CAMERA = CameraModel(fx=500.0, fy=400.0, cx=3.5, cy=2.5, width=W, height=H)


def frame(depth, labels=None, seed=0):
    """(mask, rgb) for a depth image: labels default to 1, colours are seeded random."""
    rng = np.random.default_rng(seed)
    mask = np.ones(depth.shape, np.uint8) if labels is None else labels
    return mask, rng.integers(0, 256, (*depth.shape, 3), dtype=np.uint8)


def at(points, u, v, width=W):
    """The point of pixel (u, v) when every pixel gave one (row-major order)."""
    return points[v * width + u]


def info(width=640, height=480, k=(600.0, 0.0, 300.0, 0.0, 610.0, 200.0, 0.0, 0.0, 1.0), model="plumb_bob",
         d=(0.0,) * 5, p=None):
    msg = CameraInfo()
    msg.width, msg.height, msg.distortion_model, msg.d = width, height, model, list(d)
    msg.k = list(k)
    msg.p = list(p) if p is not None else [k[0], 0.0, k[2], 0.0, 0.0, k[4], k[5], 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.header.frame_id = "camera_color_optical_frame"
    return msg


# ---- back-projection -----------------------------------------------------------------------------------


def test_points_worked_out_by_hand():
    # z = 1 + 0.1 u: x = (u - 3.5) / 500 * z, y = (v - 2.5) / 400 * z
    depth = (1.0 + 0.1 * np.arange(W, dtype=np.float32))[None, :].repeat(H, axis=0)
    points = labelled_points(depth, *frame(depth), CAMERA)
    assert points.dtype == POINT_DTYPE and points.size == W * H
    expected = {  # (u, v): (x, y, z) in metres
        (0, 0): (-0.007, -0.00625, 1.0),          # -3.5/500*1,   -2.5/400*1
        (7, 5): (0.0119, 0.010625, 1.7),          #  3.5/500*1.7,  2.5/400*1.7
        (3, 2): (-0.0013, -0.001625, 1.3),        # -0.5/500*1.3, -0.5/400*1.3
        (4, 3): (0.0014, 0.00175, 1.4),           #  0.5/500*1.4,  0.5/400*1.4
    }
    for (u, v), xyz in expected.items():
        point = at(points, u, v)
        np.testing.assert_allclose([point["x"], point["y"], point["z"]], xyz, atol=1e-6, err_msg=f"pixel {(u, v)}")


def test_invalid_depth_gives_no_point():
    depth = np.full((H, W), 2.0, np.float32)
    invalid = [(0, 0, np.nan), (1, 0, 0.0), (2, 3, -1.0), (5, 5, np.inf), (7, 1, -np.inf)]
    for u, v, value in invalid:
        depth[v, u] = value
    points = labelled_points(depth, *frame(depth), CAMERA)
    assert points.size == W * H - len(invalid)
    assert np.all(points["z"] == 2.0)
    pixels = {(round(p["x"] / 2.0 * 500 + 3.5), round(p["y"] / 2.0 * 400 + 2.5)) for p in points}
    assert not pixels & {(u, v) for u, v, _ in invalid}


def test_stride_samples_every_nth_pixel():
    depth = np.full((H, W), 1.0, np.float32)
    for stride, count in ((1, 48), (2, 12), (3, 6), (5, 4), (8, 1)):  # ceil(8/s) * ceil(6/s)
        points = labelled_points(depth, *frame(depth), CAMERA, options=CloudOptions(stride=stride))
        assert points.size == count, stride
    points = labelled_points(depth, *frame(depth), CAMERA, options=CloudOptions(stride=3))
    # pixels u in (0, 3, 6), v in (0, 3): the second point is (3, 0), the fourth (0, 3)
    assert points[1]["x"] == pytest.approx((3 - 3.5) / 500) and points[1]["y"] == pytest.approx(-2.5 / 400)
    assert points[3]["x"] == pytest.approx(-3.5 / 500) and points[3]["y"] == pytest.approx((3 - 2.5) / 400)


def test_range_limits_on_z_are_inclusive():
    depth = np.array([[0.2, 0.5, 1.0, 1.7, 2.5, 2.6, 9.0, 30.0]], np.float32).repeat(H, axis=0)
    points = labelled_points(depth, *frame(depth), CAMERA, options=CloudOptions(min_z=0.5, max_z=2.5))
    assert sorted(set(points["z"].tolist())) == pytest.approx([0.5, 1.0, 1.7, 2.5])
    assert points.size == 4 * H
    unlimited = labelled_points(depth, *frame(depth), CAMERA)
    assert unlimited.size == W * H


def test_excluded_classes_give_no_point():
    depth = np.full((H, W), 1.0, np.float32)
    labels = (np.arange(W * H) % 4).astype(np.uint8).reshape(H, W)
    points = labelled_points(depth, *frame(depth, labels), CAMERA, options=CloudOptions(exclude_classes=(0, 2)))
    assert set(points["label"].tolist()) == {1, 3}
    assert points.size == W * H // 2


def test_labels_colours_and_confidence_are_carried_per_pixel():
    depth = np.full((H, W), 1.5, np.float32)
    labels = np.arange(W * H, dtype=np.uint16).reshape(H, W) * 300  # uint16 ids above 255
    mask, rgb = frame(depth, labels, seed=3)
    confidence = np.linspace(0, 1, W * H, dtype=np.float32).reshape(H, W)
    points = labelled_points(depth, mask, rgb, CAMERA, confidence)
    np.testing.assert_array_equal(points["label"], labels.reshape(-1))
    np.testing.assert_array_equal(points["confidence"], confidence.reshape(-1))
    np.testing.assert_array_equal(unpack_rgb(points["rgb"]), rgb.reshape(-1, 3))
    without = labelled_points(depth, mask, rgb, CAMERA)
    assert np.all(np.isnan(without["confidence"]))


def test_rgb_packing_is_0x00rrggbb_in_float32():
    colours = np.array([[0x12, 0x34, 0x56], [255, 255, 255], [0, 0, 0], [255, 0, 1]], np.uint8)
    packed = pack_rgb(colours)
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0x00123456, 0x00FFFFFF, 0, 0x00FF0001]
    assert not np.any(np.isnan(packed))  # the top byte is 0: never a NaN bit pattern
    np.testing.assert_array_equal(unpack_rgb(packed), colours)


def test_bad_inputs_and_options_are_refused():
    depth = np.full((H, W), 1.0, np.float32)
    mask, rgb = frame(depth)
    with pytest.raises(ValueError, match="depth must be HxW float metres"):
        labelled_points(np.full((H, W), 1000, np.uint16), mask, rgb, CAMERA)
    with pytest.raises(ValueError, match=r"mask must be \(6, 8\)"):
        labelled_points(depth, mask[:, :4], rgb, CAMERA)
    with pytest.raises(ValueError, match="rgb must be"):
        labelled_points(depth, mask, rgb[..., 0], CAMERA)
    with pytest.raises(ValueError, match="confidence must be"):
        labelled_points(depth, mask, rgb, CAMERA, np.ones((2, 2), np.float32))
    for options, words in (({"stride": 0}, "stride"), ({"stride": 1.5}, "stride"), ({"voxel_size": -0.1}, "voxel_size"),
                           ({"min_z": 3.0, "max_z": 2.0}, "range"), ({"exclude_classes": (70000,)}, "exclude_classes")):
        with pytest.raises(ValueError, match=words):
            CloudOptions(**options)


# ---- voxels ----------------------------------------------------------------------------------------------


def test_voxel_keeps_the_point_nearest_the_centroid():
    points = np.zeros(6, POINT_DTYPE)
    points["x"] = [0.01, 0.02, 0.09, 0.15, 0.12, 0.16]  # voxel 0: centroid 0.04 -> 0.02; voxel 1: 0.1433 -> 0.15
    points["y"] = points["z"] = 0.05
    points["label"] = [1, 2, 3, 4, 5, 6]
    kept = voxel_decimate(points, 0.1)
    assert kept["label"].tolist() == [2, 4]
    ties = points[:2].copy()
    ties["x"] = [0.02, 0.06]  # both 0.02 from the centroid: the earlier wins
    assert voxel_decimate(ties, 0.1)["label"].tolist() == [1]
    assert voxel_decimate(points[:0], 0.1).size == 0


def test_voxel_decimation_of_a_plane_keeps_one_point_per_voxel():
    # 20x20 pixels on z = 1.025 with x = (u + 0.5) / 100 * z: 5x5 pixel blocks per 5 cm voxel, 16 voxels
    camera = CameraModel(100.0, 100.0, -0.5, -0.5, 20, 20)
    depth = np.full((20, 20), 1.025, np.float32)
    points = labelled_points(depth, *frame(depth), camera, options=CloudOptions(voxel_size=0.05))
    assert points.size == 16
    # each block's centroid is its centre pixel: u, v in (2, 7, 12, 17)
    centres = {round(float(p["x"]) / 1.025 * 100 - 0.5) for p in points}
    assert centres == {2, 7, 12, 17}
    assert labelled_points(depth, *frame(depth), camera, options=CloudOptions(voxel_size=0.05, stride=5)).size == 16


# ---- PointCloud2 -----------------------------------------------------------------------------------------


def test_point_field_datatypes_match_sensor_msgs():
    names = {"INT8": "i1", "UINT8": "u1", "INT16": "i2", "UINT16": "u2", "INT32": "i4", "UINT32": "u4",
             "FLOAT32": "f4", "FLOAT64": "f8"}
    assert {POINT_FIELD_TYPES[getattr(PointField, name)]: name for name in names} == {v: k for k, v in names.items()}


def test_cloud_message_layout_and_round_trip():
    depth = np.full((H, W), 2.0, np.float32)
    depth[0, 0] = np.nan
    mask, rgb = frame(depth, (np.arange(W * H) % 7).astype(np.uint8).reshape(H, W))
    points = labelled_points(depth, mask, rgb, CAMERA, np.full((H, W), 0.25, np.float32))
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = cloud_to_msg(points, header)
    fields = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    assert fields == [("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1), ("z", 8, PointField.FLOAT32, 1),
                      ("rgb", 12, PointField.FLOAT32, 1), ("label", 16, PointField.UINT16, 1),
                      ("confidence", 20, PointField.FLOAT32, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, W * H - 1, 24, 24 * (W * H - 1))
    assert msg.is_dense and not msg.is_bigendian and len(msg.data) == 24 * (W * H - 1)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 345, header.frame_id)
    wire = deserialize_message(serialize_message(msg), PointCloud2)
    for decoded in (cloud_from_msg(msg), cloud_from_msg(wire)):
        assert decoded.flags.writeable and not np.shares_memory(decoded, np.frombuffer(msg.data, np.uint8))
        for name in POINT_DTYPE.names:
            np.testing.assert_array_equal(decoded[name], points[name])
    assert cloud_to_msg(points[:0], header).width == 0 and cloud_from_msg(cloud_to_msg(points[:0], header)).size == 0


def test_reader_skips_row_padding_and_reads_big_endian():
    # an organised 2x3 cloud of (float32 x, uint8 ring) big endian, 8-byte points, rows padded to 30 bytes
    dtype = np.dtype({"names": ["x", "ring"], "formats": [">f4", "u1"], "offsets": [0, 4], "itemsize": 8})
    rows = np.zeros((2, 30), np.uint8)
    values = np.zeros((2, 3), dtype)
    values["x"], values["ring"] = [[1.5, -2.0, 3.25], [4.0, 5.5, -6.0]], [[0, 1, 2], [3, 4, 5]]
    rows[:, :24] = values.view(np.uint8).reshape(2, 24)
    fields = [("x", 0, 7, 1), ("ring", 4, 2, 1)]
    decoded = read_points(fields, 8, 30, 3, 2, True, rows.tobytes())
    assert decoded["x"].tolist() == [1.5, -2.0, 3.25, 4.0, 5.5, -6.0]
    assert decoded["ring"].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="too few"):
        read_points(fields, 8, 30, 3, 2, True, rows.tobytes()[:40])
    with pytest.raises(ValueError, match="unknown datatypes"):
        read_points([("x", 0, 9, 1)], 8, 30, 3, 2, True, rows.tobytes())
    assert cloud_fields(np.dtype([("xyz", "<f4", (3,))])) == [("xyz", 0, 7, 3)]
    with pytest.raises(ValueError, match="little-endian"):
        cloud_fields(np.dtype([("x", ">f4")]))


# ---- camera model from CameraInfo ------------------------------------------------------------------------


def test_camera_from_camera_info():
    camera = CameraModel.from_camera_info(info())
    assert (camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height) == (600, 610, 300, 200, 640, 480)
    assert not camera.distorted
    # an unknown model with all-zero coefficients is an undistorted image: accepted
    assert CameraModel.from_camera_info(info(model="kannala_brandt", d=(0.0,) * 4)).fx == 600
    p = (550.0, 0.0, 310.0, -27.5, 0.0, 560.0, 210.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    rectified = CameraModel.from_camera_info(info(p=p, d=(0.1, 0, 0, 0, 0)), rectified=True)
    assert (rectified.fx, rectified.fy, rectified.cx, rectified.cy, rectified.d) == (550, 560, 310, 210, ())


@pytest.mark.parametrize("change, words", [
    ({"k": (0.0,) * 9}, "k: fx = 0.0 is not a finite positive focal length"),
    ({"k": (600.0, 0.0, 300.0, 0.0, math.nan, 200.0, 0.0, 0.0, 1.0)}, "k: fy = nan"),
    ({"k": (-600.0, 0.0, 300.0, 0.0, 610.0, 200.0, 0.0, 0.0, 1.0)}, "k: fx = -600.0"),
    ({"k": (600.0, 2.0, 300.0, 0.0, 610.0, 200.0, 0.0, 0.0, 1.0)}, r"skew k\[1\] = 2.0"),
    ({"model": "kannala_brandt", "d": (0.1, 0.0, 0.0, 0.0)}, "distortion_model 'kannala_brandt' with non-zero"),
    ({"model": "", "d": (0.1, 0.0, 0.0, 0.0, 0.0)}, "distortion_model '' with non-zero"),
    ({"model": "plumb_bob", "d": (0.1, 0.0, 0.0)}, "'plumb_bob' takes 4 or 5 coefficients, d has 3"),
    ({"model": "plumb_bob", "d": (math.inf, 0.0, 0.0, 0.0, 0.0)}, "non-finite"),
    ({"width": 0}, "width/height is 0x480"),
    ({"height": 0}, "width/height is 640x0"),
])
def test_camera_info_refusals(change, words):
    with pytest.raises(ValueError, match=words):
        CameraModel.from_camera_info(info(**change))


def test_camera_info_with_a_cropping_roi_is_refused():
    msg = info()
    msg.roi.x_offset, msg.roi.width, msg.roi.height = 10, 320, 240
    with pytest.raises(ValueError, match="roi is 320x240 at \\(10, 0\\)"):
        CameraModel.from_camera_info(msg)


@pytest.mark.parametrize("model, d, project", [
    ("plumb_bob", (-0.25, 0.08, 0.002, -0.001, -0.01), cv2.projectPoints),
    ("rational_polynomial", (-0.3, 0.1, 0.001, 0.001, 0.0, 0.05, 0.01, 0.0), cv2.projectPoints),
    ("equidistant", (0.05, -0.02, 0.01, -0.003), cv2.fisheye.projectPoints),
])
def test_distorted_pixels_back_project_onto_their_rays(model, d, project):
    camera = CameraModel(30.0, 32.0, 15.2, 11.7, 32, 24, model, d)
    depth = np.full((24, 32), 2.0, np.float32)
    points = labelled_points(depth, *frame(depth), camera)
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=-1).astype(np.float64).reshape(-1, 1, 3)
    k = np.array([[30.0, 0, 15.2], [0, 32.0, 11.7], [0, 0, 1]])
    pixels, _ = project(xyz, np.zeros(3), np.zeros(3), k, np.array(d))
    v, u = np.mgrid[0:24, 0:32]
    np.testing.assert_allclose(pixels.reshape(-1, 2), np.stack([u, v], axis=-1).reshape(-1, 2), atol=1e-3)
    undistorted = CameraModel(30.0, 32.0, 15.2, 11.7, 32, 24)
    plain = labelled_points(depth, *frame(depth), undistorted)
    assert np.abs(plain["x"][0] - points["x"][0]) > 1e-3  # the distortion did change the corner's ray


# ---- sizes: scaling the intrinsics -----------------------------------------------------------------------


def test_intrinsics_scale_to_the_depth_size_with_pixel_centres():
    camera = CameraModel.from_camera_info(info(k=(600.0, 0.0, 319.5, 0.0, 610.0, 239.5, 0.0, 0.0, 1.0)))
    half = camera.for_image(320, 240)
    # fx, fy halve; the image centre stays the centre: (319.5 + 0.5) / 2 - 0.5 = 159.5
    assert (half.fx, half.fy, half.cx, half.cy, half.width, half.height) == (300, 305, 159.5, 119.5, 320, 240)
    off_centre = CameraModel.from_camera_info(info()).for_image(320, 240)
    assert (off_centre.cx, off_centre.cy) == (149.75, 99.75)  # (300 + 0.5) / 2 - 0.5, (200 + 0.5) / 2 - 0.5
    assert camera.for_image(640, 480) is camera
    # labelled_points scales a calibration of another size itself: pixel (u, v) of the 320x240 depth
    depth = np.full((240, 320), 3.0, np.float32)
    points = labelled_points(depth, *frame(depth), camera)
    point = at(points, 10, 20, width=320)
    np.testing.assert_allclose([point["x"], point["y"]], [(10 - 159.5) / 300 * 3, (20 - 119.5) / 305 * 3], atol=1e-6)
    assert camera.for_image(320, 241).height == 241  # within a pixel of the aspect: accepted


@pytest.mark.parametrize("size", [(320, 180), (480, 480), (640, 470)])
def test_another_aspect_is_refused_with_both_sizes(size):
    camera = CameraModel.from_camera_info(info())
    with pytest.raises(ValueError, match=f"calibration is for 640x480 but the image is {size[0]}x{size[1]}"):
        camera.for_image(*size)
    depth = np.ones(size[::-1], np.float32)
    with pytest.raises(ValueError, match="aspect ratios differ"):
        labelled_points(depth, *frame(depth), camera)


def test_camera_info_at_the_mask_size():
    source = info(p=(600.0, 0.0, 300.0, -30.0, 0.0, 610.0, 200.0, 0.0, 0.0, 0.0, 1.0, 0.0), d=(0.1, 0.01, 0, 0, 0))
    header = Header(frame_id="mask_frame")
    header.stamp.sec = 7
    msg = camera_info_at_size(source, 320, 240, header)
    assert (msg.width, msg.height) == (320, 240)
    np.testing.assert_allclose(msg.k, [300, 0, 149.75, 0, 305, 99.75, 0, 0, 1])
    np.testing.assert_allclose(msg.p, [300, 0, 149.75, -15, 0, 305, 99.75, 0, 0, 0, 1, 0])
    assert (msg.distortion_model, list(msg.d), list(msg.r)) == ("plumb_bob", [0.1, 0.01, 0, 0, 0], list(source.r))
    assert (msg.header.frame_id, msg.header.stamp.sec) == ("mask_frame", 7)
    wire = deserialize_message(serialize_message(msg), CameraInfo)
    assert CameraModel.from_camera_info(wire) == CameraModel.from_camera_info(source).for_image(320, 240)
    assert camera_info_at_size(source, 640, 480).header.frame_id == source.header.frame_id
    with pytest.raises(ValueError, match="640x480 but the image is 100x100"):
        camera_info_at_size(source, 100, 100)


def test_benchmark_reports_each_stride():
    figures = benchmark_point_cloud(height=24, width=32, strides=(1, 2), repeats=2)
    assert set(figures) == {1, 2} and all(value > 0 for value in figures.values())


def test_the_core_imports_without_ros():
    code = ("import sys, rgbd_fusion_seg.serving.point_cloud; "
            "assert 'rclpy' not in sys.modules and 'sensor_msgs' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rays_are_cached_per_camera_and_size():
    camera = CameraModel(30.0, 32.0, 15.2, 11.7, 32, 24, "plumb_bob", (-0.25, 0.08, 0.002, -0.001, -0.01))
    assert rays(camera)[0] is rays(CameraModel(30.0, 32.0, 15.2, 11.7, 32, 24, "plumb_bob",
                                               (-0.25, 0.08, 0.002, -0.001, -0.01)))[0]  # equal models share it
    assert rays(camera.for_image(16, 12))[0].shape == (12, 16)
