"""Writing rosbag2 bags with `rosbags`, and output folders that are complete or absent.

`rosbags.rosbag2.Writer` used as a context manager *aborts* on an exception (no metadata.yaml: not a bag).
`BagWriter` closes instead, so an evaluation interrupted by an error or Ctrl-C leaves a valid bag holding
what was written so far. Writes are serialised by a lock: recorder callbacks and the player write from
different threads.

`new_output_folder` is for outputs that are only useful whole (`bag export`'s data set, `bag import`'s
bag): they are written beside their path and renamed into place at the end, so a failed run leaves
nothing there and the same command can simply be run again.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from rgbd_fusion_seg.serving.image_codec import compress, encode_as

from .reading import COMPRESSED, IMAGE, BagError, typestore

STORAGES = ("mcap", "sqlite3")


class OutputNotWrittenError(OSError):
    """Writing an output failed (disk full, I/O error); its partial files were removed."""


def refuse_existing_output(out: Path, what: str) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise BagError(f"{what} {out} exists already and is not an empty folder; choose a new path "
                       "(outputs are never overwritten)")


@contextlib.contextmanager
def new_output_folder(out, what: str) -> Iterator[Path]:
    """The path to write folder `out` at: a hidden sibling, renamed to `out` when the block ends without
    error and deleted when it does not. A failure's message then says that nothing was written to `out`.
    (A SIGKILL leaves the hidden `.<name>.*.partial` sibling, never a partial `out`.)"""
    from rosbags.rosbag2 import WriterError

    out = Path(out).expanduser()
    refuse_existing_output(out, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield staging / out.name  # named as `out`: a bag's files are named after its folder
        os.replace(staging / out.name, out)  # atomic; `out` is absent or an empty folder
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        removed = f"nothing was written to {out} (the partial {what} was removed; run the command again)"
        if isinstance(error, BagError):
            raise BagError(f"{error}; {removed}") from error
        if isinstance(error, (OSError, sqlite3.Error, WriterError)):
            from rgbd_fusion_seg.core.checkpoint import write_failure_cause

            raise OutputNotWrittenError(f"writing {what} {out} failed: {write_failure_cause(error) or error}; "
                                        f"{removed}") from error
        raise
    staging.rmdir()


class BagWriter:
    def __init__(self, path, storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}; expected one of {', '.join(STORAGES)}")
        self.path = Path(path).expanduser()
        if self.path.exists():
            raise BagError(f"output bag {self.path} exists already; choose a new path (bags are never overwritten)")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._connections: dict[str, object] = {}
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.closed = False

    def write(self, topic: str, msgtype: str, timestamp_ns: int, raw: bytes) -> None:
        """One serialised (CDR) message; the topic is added on first use."""
        with self._lock:
            if self.closed:
                return  # a late callback after close: dropped, the bag is final
            connection = self._connections.get(topic)
            if connection is None:
                connection = self._writer.add_connection(topic, msgtype, typestore=typestore())
                self._connections[topic] = connection
            elif connection.msgtype != msgtype:
                raise BagError(f"topic {topic!r} is {connection.msgtype} in {self.path}, cannot also write {msgtype}")
            self._writer.write(connection, int(timestamp_ns), bytes(raw))
            self.counts[topic] = self.counts.get(topic, 0) + 1

    def write_message(self, topic: str, timestamp_ns: int, msg) -> None:
        self.write(topic, msg.__msgtype__, timestamp_ns, serialize(msg))

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def serialize(msg) -> bytes:
    return bytes(typestore().serialize_cdr(msg, msg.__msgtype__))


def _header(stamp_ns: int, frame_id: str):
    store = typestore()
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return store.types["std_msgs/msg/Header"](store.types["builtin_interfaces/msg/Time"](sec, nanosec), frame_id)


def image_message(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """Pixels laid out as `encoding` -> a rosbags sensor_msgs/Image (little endian, unpadded rows)."""
    encoding, height, width, step, data = encode_as(image, encoding)
    return typestore().types[IMAGE](_header(stamp_ns, frame_id), height, width, encoding, 0, step,
                                    np.frombuffer(data, np.uint8))


def compressed_message(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str, kind: str):
    """Pixels laid out as `encoding` -> a rosbags sensor_msgs/CompressedImage (jpeg, png or compressedDepth)."""
    format, data = compress(image, encoding, kind)
    return typestore().types[COMPRESSED](_header(stamp_ns, frame_id), format, np.frombuffer(data, np.uint8))
