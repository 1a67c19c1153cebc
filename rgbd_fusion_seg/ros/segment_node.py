"""segment_node: pairs a colour stream with a depth or thermal stream and publishes semantic masks.

Its contract, topics and parameters, is one table in `contract.py` and `serving/parameters.py` (rendered into
docs/node.md and config/segment.yaml by `python -m rgbd_fusion_seg.ros.contract`): colour on rgb/image and
depth or thermal on aux/image in (remap them; compressed transports on <base>/<transport>); ~/mask,
~/mask_color, ~/overlay, ~/confidence and ~/stats out, every image with the colour image's header.

The node is wiring: parameters, subscriptions, publishers, lifecycle and timers over the ROS-free serving
objects, which decide everything else: `FramePipeline` (pairing, the degraded-mode policy, the outputs of a
frame), `ModelHost` (the served and fallback models, loaded in the background), `NodeHealth` (counters,
~/stats, /diagnostics' judgement, the watchdog). Threads: the executor thread only pairs messages and hands
the newest pair to the inference worker (one slot, newest wins); the worker decodes, runs the engine and
publishes; models load on a loader thread and are swapped in whole, so the old model serves until the new one
is ready.

Run: `ros2 run rgbd_fusion_seg segment_node --ros-args -p checkpoint:=/path/mid.pt -r rgb/image:=/camera/color/image_raw`
or `python -m rgbd_fusion_seg.ros.segment_node --ros-args --params-file config/segment.yaml`; jpeg colour straight
from a camera: `... -p transport.rgb:=compressed -r rgb/image:=/camera/color/image_raw` (-> .../image_raw/compressed).
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import JumpThreshold, TimeJump
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from ..serving import parameters as params
from ..serving.frame_pipeline import Frame, FramePipeline, PairJob
from ..serving.image_codec import ImageDecodeError
from ..serving.inference_worker import InferenceWorker
from ..serving.model_host import ModelHost, RefusedChange
from ..serving.node_health import ERROR, OK, WARN, Inputs, NodeHealth, ThrottledLog, stats_line
from ..serving.pairing import STAMP_JUMP_BACK_S, ApproximateTimePairer
from .contract import OUTPUT_QOS, UNPAIRED_WARNING_SHARE
from .messages import aux_from_msg, colour_from_msg, frame_messages
from .spinning import run_until_stopped

NODE_NAME = "segment_node"
RGB_TOPIC = "rgb/image"
AUX_TOPIC = "aux/image"
CAMERA_INFO_TOPIC = "aux/camera_info"
_OUTPUTS_QOS = QoSProfile(depth=OUTPUT_QOS["depth"], reliability=ReliabilityPolicy.RELIABLE)
# The node's publishers (~/<name>): message type, and the parameter that enables it (None: always there).
OUTPUTS = {
    "mask": (Image, None),
    "mask_color": (Image, None),
    "overlay": (Image, "outputs.overlay"),
    "confidence": (Image, "outputs.confidence"),
    "fused_image": (Image, "outputs.fused_image"),
    "points": (PointCloud2, "outputs.points"),
    "camera_info": (CameraInfo, "outputs.camera_info"),
    "stats": (DiagnosticStatus, None),
}
_JUMP_BACK = JumpThreshold(min_forward=None, min_backward=Duration(seconds=-STAMP_JUMP_BACK_S), on_clock_change=False)
_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}

_PARAMETER_TYPES = {
    "string": Parameter.Type.STRING,
    "integer": Parameter.Type.INTEGER,
    "double": Parameter.Type.DOUBLE,
    "bool": Parameter.Type.BOOL,
    "double_array": Parameter.Type.DOUBLE_ARRAY,
    "integer_array": Parameter.Type.INTEGER_ARRAY,
}


def make_qos(profile: str, depth: int) -> QoSProfile:
    """The input QoS of a fixed profile; `auto` starts best effort (it receives from any publisher) until
    `adapted_qos` has seen the publishers."""
    if profile in ("sensor_data", "auto"):
        qos = copy.copy(qos_profile_sensor_data)
    elif profile == "reliable":
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    elif profile == "system_default":
        qos = copy.copy(qos_profile_system_default)
    else:
        raise ValueError(f"unknown QoS profile {profile!r}; expected one of {', '.join(params.QOS_PROFILES)}")
    qos.history = HistoryPolicy.KEEP_LAST
    qos.depth = depth
    return qos


def adapted_qos(offered: list[QoSProfile], depth: int) -> QoSProfile:
    """`qos.profile: auto`, as rosbag2 subscribes when it records: reliable only when every publisher offers it
    (a reliable subscription receives nothing from a best-effort publisher), transient local only when every
    publisher keeps history for late joiners; best effort and volatile while there is no publisher."""
    everyone = bool(offered)
    reliable = everyone and all(qos.reliability == ReliabilityPolicy.RELIABLE for qos in offered)
    transient = everyone and all(qos.durability == DurabilityPolicy.TRANSIENT_LOCAL for qos in offered)
    return QoSProfile(
        depth=depth, history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if transient else DurabilityPolicy.VOLATILE,
    )


def describe_qos(profile: str, qos: QoSProfile) -> str:
    return (
        f"{profile} (reliability {qos.reliability.name.lower()}, durability {qos.durability.name.lower()}, "
        f"history keep_last {qos.depth})"
    )


def _type_name(msg_type) -> str:
    """sensor_msgs.msg.Image -> "sensor_msgs/msg/Image", as `ros2 topic info` writes it."""
    return "/".join(msg_type.__module__.split(".")[:2] + [msg_type.__name__])


def params_as_declared(parameters: list[Parameter]) -> list[Parameter]:
    """A pre-set callback: an integer given for a double (`ros2 param set ... sync.slop 1`) is that double, as
    in a params file; other types reach the node's check, which names the parameter and the type it wants."""
    converted = []
    for parameter in parameters:
        spec = params.PARAMETERS_BY_NAME.get(parameter.name)
        if spec is not None and spec.type == "double" and parameter.type_ == Parameter.Type.INTEGER:
            parameter = Parameter(parameter.name, Parameter.Type.DOUBLE, float(parameter.value))
        elif spec is not None and spec.type == "double_array" and parameter.type_ == Parameter.Type.INTEGER_ARRAY:
            parameter = Parameter(parameter.name, Parameter.Type.DOUBLE_ARRAY, [float(v) for v in parameter.value])
        converted.append(parameter)
    return converted


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def qos_text(profile: str, qos: list[QoSProfile | None]) -> str:
    """How the inputs are subscribed, for the log: one text when both streams are alike."""
    texts = [describe_qos(profile, q) for q in qos if q is not None]
    if len(set(texts)) == 1:
        return texts[0]
    return f"{texts[0]} for colour, {texts[1]} for aux" if texts else profile


def input_topic(node: LifecycleNode, config: dict[str, Any], stream: int) -> tuple[type, str]:
    """The message type and full topic name of an input, as image_transport names it: remap rules apply to
    the base name, then /<transport> is appended (rcl matches a rule against a full name only, so
    `-r rgb/image:=/cam/image_raw` alone would leave rgb/image/compressed as it is). A rule for the full
    name (`-r rgb/image/compressed:=...`) works too when the base name is not remapped."""
    base = node.resolve_topic_name((RGB_TOPIC, AUX_TOPIC)[stream])
    transport = config[("transport.rgb", "transport.aux")[stream]]
    return (Image, base) if transport == "raw" else (CompressedImage, f"{base}/{transport}")


def offered_qos(node: LifecycleNode, config: dict[str, Any], stream: int) -> list[QoSProfile]:
    """The QoS of each publisher of an input now (other nodes' and our own process's alike)."""
    return [info.qos_profile for info in node.get_publishers_info_by_topic(input_topic(node, config, stream)[1])]


def qos_to_follow(current: QoSProfile | None, offered: list[QoSProfile], depth: int) -> QoSProfile | None:
    """`qos.profile: auto`: the QoS to subscribe again with when the publishers' offer changes what fits them
    best, else None. While a topic has no publisher the subscription stays as it is: a camera that restarts
    comes back as it was."""
    wanted = adapted_qos(offered, depth)
    if not offered or current is None or (
            (wanted.reliability, wanted.durability) == (current.reliability, current.durability)):
        return None
    return wanted


class InputDecodeError(ImageDecodeError):
    """An input image that cannot be decoded; `stream` 0 colour, 1 aux."""

    def __init__(self, stream: int, reason: str):
        super().__init__(reason)
        self.stream = stream


def decoded_frame(job: PairJob, aux_decoding: tuple[str, float] | None) -> Frame:
    """A job's images as arrays (the aux image only when `aux_decoding` says how); InputDecodeError."""
    try:
        rgb = colour_from_msg(job.colour)
    except ImageDecodeError as error:
        raise InputDecodeError(0, str(error)) from None
    try:
        aux = aux_from_msg(job.aux, *aux_decoding) if aux_decoding is not None else None
    except ImageDecodeError as error:
        raise InputDecodeError(1, str(error)) from None
    return Frame(rgb, aux, job.colour.header, (job.colour if job.aux is None else job.aux).header.frame_id)


def declare_parameters(node: LifecycleNode) -> dict[str, Any]:
    """Declare the parameter table on `node`; the values it starts with."""
    for spec in params.PARAMETERS:
        descriptor = ParameterDescriptor(
            description=spec.description, read_only=spec.read_only, additional_constraints=spec.constraints
        )
        ros_type = _PARAMETER_TYPES[spec.type]
        if spec.type.endswith("_array"):
            # An empty default cannot carry its type: declare by type, then set [] if nothing overrides it.
            parameter = node.declare_parameter(spec.name, ros_type, descriptor)
            if parameter.type_ == Parameter.Type.NOT_SET:
                node.set_parameters([Parameter(spec.name, ros_type, list(spec.default))])
        else:
            # Any type is taken here so that a wrong one gets the node's own refusal, which names the type
            # wanted (`checked_start_values`, `validated_changes`), not rclpy's bare type numbers.
            descriptor.dynamic_typing = True
            value = node.declare_parameter(spec.name, spec.default, descriptor).value
            if spec.type == "double" and type(value) is int:  # `slop: 1` in a params file
                node.set_parameters([Parameter(spec.name, Parameter.Type.DOUBLE, float(value))])
    return read_parameters(node)


def read_parameters(node: LifecycleNode) -> dict[str, Any]:
    return {spec.name: params.coerce(spec.name, node.get_parameter(spec.name).value) for spec in params.PARAMETERS}


def checked_start_values(node: LifecycleNode, config: dict[str, Any]) -> list[str]:
    """Bad values from the command line / params file: the default for a plain one (said, and set on `node`);
    for a model parameter, the reason the node idles (the list of them)."""
    refused = []
    for spec in params.PARAMETERS:
        reason = params.validate(spec.name, config[spec.name])
        if reason is None:
            continue
        if spec.name in params.MODEL_PARAMETERS:
            refused.append(reason)
        else:
            node.get_logger().error(f"{reason}; using the default {spec.default!r}")
            config[spec.name] = params.coerce(spec.name, spec.default)
            node.set_parameters([Parameter(spec.name, _PARAMETER_TYPES[spec.type], spec.default)])
    return refused


def validated_changes(parameters: list[Parameter], finalized: bool) -> dict[str, Any]:
    """{name: value} of a set-parameters request, coerced and checked one by one; RefusedChange if refused."""
    if finalized:
        raise RefusedChange(", ".join(p.name for p in parameters), "the node is finalized (shut down through its "
                            "lifecycle) and serves nothing: restart it")
    changes = {}
    for parameter in parameters:
        if parameter.name not in params.PARAMETERS_BY_NAME:
            continue
        value = params.coerce(parameter.name, parameter.value)
        reason = params.validate(parameter.name, value)
        if reason:
            raise RefusedChange(f"{parameter.name}={value!r}", reason)
        changes[parameter.name] = value
    return changes


class SegmentNode(LifecycleNode):
    """A managed node, with ROS 2's lifecycle state machine. configure: read and check the parameters, start
    the worker and loader threads, create the publishers, load the model; activate: subscribe and start the
    watchdog; deactivate: unsubscribe (the model stays loaded, nothing is published); cleanup: stop the threads,
    free the models and forget every counter, window and clock; shutdown, from any state: all of that, and
    the node is finalized (parameter changes refused). `/diagnostics` says the state in every state, finalized
    included, so a monitor sees why nothing is served. `autostart` (default true) configures and activates at
    start, so `ros2 run` and `ros2 launch` just work."""

    def __init__(self, *, stopping: threading.Event | None = None, **kwargs):
        """`stopping`: set when the process is asked to stop; a start-up that sees it loads no model."""
        super().__init__(NODE_NAME, **kwargs)
        self._log = self.get_logger()
        self._stopping = stopping
        self._configured = self._finalized = False
        self._shutting_down = False  # set by `shutdown` under `_publishing`: the worker publishes nothing after it
        self._publishing = threading.Lock()  # held by the worker while it publishes; `shutdown` waits for it
        self._inputs = Inputs(*map(self.resolve_topic_name, (RGB_TOPIC, AUX_TOPIC, CAMERA_INFO_TOPIC)))
        self._init_state("no model loaded yet")
        self._config = declare_parameters(self)
        self.add_pre_set_parameters_callback(params_as_declared)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # /diagnostics in every state (the one thing a finalized node keeps): a monitor must see that it stopped.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", _OUTPUTS_QOS)
        self._stats_timer = self.create_timer(self._config["stats_period"], self._publish_stats)
        if self._config["autostart"]:
            configured = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
            if configured and not (stopping is not None and stopping.is_set()):
                self.trigger_activate()
        else:
            self._log.info("autostart is false: unconfigured; configure and activate it through its lifecycle "
                           "services (ros2 lifecycle set /segment_node configure, then activate)")

    # ---- lifecycle -------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._config = read_parameters(self)  # what was set while unconfigured is read now
        refused = checked_start_values(self, self._config)
        self._shutting_down = False
        self._start_pipeline_and_threads()
        self._ensure_publishers()  # outputs before inputs: nothing is subscribed before there is somewhere to publish
        self._configured = True
        # torch and the models take seconds to import: now (signal handlers are in), not at a parameter change.
        from .. import models  # noqa: F401

        self._models.start_serving(self._config, refused, self._stopping)
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._create_subscriptions()
        self._ensure_publishers()  # and aux/camera_info's subscription
        self._watchdog_timer = self.create_timer(params.WATCHDOG_PERIOD_S, self._watchdog)
        self._health.start = time.monotonic()  # the no-pair watchdog counts from here
        self._log.info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._log.info("inactive: unsubscribed, the model stays loaded; activate to serve again")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._log.info("unconfigured: threads stopped, models freed, counters reset")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: unsubscribe, stop, free; only /diagnostics is left, saying it is finalized."""
        self._unsubscribe()
        self._release()
        self._finalized = True
        self._log.info(f"finalized (shut down from {state.label}): unsubscribed, threads stopped, models freed; "
                       "restart the node to serve again")
        return TransitionCallbackReturn.SUCCESS

    def lifecycle_state(self) -> str:
        """unconfigured, inactive, active or finalized (or a transition's name while one runs)."""
        return self._state_machine.current_state[1]

    def _init_state(self, idle_reason: str) -> None:
        """Fresh serving objects (no threads yet) and no ROS entities but /diagnostics: at start and cleanup."""
        self._say = ThrottledLog(self._log)
        self._models = ModelHost(lambda: self._config, self._say, idle_reason)
        self._health = NodeHealth(lambda: self._config, self._inputs, UNPAIRED_WARNING_SHARE)
        self._pipeline = self._pairer = self._worker = None
        self._input_subs: list = [None, None]  # colour, aux
        self._input_qos: list[QoSProfile | None] = [None, None]
        self._camera_info_sub = self._watchdog_timer = self._time_jump_handle = None
        self._outputs: dict[str, Any] = {}

    def _start_pipeline_and_threads(self) -> None:
        """The pairer and the frame pipeline, the ROS time-jump callback, the model loaders and the worker."""
        sync = (self._config["sync.queue_size"], self._config["sync.slop"], self._config["sync.exact"])
        self._pairer = ApproximateTimePairer(*sync, on_stamp_jump=lambda *jump: self._pipeline.stamps_jumped(*jump))
        self._pipeline = FramePipeline(lambda: self._config, self._pairer, self._models, self._health, self._inputs,
                                       self._say)
        # A ROS time jump back (/clock of a bag that loops or restarts) makes every queued message stale.
        self._time_jump_handle = self.get_clock().create_jump_callback(_JUMP_BACK, post_callback=self._on_time_jump)
        self._models.start()
        self._worker = InferenceWorker(self._serve, self._on_worker_error).start()
        if self._stats_timer.timer_period_ns != int(self._config["stats_period"] * 1e9):  # set while unconfigured
            self._restart_stats_timer()

    def _unsubscribe(self) -> None:
        for subscription in (*self._input_subs, self._camera_info_sub):
            if subscription is not None:
                self.destroy_subscription(subscription)
        self._input_subs, self._camera_info_sub = [None, None], None
        if self._watchdog_timer is not None:
            self.destroy_timer(self._watchdog_timer)
        self._watchdog_timer = None

    def _release(self) -> None:
        """Stop the threads, destroy the publishers (but /diagnostics'), free the models, start afresh."""
        self.shutdown()
        if self._time_jump_handle is not None:
            self._time_jump_handle.unregister()
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        self._configured = False
        self._init_state("cleaned up: configure to serve again")
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the models' memory goes back to the device

    def shutdown(self) -> None:
        """Stop the threads, waiting for a frame or a load in progress (they run C++ code: torch, DDS). Once this
        returns nothing publishes, even if a thread outlived its join timeout: the worker checks `_shutting_down`
        under the publishing lock."""
        with self._publishing:
            self._shutting_down = True
        if self._configured:
            self._models.stop()
            self._worker.stop(timeout=10.0)

    # ---- parameters ------------------------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        try:
            changes = validated_changes(parameters, self._finalized)
            if not changes or not self._configured:
                return SetParametersResult(successful=True)  # unconfigured: configure reads them
            config = {**self._config, **changes}
            request = self._models.check_change(config, changes)
        except RefusedChange as refusal:
            self._log.warning(f"refused {refusal.subject}: {refusal}")
            return SetParametersResult(successful=False, reason=str(refusal))
        self._config = config
        if changes.keys() & params.SYNC_PARAMETERS:
            self._pairer.configure(config["sync.queue_size"], config["sync.slop"], config["sync.exact"])
        self._ensure_publishers()
        if "stats_period" in changes:
            self._restart_stats_timer()
        self._models.apply_change(config, changes, request)
        self._log.info(f"parameters set: {', '.join(f'{k}={v!r}' for k, v in changes.items())}")
        return SetParametersResult(successful=True)

    def _restart_stats_timer(self) -> None:
        self.destroy_timer(self._stats_timer)
        self._stats_timer = self.create_timer(self._config["stats_period"], self._publish_stats)

    # ---- publishers and subscriptions ------------------------------------------------------------------
    def _ensure_publishers(self) -> None:
        """The publishers of the enabled outputs (an output turned off keeps its publisher), and aux/camera_info's
        subscription while active when an output needs the calibration."""
        for name, (msg_type, switch) in OUTPUTS.items():
            if name not in self._outputs and (switch is None or self._config[switch]):
                self._outputs[name] = self.create_publisher(msg_type, f"~/{name}", _OUTPUTS_QOS)
        wanted = self._config["outputs.points"] or self._config["outputs.camera_info"]
        if wanted and self._camera_info_sub is None and self._input_subs[0] is not None:
            self._pipeline.calibration_wanted_since = time.monotonic()
            qos = make_qos(self._config["qos.profile"], self._config["qos.depth"])  # as camera drivers publish it
            self._camera_info_sub = self.create_subscription(CameraInfo, CAMERA_INFO_TOPIC,
                                                             self._pipeline.camera_info_arrived, qos)
            self._inputs.camera_info = self._camera_info_sub.topic_name

    @property
    def rgb_topic(self) -> str:
        return self._inputs.rgb

    @property
    def aux_topic(self) -> str:
        return self._inputs.aux

    def _create_subscriptions(self) -> None:
        """Subscribe to both streams with the configured QoS (`auto`: what their publishers offer), and say so."""
        profile, depth = self._config["qos.profile"], self._config["qos.depth"]
        for stream in (0, 1):
            offered = offered_qos(self, self._config, stream) if profile == "auto" else []
            self._subscribe(stream, adapted_qos(offered, depth) if profile == "auto" else make_qos(profile, depth))
        rgb_sub, aux_sub = self._input_subs
        self._log.info(f"subscribed to {self.rgb_topic} (colour, {_type_name(rgb_sub.msg_type)}) and {self.aux_topic} "
                       f"(aux, {_type_name(aux_sub.msg_type)}) with QoS {self._inputs.qos_text}")
        self._log.info(f"pairing: queue_size {self._config['sync.queue_size']}, "
                       + ("exact stamps" if self._config["sync.exact"] else f"slop {self._config['sync.slop']} s"))

    def _subscribe(self, stream: int, qos: QoSProfile) -> None:
        """(Re)subscribe to an input; decoding (and decompressing) happens on the inference worker."""
        if self._input_subs[stream] is not None:
            self.destroy_subscription(self._input_subs[stream])
        msg_type, topic = input_topic(self, self._config, stream)
        callback = (self._on_rgb, self._on_aux)[stream]
        subscription = self.create_subscription(msg_type, topic, callback, qos,
                                                event_callbacks=self._transport_events(stream))
        self._input_subs[stream], self._input_qos[stream] = subscription, qos
        self._inputs.subscribed(stream, subscription.topic_name, qos.reliability == ReliabilityPolicy.RELIABLE,
                                qos_text(self._config["qos.profile"], self._input_qos))

    def _follow_publishers_qos(self) -> None:
        """`qos.profile: auto`: subscribe again with what the publishers offer (`qos_to_follow`)."""
        for stream in (0, 1):
            wanted = qos_to_follow(self._input_qos[stream], offered_qos(self, self._config, stream),
                                   self._config["qos.depth"])
            if wanted is None or self._input_subs[stream] is None:
                continue
            self._subscribe(stream, wanted)
            self._log.info(f"{self._input_subs[stream].topic_name}: its publishers now offer "
                           f"{describe_qos('auto', wanted)}: subscribed again with it")

    def _transport_events(self, stream: int) -> SubscriptionEventCallbacks:
        """Say so when the middleware cannot deliver: incompatible QoS, or messages lost in transport."""
        return SubscriptionEventCallbacks(
            incompatible_qos=lambda info: self._pipeline.incompatible_qos(
                stream, getattr(info.last_policy_kind, "name", info.last_policy_kind)),
            message_lost=lambda info: self._pipeline.frames_lost(stream, info.total_count, info.total_count_change))

    # ---- frames: the executor thread pairs and hands over, the worker serves and publishes ---------------
    def _on_rgb(self, msg: Image | CompressedImage) -> None:
        self._on_image(0, msg)

    def _on_aux(self, msg: Image | CompressedImage) -> None:
        self._on_image(1, msg)

    def _on_image(self, stream: int, msg: Image | CompressedImage) -> None:
        for job in self._pipeline.arrived(stream, stamp_ns(msg.header), msg.header.frame_id, msg):
            self._worker.submit(job)

    def _on_time_jump(self, jump: TimeJump) -> None:
        self._pipeline.time_jumped_back(-jump.delta.nanoseconds / 1e9)

    def _serve(self, job: PairJob) -> None:
        """One pair (or one colour frame, `job.aux` None, while the aux camera is missing): decode, serve, publish."""
        plan = self._pipeline.plan(job)
        try:
            outputs = self._pipeline.process(plan, decoded_frame(job, plan.aux_decoding)) if plan else None
        except InputDecodeError as error:
            return self._pipeline.bad_input((self.rgb_topic, self.aux_topic)[error.stream], str(error))
        if outputs is None:
            return
        messages = frame_messages(outputs)
        with self._publishing:
            if self._shutting_down:  # the node is being destroyed: its publishers may be gone
                return
            for name, msg in messages.items():
                if name in self._outputs:  # an output turned on a moment ago may not have one yet
                    self._outputs[name].publish(msg)
        latency_s = (self.get_clock().now().nanoseconds - stamp_ns(outputs.header)) / 1e9
        self._pipeline.published(outputs, latency_s, job.paired_at, plan.started)

    def _on_worker_error(self, job: PairJob, error: BaseException) -> None:
        if not self._shutting_down:
            self._pipeline.worker_failed(error)

    # ---- health: the no-pair watchdog, ~/stats and /diagnostics -------------------------------------------
    def _watchdog(self) -> None:
        """Follow the publishers' QoS (`qos.profile: auto`); warn when no pair was made for no_pair_timeout."""
        if self._config["qos.profile"] == "auto":
            self._follow_publishers_qos()
        starved = self._health.starvation(self._pairer)
        if starved is not None:
            publishers = (self.count_publishers(self.rgb_topic), self.count_publishers(self.aux_topic))
            self._log.warning(starved.describe(self._inputs, publishers))

    def stats(self) -> dict[str, str]:
        return self._health.stats(self._models.served, self._pairer.counts, self._worker.dropped_stale,
                                  self._pipeline.aux_watch.degraded_how)

    def _publish_stats(self) -> None:
        state = self.lifecycle_state()
        if state == "active" and self._configured:
            values = self.stats()
            level, message = self._health.judge(values, self._models.served, self._models.idle_reason,
                                                self._pipeline.camera_info.snapshot())
            self._log.info(stats_line(values))  # before publishing: whoever read the stats can find its line
        else:
            values = {"state": state}
            level, message = NodeHealth.state_report(state, self._models.idle_reason)
        status = DiagnosticStatus(name=self.get_fully_qualified_name(), hardware_id=values.get("device", ""),
                                  level=_LEVELS[level], message=message,
                                  values=[KeyValue(key=key, value=value) for key, value in values.items()])
        if "state" not in values:
            self._outputs["stats"].publish(status)
        diagnostics = DiagnosticArray(status=[status])
        diagnostics.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(diagnostics)


def main(args=None) -> None:
    """Spin the node until SIGINT or SIGTERM, then stop its threads and exit 0, without a traceback."""
    run_until_stopped(lambda stopping: SegmentNode(stopping=stopping), args, stop_threads=SegmentNode.shutdown)


if __name__ == "__main__":
    main()
