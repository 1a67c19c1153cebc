"""`rgbd-fusion-seg bench-node`: what the ROS layer costs, measured, not guessed (ros2/rclpy#836).

    rgbd-fusion-seg bench-node                         # 640x480 at 30 Hz, 10 s per run, untrained `mid`
    rgbd-fusion-seg bench-node --checkpoint runs/x/last.pt --device cuda --duration 20

Five runs on the same generated 640x480 colour + 16UC1 depth frames (latency = colour stamp -> receipt):

  (i)   bare model: `SegmentationEngine.predict` on the decoded frames, back to back, in this process on a
        worker thread like the node's inference thread.
  (ii)  end to end through ROS: a publisher process (the "camera", at --rate) -> the real segment_node
        process -> this process subscribed to ~/mask. (ii)/(i) is the node's overhead.
  (iii) transport alone: the same publisher process -> this process subscribed to the colour and depth
        topics; no model.
  (iv)  a naive node (`NaiveSegmentNode` below: inference synchronously in the subscription callback,
        the usual first attempt) in its own process, fed like (ii). When the model is slower than the
        camera its subscription queues fill and it works through stale frames: its latency climbs to about
        queue depth x camera period + inference time (10 x 33 ms + inference at 30 Hz; without bound with a
        deeper queue), while the real node (one slot, newest pair wins, inference off the executor thread)
        stays near one inference time. The first and last thirds of each run are reported to show the drift.
  (v)   the bare model of (i) while this process receives the stream of (ii): the model's cost under the
        same incoming traffic, beside which the node's work (its ~/stats `working_*`) is read.

On a CPU shared with other work, torch's two intra-op threads can slow the main thread's inference
several-fold (OpenMP threads waiting on each other); `--torch-threads 1` gives every run the same single
thread, so the runs differ only by design.

Every subscription here is reliable (the real node with `qos.profile: auto` follows the camera's `--camera-qos`), like the publisher: with
Fast DDS's default socket buffers a best-effort subscriber loses most 640x480 frames (measured here: 2 of
234 at 30 Hz over loopback, 3 of 234 over shared memory), which would measure the loss, not the node.

Without --checkpoint an untrained model of --method is served (latency does not depend on the weights)
at --input-size (default 224x224, the MM5 study's training size). The ROS traffic stays on this machine
(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST unless set) under the namespace /rgbd_fusion_seg_bench.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .node_harness import (NodeProcess, RosSession, drain, image_msg, json_ready, node_failure, parse_stats, percentiles_ms,
                          rate_hz, ros_environment, set_stamp, stamp_of, wait_until, warm_up)

NAMESPACE = "/rgbd_fusion_seg_bench"
RGB_TOPIC = f"{NAMESPACE}/camera/color/image_raw"
DEPTH_TOPIC = f"{NAMESPACE}/camera/depth/image_raw"
NUM_FRAMES = 4


def make_untrained_checkpoint(path, method: str = "mid", num_classes: int = 10, input_size=(224, 224),
                              aux_range=(0.5, 2.0)) -> Path:
    """A servable checkpoint with random weights (depth in metres from 16UC1), for latency and plumbing tests."""
    import torch

    from rgbd_fusion_seg.core.checkpoint import Checkpoint, save_checkpoint
    from rgbd_fusion_seg.core.palette import default_palette
    from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing
    from rgbd_fusion_seg.models import build_model

    torch.manual_seed(0)
    model = build_model(method, num_classes)
    checkpoint = Checkpoint(
        method=method,
        num_classes=num_classes,
        classes=["background"] + [f"class_{k}" for k in range(1, num_classes)],
        palette=[list(c) for c in default_palette(num_classes)],
        preprocessing=Preprocessing(
            input_size=tuple(input_size) if input_size else None,
            aux=AuxNormalisation(modality="depth", unit="m", low=float(aux_range[0]), high=float(aux_range[1])),
        ),
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        data={"dataset": "none (untrained, for benchmarks and tests)"},
    )
    return save_checkpoint(checkpoint, path)


def bench_frames(height: int, width: int, count: int = NUM_FRAMES) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` generated scenes at height x width: (RGB uint8 under normal light, depth uint16 mm)."""
    from rgbd_fusion_seg.offline.datasets.synth import SynthSpec, render_frame

    spec = SynthSpec(height=height, width=width)
    frames = []
    for k in range(1, count + 1):
        frame = render_frame(spec, seed=0, frame=k)
        frames.append((frame.rgb["RGB2"], frame.depth_mm))
    return frames


# ----------------------------------------------------------------------------------------------------
# Child processes: the camera publisher and the naive node


def publisher_main(argv: list[str]) -> int:
    """`python -m rgbd_fusion_seg.offline.node_benchmark publisher '<json>'`: publish frames at a rate, print a summary."""
    options = json.loads(argv[0])
    session = RosSession("bench_camera", None)
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    reliability = ReliabilityPolicy.BEST_EFFORT if options.get("qos") == "best_effort" else ReliabilityPolicy.RELIABLE
    qos = QoSProfile(depth=10, reliability=reliability)
    node = session.node
    rgb_pub = node.create_publisher(Image, options["rgb_topic"], qos)
    depth_pub = node.create_publisher(Image, options["depth_topic"], qos)
    messages = [(image_msg(rgb), image_msg(depth)) for rgb, depth in bench_frames(*options["size"])]
    wait_until(lambda: rgb_pub.get_subscription_count() > 0 and depth_pub.get_subscription_count() > 0, 30)
    time.sleep(options.get("settle", 0.5))
    period = 1.0 / options["rate"]
    count = int(round(options["duration"] * options["rate"]))
    stamps, publish_times = [], []
    t0 = time.monotonic()
    for i in range(count):
        delay = t0 + i * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        rgb_msg, depth_msg = messages[i % len(messages)]
        stamp = time.time_ns()
        set_stamp(rgb_msg, stamp)
        set_stamp(depth_msg, stamp)
        before = time.perf_counter()
        rgb_pub.publish(rgb_msg)
        depth_pub.publish(depth_msg)
        publish_times.append(time.perf_counter() - before)
        stamps.append(stamp)
    elapsed = time.monotonic() - t0
    time.sleep(0.5)  # let reliable writers deliver the tail before the process goes
    session.close()
    print(json.dumps({"stamps": stamps, "elapsed_s": elapsed, "publish_ms_p50": percentiles_ms(publish_times)[0]}), flush=True)
    return 0


class NaiveSegmentNode:
    """The usual first attempt, for comparison: decode, infer and publish inside the subscription callback.

    Pairs colour and aux by equal stamps. Each subscription keeps the last 10 messages (the depth most
    examples pass); when inference is slower than the camera those queues stay full, so every frame it
    takes is already about ten camera periods old, and the inference time comes on top.
    """

    def __init__(self, checkpoint: str, device: str = "cpu", depth_scale: float = 0.001, context=None):
        from rclpy.node import Node
        from sensor_msgs.msg import Image

        from rgbd_fusion_seg.core.engine import SegmentationEngine

        self.node = Node("naive_segment_node", context=context)
        self.engine = SegmentationEngine.from_file(checkpoint, device=device)
        self.depth_scale = depth_scale
        self.pending: dict[int, dict] = {}
        self.node.create_subscription(Image, "rgb/image", lambda m: self._on_image("rgb", m), 10)
        self.node.create_subscription(Image, "aux/image", lambda m: self._on_image("aux", m), 10)
        self.publisher = self.node.create_publisher(Image, "~/mask", 10)

    def _on_image(self, kind: str, msg) -> None:
        from rgbd_fusion_seg.ros.messages import aux_from_msg, colour_from_msg, mask_to_msg

        stamp = stamp_of(msg)
        entry = self.pending.setdefault(stamp, {})
        entry[kind] = msg
        if len(entry) < 2:
            if len(self.pending) > 20:
                self.pending.pop(next(iter(self.pending)))
            return
        del self.pending[stamp]
        rgb = colour_from_msg(entry["rgb"])
        aux = aux_from_msg(entry["aux"], "depth", self.depth_scale).image
        prediction = self.engine.predict(rgb, aux)
        self.publisher.publish(mask_to_msg(prediction.mask, entry["rgb"].header))


def naive_node_main(argv: list[str]) -> int:
    """`python -m rgbd_fusion_seg.offline.node_benchmark naive-node CHECKPOINT DEVICE --ros-args ...`."""
    from rgbd_fusion_seg.ros.spinning import run_until_stopped

    checkpoint, device = argv[0], argv[1]
    # Stopped like segment_node: a signal ends the spin between callbacks, then the node goes, then the
    # context, so no callback publishes on a context that is gone.
    run_until_stopped(lambda _stopping: NaiveSegmentNode(checkpoint, device).node, argv)
    return 0


# ----------------------------------------------------------------------------------------------------
# The runs


def _summary(latencies_s, receive_ns=(), sent: int | None = None) -> dict:
    p50, p90, p99 = percentiles_ms(latencies_s)
    received = len(latencies_s)
    result = {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "rate_hz": rate_hz(receive_ns), "received": received}
    if sent is not None:
        result["sent"] = sent
        result["drops"] = sent - received
    third = max(received // 3, 1)
    if received >= 3:
        result["first_third_p50_ms"] = percentiles_ms(latencies_s[:third])[0]
        result["last_third_p50_ms"] = percentiles_ms(latencies_s[-third:])[0]
    return result


def bench_model(checkpoint: Path, device: str, frames, duration: float, torch_threads: int | None = None) -> dict:
    """(i) SegmentationEngine.predict back to back on the decoded frames (16UC1 mm -> metres as in the node).

    It runs on a worker thread, as the node's inference does: with this CPU build of torch a Python
    thread other than the main one does not get the main thread's intra-op thread count, so measuring
    on the main thread would compare different things.
    """
    from rgbd_fusion_seg.core.engine import SegmentationEngine

    from rgbd_fusion_seg.serving.image_codec import decode_aux

    engine = SegmentationEngine.from_file(checkpoint, device=device)
    decoded = []
    for rgb, depth in frames:
        aux = decode_aux("depth", "16UC1", depth.shape[0], depth.shape[1], depth.strides[0], False, depth.tobytes()).image
        decoded.append((rgb, aux))
    latencies: list[float] = []
    failure: list[BaseException] = []

    def measure() -> None:
        try:
            if torch_threads:
                import torch

                torch.set_num_threads(torch_threads)
            for rgb, aux in decoded[:2]:  # warm-up (allocations, cuDNN autotune)
                engine.predict(rgb, aux)
            start = time.monotonic()
            while time.monotonic() - start < duration or len(latencies) < 3:
                rgb, aux = decoded[len(latencies) % len(decoded)]
                before = time.perf_counter()
                prediction = engine.predict(rgb, aux)
                if engine.device.type == "cuda":
                    import torch

                    torch.cuda.synchronize()
                latencies.append(time.perf_counter() - before)
                assert prediction.mask.shape == rgb.shape[:2]
        except BaseException as error:  # reported on the calling thread
            failure.append(error)

    worker = threading.Thread(target=measure, name="bench-model")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    result = _summary(latencies)
    result["rate_hz"] = len(latencies) / sum(latencies)
    result["device"] = str(engine.device)
    return result


class _Collector:
    def __init__(self):
        self.lock = threading.Lock()
        self.received: dict[int, int] = {}  # stamp -> receive time (ns)

    def callback(self, msg) -> None:
        now = time.time_ns()
        with self.lock:
            self.received.setdefault(stamp_of(msg), now)

    def count(self, stamps) -> int:
        with self.lock:
            return sum(1 for s in stamps if s in self.received)

    def drain(self, stamps, timeout: float) -> None:
        """Until every stamp is answered, nothing new came for 1.5 s, or `timeout` s."""
        drain(lambda: self.count(stamps), len(stamps), quiet_s=1.5, timeout=timeout)


def _run_publisher(env: dict, size, rate: float, duration: float, qos: str = "reliable") -> subprocess.Popen:
    """The camera process; `qos` reliable or best_effort (what a camera driver offers)."""
    options = {"rgb_topic": RGB_TOPIC, "depth_topic": DEPTH_TOPIC, "size": list(size), "rate": rate, "duration": duration,
               "qos": qos}
    return subprocess.Popen(
        [sys.executable, "-m", "rgbd_fusion_seg.offline.node_benchmark", "publisher", json.dumps(options)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _publisher_result(process: subprocess.Popen, duration: float) -> dict:
    try:
        out, err = process.communicate(timeout=duration + 90)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    if process.returncode != 0 or not out.strip():
        raise RuntimeError(f"the publisher process failed (status {process.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _latencies(stamps, received: dict) -> tuple[list[float], list[int]]:
    answered = [s for s in stamps if s in received]
    return [(received[s] - s) / 1e9 for s in answered], [received[s] for s in answered]


def bench_transport(session: RosSession, env: dict, size, rate: float, duration: float) -> dict:
    """(iii) publisher process -> this process, colour and depth; latency of a pair = the later arrival."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    rgb, depth = _Collector(), _Collector()
    subscriptions = [
        session.node.create_subscription(Image, RGB_TOPIC, rgb.callback, qos),
        session.node.create_subscription(Image, DEPTH_TOPIC, depth.callback, qos),
    ]
    try:
        published = _publisher_result(_run_publisher(env, size, rate, duration), duration)
        stamps = published["stamps"]
        depth.drain(stamps, 3.0)
        with rgb.lock, depth.lock:
            both = {s: max(rgb.received[s], depth.received[s]) for s in stamps if s in rgb.received and s in depth.received}
        latencies, receive = _latencies(stamps, both)
        result = _summary(latencies, receive, sent=len(stamps))
        result["publish_call_p50_ms"] = published["publish_ms_p50"]
        return result
    finally:
        for subscription in subscriptions:
            session.node.destroy_subscription(subscription)


def bench_model_under_stream(session: RosSession, env: dict, checkpoint: Path, device: str, size, rate: float,
                             duration: float, torch_threads: int | None = None) -> dict:
    """(v) the bare model of (i) while this process receives the camera stream of (ii) (the publisher process
    -> this process, colour and depth, as the node receives them): the model's own cost under the same
    incoming traffic, so that the node's work in (ii) can be compared with it."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    rgb, depth = _Collector(), _Collector()
    subscriptions = [session.node.create_subscription(Image, RGB_TOPIC, rgb.callback, qos),
                     session.node.create_subscription(Image, DEPTH_TOPIC, depth.callback, qos)]
    try:
        publisher = _run_publisher(env, size, rate, duration)
        result = bench_model(checkpoint, device, bench_frames(*size), duration, torch_threads)
        published = _publisher_result(publisher, duration)
        result["stream_sent"] = len(published["stamps"])
        result["stream_received"] = depth.count(published["stamps"])
        return result
    finally:
        for subscription in subscriptions:
            session.node.destroy_subscription(subscription)


def bench_node(session: RosSession, env: dict, node_command, node_name: str, size, rate: float, duration: float,
               log_path: Path, ready_timeout: float = 120.0, camera_qos: str = "reliable") -> dict:
    """(ii) and (iv): publisher process -> node process -> this process (~/mask)."""
    from diagnostic_msgs.msg import DiagnosticStatus
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    node = node_command(log_path)
    collector = _Collector()
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    warm_up_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    mask_topic = f"{NAMESPACE}/{node_name}/mask"
    ros = session.node
    subscription = ros.create_subscription(Image, mask_topic, collector.callback, qos)
    rgb_pub = ros.create_publisher(Image, RGB_TOPIC, warm_up_qos)
    depth_pub = ros.create_publisher(Image, DEPTH_TOPIC, warm_up_qos)
    stats = []
    stats_sub = None
    try:
        stats_sub = ros.create_subscription(DiagnosticStatus, f"{NAMESPACE}/{node_name}/stats", lambda m: stats.append(parse_stats(m)), qos)
        connected = wait_until(
            lambda: rgb_pub.get_subscription_count() > 0 and ros.count_publishers(mask_topic) > 0, ready_timeout,
            abort=lambda: not node.alive(),
        )
        if not connected:
            raise RuntimeError(node_failure(f"{node_name} did not come up", node))
        rgb, depth = bench_frames(*size, count=1)[0]
        warm_rgb, warm_depth = image_msg(rgb), image_msg(depth)

        def send_warm_up() -> None:
            stamp = time.time_ns()
            set_stamp(warm_rgb, stamp)
            set_stamp(warm_depth, stamp)
            rgb_pub.publish(warm_rgb)
            depth_pub.publish(warm_depth)

        warm_up(send_warm_up, lambda: bool(collector.received), node, ready_timeout, interval=1.0)
        time.sleep(1.0)  # let the warm-up frames clear the node
        ros.destroy_publisher(rgb_pub)
        ros.destroy_publisher(depth_pub)
        rgb_pub = depth_pub = None
        reports = len(stats)
        wait_until(lambda: len(stats) > reports, 10.0)  # counts that include every warm-up frame
        before = dict(stats[-1]) if stats else {}
        published = _publisher_result(_run_publisher(env, size, rate, duration, camera_qos), duration)
        stamps = published["stamps"]
        collector.drain(stamps, 10.0)
        reports = len(stats)
        wait_until(lambda: len(stats) > reports, 10.0)
        with collector.lock:
            latencies, receive = _latencies(stamps, dict(collector.received))
        result = _summary(latencies, receive, sent=len(stamps))
        if stats:
            result["node_stats"] = stats[-1]
            # what reached the node of this stream (the warm-up frames taken off)
            result["node_received"] = {key: int(stats[-1].get(key, 0)) - int(before.get(key, 0)) for key in (
                "frames_in_rgb", "frames_in_aux", "lost_in_transport_rgb", "lost_in_transport_aux")}
        return result
    finally:
        ros.destroy_subscription(subscription)
        if stats_sub is not None:
            ros.destroy_subscription(stats_sub)
        for publisher in (rgb_pub, depth_pub):
            if publisher is not None:
                ros.destroy_publisher(publisher)
        node.stop()


# ----------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="checkpoint to serve (default: an untrained --method model)")
    parser.add_argument("--method", default="mid", help="method of the untrained model (default: mid)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
                        help="model input size of the untrained model (default 224 224)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (model and node)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of streaming per run (default 10)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz (default 30)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="frame size (default 480 640)")
    parser.add_argument("--runs", nargs="+", default=["model", "node", "transport", "naive", "stream", "points"],
                        choices=["model", "node", "transport", "naive", "stream", "points"],
                        help="which runs (default: all; stream: the bare model while the camera stream is received; "
                             "points: the semantic point cloud's cost per frame, stride 1 and 4)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads in every run (OMP_NUM_THREADS for the node processes); default: "
                             "torch's own choice. 1 compares the node designs at equal compute on a busy CPU")
    parser.add_argument("--camera-qos", choices=["reliable", "best_effort"], default="reliable",
                        help="what the camera process offers in the node runs (the node subscribes with qos.profile auto, "
                             "its default); best_effort is what most camera drivers publish")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: the environment's)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--work-dir", default=None, help="folder for the untrained checkpoint and node logs (default: a temporary one)")


ROW_TITLES = {
    "model": "(i)   bare model (engine.predict)",
    "node": "(ii)  ROS end to end (segment_node)",
    "transport": "(iii) transport only (no model)",
    "naive": "(iv)  naive node (inference in callback)",
    "stream": "(v)   bare model under the stream",
}


def _cell(value, digits=1, width=8) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return f"{'-':>{width}}"
    if isinstance(value, int):
        return f"{value:>{width}d}"
    return f"{value:>{width}.{digits}f}"


def print_table(results: dict, header: str) -> None:
    print("")
    print(header)
    print(f"{'':42}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'rate Hz':>9}{'sent':>6}{'recv':>6}{'drops':>6}")
    for key, title in ROW_TITLES.items():
        if key not in results:
            continue
        r = results[key]
        print(f"{title:42}{_cell(r['p50_ms'])}{_cell(r['p90_ms'])}{_cell(r['p99_ms'])}{_cell(r['rate_hz'], width=9)}"
              f"{_cell(r.get('sent'), width=6)}{_cell(r.get('received') if 'sent' in r else None, width=6)}"
              f"{_cell(r.get('drops'), width=6)}")
    if "model" in results and "node" in results:
        ratio = results["node"]["p50_ms"] / results["model"]["p50_ms"]
        results["node_overhead_ratio_p50"] = ratio
        print(f"node overhead (ii)/(i), p50: {ratio:.2f}x")
    drift = []
    for key in ("node", "naive"):
        r = results.get(key, {})
        if "first_third_p50_ms" in r:
            drift.append(f"{key} {r['first_third_p50_ms']:.0f} -> {r['last_third_p50_ms']:.0f} ms")
    if drift:
        print("latency p50, first third -> last third of the run: " + "; ".join(drift))
    received = results.get("node", {}).get("node_received")
    if received:
        sent = results["node"]["sent"]
        print(f"segment_node received {received['frames_in_rgb']}/{sent} colour and {received['frames_in_aux']}/{sent} "
              f"aux frames of the stream (camera QoS {results['config']['camera_qos']}, qos.profile auto); counted lost "
              f"in transport: {received['lost_in_transport_rgb']} colour, {received['lost_in_transport_aux']} aux")
    if "transport" in results:
        print(f"rclpy publish() of one colour + one depth message, p50: {results['transport']['publish_call_p50_ms']:.1f} ms")
    stats = results.get("node", {}).get("node_stats")
    if stats and "working_p50_ms" in stats:
        working = float(stats["working_p50_ms"])
        beside = "".join(f"; {label} {results[key]['p50_ms']:.1f} ms: work/bare {working / results[key]['p50_ms']:.2f}x"
                         for key, label in (("model", "bare model (i)"), ("stream", "bare model under the stream (v)"))
                         if key in results)
        print(f"segment_node processing p50 {stats['processing_p50_ms']} ms = waiting for the running inference "
              f"{stats['waiting_p50_ms']} + working (decode -> publish) {stats['working_p50_ms']} ms{beside}")
    if "points" in results:
        cloud = ", ".join(f"stride {stride}: {ms:.1f} ms" for stride, ms in results["points"].items())
        print(f"semantic point cloud per frame at {results['config']['size'][1]}x{results['config']['size'][0]} "
              f"(labelled_points, outputs.points): {cloud}")


def run(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    size = (int(args.size[0]), int(args.size[1]))
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="rgbd_fusion_seg_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
        described = str(checkpoint)
    else:
        checkpoint = make_untrained_checkpoint(work / f"{args.method}.pt", args.method, input_size=args.input_size)
        described = f"untrained {args.method}, input {args.input_size[0]}x{args.input_size[1]}"
    env = ros_environment(args.domain_id)
    threads = ""
    if args.torch_threads:
        env["OMP_NUM_THREADS"] = str(args.torch_threads)
        threads = f", {args.torch_threads} torch thread(s)"
    header = (f"bench-node: {described} on {device}; {size[1]}x{size[0]} rgb8 + 16UC1 at {args.rate:g} Hz, "
              f"{args.duration:g} s per run, {os.cpu_count()} CPU cores{threads}")
    print(header, flush=True)
    results: dict = {"config": {"checkpoint": str(checkpoint), "device": device, "size": list(size), "rate": args.rate,
                                "duration": args.duration, "torch_threads": args.torch_threads,
                                "camera_qos": args.camera_qos}}

    if "model" in args.runs:
        print("(i) bare model ...", flush=True)
        results["model"] = bench_model(checkpoint, device, bench_frames(*size), args.duration, args.torch_threads)
    if "points" in args.runs:
        from rgbd_fusion_seg.serving.point_cloud import benchmark_point_cloud

        print("semantic point cloud ...", flush=True)
        results["points"] = benchmark_point_cloud(*size, strides=(1, 4))
    session = RosSession("bench_node_receiver", env) if set(args.runs) - {"model", "points"} else None
    try:
        if "transport" in args.runs:
            print("(iii) transport ...", flush=True)
            results["transport"] = bench_transport(session, env, size, args.rate, args.duration)
        if "node" in args.runs:
            print("(ii) segment_node end to end ...", flush=True)

            def real_node(log_path):
                return NodeProcess(
                    checkpoint, parameters={"device": device, "stats_period": 1.0}, namespace=NAMESPACE,
                    remappings={"rgb/image": RGB_TOPIC, "aux/image": DEPTH_TOPIC}, env=env, log_path=log_path,
                )

            results["node"] = bench_node(session, env, real_node, "segment_node", size, args.rate, args.duration,
                                         work / "segment_node.log", camera_qos=args.camera_qos)
        if "stream" in args.runs:
            print("(v) bare model under the stream ...", flush=True)
            results["stream"] = bench_model_under_stream(session, env, checkpoint, device, size, args.rate,
                                                         args.duration, args.torch_threads)
        if "naive" in args.runs:
            print("(iv) naive node ...", flush=True)

            def naive_node(log_path):
                return NodeProcess(
                    None, namespace=NAMESPACE, remappings={"rgb/image": RGB_TOPIC, "aux/image": DEPTH_TOPIC}, env=env,
                    log_path=log_path, module="rgbd_fusion_seg.offline.node_benchmark", arguments=["naive-node", str(checkpoint), device],
                )

            results["naive"] = bench_node(session, env, naive_node, "naive_segment_node", size, args.rate, args.duration,
                                          work / "naive_node.log")
    except RuntimeError as error:
        print(f"bench-node failed: {error}", file=sys.stderr)
        return 1
    finally:
        if session is not None:
            session.close()
    print_table(results, header)
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready(results), indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "publisher":
        return publisher_main(argv[1:])
    if argv and argv[0] == "naive-node":
        return naive_node_main(argv[1:])
    parser = argparse.ArgumentParser(prog="rgbd-fusion-seg bench-node", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
