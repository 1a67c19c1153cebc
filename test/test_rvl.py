"""RVL (compressed_depth_image_transport's `rvl`): the vectorised codec against a plain per-pixel reference,
a stream worked out by hand, real depth from the rgbd_indoor bag, and broken streams."""
import numpy as np
import pytest

from rgbd_fusion_seg.serving import rvl
from ros_helpers import read_bag_images


def reference_encode(pixels) -> bytes:
    """The algorithm as the RVL paper states it, one pixel and one nibble at a time."""
    words, state = [], {"word": 0, "nibbles": 0}

    def put(value):
        while True:
            nibble, value = value & 7, value >> 3
            state["word"] = ((state["word"] << 4) | nibble | (8 if value else 0)) & 0xFFFFFFFF
            state["nibbles"] += 1
            if state["nibbles"] == 8:
                words.append(state["word"])
                state["word"], state["nibbles"] = 0, 0
            if not value:
                return

    pixels, i, previous = [int(p) for p in np.asarray(pixels).reshape(-1)], 0, 0
    while i < len(pixels):
        zeros = 0
        while i < len(pixels) and pixels[i] == 0:
            zeros, i = zeros + 1, i + 1
        put(zeros)
        nonzeros = 0
        while i + nonzeros < len(pixels) and pixels[i + nonzeros] != 0:
            nonzeros += 1
        put(nonzeros)
        for current in pixels[i:i + nonzeros]:
            delta = current - previous
            put(2 * delta if delta >= 0 else -2 * delta - 1)
            previous = current
        i += nonzeros
    if state["nibbles"]:
        words.append((state["word"] << 4 * (8 - state["nibbles"])) & 0xFFFFFFFF)
    return np.asarray(words, "<u4").tobytes()


def test_a_stream_worked_out_by_hand():
    # [0, 0, 5, 5]: zeros 2 -> nibble 2; non-zeros 2 -> 2; 5 - 0 = 5 -> zigzag 10 = 0b1010 -> groups 2 (more
    # follows: 0xA) and 1; 5 - 5 -> 0. Nibbles 2 2 A 1 0, padded to a word 0x22A10000, stored little endian.
    stream = bytes.fromhex("0000a122")
    assert rvl.encode(np.array([0, 0, 5, 5], np.uint16)) == stream == reference_encode([0, 0, 5, 5])
    np.testing.assert_array_equal(rvl.decode(stream, 4), [0, 0, 5, 5])


def edge_cases():
    rng = np.random.default_rng(7)
    holes = rng.integers(1, 65536, (31, 37)).astype(np.uint16)
    holes[rng.random(holes.shape) < 0.3] = 0
    wrap = np.array([65535, 1, 65535, 0, 0, 1, 65534], np.uint16)  # deltas of +-65534 and more
    yield "random with holes", holes
    yield "wrap-around deltas", wrap
    yield "all zero", np.zeros((4, 6), np.uint16)
    yield "no zero", rng.integers(1, 4000, (5, 9)).astype(np.uint16)
    yield "one pixel", np.array([[1234]], np.uint16)
    yield "ends in a non-zero run", np.array([0, 7, 7, 0, 3], np.uint16)


@pytest.mark.parametrize("name, image", list(edge_cases()), ids=[name for name, _ in edge_cases()])
def test_matches_the_reference_byte_for_byte_and_round_trips(name, image):
    stream = rvl.encode(image)
    assert stream == reference_encode(image), name
    np.testing.assert_array_equal(rvl.decode(stream, image.size).reshape(image.shape), image)


def test_real_depth_frame_round_trips_and_compresses(bags):
    depth = [msg for _, msg in read_bag_images(bags / "rgbd_indoor", {"/camera/depth/image_rect_raw"})][0]
    image = np.frombuffer(bytes(depth.data), np.uint16).reshape(depth.height, depth.width)
    assert (image == 0).any() and (image != 0).any()  # a real sensor's holes
    stream = rvl.encode(image)
    np.testing.assert_array_equal(rvl.decode(stream, image.size).reshape(image.shape), image)
    assert len(stream) < image.nbytes * 0.7  # 64 % on this noisy frame
    crop = image[150:230, 200:300]  # the per-pixel reference is slow: byte equality on a crop
    assert rvl.encode(crop) == reference_encode(crop)


@pytest.mark.parametrize("stream, pixels, message", [
    (bytes.fromhex("0000a1"), 4, "not whole 32-bit words"),
    (bytes.fromhex("0000a122"), 9, "ends after 4 of 9 pixels"),
    (bytes.fromhex("0000a122"), 3, "cover 4 pixels, more than the image's 3"),
    (bytes.fromhex("0000102b"), 13, "ends inside a run"),  # 2 zeros, then 11 non-zeros announced, none follow
    (bytes.fromhex("ffffffff0000ffff"), 4, "a number of 13 3-bit groups is longer than any RVL writes"),
    (bytes.fromhex("ffffffff"), 4, "no complete number"),
])
def test_broken_streams_are_refused_with_the_reason(stream, pixels, message):
    with pytest.raises(rvl.RVLError, match=message):
        rvl.decode(stream, pixels)


def test_only_16_bit_pixels_are_encoded():
    with pytest.raises(ValueError, match="16-bit pixels, not float32"):
        rvl.encode(np.zeros(3, np.float32))
