"""The test recordings: ROS 2's own bags from test/data/rosbag2, and camera bags built from real frames.

The camera bags are built at test time (the frames are small, the bags are not) with the package's own bag
writer, in the layout of real drivers: two streams at a camera rate, aux stamps jittering against colour
stamps (seeded: every build is identical), different optical frame_ids, and each message recorded a little
after its stamp, as a recorder receives it. Stamps are float seconds split into (sec, nanosec), as drivers
that keep time in a double do: 0.3 s past the start reads as 299999952 ns.

- rgbd_indoor (mcap): the ESANet frames, rgb8 + 16UC1 at 512x424, plus the colour stream as jpeg; 8 frames
  at 15 Hz, shifted by 2 px per frame; depth jitter up to 6 ms.
- rgbt_layout (sqlite3): the layout of an RGB-thermal driver (bgr8 + mono8 at 1280x720, 6 frames at 10 Hz,
  aux jitter up to 20 ms) built from the ESANet frames: its mono8 stream is the depth frame's high byte,
  a real sensor's single-channel image but not a thermal one. No permissively licensed real thermal frame
  exists offline; `pst900_bag` builds the same layout from the PST900 frames where they are available.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DATA = Path(__file__).resolve().parent / "data"
RECORDED_BAGS = ("talker_mcap", "talker_sqlite3", "cdr_test_mcap", "cdr_test_sqlite3")


@dataclass(frozen=True)
class CameraBag:
    """Where and how a two-stream camera bag is recorded."""

    storage: str
    rate_hz: float
    start_s: float
    colour: tuple[str, str, str]  # topic, encoding, frame_id
    aux: tuple[str, str, str]
    aux_jitter_s: float
    aux_receive_delay_s: float
    shift_px_per_frame: int = 0
    jpeg_topic: str | None = None


INDOOR = CameraBag("mcap", 15.0, 1_700_000_000.0,
                   ("/camera/color/image_raw", "rgb8", "camera_color_optical_frame"),
                   ("/camera/depth/image_rect_raw", "16UC1", "camera_depth_optical_frame"),
                   aux_jitter_s=0.006, aux_receive_delay_s=0.002, shift_px_per_frame=2,
                   jpeg_topic="/camera/color/image_raw/compressed")
RGBT = CameraBag("sqlite3", 10.0, 1_700_000_100.0,
                 ("/rgb/image_raw", "bgr8", "rgb_optical_frame"),
                 ("/thermal/image_raw", "mono8", "thermal_optical_frame"),
                 aux_jitter_s=0.020, aux_receive_delay_s=0.003)
COLOUR_RECEIVE_DELAY_S = 0.001
JPEG_RECEIVE_DELAY_S = 0.0015


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f"cannot read the test frame {path}")
    return image


def indoor_frames() -> tuple[np.ndarray, np.ndarray]:
    """The ESANet RGB-D frames: rgb8 (RGB order) and 16UC1 depth, 512x424."""
    return read_png(DATA / "rgbd_indoor_rgb.png")[..., ::-1], read_png(DATA / "rgbd_indoor_depth16.png")


def rgbt_layout_frames() -> tuple[np.ndarray, np.ndarray]:
    """bgr8 and mono8 at 1280x720 from the ESANet frames (the mono8 one is depth, not thermal)."""
    bgr = read_png(DATA / "rgbd_indoor_rgb.png")
    mono = (read_png(DATA / "rgbd_indoor_depth16.png") >> 8).astype(np.uint8)
    size = (1280, 720)
    return cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR), cv2.resize(mono, size, interpolation=cv2.INTER_NEAREST)


def _stamp(seconds: float) -> int:
    whole = int(seconds)
    return whole * 1_000_000_000 + round((seconds - whole) * 1e9)


def write_camera_bag(path: Path, layout: CameraBag, colour: np.ndarray, aux: np.ndarray, frames: int,
                     seed: int) -> Path:
    """`frames` pairs of (shifted) `colour` and `aux`, recorded in receive order."""
    from rgbd_fusion_seg.offline.bags.writing import BagWriter, compressed_message, image_message

    rng = np.random.default_rng(seed)
    records = []  # (receive time ns, topic, message)
    for index in range(frames):
        shift = index * layout.shift_px_per_frame
        colour_s = layout.start_s + index / layout.rate_hz
        aux_s = colour_s + rng.uniform(-layout.aux_jitter_s, layout.aux_jitter_s)
        (colour_topic, colour_encoding, colour_frame), (aux_topic, aux_encoding, aux_frame) = layout.colour, layout.aux
        colour_image, aux_image = np.roll(colour, shift, axis=1), np.roll(aux, shift, axis=1)
        records.append((_stamp(colour_s + COLOUR_RECEIVE_DELAY_S), colour_topic,
                        image_message(colour_image, colour_encoding, _stamp(colour_s), colour_frame)))
        records.append((_stamp(aux_s + layout.aux_receive_delay_s), aux_topic,
                        image_message(aux_image, aux_encoding, _stamp(aux_s), aux_frame)))
        if layout.jpeg_topic:
            records.append((_stamp(colour_s + JPEG_RECEIVE_DELAY_S), layout.jpeg_topic,
                            compressed_message(colour_image, colour_encoding, _stamp(colour_s), colour_frame, "jpeg")))
    with BagWriter(path, layout.storage) as writer:
        for received, topic, msg in sorted(records, key=lambda record: record[0]):
            writer.write_message(topic, received, msg)
    return path


def build_test_bags(folder: Path) -> Path:
    """All test bags under `folder`: the recorded ones copied, the camera ones built."""
    for name in RECORDED_BAGS:
        shutil.copytree(DATA / "rosbag2" / name, folder / name)
    write_camera_bag(folder / "rgbd_indoor", INDOOR, *indoor_frames(), frames=8, seed=15)
    write_camera_bag(folder / "rgbt_layout", RGBT, *rgbt_layout_frames(), frames=6, seed=10)
    return folder


def pst900_bag(folder: Path, realdata: Path) -> Path:
    """The RGB-thermal layout built from the real PST900 frames (bgr8 on disk, mono8 thermal)."""
    return write_camera_bag(folder / "rgbt_subterranean", RGBT, read_png(realdata / "pst900_rgb.png"),
                            read_png(realdata / "pst900_thermal_mono8.png"), frames=6, seed=10)
