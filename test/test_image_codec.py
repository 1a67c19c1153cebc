"""image_codec: decoding checked against rosbags-image (cv_bridge's conversions), errors, encoders, real bags."""
import struct
import subprocess
import sys

import numpy as np
import pytest
from rosbags.image import message_to_cvimage
from rosbags.typesys import Stores, get_typestore

from rgbd_fusion_seg.serving import rvl
from rgbd_fusion_seg.ros.messages import aux_from_msg, colour_from_msg, float_to_msg, mask_to_msg, rgb_to_msg
from rgbd_fusion_seg.serving.image_codec import (
    ImageDecodeError,
    compress,
    decode_aux,
    decode_colour,
    decompress,
    encode_array,
    encode_as,
    pixel_view,
)
from ros_helpers import read_bag_images, rosbags_to_ros

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
RosbagsImage = TYPESTORE.types["sensor_msgs/msg/Image"]
Header = TYPESTORE.types["std_msgs/msg/Header"]
Time = TYPESTORE.types["builtin_interfaces/msg/Time"]

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1, "16UC1": 1, "32FC1": 1}
DTYPES = {"mono16": np.uint16, "16UC1": np.uint16, "32FC1": np.float32}


def pixels(encoding, height=5, width=7, seed=0):
    rng = np.random.default_rng(seed)
    dtype = DTYPES.get(encoding, np.uint8)
    shape = (height, width) if CHANNELS[encoding] == 1 else (height, width, CHANNELS[encoding])
    if dtype == np.float32:
        return rng.uniform(0.1, 10.0, shape).astype(np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def raw_fields(image, encoding, padding=0, bigendian=False):
    """(encoding, height, width, step, is_bigendian, data) with `padding` junk bytes after each row."""
    height, width = image.shape[:2]
    element = image.dtype.newbyteorder(">" if bigendian else "<")
    rows = np.ascontiguousarray(image, dtype=element).reshape(height, -1).view(np.uint8)
    padded = np.full((height, rows.shape[1] + padding), 0xAB, np.uint8)
    padded[:, : rows.shape[1]] = rows
    return encoding, height, width, padded.shape[1], bigendian, padded.tobytes()


def rosbags_msg(image, encoding, bigendian=False):
    _, height, width, step, _, data = raw_fields(image, encoding, 0, bigendian)
    return RosbagsImage(Header(Time(0, 0), "f"), height, width, encoding, bigendian, step,
                        np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_colour_matches_rosbags_image(encoding, padding):
    image = pixels(encoding)
    expected = message_to_cvimage(rosbags_msg(image, encoding), "rgb8")
    decoded = decode_colour(*raw_fields(image, encoding, padding))
    assert decoded.shape == (5, 7, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_matches_rosbags_image_in_metres(encoding, padding, bigendian):
    image = pixels(encoding)
    image[0, 0] = 0  # no reading
    if encoding == "32FC1":
        image[1, 1], image[2, 2], image[3, 3] = np.nan, np.inf, -1.0
    reference = message_to_cvimage(rosbags_msg(image, encoding, bigendian)).astype(np.float64)
    decoded = decode_aux("depth", *raw_fields(image, encoding, padding, bigendian), depth_scale=0.001)
    assert decoded.unit == "m" and decoded.image.dtype == np.float32 and decoded.image.shape == (5, 7)
    if encoding == "16UC1":
        expected = np.where(reference == 0, np.nan, reference * 0.001)
    else:
        expected = np.where(np.isfinite(reference) & (reference > 0), reference, np.nan)
    np.testing.assert_allclose(decoded.image, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(decoded.image[0, 0])


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding, unit", [("mono8", "raw8"), ("mono16", "raw16"), ("16UC1", "raw16"),
                                            ("32FC1", "celsius")])
def test_thermal_matches_rosbags_image(encoding, unit, bigendian):
    image = pixels(encoding)
    if encoding == "32FC1":
        image[0, 0], image[0, 1] = -12.5, np.nan  # sub-zero Celsius is a reading, NaN is not
    reference = message_to_cvimage(rosbags_msg(image, encoding, bigendian)).astype(np.float32)
    decoded = decode_aux("thermal", *raw_fields(image, encoding, 1, bigendian))
    assert decoded.unit == unit
    np.testing.assert_array_equal(decoded.image, reference)


def test_rgb8_and_16uc1_are_views_over_the_buffer():
    image = pixels("rgb8")
    fields = raw_fields(image, "rgb8", padding=4)
    data = bytearray(fields[-1])
    view = decode_colour(*fields[:-1], data)
    assert np.shares_memory(view, np.frombuffer(data, np.uint8))
    data[0] = (int(image[0, 0, 0]) + 1) % 256  # a change in the buffer shows through
    assert view[0, 0, 0] == data[0]
    depth = pixel_view(*raw_fields(pixels("16UC1"), "16UC1", padding=2)[:-1], data=bytearray(5 * 16))
    assert depth.shape == (5, 7) and depth.strides == (16, 2)


@pytest.mark.parametrize(
    "fields, message",
    [
        (("yuv422", 2, 2, 4, False, bytes(8)), "unsupported"),
        (("rgb8", 2, 2, 6, False, b""), "empty"),
        (("rgb8", 0, 2, 6, False, bytes(12)), "empty"),
        (("rgb8", 2, 2, 6, False, bytes(11)), "truncated"),
        (("rgb8", 2, 2, 5, False, bytes(12)), "step too small"),
        (("32FC1", 2, 2, 7, False, bytes(14)), "step too small"),
    ],
)
def test_bad_images_raise_a_clear_error(fields, message):
    decode = decode_colour if fields[0] in ("rgb8", "yuv422") else (lambda *f: decode_aux("depth", *f))
    with pytest.raises(ImageDecodeError, match=message) as info:
        decode(*fields)
    assert repr(fields[0]) in str(info.value)  # names the encoding


def test_aux_encoding_must_fit_the_modality():
    with pytest.raises(ImageDecodeError, match="unsupported depth encoding 'rgb8'"):
        decode_aux("depth", "rgb8", 1, 1, 3, False, bytes(3))
    with pytest.raises(ImageDecodeError, match="unsupported colour encoding '16UC1'"):
        decode_colour("16UC1", 1, 1, 2, False, bytes(2))


@pytest.mark.parametrize("array, encoding", [
    (np.arange(12, dtype=np.uint8).reshape(3, 4), "mono8"),
    (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000, "16UC1"),
    (np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "32FC1"),
    (np.arange(36, dtype=np.uint8).reshape(3, 4, 3), "rgb8"),
])
def test_encoders_round_trip(array, encoding):
    from std_msgs.msg import Header as RosHeader

    header = RosHeader(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    build = {"mono8": mask_to_msg, "16UC1": mask_to_msg, "32FC1": float_to_msg, "rgb8": rgb_to_msg}[encoding]
    msg = build(array, header)
    assert (msg.encoding, msg.height, msg.width, msg.step) == (encoding, 3, 4, array.strides[0])
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 345, "cam")
    fields = (msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)
    np.testing.assert_array_equal(pixel_view(*fields), array)
    with pytest.raises(ValueError):
        encode_array(np.zeros((2, 2, 2), np.uint8))


def test_codec_functions_import_without_ros():
    code = ("import sys, rgbd_fusion_seg.serving.image_codec, rgbd_fusion_seg.serving.pairing, "
            "rgbd_fusion_seg.serving.parameters; assert 'rclpy' not in sys.modules and 'sensor_msgs' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("bag, colour_topic, aux_topic, modality", [
    ("rgbd_indoor", "/camera/color/image_raw", "/camera/depth/image_rect_raw", "depth"),
    ("rgbt_layout", "/rgb/image_raw", "/thermal/image_raw", "thermal"),
])
def test_real_bag_frames_decode_and_round_trip(bag, colour_topic, aux_topic, modality, bags):
    frames = read_bag_images(bags / bag, {colour_topic, aux_topic})
    assert frames
    for topic, bag_msg in frames:
        msg = rosbags_to_ros(bag_msg)
        if topic == colour_topic:
            rgb = colour_from_msg(msg)
            np.testing.assert_array_equal(rgb, message_to_cvimage(bag_msg, "rgb8"))
            again = colour_from_msg(rgb_to_msg(rgb, msg.header))
            np.testing.assert_array_equal(again, rgb)
        else:
            decoded = aux_from_msg(msg, modality)
            raw = message_to_cvimage(bag_msg).astype(np.float32)
            assert decoded.image.shape == (bag_msg.height, bag_msg.width)
            if modality == "depth":
                assert decoded.unit == "m"
                np.testing.assert_allclose(decoded.image, np.where(raw == 0, np.nan, raw * 0.001), rtol=1e-6)
                assert 0.05 < np.isnan(decoded.image).mean() < 0.2  # the README: about 11 % no reading
                back = np.nan_to_num(decoded.image / 0.001).round().astype(np.uint16)
                np.testing.assert_array_equal(pixel_view(*_fields(mask_to_msg(back, msg.header))), raw)
            else:
                assert decoded.unit == "raw8"
                np.testing.assert_array_equal(decoded.image, raw)


def _fields(msg):
    return msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data


# ---- sensor_msgs/CompressedImage ----------------------------------------------------------------------

RosbagsCompressed = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]


def smooth_colour(height=24, width=32):
    """A gradient (jpeg keeps it close, unlike noise)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1).astype(np.uint8)


@pytest.mark.parametrize("kind", ["png", "jpeg"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_compressed_colour_matches_rosbags_image(encoding, kind):
    image = smooth_colour()
    if encoding == "bgr8":
        image = image[..., ::-1].copy()
    elif encoding == "mono8":
        image = image[..., 0].copy()
    fmt, data = compress(image, encoding, kind)
    target = "bgr8" if encoding != "mono8" else "mono8"
    assert fmt == f"{encoding}; {kind} compressed {target}"
    pixels_back, decoded_encoding = decompress(fmt, data)
    assert decoded_encoding == encoding and pixels_back.shape == image.shape
    reference = message_to_cvimage(RosbagsCompressed(Header(Time(0, 0), "f"), fmt, np.frombuffer(data, np.uint8)))
    if encoding == "rgb8":
        reference = reference[..., ::-1]  # rosbags-image gives OpenCV's BGR; the stated encoding is rgb8
    np.testing.assert_array_equal(pixels_back, reference)
    if kind == "png":
        np.testing.assert_array_equal(pixels_back, image)  # lossless
    else:
        assert np.abs(pixels_back.astype(int) - image).mean() < 3  # lossy, close


def test_compressed_colour_stored_in_rgb_order_is_not_swapped():
    """A target that is not "bgr..." means the compressed data hold RGB order (compressed_image_transport's
    subscriber swaps only for "compressed bgr"): an rgb8 original then needs no swap, a bgr8 one does."""
    import cv2

    rgb = smooth_colour()
    ok, png = cv2.imencode(".png", rgb)  # the array's channel order, as it is, in the file
    assert ok
    back, encoding = decompress("rgb8; png compressed rgb8", png.tobytes())
    assert encoding == "rgb8"
    np.testing.assert_array_equal(back, rgb)
    back, _ = decompress("bgr8; png compressed rgb8", png.tobytes())
    np.testing.assert_array_equal(back, rgb[..., ::-1])
    back, _ = decompress("rgb8; png compressed bgr8", png.tobytes())  # the usual case: stored BGR
    np.testing.assert_array_equal(back, rgb[..., ::-1])


def test_compressed_png_16bit_and_bare_formats():
    depth = pixels("16UC1", 6, 9)
    fmt, data = compress(depth, "16UC1", "png")
    back, encoding = decompress(fmt, data)
    assert fmt == "16UC1; png compressed 16UC1" and encoding == "16UC1"
    np.testing.assert_array_equal(back, depth)
    bare, encoding = decompress("png", data)  # an older publisher's bare format: kept as OpenCV stores it
    assert encoding == "mono16"
    np.testing.assert_array_equal(bare, depth)
    fmt, data = compress(smooth_colour(), "rgb8", "png")
    bare, encoding = decompress("png", data)
    assert encoding == "bgr8"
    np.testing.assert_array_equal(bare[..., ::-1], smooth_colour())


def test_compressed_depth_16uc1_is_exact_with_its_12_byte_header():
    depth = pixels("16UC1", 6, 9)
    depth[0, 0] = 0
    fmt, data = compress(depth, "16UC1", "compressedDepth")
    assert fmt == "16UC1; compressedDepth png"
    assert struct.unpack("<iff", data[:12]) == (0, 0.0, 0.0) and data[12:20] == b"\x89PNG\r\n\x1a\n"
    for stated in (fmt, "16UC1; compressedDepth"):  # the older format string has no "png"
        back, encoding = decompress(stated, data)
        assert encoding == "16UC1" and back.dtype == np.uint16
        np.testing.assert_array_equal(back, depth)
    decoded = decode_aux("depth", "16UC1", 6, 9, back.strides[0], False, back.tobytes())
    assert np.isnan(decoded.image[0, 0]) and decoded.unit == "m"


def test_compressed_depth_rvl_has_width_and_height_before_the_stream():
    depth = pixels("16UC1", 6, 9)
    depth[0, :4] = 0
    fmt, data = compress(depth, "16UC1", "compressedDepth-rvl")
    assert fmt == "16UC1; compressedDepth rvl"
    assert struct.unpack("<iffII", data[:20]) == (0, 0.0, 0.0, 9, 6) and data[20:] == rvl.encode(depth)
    back, encoding = decompress(fmt, data)
    assert encoding == "16UC1" and back.dtype == np.uint16
    np.testing.assert_array_equal(back, depth)
    # 32FC1 goes through the same inverse-depth quantisation whichever codec carries it
    metres = np.linspace(0.3, 9.5, 48, dtype=np.float32).reshape(6, 8)
    metres[0, 0] = np.nan
    as_png, _ = decompress(*compress(metres, "32FC1", "compressedDepth"))
    as_rvl, encoding = decompress(*compress(metres, "32FC1", "compressedDepth-rvl"))
    assert encoding == "32FC1"
    np.testing.assert_array_equal(as_rvl, as_png)  # NaN where NaN


def test_compressed_depth_32fc1_uses_inverse_depth_quantisation():
    depth = np.linspace(0.3, 9.5, 48, dtype=np.float32).reshape(6, 8)
    depth[0, 0], depth[0, 1], depth[0, 2] = np.nan, 12.0, 0.0  # no reading, beyond depth_max, invalid
    fmt, data = compress(depth, "32FC1", "compressedDepth")
    kind, quant_a, quant_b = struct.unpack("<iff", data[:12])
    assert fmt == "32FC1; compressedDepth png" and kind == 0
    assert quant_a == pytest.approx(100.0 * 101.0) and quant_b == pytest.approx(1.0 - quant_a / 10.0)
    back, encoding = decompress(fmt, data)
    assert encoding == "32FC1" and back.dtype == np.float32
    assert np.isnan(back[0, :3]).all()
    valid = np.isfinite(depth) & (depth > 0) & (depth < 10.0)
    # truncation of A/d + B to an integer: error below d^2 / A (about 9 mm at 9.5 m)
    assert (np.abs(back[valid] - depth[valid]) <= depth[valid] ** 2 / quant_a + 1e-4).all()


@pytest.mark.parametrize("fmt, data, message", [
    ("rgb8; webp compressed bgr8", b"x", "unsupported compressed format"),
    ("16UC1; compressedDepth zstd", bytes(20), "expected png or rvl"),
    ("16UC1; compressedDepth rvl", bytes(16), "too short for RVL's width and height"),
    ("16UC1; compressedDepth rvl", bytes(12) + struct.pack("<II", 0, 480) + bytes(4), "says 0x480 pixels"),
    ("16UC1; compressedDepth rvl", bytes(12) + struct.pack("<II", 4, 1) + bytes.fromhex("0000a1"), "truncated"),
    ("rgb8; compressedDepth png", bytes(20), "carries 16UC1 or 32FC1"),
    ("16UC1; compressedDepth png", bytes(8), "too short for the 12-byte header"),
    ("16UC1; compressedDepth png", struct.pack("<iff", 3, 0, 0) + b"\x89PNG", "unknown compression format 3"),
    ("rgb8; jpeg compressed bgr8", b"", "empty compressed image"),
    ("rgb8; jpeg compressed bgr8", b"\xff\xd8\xff\xe0garbage", "cannot decode the compressed data"),
    ("yuv422; jpeg compressed bgr8", b"x", "unsupported original encoding 'yuv422'"),
])
def test_bad_compressed_images_raise_a_clear_error(fmt, data, message):
    with pytest.raises(ImageDecodeError, match=message) as info:
        decompress(fmt, data)
    assert repr(fmt) in str(info.value)  # names the format


def compressed(image, encoding, kind):
    fmt, data = compress(image, encoding, kind)
    return RosbagsCompressed(Header(Time(0, 0), "f"), fmt, np.frombuffer(data, np.uint8))


def test_msg_decoders_take_compressed_images_too():
    """colour_from_msg / aux_from_msg tell a CompressedImage by its `format` and decode what it holds."""
    colour = smooth_colour()
    np.testing.assert_array_equal(colour_from_msg(compressed(colour, "rgb8", "png")), colour)
    assert np.abs(colour_from_msg(compressed(colour, "rgb8", "jpeg")).astype(int) - colour).mean() < 3
    depth = pixels("16UC1", 6, 9)
    depth[0, 0] = 0
    raw = decode_aux("depth", *raw_fields(depth, "16UC1"))
    for kind in ("compressedDepth", "compressedDepth-rvl", "png"):
        decoded = aux_from_msg(compressed(depth, "16UC1", kind), "depth")
        assert (decoded.unit, decoded.encoding) == ("m", "16UC1")
        np.testing.assert_array_equal(decoded.image, raw.image)  # exact, NaN where 0
    metres = np.linspace(0.5, 4.0, 54, dtype=np.float32).reshape(6, 9)
    decoded = aux_from_msg(compressed(metres, "32FC1", "compressedDepth"), "depth")
    assert decoded.unit == "m" and np.allclose(decoded.image, metres, atol=4.0**2 / 10100 + 1e-4)
    thermal = aux_from_msg(compressed(depth, "mono16", "png"), "thermal")
    assert thermal.unit == "raw16"
    np.testing.assert_array_equal(thermal.image, depth.astype(np.float32))


@pytest.mark.parametrize("source, call, message", [
    (("16UC1", "png"), colour_from_msg, "format '16UC1; png compressed 16UC1': unsupported colour encoding '16UC1'"),
    (("rgb8", "png"), lambda m: aux_from_msg(m, "depth"), "format 'rgb8; png compressed bgr8': unsupported depth"),
    (("rgb8", "jpeg"), colour_from_msg, "cannot decode the compressed data \\(format 'rgb8; jpeg compressed bgr8'"),
], ids=["16UC1-as-colour", "rgb8-as-depth", "truncated-jpeg"])
def test_msg_decoders_name_the_format_of_a_bad_compressed_image(source, call, message):
    encoding, kind = source
    image = pixels("16UC1", 6, 9) if encoding == "16UC1" else smooth_colour()
    bad = compressed(image, encoding, kind)
    if kind == "jpeg":
        bad.data = bad.data[:40]  # truncated
    with pytest.raises(ImageDecodeError, match=message):
        call(bad)


def test_real_bag_jpeg_topic_decodes_close_to_the_raw_topic(bags):
    frames = read_bag_images(bags / "rgbd_indoor", {"/camera/color/image_raw", "/camera/color/image_raw/compressed"})
    raw = {m.header.stamp.nanosec: m for t, m in frames if t == "/camera/color/image_raw"}
    jpeg = [m for t, m in frames if t.endswith("/compressed")]
    assert len(jpeg) == 8
    for msg in jpeg:
        image, encoding = decompress(msg.format, msg.data)
        assert encoding == "rgb8"
        np.testing.assert_array_equal(image, message_to_cvimage(msg, "rgb8"))  # rosbags-image, same decoder
        assert np.abs(image.astype(int) - colour_from_msg(rosbags_to_ros(raw[msg.header.stamp.nanosec]))).mean() < 6


def test_encode_as_an_explicit_encoding():
    bgr = pixels("bgr8")
    fields = encode_as(bgr, "bgr8")
    assert fields[:4] == ("bgr8", 5, 7, 21)
    np.testing.assert_array_equal(decode_colour(*fields[:4], False, fields[4]), bgr[..., ::-1])
    big = pixels("mono16").astype(">u2")  # any byte order in, little endian out
    fields = encode_as(big, "mono16")
    np.testing.assert_array_equal(pixel_view(*fields[:4], False, fields[4]), big)
    for array, encoding in ((bgr, "mono8"), (big, "32FC1"), (bgr, "yuv422")):
        with pytest.raises(ValueError, match=repr(encoding)):
            encode_as(array, encoding)
