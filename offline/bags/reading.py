"""Reading rosbag2 bags with `rosbags`: errors that name the bag, the topic and the message type.

Messages are deserialised with the ROS 2 Humble type store of `rosbags` (sensor_msgs/Image and
CompressedImage have not changed since); image pixels go through the node's own codec
(`rgbd_fusion_seg.serving.image_codec`), so a bag decodes exactly as the live node decodes the same stream.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from rgbd_fusion_seg.offline.node_harness import stamp_of as stamp_ns  # header stamp in ns, rclpy and rosbags messages alike
from rgbd_fusion_seg.ros.messages import colour_from_msg
from rgbd_fusion_seg.serving.image_codec import ImageDecodeError, decompress, pixel_view

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED)


class BagError(ValueError):
    """A bag that is missing, unreadable, or lacks what was asked of it; the message names bag and topic."""


@functools.lru_cache(maxsize=1)
def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def bag_folder(path) -> Path:
    """The bag's folder (a bag's .mcap/.db3 file is accepted too); BagError if there is no bag there."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BagError(f"no bag at {path} (expected a rosbag2 folder with metadata.yaml)")
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is not a rosbag2 bag: no metadata.yaml in it")
    return path


def open_bag(path):
    """An opened rosbags Reader (close it, or use `with`); BagError for a missing, truncated or corrupt bag."""
    from rosbags.rosbag2 import Reader

    folder = bag_folder(path)
    try:
        reader = Reader(folder)
        reader.open()
    except Exception as error:  # rosbags raises ReaderError, and sqlite3/mcap errors for damaged files
        raise BagError(f"cannot read bag {folder}: {type(error).__name__}: {error}") from None
    return reader


def reading(path):
    """`with reading(path) as reader:` an opened bag, closed at the end."""
    return contextlib.closing(open_bag(path))


def describe_topics(reader) -> str:
    lines = [f"  {c.topic} ({c.msgtype}, {c.msgcount} messages)" for c in reader.connections]
    return "\n".join(lines) if lines else "  (no topics)"


def image_connection(reader, topic: str, role: str):
    """The connection of image topic `topic`; BagError listing the bag's topics if it has none such."""
    found = [c for c in reader.connections if c.topic == topic]
    if not found:
        raise BagError(f"bag {reader.path} has no topic {topic!r} (asked for as the {role} topic); its topics:\n"
                       f"{describe_topics(reader)}")
    connection = found[0]
    if connection.msgtype not in IMAGE_TYPES:
        raise BagError(f"topic {topic!r} in bag {reader.path} has type {connection.msgtype}; the {role} topic must "
                       f"be {IMAGE} or {COMPRESSED}")
    if connection.msgcount == 0:
        raise BagError(f"topic {topic!r} in bag {reader.path} has no messages")
    return connection


def messages(reader, connections) -> Iterator[tuple[object, int, bytes]]:
    """(connection, recorded time ns, serialised message) in recorded order; BagError if the file breaks off."""
    try:
        yield from reader.messages(connections=connections)
    except Exception as error:  # a damaged file fails part way through
        raise BagError(f"bag {reader.path} could not be read to the end: {type(error).__name__}: {error}") from None


def deserialize(raw: bytes, connection):
    store = typestore()
    if connection.msgtype not in store.types:
        raise BagError(f"message type {connection.msgtype} of topic {connection.topic!r} is not known to the "
                       f"rosbags type store; only {IMAGE} and {COMPRESSED} topics are used")
    try:
        return store.deserialize_cdr(raw, connection.msgtype)
    except Exception as error:
        raise BagError(f"a {connection.msgtype} message on {connection.topic!r} cannot be deserialised "
                       f"({len(raw)} bytes): {type(error).__name__}: {error}") from None


def pixels(msg, topic: str) -> tuple[np.ndarray, str]:
    """(pixels laid out as the image's encoding, encoding) of an Image (a view) or CompressedImage message."""
    try:
        if hasattr(msg, "format"):
            return decompress(msg.format, msg.data)
        view = pixel_view(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
        return view, msg.encoding
    except ImageDecodeError as error:
        raise ImageDecodeError(f"topic {topic!r}: {error}") from None


def colour_of(msg, topic: str) -> np.ndarray:
    """HxWx3 uint8 RGB of an Image or CompressedImage message."""
    try:
        return colour_from_msg(msg)
    except ImageDecodeError as error:
        raise ImageDecodeError(f"topic {topic!r}: {error}") from None


@dataclass
class ImageTopic:
    """What a topic carries, from its first message."""

    topic: str
    msgtype: str
    encoding: str
    height: int
    width: int
    count: int


def first_image(reader, connection) -> ImageTopic:
    for conn, _, raw in messages(reader, [connection]):
        image, encoding = pixels(deserialize(raw, conn), conn.topic)
        return ImageTopic(conn.topic, conn.msgtype, encoding, image.shape[0], image.shape[1], conn.msgcount)
    raise BagError(f"topic {connection.topic!r} in bag {reader.path} has no messages")
