"""RVL, the lossless depth codec behind compressed_depth_image_transport's `rvl` format.

RVL is A. D. Wilson's run-length / variable-length code ("Fast Lossless Depth Image Compression", ISS 2017).
No installable Python package reads it, so both directions are written here, vectorised with NumPy.

The stream is a sequence of unsigned numbers over the pixels in row order, repeated until every pixel is
covered: a count of zero pixels, a count of non-zero pixels, then each of those non-zero pixels as the
difference to the previous non-zero pixel (16-bit wrap-around), zigzag-coded (d >= 0 -> 2d, d < 0 -> -2d - 1).
Each number is written in 3-bit groups, lowest group first, one group per nibble whose fourth bit says that
another group follows. Nibbles fill little-endian 32-bit words from the most significant end; the last word
is padded with zero nibbles.
"""
from __future__ import annotations

import numpy as np

# nibble k of a 32-bit word, most significant first
_NIBBLE_SHIFTS = np.arange(28, -4, -4, dtype=np.uint32)
# a number needs one more 3-bit group at each of these thresholds (8, 64, ...)
_GROUP_THRESHOLDS = 8 ** np.arange(1, 10, dtype=np.int64)
# 10 groups hold 30 bits: counts of up to 2^30 pixels, and so int32 sums; a longer number is corruption
_MAX_GROUPS = 10


class RVLError(ValueError):
    """The bytes are not an RVL stream for the stated number of pixels."""


def _numbers(stream) -> np.ndarray:
    """The unsigned numbers of the stream (int32), in order; zero padding gives trailing zeros."""
    data = np.frombuffer(stream, np.uint8)
    if data.size % 4:
        raise RVLError(f"{data.size} bytes are not whole 32-bit words: the stream is truncated")
    most_significant_first = data.reshape(-1, 4)[:, ::-1].reshape(-1)  # little-endian words
    nibbles = np.empty(2 * data.size, np.uint8)
    nibbles[0::2], nibbles[1::2] = most_significant_first >> 4, most_significant_first & 0xF
    ends = np.flatnonzero(nibbles < 8)  # a number ends at a nibble without the "more follows" bit
    if ends.size == 0:
        raise RVLError("the stream holds no complete number")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > _MAX_GROUPS:
        raise RVLError(f"a number of {longest} 3-bit groups is longer than any RVL writes: the stream is corrupt")
    digits = nibbles & 7
    numbers = digits[starts].astype(np.int32)
    for group in range(1, longest):  # most numbers are one or two groups long: few, shrinking passes
        longer = np.flatnonzero(lengths > group)
        numbers[longer] += digits[starts[longer] + group].astype(np.int32) << (3 * group)
    return numbers


def decode(stream, num_pixels: int) -> np.ndarray:
    """RVL bytes (without the transport's width/height prefix) -> `num_pixels` uint16 values in row order."""
    numbers = _numbers(stream)
    # The walk over runs is sequential (each count says where the next one is); it steps once per run pair.
    listed = numbers.tolist()
    covered, index, heads, runs = 0, 0, [], []
    while covered < num_pixels:
        if index + 2 > len(listed):
            raise RVLError(f"the stream ends after {covered} of {num_pixels} pixels: it is truncated")
        zeros, nonzeros = listed[index], listed[index + 1]
        heads.append(index)
        runs += (zeros, nonzeros)
        covered += zeros + nonzeros
        index += 2 + nonzeros
    if covered > num_pixels:
        raise RVLError(f"the runs cover {covered} pixels, more than the image's {num_pixels}: the stream is corrupt")
    if index > len(listed):
        raise RVLError("the stream ends inside a run of non-zero pixels: it is truncated")

    is_count = np.zeros(index, bool)
    is_count[heads] = True
    is_count[np.asarray(heads) + 1] = True
    codes = numbers[:index][~is_count]
    deltas = (codes >> 1) ^ -(codes & 1)  # zigzag back to signed; int32 wraps like the uint16 it feeds
    nonzero = np.repeat(np.tile([False, True], len(heads)), runs)
    pixels = np.zeros(num_pixels, np.uint16)
    pixels[nonzero] = np.cumsum(deltas) & 0xFFFF  # each pixel is the previous non-zero one plus its delta
    return pixels


def encode(image: np.ndarray) -> bytes:
    """uint16 pixels (any shape; row order) -> RVL bytes, as compressed_depth_image_transport writes them."""
    if image.dtype != np.uint16:
        raise ValueError(f"RVL codes 16-bit pixels, not {image.dtype}")
    flat = np.ascontiguousarray(image).reshape(-1)
    if flat.size >= 1 << 30:
        raise ValueError(f"{flat.size} pixels: RVL counts here hold fewer than 2^30")
    nonzero = flat != 0
    bounds = np.concatenate(([0], np.flatnonzero(nonzero[1:] != nonzero[:-1]) + 1, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and nonzero[0]:
        runs.insert(0, 0)  # the stream always opens with a (possibly empty) run of zeros
    if len(runs) % 2:
        runs.append(0)  # and each run of zeros is followed by a (possibly empty) run of non-zeros
    pairs = np.asarray(runs, np.int64).reshape(-1, 2)

    values = flat[nonzero].astype(np.int64)
    deltas = np.diff(values, prepend=0)
    codes = np.where(deltas >= 0, 2 * deltas, -2 * deltas - 1)

    # numbers: zeros_0, nonzeros_0, codes of run 0, zeros_1, nonzeros_1, codes of run 1, ...
    heads = 2 * np.arange(len(pairs)) + np.cumsum(pairs[:, 1]) - pairs[:, 1]
    numbers = np.empty(2 * len(pairs) + codes.size, np.int64)
    is_count = np.zeros(numbers.size, bool)
    is_count[heads] = is_count[heads + 1] = True
    numbers[heads], numbers[heads + 1] = pairs[:, 0], pairs[:, 1]
    numbers[~is_count] = codes

    groups = 1 + np.searchsorted(_GROUP_THRESHOLDS, numbers, side="right")
    owner = np.repeat(numbers, groups)
    group_index = np.arange(groups.sum()) - np.repeat(np.cumsum(groups) - groups, groups)
    more = group_index < np.repeat(groups, groups) - 1
    nibbles = ((owner >> (3 * group_index)) & 7) | (more.astype(np.int64) << 3)
    nibbles = np.concatenate((nibbles, np.zeros(-nibbles.size % 8, np.int64))).reshape(-1, 8)
    words = (nibbles.astype(np.uint32) << _NIBBLE_SHIFTS).sum(axis=1, dtype=np.uint32)
    return words.astype("<u4").tobytes()
