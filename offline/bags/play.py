"""`rgbd-fusion-seg bag play`: publish a bag's topics into live ROS topics with their recorded timing.

    rgbd-fusion-seg bag play BAG [--topics T ...] [--rate 0.5] [--start-offset 2.0] [--loop]
                             [--remap /old:=/new ...] [--clock [HZ]] [--decompress]

Messages go out as recorded (their serialised bytes, no re-encoding) on publishers with reliable QoS, at
recorded time / rate. `--clock` also publishes rosgraph_msgs/Clock on /clock (the bag's time) for nodes run
with use_sim_time. `--decompress` turns sensor_msgs/CompressedImage topics (jpeg, png, compressedDepth png/rvl)
into sensor_msgs/Image on the image_transport base topic (`.../compressed` -> `...`), which is what
segment_node subscribes to. Topics whose message type has no Python package here are skipped with a warning;
so are types outside ROS 2's own message packages (PLAYABLE_PACKAGES): a bag's type names are never imported.
"""
from __future__ import annotations

import argparse
import importlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .reading import (COMPRESSED, IMAGE, BagError, describe_topics, deserialize, messages, open_bag, pixels, stamp_ns,
                      typestore)
from .writing import image_message, serialize

COMPRESSED_SUFFIXES = ("/compressedDepth", "/compressed")


@dataclass
class PlayOptions:
    topics: list[str] | None = None  # None: every topic that can be published
    rate: float = 1.0  # playback speed factor
    start_offset: float = 0.0  # seconds into the bag
    loop: bool = False
    remap: dict[str, str] = field(default_factory=dict)
    clock_hz: float = 0.0  # > 0: publish /clock at this rate (and with every message)
    decompress: bool = False
    qos_depth: int = 10


@dataclass
class Played:
    """One published message: where it came from and what went out."""

    source_topic: str
    topic: str
    msgtype: str
    data: bytes  # what was published (the recorded bytes, or the decompressed Image)
    msg: object  # the recorded message, deserialised (None for types other than images)
    recorded_ns: int
    wall_ns: int  # time.time_ns() just before publish()


# The message packages whose types bag play publishes: ROS 2's own (common_interfaces, rcl_interfaces, tf2 and
# friends), all generated message code. A bag's type names are read from the file, so they are never imported
# as they stand: a type is played only if it names one of these packages AND the rosbags type store defines it;
# only then is `<package>.msg` imported. (rmw_dds_common, DDS discovery internals, is left out: replaying it
# would confuse the ROS graph.)
PLAYABLE_PACKAGES = frozenset({
    "action_msgs", "actionlib_msgs", "builtin_interfaces", "diagnostic_msgs", "geometry_msgs", "lifecycle_msgs",
    "nav_msgs", "rcl_interfaces", "rosbag2_interfaces", "rosgraph_msgs", "sensor_msgs", "shape_msgs",
    "statistics_msgs", "std_msgs", "stereo_msgs", "tf2_msgs", "trajectory_msgs", "unique_identifier_msgs",
    "visualization_msgs",
})


def message_class(msgtype: str):
    """(the rclpy message class of 'pkg/msg/Name', None) or (None, why it cannot be played here)."""
    package, _, name = msgtype.partition("/msg/")
    if package not in PLAYABLE_PACKAGES or msgtype not in typestore().fielddefs:
        return None, ("it is not a type of ROS 2's own message packages (std_msgs, sensor_msgs, geometry_msgs, "
                      f"tf2_msgs and {len(PLAYABLE_PACKAGES) - 4} more), and bag play never imports a module a bag "
                      "names")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name), None
    except (ImportError, AttributeError) as error:
        return None, f"{package} is not installed or lacks {name} ({error})"


def decompressed_topic(topic: str) -> str:
    for suffix in COMPRESSED_SUFFIXES:
        if topic.endswith(suffix) and len(topic) > len(suffix):
            return topic[: -len(suffix)]
    return topic


def playback_rate(text: str) -> float:
    """argparse type of --rate: refused at once (not after a node has started) unless a number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a speed factor > 0 (1.0 = recorded speed), got {text!r}")
    return value


def parse_remaps(items) -> dict[str, str]:
    remap = {}
    for item in items or []:
        source, separator, target = item.partition(":=")
        if not separator or not source or not target:
            raise ValueError(f"bad --remap {item!r}; expected /recorded/topic:=/new/topic")
        remap[source] = target
    return remap


class Player:
    """Publishes a bag from the calling thread through `node` (an rclpy node spun elsewhere, or not at all)."""

    def __init__(self, node, bag, options: PlayOptions, on_played: Callable[[Played], None] | None = None, log=print):
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.options, self.on_played, self.log = options, on_played, log
        if options.rate <= 0:
            raise ValueError(f"--rate must be positive, got {options.rate}")
        self.reader = open_bag(bag)
        try:
            self._plan(node, QoSProfile(depth=options.qos_depth, reliability=ReliabilityPolicy.RELIABLE))
        except BaseException:
            self.reader.close()
            raise

    def _plan(self, node, qos) -> None:
        options, reader = self.options, self.reader
        wanted = options.topics or [c.topic for c in reader.connections]
        unknown = [t for t in wanted if t not in {c.topic for c in reader.connections}]
        if unknown:
            raise BagError(f"bag {reader.path} has no topic {', '.join(map(repr, unknown))}; its topics:\n"
                           f"{describe_topics(reader)}")
        self.connections, self.routes, self.publishers = [], {}, {}
        for connection in (c for c in reader.connections if c.topic in wanted):
            decompress = options.decompress and connection.msgtype == COMPRESSED
            msgtype = IMAGE if decompress else connection.msgtype
            topic = options.remap.get(connection.topic, decompressed_topic(connection.topic) if decompress else connection.topic)
            cls, why_not = message_class(msgtype)
            if cls is None:
                if options.topics:
                    raise BagError(f"topic {connection.topic!r} in bag {reader.path} has type {msgtype}, which has no "
                                   f"Python message package here (rclpy cannot publish it): {why_not}")
                self.log(f"skipping {connection.topic} ({msgtype}): no Python message package for it here: {why_not}")
                continue
            clash = [source for source, target in self.routes.items() if target == topic]
            if clash:
                raise BagError(f"{clash[0]!r} and {connection.topic!r} in bag {reader.path} would both be played on "
                               f"{topic!r}; use --remap to separate them")
            self.connections.append(connection)
            self.routes[connection.topic] = topic
            self.publishers[connection.topic] = (node.create_publisher(cls, topic, qos), msgtype, decompress)
        if not self.connections:
            raise BagError(f"nothing to play in {reader.path}; its topics:\n{describe_topics(reader)}")
        self.clock = None
        if options.clock_hz > 0:
            try:
                from rosgraph_msgs.msg import Clock
            except ImportError:
                self.log("warning: --clock needs the Python package rosgraph_msgs (PyPI: ros-rosgraph-msgs; a ROS "
                         "distro: ros-<distro>-rosgraph-msgs); playing without /clock")
            else:
                self.clock = (node.create_publisher(Clock, "/clock", 10), Clock)

    def describe(self) -> str:
        return "\n".join(f"  {c.topic} ({c.msgtype}, {c.msgcount} messages) -> {self.routes[c.topic]}"
                         f"{' (decompressed to ' + IMAGE + ')' if self.publishers[c.topic][2] else ''}"
                         for c in self.connections)

    def subscriber_counts(self) -> dict[str, int]:
        return {topic: publisher.get_subscription_count() for topic, (publisher, _, _) in self.publishers.items()}

    def _publish_clock(self, recorded_ns: int) -> None:
        publisher, cls = self.clock
        msg = cls()
        msg.clock.sec, msg.clock.nanosec = divmod(int(recorded_ns), 1_000_000_000)
        publisher.publish(msg)

    def _wait(self, target: float, wall0: float, bag0: int, stop: threading.Event | None) -> bool:
        """Sleep until monotonic `target`, publishing /clock meanwhile; False if stopped."""
        while True:
            if stop is not None and stop.is_set():
                return False
            now = time.monotonic()
            if now >= target:
                return True
            if self.clock is not None:
                self._publish_clock(bag0 + int((now - wall0) * self.options.rate * 1e9))
                time.sleep(min(target - now, 1.0 / self.options.clock_hz))
            else:
                time.sleep(min(target - now, 0.1))

    def run(self, stop: threading.Event | None = None) -> dict:
        """Play (once, or until `stop` with loop); returns {topic: messages published, "seconds": wall time}."""
        options = self.options
        first = self.reader.start_time
        bag0 = first + int(options.start_offset * 1e9)
        if bag0 >= self.reader.end_time:
            raise BagError(f"--start-offset {options.start_offset} s is past the end of {self.reader.path} "
                           f"({(self.reader.end_time - first) / 1e9:.3f} s long)")
        counts = {c.topic: 0 for c in self.connections}
        started = time.monotonic()
        while True:
            wall0 = time.monotonic()
            for connection, recorded, raw in messages(self.reader, self.connections):
                if recorded < bag0:
                    continue
                if not self._wait(wall0 + (recorded - bag0) / 1e9 / options.rate, wall0, bag0, stop):
                    return dict(counts, seconds=time.monotonic() - started)
                self._publish(connection, recorded, raw)
                counts[connection.topic] += 1
            if not options.loop or (stop is not None and stop.is_set()):
                return dict(counts, seconds=time.monotonic() - started)

    def _publish(self, connection, recorded: int, raw: bytes) -> None:
        publisher, msgtype, decompress = self.publishers[connection.topic]
        msg = deserialize(raw, connection) if connection.msgtype in (IMAGE, COMPRESSED) else None
        data = bytes(raw)
        if decompress:
            image, encoding = pixels(msg, connection.topic)
            data = serialize(image_message(image, encoding, stamp_ns(msg), msg.header.frame_id))
        if self.clock is not None:
            self._publish_clock(recorded)
        wall = time.time_ns()
        publisher.publish(data)
        if self.on_played is not None:
            self.on_played(Played(connection.topic, self.routes[connection.topic], msgtype, data, msg, recorded, wall))

    def close(self) -> None:
        self.reader.close()


def add_arguments(parser) -> None:
    parser.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap)")
    parser.add_argument("--topics", nargs="+", default=None, help="topics to play (default: all)")
    parser.add_argument("--rate", type=playback_rate, default=1.0, help="speed factor (default 1.0)")
    parser.add_argument("--start-offset", type=float, default=0.0, help="start this many seconds into the bag")
    parser.add_argument("--loop", action="store_true", help="play again from the start until Ctrl-C")
    parser.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="publish a recorded topic under another name")
    parser.add_argument("--clock", type=float, nargs="?", const=40.0, default=0.0, metavar="HZ",
                        help="publish /clock (rosgraph_msgs/Clock) at HZ (default 40) for use_sim_time nodes")
    parser.add_argument("--decompress", action="store_true",
                        help="publish CompressedImage topics as sensor_msgs/Image on the base topic (what the node takes)")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds to wait for subscribers to connect (default 1)")


def run(args) -> int:
    from rgbd_fusion_seg.offline.node_harness import RosSession

    options = PlayOptions(topics=args.topics, rate=args.rate, start_offset=args.start_offset, loop=args.loop,
                          remap=parse_remaps(args.remap), clock_hz=args.clock, decompress=args.decompress)
    session = RosSession("rgbd_fusion_seg_bag_player")
    player = None
    try:
        player = Player(session.node, args.bag, options)
        print(f"playing {player.reader.path} at {options.rate:g}x{' in a loop' if options.loop else ''}:\n{player.describe()}",
              flush=True)
        time.sleep(max(args.delay, 0.0))
        counts = player.run()
        seconds = counts.pop("seconds")
        print(f"played {sum(counts.values())} messages in {seconds:.2f} s", flush=True)
        time.sleep(0.5)  # let reliable publishers hand the last messages over
    finally:
        if player is not None:
            player.close()
        session.close()
    return 0
