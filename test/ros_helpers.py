"""Helpers for the ROS-level tests: test checkpoints, the node as a subprocess, an in-test rclpy client, bags.

Each test module runs in its own ROS domain (`domain_id_for`) and its own rclpy Context, so modules do not
see each other's nodes, nor the nodes of anything else running on the machine.
"""
from __future__ import annotations

import array
import os
import time
from pathlib import Path

import numpy as np
import pytest

from rgbd_fusion_seg.offline.node_harness import NodeProcess, ros_environment

REPO = Path(__file__).resolve().parents[1]


def domain_id_for(salt: int) -> int:
    """A ROS domain for one test module, different per process and module (Fast DDS allows 0..232)."""
    return 1 + (os.getpid() * 7 + salt * 31) % 200


def build_checkpoint(method="rgb", num_classes=4, *, model=None, modality="depth", unit="m", low=0.0, high=5.0,
                     input_size=(64, 64), preprocessing=None, seed=0, num_classes_in_weights=None, options=None,
                     data=None):
    """The tests' checkpoint: of `model`, else of random weights (fine for plumbing) built from `options`;
    `num_classes_in_weights` makes weights that do not fit; `preprocessing` replaces the one made of
    `input_size` and the aux range; `data` adds to what it says it was trained on (e.g. {"aux_dropout": 0.5})."""
    import torch

    from rgbd_fusion_seg.core.checkpoint import Checkpoint
    from rgbd_fusion_seg.core.palette import default_palette
    from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing
    from rgbd_fusion_seg.models import build_model

    if model is None:
        torch.manual_seed(seed)
        model = build_model(method, num_classes_in_weights or num_classes, **(options or {}))
    return Checkpoint(
        method=method,
        num_classes=num_classes,
        classes=[f"class{i}" for i in range(num_classes)],
        palette=default_palette(num_classes),
        preprocessing=preprocessing or Preprocessing(input_size=input_size, aux=AuxNormalisation(modality, unit, low, high)),
        state_dict=model.state_dict(),
        options=dict(options or {}),
        data={"dataset": "test", **(data or {})},
    )


def make_checkpoint(path, method="rgb", **details) -> Path:
    """`build_checkpoint(method, **details)` saved at `path`; returns the path."""
    from rgbd_fusion_seg.core.checkpoint import save_checkpoint

    return save_checkpoint(build_checkpoint(method, **details), path)


# ---- the node as a subprocess ---------------------------------------------------------------------------


def start_node(log_path, domain_id: int, parameters: dict | None = None, remaps: dict | None = None,
               params_file=None) -> NodeProcess:
    """The segment_node of this source tree in a child process, in ROS domain `domain_id`, its output in
    `log_path` (the harness's NodeProcess, as the demo and the bag tools start it)."""
    env = ros_environment(domain_id)
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
        "OMP_NUM_THREADS": "1",  # the test machine has 2 cores; leave one to the test process
    })
    return NodeProcess(None, params_file=params_file, parameters=parameters, remappings=remaps, env=env,
                       log_path=log_path)


# ---- an in-test rclpy client ------------------------------------------------------------------------------


class RosClient:
    """Publishes rgb/aux images, collects the node's outputs, sets its parameters; spins in the test thread."""

    OUTPUTS = ("mask", "mask_color", "overlay", "confidence", "fused_image")

    def __init__(self, domain_id: int, node_name: str = "/segment_node", reliable_inputs: bool = True,
                 rgb_topic: str = "rgb/image", aux_topic: str = "aux/image", input_type=None):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticStatus
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter_client import AsyncParameterClient
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"test_client_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE if reliable_inputs else ReliabilityPolicy.BEST_EFFORT)
        self.rgb_pub = self.node.create_publisher(input_type or Image, rgb_topic, qos)
        self.aux_pub = self.node.create_publisher(input_type or Image, aux_topic, qos)
        self.received: dict[str, list] = {name: [] for name in self.OUTPUTS}
        self.stats: list[dict[str, str]] = []
        self.node_name = node_name
        out_qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for name in self.OUTPUTS:
            self.node.create_subscription(Image, f"{node_name}/{name}", self.received[name].append, out_qos)
        self.node.create_subscription(
            DiagnosticStatus, f"{node_name}/stats",
            lambda msg: self.stats.append({kv.key: kv.value for kv in msg.values} | {"_level": msg.level,
                                                                                   "_message": msg.message}),
            out_qos,
        )
        self.parameters = AsyncParameterClient(self.node, node_name)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=min(0.05, max(0.0, deadline - time.monotonic())))

    def spin_until(self, predicate, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for_node(self, timeout: float = 20.0, outputs=("mask", "mask_color")) -> None:
        """Until the node's subscriptions see our publishers and our subscriptions see its publishers."""
        def matched():
            return (
                self.rgb_pub.get_subscription_count() > 0
                and self.aux_pub.get_subscription_count() > 0
                and all(self.node.count_publishers(f"{self.node_name}/{name}") > 0 for name in outputs)
                and self.node.count_publishers(f"{self.node_name}/stats") > 0
            )
        self.spin_until(matched, timeout, "the node's topics to match")
        self.spin_until(lambda: self.parameters.services_are_ready(), timeout, "the parameter services")

    def publish_pair(self, rgb_msg, aux_msg) -> None:
        self.rgb_pub.publish(rgb_msg)
        self.aux_pub.publish(aux_msg)

    def stamps(self, output: str = "mask") -> list[int]:
        return [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in self.received[output]]

    def wait_for_stamp(self, stamp: int, output: str = "mask", timeout: float = 15.0) -> None:
        self.spin_until(lambda: stamp in self.stamps(output), timeout, f"{output} with stamp {stamp}")

    def prime(self, next_stamp, make_pair, timeout: float = 30.0) -> None:
        """Publish pairs `make_pair(stamp)` until one comes back: discovery is done both ways and a model serves."""
        deadline = time.monotonic() + timeout
        while True:
            stamp = next_stamp()
            self.publish_pair(*make_pair(stamp))
            try:
                self.wait_for_stamp(stamp, timeout=0.5)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def fresh_stats(self, timeout: float = 15.0, predicate=None) -> dict[str, str]:
        """The next stats message (that satisfies `predicate`, if given)."""
        start = len(self.stats)

        def ready():
            return any(predicate is None or predicate(s) for s in self.stats[start:])

        self.spin_until(ready, timeout, "a stats message")
        return next(s for s in reversed(self.stats[start:]) if predicate is None or predicate(s))

    def set_parameters(self, values: dict, timeout: float = 15.0):
        future = self.parameters.set_parameters([_parameter(name, value) for name, value in values.items()])
        self.spin_until(future.done, timeout, "set_parameters")
        return future.result().results

    def set_parameters_atomically(self, values: dict, timeout: float = 15.0):
        future = self.parameters.set_parameters_atomically([_parameter(name, value) for name, value in values.items()])
        self.spin_until(future.done, timeout, "set_parameters_atomically")
        return future.result().result

    def get_parameters(self, names, timeout: float = 15.0) -> dict:
        from rclpy.parameter import parameter_value_to_python

        future = self.parameters.get_parameters(list(names))
        self.spin_until(future.done, timeout, "get_parameters")
        return {name: parameter_value_to_python(value) for name, value in zip(names, future.result().values)}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def client_fixture(domain_id: int, **options):
    """A module-scoped pytest fixture: one RosClient(domain_id, **options) for all of a module's tests,
    closed after the last. Use as `client = client_fixture(DOMAIN)` at module level."""

    @pytest.fixture(scope="module")
    def client():
        ros = RosClient(domain_id, **options)
        yield ros
        ros.close()

    return client


def _parameter(name, value):
    from rclpy.parameter import Parameter

    if isinstance(value, (list, tuple)) and (not value or all(isinstance(v, float) for v in value)):
        return Parameter(name, Parameter.Type.DOUBLE_ARRAY, list(value))  # [] alone would be a byte array
    return Parameter(name, value=value)


# ---- messages ------------------------------------------------------------------------------------------


class Stamps:
    """Unique, increasing, current stamps (so that latency is meaningful)."""

    def __init__(self):
        self.last = 0

    def __call__(self) -> int:
        self.last = max(time.time_ns(), self.last + 10_000_000)
        return self.last


def image_msg(array_or_bytes, encoding: str, height: int, width: int, step: int, stamp_ns: int,
              frame_id: str = "camera", is_bigendian: bool = False):
    """A sensor_msgs/Image with exactly these fields (nothing is checked: tests build bad ones too)."""
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.step = height, width, step
    msg.encoding, msg.is_bigendian = encoding, is_bigendian
    data = array_or_bytes.tobytes() if isinstance(array_or_bytes, np.ndarray) else bytes(array_or_bytes)
    msg.data = array.array("B", data)
    return msg


def compressed_msg(image: np.ndarray, encoding: str, kind: str, stamp_ns: int, frame_id: str = "camera"):
    """A sensor_msgs/CompressedImage as image_transport's publishers write it (image_codec.compress)."""
    from sensor_msgs.msg import CompressedImage

    from rgbd_fusion_seg.serving.image_codec import compress

    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.format, data = compress(image, encoding, kind)
    msg.data = array.array("B", data)
    return msg


def random_pair(stamp_ns: int, height=48, width=64, depth_encoding="16UC1", frame_id="camera", seed=None):
    """An rgb8 image and a 16UC1 (mm) or other aux image with the same stamp."""
    rng = np.random.default_rng(seed if seed is not None else stamp_ns % (2**32))
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgb_msg = image_msg(rgb, "rgb8", height, width, width * 3, stamp_ns, frame_id)
    if depth_encoding == "16UC1":
        depth = rng.integers(0, 5000, (height, width), dtype=np.uint16)
        aux_msg = image_msg(depth, "16UC1", height, width, width * 2, stamp_ns, frame_id)
    elif depth_encoding == "mono8":
        thermal = rng.integers(0, 256, (height, width), dtype=np.uint8)
        aux_msg = image_msg(thermal, "mono8", height, width, width, stamp_ns, frame_id)
    else:
        raise ValueError(depth_encoding)
    return rgb_msg, aux_msg


def read_bag_images(bag_dir, topics):
    """[(topic, rosbags Image message)] for `topics`, in the bag's recorded order."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_HUMBLE)
    out = []
    with Reader(bag_dir) as reader:
        connections = [c for c in reader.connections if c.topic in topics]
        for connection, _, raw in reader.messages(connections=connections):
            out.append((connection.topic, typestore.deserialize_cdr(raw, connection.msgtype)))
    return out


def rosbags_to_ros(msg):
    """A rosbags sensor_msgs/Image -> an rclpy sensor_msgs/Image with the same fields (bytes copied once)."""
    return image_msg(np.asarray(msg.data, np.uint8), msg.encoding, msg.height, msg.width, msg.step,
                     msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, msg.header.frame_id,
                     bool(msg.is_bigendian))
