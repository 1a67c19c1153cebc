"""`rgbd-fusion-seg bag evaluate`: replay a bag into the real segment_node and score what comes back.

    rgbd-fusion-seg bag evaluate BAG --rgb-topic /camera/color/image_raw --aux-topic /camera/depth/image_rect_raw
                                 [--label-topic /labels] [--checkpoint model.pt] [--out DIR] [--rate 1.0]
                                 [--overlays] [--video] [--overlay-topic]

1. segment_node starts in its own process (`python -m rgbd_fusion_seg.ros.segment_node --ros-args ...`, as
   a user starts it) with the checkpoint, reliable input QoS (best-effort multi-MB images between
   processes lose fragments with Fast DDS's default transports) and the node's pairing defaults.
2. Once it serves (its ~/stats name the model), the bag's first colour/aux pair is sent, stamped 1 ns, until
   a mask comes back (the first inference initialises the model and would distort the latency; warm-up
   outputs are neither recorded nor scored). Then the colour and aux topics are played into it with their
   recorded timing (`play.Player`; CompressedImage topics are decompressed to sensor_msgs/Image).
3. Its ~/mask and ~/mask_color (and ~/overlay with --overlay-topic) are recorded, with the inputs as they
   were played and the label topic, into DIR/outputs (mcap). The bag is closed into a valid bag even when
   the run fails or is interrupted.
4. DIR/report.json and DIR/summary.txt: per-frame latency p50/p90/p99, achieved rate, pairs made vs frames
   in the bag, drops, and mIoU/mAcc against the label topic (mono8 class ids, matched to the mask by stamp).

Latency of a frame = the output's publish time (the DDS source timestamp of its ~/mask message) minus the
wall time at which the input completing its colour/aux pair was played: the time the node spent from the
moment it could have the pair to the moment its answer left. `latency_from_colour_ms` measures from the
colour frame instead (adds the aux stream's lag). Pairs are predicted with the node's own pairer
(`serving.pairing.ApproximateTimePairer`, same queue size and slop) fed in played order; a predicted pair
without a mask is a drop (newest-pair-wins while the model is busy, or lost in transport).

Without --checkpoint, depth bags use the demo's model (trained once on generated data and cached, see
`rgbd-fusion-seg demo`); thermal bags need a thermal checkpoint. Every input is checked before any time is
spent (training the default model, starting the node): the bag opens, its topics exist with image types and
readable first frames, the label topic holds class ids, --out can take the results, and the checkpoint's
modality and unit fit the aux topic's encoding.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rgbd_fusion_seg.offline.node_harness import (NodeProcess, RosSession, drain, find_params_file, format_number, json_ready,
                                         node_failure, parse_stats, percentiles, rate_hz, ros_environment, wait_until,
                                         warm_up)
from rgbd_fusion_seg.serving.image_codec import AUX_ENCODINGS
from rgbd_fusion_seg.serving.pairing import ApproximateTimePairer

from .play import Played, PlayOptions, Player, playback_rate
from .reading import (
    BagError,
    colour_of,
    deserialize,
    first_image,
    image_connection,
    messages,
    pixels,
    reading,
    stamp_ns,
    typestore,
)
from .export import NODE_QUEUE_SIZE, NODE_SLOP
from .writing import STORAGES, BagWriter, image_message, serialize

NAMESPACE = "/rgbd_fusion_seg_bag"
NODE = f"{NAMESPACE}/segment_node"
OUTPUTS = ("mask", "mask_color", "overlay")
LABEL_ENCODINGS = ("mono8", "8UC1")
WARMUP_STAMP = 1  # ns: no recorded frame has it


@dataclass
class Recorded:
    lock: threading.Lock = field(default_factory=threading.Lock)
    masks: dict = field(default_factory=dict)  # colour stamp -> (source ns, received ns, HxW class ids)
    stats: list = field(default_factory=list)
    played: dict = field(default_factory=dict)  # colour stamp -> (colour played ns, pair completed ns)
    frames: dict = field(default_factory=dict)  # topic -> frames played
    warm_up_answers: int = 0
    other_outputs: dict = field(default_factory=dict)  # output topic other than ~/mask -> colour stamps seen


def check_bag(bag, rgb_topic: str, aux_topic: str, label_topic: str | None) -> dict:
    """The topics' first frames ({"rgb", "aux"[, "label"]}: ImageTopic); BagError for a bag that does not open,
    a missing topic, a non-image type, an unreadable frame or labels that are not class ids."""
    with reading(bag) as reader:
        infos = {"rgb": first_image(reader, image_connection(reader, rgb_topic, "colour")),
                 "aux": first_image(reader, image_connection(reader, aux_topic, "aux"))}
        if label_topic:
            infos["label"] = first_image(reader, image_connection(reader, label_topic, "label"))
    if label_topic and infos["label"].encoding not in LABEL_ENCODINGS:
        raise BagError(f"label topic {label_topic!r} in bag {bag} is {infos['label'].encoding}; labels must be "
                       f"{' or '.join(LABEL_ENCODINGS)} class ids")
    return infos


def check_output_folder(out: Path) -> None:
    """Refuse an --out that cannot take the results, before anything is spent (nothing is created here)."""
    if (out / "outputs").exists():
        raise BagError(f"output bag {out / 'outputs'} exists already; choose a new --out (bags are never overwritten)")
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    if not existing.is_dir():
        raise BagError(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BagError(f"--out {out}: cannot write in {existing}")


def check_aux_fits(aux_topic: str, aux, modality: str, unit: str, model: str) -> None:
    """The aux topic's encoding must decode to the unit the model was trained on."""
    decoded = AUX_ENCODINGS[modality].get(aux.encoding)
    if decoded is None:
        raise BagError(f"aux topic {aux_topic!r} is {aux.encoding}, which is not a {modality} encoding the node reads "
                       f"({', '.join(AUX_ENCODINGS[modality])}); {model} needs {modality} in {unit!r}")
    if decoded != unit:
        raise BagError(f"aux topic {aux_topic!r} is {aux.encoding}, which the node decodes to {modality} in {decoded!r}, "
                       f"but {model} was trained on {unit!r}; use a checkpoint trained on {decoded!r}")


def checkpoint_summary(checkpoint: Path, modality: str | None):
    from rgbd_fusion_seg.serving.model_serving import inspect_checkpoint  # imports torch: seconds

    return inspect_checkpoint(checkpoint, modality=modality)


def resolve_checkpoint(args, log):
    """Every input checked, then the checkpoint: (path, summary, topic infos). Without --checkpoint the default
    model is trained (minutes, once) only after the bag, the output folder and the modality have passed."""
    from rgbd_fusion_seg.offline.demo_model import DEFAULT_AUX, default_checkpoint

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None:
        summary = checkpoint_summary(checkpoint, args.modality)  # a given checkpoint is checked first
    elif args.modality not in (None, DEFAULT_AUX[0]):
        raise BagError(f"a {args.modality} bag needs --checkpoint (a model trained on {args.modality} data); the "
                       f"built-in default model is the demo's {DEFAULT_AUX[0]} model")
    infos = check_bag(args.bag, args.rgb_topic, args.aux_topic, args.label_topic)
    check_output_folder(Path(args.out).expanduser())
    if checkpoint is None:
        check_aux_fits(args.aux_topic, infos["aux"], *DEFAULT_AUX, "the default model (the demo's; give --checkpoint)")
        checkpoint = default_checkpoint(log)
        summary = checkpoint_summary(checkpoint, args.modality)
    if summary.uses_aux:
        check_aux_fits(args.aux_topic, infos["aux"], summary.modality, summary.unit, f"checkpoint {checkpoint}")
    return checkpoint, summary, infos


def read_labels(bag, topic: str, num_classes: int) -> dict[int, np.ndarray]:
    """stamp -> HxW class ids of every label message, checked here so that scoring cannot fail after the run."""
    from rgbd_fusion_seg.offline.metrics import IGNORE_INDEX

    with reading(bag) as reader:
        connection = image_connection(reader, topic, "label")
        labels = {}
        for conn, _, raw in messages(reader, [connection]):
            msg = deserialize(raw, conn)
            label, encoding = pixels(msg, topic)
            if encoding not in LABEL_ENCODINGS:
                raise BagError(f"label topic {topic!r} in bag {reader.path} is {encoding} at stamp {stamp_ns(msg)}; "
                               f"labels must be {' or '.join(LABEL_ENCODINGS)} class ids")
            bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
            if bad.size:
                raise BagError(f"label topic {topic!r} in bag {reader.path}: the label at stamp {stamp_ns(msg)} has "
                               f"class id(s) {', '.join(map(str, bad[:10]))}; the checkpoint has {num_classes} "
                               f"classes (ids 0..{num_classes - 1}, {IGNORE_INDEX} = ignore)")
            labels[stamp_ns(msg)] = np.array(label)
    return labels


class Recorder:
    """Subscribes to the node's outputs (serialised, with their publish time) and writes them to the bag."""

    def __init__(self, session, writer: BagWriter, overlay: bool):
        from diagnostic_msgs.msg import DiagnosticStatus
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.writer, self.recorded = writer, Recorded()
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node = session.node
        for name in OUTPUTS if overlay else OUTPUTS[:2]:
            if name != "mask":
                self.recorded.other_outputs[f"{NODE}/{name}"] = set()
            node.create_subscription(Image, f"{NODE}/{name}", self._callback(f"{NODE}/{name}"), qos, raw=True)
        node.create_subscription(DiagnosticStatus, f"{NODE}/stats", self._on_stats, qos)

    def _callback(self, topic: str):
        store = typestore()

        def on_output(data: bytes, info) -> None:
            received = time.time_ns()
            msg = store.deserialize_cdr(data, "sensor_msgs/msg/Image")
            if stamp_ns(msg) == WARMUP_STAMP:
                with self.recorded.lock:
                    self.recorded.warm_up_answers += topic.endswith("/mask")
                return
            self.writer.write(topic, "sensor_msgs/msg/Image", received, data)
            if topic.endswith("/mask"):
                mask = np.array(pixels(msg, topic)[0])
                with self.recorded.lock:
                    self.recorded.masks[stamp_ns(msg)] = (int(info["source_timestamp"]), received, mask)
            else:
                with self.recorded.lock:
                    self.recorded.other_outputs[topic].add(stamp_ns(msg))

        return on_output

    def _on_stats(self, msg) -> None:
        with self.recorded.lock:
            self.recorded.stats.append(parse_stats(msg))

    def serving(self) -> bool:
        with self.recorded.lock:
            return any(s.get("model", "none") != "none" for s in self.recorded.stats)

    def answered(self, stamps) -> int:
        """How many of `stamps` every recorded output has answered (the node publishes the mask first, and
        the colour mask may arrive after it: waiting on the masks alone could close the bag before it)."""
        with self.recorded.lock:
            return sum(1 for s in stamps if s in self.recorded.masks
                       and all(s in seen for seen in self.recorded.other_outputs.values()))


def send_warm_up(player: Player, bag, rgb_topic: str, aux_topic: str, recorded: Recorded, node, timeout: float) -> int:
    """Send the bag's first colour/aux pair, stamped WARMUP_STAMP, every 0.5 s until a mask comes back."""
    frames = []
    with reading(bag) as reader:
        for topic, role in ((rgb_topic, "colour"), (aux_topic, "aux")):
            conn, _, raw = next(iter(messages(reader, [image_connection(reader, topic, role)])))
            msg = deserialize(raw, conn)
            image, encoding = pixels(msg, topic)
            frames.append((player.publishers[topic][0], serialize(image_message(image, encoding, WARMUP_STAMP,
                                                                                 msg.header.frame_id))))

    def send() -> None:
        for publisher, data in frames:
            publisher.publish(data)

    return warm_up(send, lambda: recorded.warm_up_answers > 0, node, timeout)


def pairs_so_far(recorded: Recorded, timeout: float = 3.0) -> int:
    """The node's pair count in its next ~/stats: a warm-up send whose colour or aux the node took after the
    other side's next send makes one pair of two sends, so the warm-up's pairs are counted, not assumed."""
    seen = len(recorded.stats)
    wait_until(lambda: len(recorded.stats) > seen, timeout)
    with recorded.lock:
        return int(recorded.stats[-1]["pairs"]) if recorded.stats else 0


def score(recorded: Recorded, labels: dict, num_classes: int, class_names) -> dict:
    """Latency, rate, drops and (with labels) mIoU from what was played and what came back."""
    from rgbd_fusion_seg.offline.metrics import ConfusionMatrix

    expected = sorted(recorded.played)
    answered = [s for s in expected if s in recorded.masks]
    latency = [(recorded.masks[s][0] - recorded.played[s][1]) / 1e9 for s in answered]  # seconds
    from_colour = [(recorded.masks[s][0] - recorded.played[s][0]) / 1e9 for s in answered]
    sources = [recorded.masks[s][0] for s in answered]
    result = {
        "frames_in_bag": dict(recorded.frames),
        "pairs_expected": len(expected),
        "masks_received": len(answered),
        "drops": len(expected) - len(answered),
        "latency_ms": percentiles(latency),
        "latency_from_colour_ms": percentiles(from_colour),
        "rate_hz": rate_hz(sources),
        # The node's own latency and rate are "now - stamp": meaningless for a bag recorded at another time;
        # its processing time (pair completed -> publish) is kept.
        "node_stats": {k: v for k, v in recorded.stats[-1].items() if not k.startswith(("latency", "rate"))}
        if recorded.stats else None,
    }
    if labels:
        matrix, scored, mismatched = ConfusionMatrix(num_classes), 0, 0
        for stamp in answered:
            label = labels.get(stamp)
            if label is None:
                continue
            mask = recorded.masks[stamp][2]
            if mask.shape != label.shape:
                mismatched += 1
                continue
            matrix.update(mask, label)
            scored += 1
        metrics = matrix.compute()
        result.update(labelled_frames=len(labels), scored_frames=scored, label_size_mismatches=mismatched,
                      metrics=metrics.to_dict(class_names) if scored else None,
                      miou=metrics.miou if scored else None, macc=metrics.macc if scored else None)
    return result


def write_pictures(bag, rgb_topic: str, recorded: Recorded, palette, out: Path, overlays: bool, video: bool, fps: float):
    """Overlay PNGs and/or an mp4 of the colour frames with the node's masks (drawn here from ~/mask)."""
    import cv2

    from rgbd_fusion_seg.core.palette import overlay

    folder = out / "overlays"
    if overlays:
        folder.mkdir(parents=True, exist_ok=True)
    writer, written = None, 0
    try:
        with reading(bag) as reader:
            connection = image_connection(reader, rgb_topic, "colour")
            for index, (conn, _, raw) in enumerate(messages(reader, [connection])):
                msg = deserialize(raw, conn)
                answer = recorded.masks.get(stamp_ns(msg))
                rgb = colour_of(msg, rgb_topic) if answer is not None else None
                if rgb is None or answer[2].shape != rgb.shape[:2]:
                    continue
                bgr = cv2.cvtColor(overlay(rgb, answer[2], palette), cv2.COLOR_RGB2BGR)
                if overlays:
                    cv2.imwrite(str(folder / f"{index:06d}_{stamp_ns(msg)}.png"), bgr)
                if video:
                    if writer is None:
                        writer = cv2.VideoWriter(str(out / "overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                                 (bgr.shape[1], bgr.shape[0]))
                    writer.write(bgr)
                written += 1
    finally:
        if writer is not None:
            writer.release()
    return written


def evaluate_bag(args, log=print) -> dict:
    checkpoint, summary, infos = resolve_checkpoint(args, log)
    from rgbd_fusion_seg.core.checkpoint import load_checkpoint  # torch: once every input has passed

    served = load_checkpoint(checkpoint)  # class names and palette
    labels = read_labels(args.bag, args.label_topic, served.num_classes) if args.label_topic else {}
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    env = ros_environment(args.domain_id)
    parameters = {"device": args.device, "qos.profile": "reliable", "stats_period": 0.5, "modality": summary.modality,
                  "outputs.overlay": bool(args.overlay_topic), "sync.queue_size": args.queue_size, "sync.slop": args.slop}
    options = PlayOptions(topics=[args.rgb_topic, args.aux_topic], rate=args.rate, decompress=True)
    pairer = ApproximateTimePairer(args.queue_size, args.slop)
    writer = BagWriter(out / "outputs", args.storage)
    node = session = player = None
    result = {"bag": str(args.bag), "checkpoint": str(checkpoint), "method": summary.method, "modality": summary.modality,
              "topics": {k: vars(v) for k, v in infos.items()}, "rate_factor": args.rate, "output_bag": str(writer.path)}
    try:
        if args.label_topic:
            write_labels(args.bag, args.label_topic, writer)
        session = RosSession("rgbd_fusion_seg_bag_evaluate", env)
        recorder = Recorder(session, writer, bool(args.overlay_topic))
        recorded = recorder.recorded

        def on_played(played: Played) -> None:
            writer.write(played.topic, played.msgtype, played.wall_ns, played.data)
            stream = 0 if played.source_topic == args.rgb_topic else 1
            with recorded.lock:
                recorded.frames[played.source_topic] = recorded.frames.get(played.source_topic, 0) + 1
            pair = pairer.add(stream, stamp_ns(played.msg), played.wall_ns)
            if pair is not None:
                with recorded.lock:
                    recorded.played[pair.first_stamp] = (pair.first, played.wall_ns)

        player = Player(session.node, args.bag, options, on_played, log)
        remaps = {"rgb/image": player.routes[args.rgb_topic], "aux/image": player.routes[args.aux_topic]}
        node = NodeProcess(checkpoint, params_file=find_params_file(), parameters=parameters, namespace=NAMESPACE,
                           remappings=remaps, env=env, log_path=out / "node.log")
        log(f"started segment_node (pid {node.process.pid}) serving {summary.method} ({summary.modality}, "
            f"{summary.unit}) from {checkpoint}")
        ready = wait_until(lambda: recorder.serving() and all(player.subscriber_counts().values())
                           and session.node.count_publishers(f"{NODE}/mask") > 0, args.timeout, abort=lambda: not node.alive())
        if not ready:
            raise RuntimeError(node_failure(f"segment_node did not start serving within {args.timeout:.0f} s", node))
        result["warm_up_frames"] = send_warm_up(player, args.bag, args.rgb_topic, args.aux_topic, recorded, node, args.timeout)
        time.sleep(0.5)  # let the warm-up clear the node
        result["warm_up_pairs"] = pairs_so_far(recorded)
        log(f"node serving and warmed up; playing at {args.rate:g}x:\n{player.describe()}")
        played = player.run()
        result["play_seconds"] = played.pop("seconds")
        with recorded.lock:
            expected = list(recorded.played)
        drain(lambda: recorder.answered(expected), len(expected), quiet_s=3.0)
        seen = len(recorded.stats)
        wait_until(lambda: len(recorded.stats) > seen, 2.0)  # one more ~/stats after the last mask
    finally:
        if player is not None:
            player.close()
        if session is not None:
            session.close()
        if node is not None:
            code = node.stop()
            log(f"stopped segment_node (exit status {code}); its log: {node.log_path}")
        writer.close()
        log(f"wrote {writer.path} ({', '.join(f'{t}: {n}' for t, n in sorted(writer.counts.items()))})")
    result.update(score(recorded, labels, served.num_classes, served.classes))
    if args.overlays or args.video:
        fps = infos["rgb"].count / max(result["play_seconds"] * args.rate, 1e-3)  # recorded frames per second
        result["pictures"] = write_pictures(args.bag, args.rgb_topic, recorded, served.palette, out, args.overlays,
                                            args.video, fps)
    return result


def write_labels(bag, topic: str, writer: BagWriter) -> None:
    """The label topic, copied as recorded (the node never sees it)."""
    with reading(bag) as reader:
        connection = image_connection(reader, topic, "label")
        for conn, recorded, raw in messages(reader, [connection]):
            writer.write(topic, conn.msgtype, recorded, raw)


def summary_text(result: dict) -> str:
    lat, colour = result["latency_ms"], result["latency_from_colour_ms"]
    stats = result.get("node_stats") or {}
    frames = ", ".join(f"{topic} {count}" for topic, count in result["frames_in_bag"].items())
    lines = [
        f"bag evaluate: {result['bag']} through segment_node ({result['method']}, {result['modality']})",
        f"  frames played:   {frames}",
        f"  pairs:           {result['pairs_expected']} expected (node's pairer), node made {stats.get('pairs', '?')} "
        f"(+ warm-up: {result.get('warm_up_pairs', 0)} pairs of {result.get('warm_up_frames', 0)} sent)",
        f"  masks received:  {result['masks_received']}   drops: {result['drops']} (node: stale "
        f"{stats.get('dropped_stale', '?')}, unpaired {stats.get('dropped_unpaired', '?')}, bad input "
        f"{stats.get('bad_input', '?')}, lost in transport {stats.get('lost_in_transport_rgb', '?')}/"
        f"{stats.get('lost_in_transport_aux', '?')})",
        f"  latency:         p50 {format_number(lat['p50'])} ms  p90 {format_number(lat['p90'])} ms  p99 {format_number(lat['p99'])} ms "
        "(mask published - pair completed by the player)",
        f"  from colour:     p50 {format_number(colour['p50'])} ms  p90 {format_number(colour['p90'])} ms  p99 {format_number(colour['p99'])} ms",
        f"  node processing: p50 {stats.get('processing_p50_ms', '?')} ms  p90 {stats.get('processing_p90_ms', '?')} ms  "
        f"p99 {stats.get('processing_p99_ms', '?')} ms (node's ~/stats: pair completed - mask published)",
        f"  rate:            {format_number(result['rate_hz'], 2)} Hz masks (played at {result['rate_factor']:g}x)",
    ]
    if "miou" in result:
        lines.append(f"  mIoU:            {format_number(None if result['miou'] is None else 100 * result['miou'])} %   mAcc: "
                     f"{format_number(None if result['macc'] is None else 100 * result['macc'])} %   ({result['scored_frames']} "
                     f"of {result['labelled_frames']} labelled frames scored)")
    lines.append(f"  output bag:      {result['output_bag']}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap)")
    parser.add_argument("--rgb-topic", required=True, help="colour topic (Image or CompressedImage)")
    parser.add_argument("--aux-topic", required=True, help="depth or thermal topic (Image or CompressedImage)")
    parser.add_argument("--label-topic", default=None, help="mono8 class-id topic, stamped like the colour frames (for mIoU)")
    parser.add_argument("--checkpoint", default=None, help="model to serve (default: the demo's cached depth model)")
    parser.add_argument("--modality", choices=("depth", "thermal"), default=None,
                        help="aux modality (default: the checkpoint's; must match it)")
    parser.add_argument("--out", default="bag_evaluation", help="folder for outputs/ (bag), report.json, summary.txt")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="output bag storage (default mcap)")
    parser.add_argument("--rate", type=playback_rate, default=1.0, help="playback speed factor (default 1.0)")
    parser.add_argument("--queue-size", type=int, default=NODE_QUEUE_SIZE,
                        help=f"node sync.queue_size (default {NODE_QUEUE_SIZE}, the node's)")
    parser.add_argument("--slop", type=float, default=NODE_SLOP, help=f"node sync.slop in seconds (default {NODE_SLOP}, the node's)")
    parser.add_argument("--device", default="auto", help="node device: auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--overlay-topic", action="store_true", help="also record the node's ~/overlay")
    parser.add_argument("--overlays", action="store_true", help="write overlay PNGs to OUT/overlays")
    parser.add_argument("--video", action="store_true", help="write OUT/overlay.mp4 (at the recorded frame rate)")
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: the environment's)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the node to serve")


def run(args) -> int:
    try:
        result = evaluate_bag(args, log=lambda line: print(line, flush=True))
    except RuntimeError as error:
        print(f"bag evaluate failed: {error}", file=sys.stderr)
        return 1
    out = Path(args.out).expanduser()
    (out / "report.json").write_text(json.dumps(json_ready(result), indent=2) + "\n")
    text = summary_text(result)
    (out / "summary.txt").write_text(text + "\n")
    print(text, flush=True)
    return 0 if result["masks_received"] else 1
