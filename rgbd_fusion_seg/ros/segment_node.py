"""segment_node: pairs a colour stream with a depth or thermal stream and publishes semantic masks.

Its contract, topics and parameters, is one table in `contract.py` and `parameters.py` (rendered into
docs/node.md and config/segment.yaml by `python -m rgbd_fusion_seg.ros.contract`): colour on rgb/image and
depth or thermal on aux/image in (remap them; compressed transports on <base>/<transport>); ~/mask,
~/mask_color, ~/overlay, ~/confidence and ~/stats out, every image with the colour image's header.

Threads: the executor thread only pairs messages and hands the newest pair to the inference worker (one
slot, newest wins); the worker decodes, runs the engine and publishes; models load on a loader thread and
are swapped in whole, so the old model serves until the new one is ready.

Run: `ros2 run rgbd_fusion_seg segment_node --ros-args -p checkpoint:=/path/mid.pt -r rgb/image:=/camera/color/image_raw`
or `python -m rgbd_fusion_seg.ros.segment_node --ros-args --params-file config/segment.yaml`; jpeg colour straight
from a camera: `... -p transport.rgb:=compressed -r rgb/image:=/camera/color/image_raw` (-> .../image_raw/compressed).
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any

import numpy as np

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

from ..core.palette import colourise, overlay
from ..core.preprocessing import PreprocessingError
from ..serving import parameters as params
from ..serving.cloud_output import CameraInfoState, cloud_options, cloud_points
from ..serving.degraded import AuxWatch, colour_only_server
from ..serving.image_codec import ImageDecodeError, aux_from_msg, colour_from_msg, float_to_msg, mask_to_msg, rgb_to_msg
from ..serving.inference_worker import InferenceWorker, LatencyWindow
from ..serving.model_selection import choose_model, needs_load, runtime_from
from ..serving.model_serving import BackgroundLoader, LoadRequest, ServedModel, inspect_checkpoint
from ..serving.pairing import STAMP_JUMP_BACK_S, ApproximateTimePairer
from ..serving.point_cloud import camera_info_at_size, cloud_to_msg
from .contract import OUTPUT_QOS, UNPAIRED_WARNING_SHARE
from .spinning import run_until_stopped

NODE_NAME = "segment_node"
RGB_TOPIC = "rgb/image"
AUX_TOPIC = "aux/image"
CAMERA_INFO_TOPIC = "aux/camera_info"
# Beyond this, stamp -> publish is not a processing time: the stamps come from another clock (a bag replayed
# without its clock, a camera without time sync).
CLOCK_GAP_WARNING_S = 60.0
# What to do about frames lost between the camera and the node (said in the log and on /diagnostics), by the
# subscription's reliability.
LOST_CURE = {
    ReliabilityPolicy.BEST_EFFORT: (
        "best-effort delivery of large images drops UDP fragments; publish the camera reliably (qos.profile auto "
        "then subscribes reliably), or use Fast DDS's LARGE_DATA transports (FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA "
        "on both ends), or compressed transport (transport.rgb/aux)"),
    ReliabilityPolicy.RELIABLE: (
        "the publisher's history replaced frames this node had not taken yet (it reads slower than the camera "
        "sends); give the camera's publisher a deeper history, lower its rate or image size, or use compressed "
        "transport (transport.rgb/aux)"),
}
# ~/stats counters whose growth in one report period /diagnostics judges.
_PERIOD_COUNTERS = ("frames_in_rgb", "frames_in_aux", "dropped_unpaired", "frames_out", "points_out", "bad_input",
                    "inference_errors", "dropped_cannot_degrade", "lost_in_transport_rgb", "lost_in_transport_aux")
_OUTPUTS_QOS = QoSProfile(depth=OUTPUT_QOS["depth"], reliability=ReliabilityPolicy.RELIABLE)

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


def log_at(logger, level: str, message: str) -> None:
    """Log `message` at `level` ("error", "warning" or "info").

    rclpy binds each call site (file, line and bytecode offset) to the first severity logged through it and
    raises ValueError for any other severity there later, so every severity has its own call below.
    """
    if level == "error":
        logger.error(message)
    elif level == "warning":
        logger.warning(message)
    elif level == "info":
        logger.info(message)
    else:
        raise ValueError(f"unknown log level {level!r}")


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


class _Counters:
    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._values = {name: 0 for name in names}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)


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
        self._init_state()
        self._config = self._declare_parameters()
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

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        # What was set while unconfigured is read now.
        self._config = {spec.name: params.coerce(spec.name, self.get_parameter(spec.name).value)
                        for spec in params.PARAMETERS}
        model_ok = self._check_startup_values()
        self._shutting_down = False
        self._start_pairing_and_threads()
        # Outputs before inputs: nothing is subscribed to before there is somewhere to publish.
        self._create_publishers()
        self._configured = True
        # torch and the models take seconds to import: do it now (SIGINT/SIGTERM handlers are installed),
        # not in the first parameter change that needs them.
        from .. import models  # noqa: F401

        if model_ok and not self._ask_for_initial_model(self._stopping):
            return TransitionCallbackReturn.SUCCESS  # the process is stopping: nothing loads
        if self._config["fallback_checkpoint"]:
            try:
                self._request_fallback(self._config)
            except ValueError as error:
                self._log.error(f"{error}; no fallback while the aux camera is missing")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._create_subscriptions()
        self._ensure_optional_publishers()  # and aux/camera_info's subscription
        self._watchdog_timer = self.create_timer(params.WATCHDOG_PERIOD_S, self._watchdog)
        self._start = time.monotonic()  # the no-pair watchdog counts from here
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
        """From unconfigured, inactive or active: unsubscribe, stop, free; the node holds nothing but
        /diagnostics, which says it is finalized."""
        self._unsubscribe()
        self._release()
        self._finalized = True
        self._log.info(f"finalized (shut down from {state.label}): unsubscribed, threads stopped, models freed; "
                       "restart the node to serve again")
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        for subscription in (*self._input_subs, self._camera_info_sub):
            if subscription is not None:
                self.destroy_subscription(subscription)
        self._input_subs, self._camera_info_sub = [None, None], None
        if self._watchdog_timer is not None:
            self.destroy_timer(self._watchdog_timer)
        self._watchdog_timer = None

    def _release(self) -> None:
        """Stop the threads, destroy the publishers (but /diagnostics'), free the models and start every
        counter, window and clock afresh for the next configure."""
        self.shutdown()
        if self._time_jump_handle is not None:
            self._time_jump_handle.unregister()
        for name in ("_mask_pub", "_mask_color_pub", "_overlay_pub", "_confidence_pub", "_fused_pub", "_points_pub",
                     "_camera_info_pub", "_stats_pub"):
            if getattr(self, name, None) is not None:
                self.destroy_publisher(getattr(self, name))
        self._configured = False
        self._init_state()
        self._idle_reason = "cleaned up: configure to serve again"
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the models' memory goes back to the device

    def lifecycle_state(self) -> str:
        """unconfigured, inactive, active or finalized (or a transition's name while one runs)."""
        return self._state_machine.current_state[1]

    # ---- start-up --------------------------------------------------------------------------------------

    def _init_state(self) -> None:
        """Counters, warn-once flags and the served model's state, before anything can call back."""
        self._throttle: dict[str, float] = {}
        self._throttle_lock = threading.Lock()
        self._counters = _Counters(
            "bad_input", "frames_out", "dropped_no_model", "inference_errors", "lost_rgb", "lost_aux",
            "points_out", "points_skipped", "bad_camera_info", "frames_colour_only", "dropped_cannot_degrade",
            "aux_invalid",
        )
        self._aux_watch = AuxWatch()
        self._fallback: ServedModel | None = None
        self._fallback_generation = 0
        self._camera_info = CameraInfoState()
        self._calibration_wanted_since = time.monotonic()  # for camera_info_timeout
        self._latency = LatencyWindow()  # colour stamp -> masks published: the camera-to-mask latency
        self._processing = LatencyWindow()  # pair completed -> masks published: this node alone, any clock
        # ... split: waiting for the running inference to finish, then working on this pair (decode -> publish)
        self._waiting, self._working = LatencyWindow(), LatencyWindow()
        self._start = time.monotonic()
        self._last_pair = None  # monotonic time of the last pair
        self._last_input_at = 0.0  # monotonic time of the last colour or aux message
        self._received_at_pair = (0, 0)  # frames received per stream when the last pair was made
        self._starved_warnings: dict[str, float] = {}  # problem kind -> when it was last warned
        self._frame_id_warned = False
        self._resize_warned: set[tuple[tuple[int, int], tuple[int, int]]] = set()  # (colour, aux) sizes warned of
        self._other_clock = False  # the newest frame's stamp is CLOCK_GAP_WARNING_S or more from this node's clock
        self._at_last_stats: dict[str, int] = {}  # counters at the last report: /diagnostics judges the period
        self._served: ServedModel | None = None
        self._served_lock = threading.Lock()
        self._generation = 0
        self._target: tuple | None = None  # ModelChoice.target last asked for
        self._idle_reason = "no model loaded yet"
        self._input_subs: list = [None, None]  # colour, aux
        self._input_qos: list[QoSProfile | None] = [None, None]
        self._camera_info_sub = self._watchdog_timer = self._time_jump_handle = None
        for name in ("_mask_pub", "_mask_color_pub", "_overlay_pub", "_confidence_pub", "_fused_pub", "_points_pub",
                     "_camera_info_pub", "_stats_pub"):
            setattr(self, name, None)

    def _start_pairing_and_threads(self) -> None:
        """The pairer, the ROS time-jump callback, the model loader and the inference worker."""
        self._pairer = ApproximateTimePairer(
            self._config["sync.queue_size"], self._config["sync.slop"], self._config["sync.exact"],
            on_stamp_jump=self._on_stamp_jump,
        )
        # A ROS time jump back (/clock of a bag that loops or restarts) makes every queued message stale.
        self._time_jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-STAMP_JUMP_BACK_S), on_clock_change=False),
            post_callback=self._on_time_jump,
        )
        self._loader = BackgroundLoader(self._on_model_loaded, self._on_model_failed)
        self._fallback_loader = BackgroundLoader(self._on_fallback_loaded, self._on_fallback_failed)
        self._worker = InferenceWorker(self._process_pair, self._on_worker_error).start()
        if self._stats_timer.timer_period_ns != int(self._config["stats_period"] * 1e9):  # set while unconfigured
            self.destroy_timer(self._stats_timer)
            self._stats_timer = self.create_timer(self._config["stats_period"], self._publish_stats)

    def _create_publishers(self) -> None:
        self._mask_pub = self.create_publisher(Image, "~/mask", _OUTPUTS_QOS)
        self._mask_color_pub = self.create_publisher(Image, "~/mask_color", _OUTPUTS_QOS)
        self._ensure_optional_publishers()
        self._stats_pub = self.create_publisher(DiagnosticStatus, "~/stats", _OUTPUTS_QOS)

    @property
    def rgb_topic(self) -> str:
        return self._input_subs[0].topic_name if self._input_subs[0] is not None else self.resolve_topic_name(RGB_TOPIC)

    @property
    def aux_topic(self) -> str:
        return self._input_subs[1].topic_name if self._input_subs[1] is not None else self.resolve_topic_name(AUX_TOPIC)

    @property
    def _qos_text(self) -> str:
        profile = self._config["qos.profile"]
        texts = [describe_qos(profile, qos) for qos in self._input_qos if qos is not None]
        if len(set(texts)) == 1:
            return texts[0]
        return f"{texts[0]} for colour, {texts[1]} for aux" if texts else profile

    def _create_subscriptions(self) -> None:
        """Subscribe to both streams with the configured QoS (with `auto`, what their publishers offer), and say
        what was subscribed and how it pairs."""
        profile, depth = self._config["qos.profile"], self._config["qos.depth"]
        for stream in (0, 1):
            qos = adapted_qos(self._offered_qos(stream), depth) if profile == "auto" else make_qos(profile, depth)
            self._input_subs[stream] = self._subscribe(stream, qos)
        rgb_sub, aux_sub = self._input_subs
        self._log.info(
            f"subscribed to {self.rgb_topic} (colour, {_type_name(rgb_sub.msg_type)}) and {self.aux_topic} "
            f"(aux, {_type_name(aux_sub.msg_type)}) with QoS {self._qos_text}"
        )
        self._log.info(
            f"pairing: queue_size {self._config['sync.queue_size']}, "
            + ("exact stamps" if self._config["sync.exact"] else f"slop {self._config['sync.slop']} s")
        )

    def _ask_for_initial_model(self, stopping: threading.Event | None) -> bool:
        """Plan the start-up model and ask the loader for it, or go idle saying why. False when a stop was
        asked for while torch was imported: then nothing is loaded."""
        try:
            request = self._plan_model(self._config, explicit={"checkpoint", "fusion_method"}, startup=True)
        except ValueError as error:  # CheckpointError is a ValueError
            self._go_idle(f"{error}")
            return True
        if stopping is not None and stopping.is_set():  # a signal arrived while torch was imported
            return False
        if request is None:
            self._go_idle("no checkpoint given: set the `checkpoint` parameter (or fusion_method with "
                          "checkpoint_dir) to start serving", level="warning")
        else:
            self._request_load(request)
        return True

    # ---- parameters -----------------------------------------------------------------------------------

    def _declare_parameters(self) -> dict[str, Any]:
        config = {}
        for spec in params.PARAMETERS:
            descriptor = ParameterDescriptor(
                description=spec.description, read_only=spec.read_only, additional_constraints=spec.constraints
            )
            ros_type = _PARAMETER_TYPES[spec.type]
            if spec.type.endswith("_array"):
                # An empty default cannot carry its type: declare by type, then set [] if nothing overrides it.
                parameter = self.declare_parameter(spec.name, ros_type, descriptor)
                if parameter.type_ == Parameter.Type.NOT_SET:
                    self.set_parameters([Parameter(spec.name, ros_type, list(spec.default))])
            else:
                # Any type is taken here so that a wrong one gets the node's own refusal, which names the type
                # wanted (`_check_startup_values`, `_on_set_parameters`), not rclpy's bare type numbers.
                descriptor.dynamic_typing = True
                value = self.declare_parameter(spec.name, spec.default, descriptor).value
                if spec.type == "double" and type(value) is int:  # `slop: 1` in a params file
                    self.set_parameters([Parameter(spec.name, Parameter.Type.DOUBLE, float(value))])
            config[spec.name] = params.coerce(spec.name, self.get_parameter(spec.name).value)
        return config

    def _check_startup_values(self) -> bool:
        """Bad values from the command line / params file: defaults for the plain ones, idle for the model."""
        model_ok = True
        for spec in params.PARAMETERS:
            reason = params.validate(spec.name, self._config[spec.name])
            if reason is None:
                continue
            if spec.name in params.MODEL_PARAMETERS:
                self._go_idle(reason)
                model_ok = False
            else:
                self._log.error(f"{reason}; using the default {spec.default!r}")
                self._config[spec.name] = params.coerce(spec.name, spec.default)
                ros_type = _PARAMETER_TYPES[spec.type]
                self.set_parameters([Parameter(spec.name, ros_type, spec.default)])
        return model_ok

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        if self._finalized:
            reason = "the node is finalized (shut down through its lifecycle) and serves nothing: restart it"
            self._log.warning(f"refused {', '.join(p.name for p in parameters)}: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        changes = {}
        for parameter in parameters:
            if parameter.name not in params.PARAMETERS_BY_NAME:
                continue
            value = params.coerce(parameter.name, parameter.value)
            reason = params.validate(parameter.name, value)
            if reason:
                self._log.warning(f"refused {parameter.name}={value!r}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
            changes[parameter.name] = value
        if not changes or not self._configured:
            return SetParametersResult(successful=True)  # unconfigured: configure reads them
        config = {**self._config, **changes}
        request = None
        if changes.keys() & params.MODEL_PARAMETERS:
            try:
                request = self._plan_model(config, explicit=set(changes))
            except ValueError as error:  # CheckpointError is a ValueError
                reason = str(error)
                self._log.warning(f"refused {', '.join(f'{k}={v!r}' for k, v in changes.items())}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        if "fallback_checkpoint" in changes and changes["fallback_checkpoint"]:
            try:
                self._check_fallback(changes["fallback_checkpoint"])
            except ValueError as error:
                self._log.warning(f"refused fallback_checkpoint: {error}")
                return SetParametersResult(successful=False, reason=str(error))
        # Everything validated: apply.
        self._config = config
        if "fallback_checkpoint" in changes:
            self._request_fallback(config)
        if changes.keys() & params.SYNC_PARAMETERS:
            self._pairer.configure(config["sync.queue_size"], config["sync.slop"], config["sync.exact"])
        if changes.keys() & {"outputs.overlay", "outputs.confidence", "outputs.fused_image", "outputs.points",
                             "outputs.camera_info"}:
            self._ensure_optional_publishers()
        if "stats_period" in changes and self._stats_timer is not None:
            self.destroy_timer(self._stats_timer)
            self._stats_timer = self.create_timer(config["stats_period"], self._publish_stats)
        if "aux_range" in changes:
            with self._served_lock:
                if self._served is not None:
                    self._served = self._served.with_aux_range(config["aux_range"])
        if request is not None:
            self._request_load(request)
        self._log.info(f"parameters set: {', '.join(f'{k}={v!r}' for k, v in changes.items())}")
        return SetParametersResult(successful=True)

    def _plan_model(self, config: dict, explicit: set[str], startup: bool = False) -> LoadRequest | None:
        """Check the model a configuration asks for; a LoadRequest if it must be (re)loaded, else None."""
        choice = choose_model(config, explicit, serving=self._served is not None, startup=startup)
        if choice is None or not needs_load(choice, self._target, explicit):
            return None
        self._generation += 1
        self._target = choice.target
        what = ", ".join(sorted(explicit & params.MODEL_PARAMETERS)) or "start"
        return LoadRequest(self._generation, choice.summary.path, choice.runtime, tuple(config["aux_range"]),
                           reason=what, extras=choice.extras)

    # ---- model loading --------------------------------------------------------------------------------

    def _request_load(self, request: LoadRequest) -> None:
        serving = f"; {self._served.method!r} serves until it is ready" if self._served else ""
        runtime = request.runtime
        backend = runtime.backend_for(request.path) + (" (compiled)" if runtime.compile else "")
        self._log.info(
            f"loading {request.path} with {backend} on {runtime.device} ({runtime.precision}) in the background "
            f"[{request.reason}]{serving}"
        )
        self._load_started = time.monotonic()
        if self._served is None:
            self._idle_reason = f"loading {request.path}"
        self._loader.request(request)

    def _on_model_loaded(self, request: LoadRequest, served: ServedModel) -> None:
        if self._shutting_down:
            return
        if request.generation != self._generation:
            self._log.info(f"discarding {request.path}: a newer model was asked for while it loaded")
            return
        with self._served_lock:
            old = self._served
            self._served = served.with_aux_range(self._config["aux_range"])
            self._idle_reason = ""
        took = time.monotonic() - self._load_started
        replaced = f" (replacing {old.method!r} from {old.path})" if old else ""
        self._log.info(f"serving {self._served.describe()}{replaced}; loaded in {took:.2f} s")
        fallback = self._fallback
        if fallback is not None and fallback.engine.checkpoint.classes != served.engine.checkpoint.classes:
            self._log.error(f"fallback_checkpoint {fallback.path} has other classes than {served.path}: it is not "
                            "used while the aux camera is missing (set a fallback with the same classes)")
        if self._config["outputs.fused_image"] and "fused" not in served.engine.extras:
            self._log.warning(f"outputs.fused_image is true but method {served.method!r} makes no fused image: "
                              "~/fused_image stays silent (SC-CoSF, fusion_method sccosf, makes one)")

    def _on_model_failed(self, request: LoadRequest, error: BaseException) -> None:
        if self._shutting_down:
            return
        if request.generation == self._generation:
            self._target = None  # allow asking for it again
        keeping = f"keeping {self._served.method!r} from {self._served.path}" if self._served else "staying idle"
        self._log.error(f"could not load {request.path}: {error}; {keeping}")
        if self._served is None:
            self._idle_reason = f"could not load {request.path}: {error}"

    def _request_fallback(self, config: dict) -> None:
        """Check the fallback_checkpoint (ValueError if it cannot serve) and load it in the background."""
        self._fallback_generation += 1
        path = config["fallback_checkpoint"]
        if not path:
            self._fallback = None
            return
        self._check_fallback(path)
        self._log.info(f"loading fallback_checkpoint {path} in the background (served while aux is missing)")
        self._fallback_loader.request(LoadRequest(self._fallback_generation, path, runtime_from(config), (),
                                                  reason="fallback_checkpoint"))

    def _check_fallback(self, path: str) -> None:
        """ValueError with the reason when `path` cannot be the fallback: the node's rules for colour alone, and
        the served model's classes (checked again when either model is loaded)."""
        from ..core.checkpoint import CheckpointError  # imports torch: not at the node's start

        served = self._served
        refusal = inspect_checkpoint(path).fallback_refusal(
            tuple(served.engine.checkpoint.classes) if served is not None else None)
        if refusal:
            raise CheckpointError(refusal)

    def _on_fallback_loaded(self, request: LoadRequest, served: ServedModel) -> None:
        if request.generation != self._fallback_generation or self._shutting_down:
            return
        main = self._served
        if main is not None and served.engine.checkpoint.classes != main.engine.checkpoint.classes:
            self._log.error(f"fallback_checkpoint {served.path} refused: it has other classes than the served model "
                            f"{main.path}; no fallback while the aux camera is missing")
            return
        self._fallback = served
        self._log.info(f"fallback ready: {served.describe()}")

    def _on_fallback_failed(self, request: LoadRequest, error: BaseException) -> None:
        if request.generation == self._fallback_generation and not self._shutting_down:
            self._log.error(f"could not load fallback_checkpoint {request.path}: {error}; no fallback")

    def _go_idle(self, reason: str, level: str = "error") -> None:
        self._idle_reason = reason
        message = f"{reason}; no model: running idle until the model parameters name one it can serve"
        log_at(self._log, level, message)

    # ---- input: the executor thread only pairs and hands over ------------------------------------------

    def _input_topic(self, stream: int) -> tuple[type, str]:
        """The message type and full topic name of an input, as image_transport names it: remap rules apply to
        the base name, then /<transport> is appended (rcl matches a rule against a full name only, so
        `-r rgb/image:=/cam/image_raw` alone would leave rgb/image/compressed as it is). A rule for the full
        name (`-r rgb/image/compressed:=...`) works too when the base name is not remapped."""
        base = (RGB_TOPIC, AUX_TOPIC)[stream]
        transport = self._config[("transport.rgb", "transport.aux")[stream]]
        if transport == "raw":
            return Image, self.resolve_topic_name(base)
        return CompressedImage, f"{self.resolve_topic_name(base)}/{transport}"

    def _subscribe(self, stream: int, qos: QoSProfile):
        msg_type, topic = self._input_topic(stream)
        self._input_qos[stream] = qos
        # Decoding (and decompressing) happens on the inference worker, not in these callbacks.
        callback = (self._on_rgb, self._on_aux)[stream]
        return self.create_subscription(msg_type, topic, callback, qos, event_callbacks=self._transport_events(stream))

    def _offered_qos(self, stream: int) -> list[QoSProfile]:
        """The QoS of each publisher of an input topic now (other nodes' and our own process's alike)."""
        return [info.qos_profile for info in self.get_publishers_info_by_topic(self._input_topic(stream)[1])]

    def _follow_publishers_qos(self) -> None:
        """`qos.profile: auto`: subscribe again when the publishers' offer changes what fits them best. While a
        topic has no publisher the subscription stays as it is: a camera that restarts comes back as it was."""
        for stream in (0, 1):
            current, offered = self._input_qos[stream], self._offered_qos(stream)
            wanted = adapted_qos(offered, self._config["qos.depth"])
            if not offered or current is None or self._input_subs[stream] is None or (
                    (wanted.reliability, wanted.durability) == (current.reliability, current.durability)):
                continue
            self.destroy_subscription(self._input_subs[stream])
            self._input_subs[stream] = self._subscribe(stream, wanted)
            self._log.info(f"{self._input_subs[stream].topic_name}: its publishers now offer "
                           f"{describe_qos('auto', wanted)}: subscribed again with it")

    def _lost_cure(self, stream: int) -> str:
        qos = self._input_qos[stream]
        return LOST_CURE[qos.reliability if qos is not None else ReliabilityPolicy.BEST_EFFORT]

    def _transport_events(self, stream: int) -> SubscriptionEventCallbacks:
        """Say so when the middleware cannot deliver: incompatible QoS, or messages lost in transport."""
        label = ("rgb", "aux")[stream]

        def topic() -> str:
            return (self.rgb_topic, self.aux_topic)[stream]

        def incompatible(info) -> None:
            if self._config["qos.profile"] == "auto":  # the watchdog subscribes again with what is offered
                self._log.info(f"{topic()}: a new publisher's QoS does not fit the subscription: following the "
                               "publishers' QoS (qos.profile auto)")
                return
            self._log.error(
                f"{topic()}: a publisher's QoS is incompatible with ours ({self._qos_text}); policy "
                f"{getattr(info.last_policy_kind, 'name', info.last_policy_kind)}: no messages will arrive from it. "
                "qos.profile auto subscribes with what the publishers offer."
            )

        def lost(info) -> None:
            self._counters.add(f"lost_{label}", int(info.total_count_change))
            self._log_throttled(f"lost:{label}", "warning",
                                f"{topic()}: {info.total_count} messages lost in transport so far: "
                                f"{self._lost_cure(stream)}", 30.0)

        return SubscriptionEventCallbacks(incompatible_qos=incompatible, message_lost=lost)

    def _on_rgb(self, msg: Image | CompressedImage) -> None:
        self._on_image(0, msg)

    def _on_aux(self, msg: Image | CompressedImage) -> None:
        self._on_image(1, msg)

    def _on_stamp_jump(self, stream: int, jump_ns: int, dropped: int) -> None:
        topic = (self.rgb_topic, self.aux_topic)[stream]
        self._log_throttled(
            f"stamp_jump:{stream}", "warning",
            f"{topic}: stamps jumped back {jump_ns / 1e9:.3f} s (a driver restart, a bag looping?): dropped the "
            f"{dropped} frames queued before the jump, which nothing could pair with; pairing goes on from the new "
            "stamps", 10.0,
        )

    def _on_time_jump(self, jump: TimeJump) -> None:
        dropped = self._pairer.clear()
        self._log.warning(
            f"ROS time jumped back {-jump.delta.nanoseconds / 1e9:.3f} s (/clock restarted?): dropped the {dropped} "
            "queued frames; pairing goes on from the new time"
        )

    def _on_image(self, stream: int, msg: Image | CompressedImage) -> None:
        now = self._last_input_at = time.monotonic()
        if stream == 1:
            self._aux_watch.aux_arrived(now)
            colour_alone = False
        else:
            # Decided on the aux stream's own silence when this frame arrives; a frame served alone is not
            # queued, so no late aux frame pairs it for a second mask. One that nothing can serve alone is
            # queued: its aux may still come.
            main = self._served
            colour_alone = main is not None and self._aux_watch.colour_arrived(now) > self._config["aux_timeout"]
            if colour_alone and main.uses_aux:
                choice = colour_only_server(main, self._fallback)
                if choice.served is None:
                    self._cannot_degrade(choice)
                    colour_alone = False
        pair = self._pairer.add(stream, stamp_ns(msg.header), msg, pairable=not colour_alone)
        if colour_alone:
            self._worker.submit((msg, None, now))
        if pair is None:
            return
        self._last_pair = time.monotonic()
        self._starved_warnings.clear()  # a starved spell ends with a pair
        self._received_at_pair = tuple(self._pairer.counts.received)
        rgb_msg, aux_msg = pair.first, pair.second
        if not self._frame_id_warned and rgb_msg.header.frame_id != aux_msg.header.frame_id:
            self._frame_id_warned = True
            self._log.warning(
                f"frame_ids differ: {self.rgb_topic} is in {rgb_msg.header.frame_id!r}, {self.aux_topic} in "
                f"{aux_msg.header.frame_id!r}; the images are assumed to be aligned pixel to pixel "
                "(outputs carry the colour frame_id). Warned once."
            )
        if self._served is None:
            self._counters.add("dropped_no_model")
            self._log_throttled("no_model", "warning", f"pair dropped: no model is served ({self._idle_reason})", 10.0)
            return
        self._worker.submit((rgb_msg, aux_msg, time.monotonic()))

    # ---- the inference worker ---------------------------------------------------------------------------

    def _bad_input(self, topic: str, reason: str) -> None:
        # logged before counted: whoever has seen the counter move can find the reason in the log
        self._log_throttled(f"bad_input:{topic}:{reason.split(':')[0]}", "error",
                            f"bad input on {topic}: {reason} (frame skipped; counted in bad_input)")
        self._counters.add("bad_input")

    def _process_pair(self, job) -> None:
        """One pair (or one colour frame, `aux_msg` None, while the aux camera is missing): decode, predict,
        publish."""
        main = self._served
        if main is None:
            self._counters.add("dropped_no_model")
            return
        rgb_msg, aux_msg, paired_at = job
        started = time.monotonic()
        try:
            rgb = colour_from_msg(rgb_msg)
        except ImageDecodeError as error:
            self._bad_input(self.rgb_topic, str(error))
            return
        want_points = self._points_pub is not None and self._config["outputs.points"]
        decoded = self._decode_aux(main, aux_msg) if aux_msg is not None and (main.uses_aux or want_points) else None
        if decoded is False:
            return
        invalid_aux = decoded is not None and main.uses_aux and not np.isfinite(decoded.image).any()
        if invalid_aux:
            self._counters.add("aux_invalid")
        served = self._server_for_frame(main, colour_only=aux_msg is None or invalid_aux,
                                        why=f"aux on {self.aux_topic} has no valid reading" if invalid_aux else "")
        if served is None:
            return
        aux = decoded.image if decoded is not None and served is main and main.uses_aux and not invalid_aux else None
        depth_m = decoded.image if decoded is not None and decoded.unit == "m" and not invalid_aux else None
        overlay_pub, confidence_pub, fused_pub = self._overlay_pub, self._confidence_pub, self._fused_pub
        want_confidence = confidence_pub is not None and self._config["outputs.confidence"]
        try:
            prediction = served.engine.predict(rgb, aux, with_confidence=want_confidence)
        except PreprocessingError as error:  # e.g. aux and colour of other aspect ratios: check_aux_size
            self._bad_input(f"{self.rgb_topic} + {self.aux_topic}", str(error))
            return
        if aux is not None and aux.shape != rgb.shape[:2]:
            self._warn_resized_once(rgb.shape[:2], aux.shape)
        header = rgb_msg.header
        outputs = [(self._mask_pub, mask_to_msg(prediction.mask, header)),
                   (self._mask_color_pub, rgb_to_msg(colourise(prediction.mask, served.palette), header))]
        if overlay_pub is not None and self._config["outputs.overlay"]:
            blended = overlay(rgb, prediction.mask, served.palette, self._config["overlay_alpha"])
            outputs.append((overlay_pub, rgb_to_msg(blended, header)))
        if want_confidence:
            outputs.append((confidence_pub, float_to_msg(prediction.confidence, header)))
        if prediction.fused is not None and fused_pub is not None and self._config["outputs.fused_image"]:
            outputs.append((fused_pub, rgb_to_msg(prediction.fused, header)))
        if want_points and depth_m is None and (aux_msg is None or invalid_aux):
            self._counters.add("points_skipped")  # no depth in this frame: no points, and nothing to say
            want_points = False
        if want_points or (self._camera_info_pub is not None and self._config["outputs.camera_info"]):
            aux_frame = aux_msg.header.frame_id if aux_msg is not None else header.frame_id
            outputs += self._calibrated_outputs(rgb, prediction, header, aux_frame, depth_m, want_points)
        with self._publishing:
            if self._shutting_down:  # the node is being destroyed: its publishers may be gone
                return
            for publisher, msg in outputs:
                publisher.publish(msg)
        latency_s = (self.get_clock().now().nanoseconds - stamp_ns(header)) / 1e9
        self._latency.add(latency_s)
        done = time.monotonic()
        self._processing.add(done - paired_at)
        self._waiting.add(started - paired_at)
        self._working.add(done - started)
        other_clock = abs(latency_s) > CLOCK_GAP_WARNING_S
        if other_clock and not self._other_clock:
            self._log_throttled("other_clock", "warning",
                                f"{self.rgb_topic} stamps are {latency_s:.0f} s from this node's clock, so the latency in "
                                "~/stats is not a processing time; replaying a bag? play it with its clock "
                                "(`rgbd-fusion-seg bag play --clock`, `ros2 bag play --clock`) and set "
                                "use_sim_time:=true", 60.0)
        elif self._other_clock and not other_clock:
            self._log.info(f"{self.rgb_topic} stamps agree with this node's clock again")
        self._other_clock = other_clock
        self._counters.add("frames_out")
        if want_points and any(publisher is self._points_pub for publisher, _ in outputs):
            self._counters.add("points_out")

    def _decode_aux(self, served: ServedModel, aux_msg):
        """The decoded aux image in the served checkpoint's unit, or False (bad input: said and counted)."""
        try:
            decoded = aux_from_msg(aux_msg, served.modality, self._config["depth_scale"])
        except ImageDecodeError as error:
            self._bad_input(self.aux_topic, str(error))
            return False
        if served.uses_aux and decoded.unit != served.unit:
            self._bad_input(
                self.aux_topic,
                f"encoding {decoded.encoding!r} decodes to {served.modality} in {decoded.unit!r}, but the "
                f"checkpoint {served.path} expects {served.unit!r}; publish an encoding that decodes to "
                f"{served.unit!r} or serve a checkpoint trained on {decoded.unit!r}",
            )
            return False
        return decoded

    def _server_for_frame(self, main: ServedModel, colour_only: bool, why: str = "") -> ServedModel | None:
        """The model that serves this frame: the main one while fusing (or when it uses no aux at all); while the
        aux camera is missing, what `degraded.colour_only_server` picks, or None (nothing is published; said and
        counted). Flaky aux frames start and end many spells: the lines saying so are throttled and counted."""
        if not colour_only or not main.uses_aux:
            if self._aux_watch.frame_served(False) == "left":
                self._log_throttled("aux_back", "info", f"aux back on {self.aux_topic}: fusing again with "
                                    f"{main.method!r} (colour-only spells so far: {self._aux_watch.spells})", 10.0)
            return main
        choice = colour_only_server(main, self._fallback)
        if choice.served is None:
            self._cannot_degrade(choice)
            return None
        if self._aux_watch.frame_served(True, choice.how) == "entered":
            missing = why or f"no aux on {self.aux_topic} for {self._aux_watch.silence(time.monotonic()):.1f} s"
            self._log_throttled(f"degraded:{choice.how}", "warning", f"{missing}: degraded, masks from colour alone by {choice.how} "
                                f"until aux returns (colour-only spells so far: {self._aux_watch.spells})", 10.0)
        self._counters.add("frames_colour_only")
        return choice.served

    def _cannot_degrade(self, choice) -> None:
        self._counters.add("dropped_cannot_degrade")
        self._log_throttled("cannot_degrade", "warning",
                            f"no aux on {self.aux_topic}: {choice.how}; publishing nothing from colour alone until aux "
                            "returns (counted in dropped_cannot_degrade)", 10.0)

    def _calibrated_outputs(self, rgb, prediction, header, aux_frame: str, depth_m, want_points: bool) -> list:
        """~/points and ~/camera_info of one prediction, as far as aux/camera_info allows: a missing or
        refused calibration, or a depth that is not metric, skips them (counted, said) and nothing else."""
        info = self._camera_info.snapshot()
        if info.msg is None or info.camera is None:
            waited = time.monotonic() - self._calibration_wanted_since
            if info.msg is None and waited >= self._config["camera_info_timeout"]:
                self._log_throttled("no_camera_info", "warning",
                                    f"no camera_info on {self.camera_info_topic} for {waited:.1f} s: no ~/points or "
                                    "~/camera_info until one arrives (masks keep flowing; remap aux/camera_info to "
                                    "the depth camera's)", 30.0)
            self._counters.add("points_skipped", int(want_points))
            return []
        outputs = []
        try:
            if want_points:
                if depth_m is None:
                    self._counters.add("points_skipped")
                    self._log_throttled("points_not_depth", "warning",
                                        f"outputs.points needs metric depth on {self.aux_topic}; the served "
                                        f"checkpoint's aux is {self._served.modality}: no ~/points", 60.0)
                else:
                    points = cloud_points(depth_m, prediction.mask, rgb, prediction.confidence, info.camera,
                                          cloud_options(self._config))
                    cloud = cloud_to_msg(points, header)
                    cloud.header.frame_id = aux_frame  # the points are in the depth camera's optical frame
                    outputs.append((self._points_pub, cloud))
            if self._camera_info_pub is not None and self._config["outputs.camera_info"]:
                height, width = prediction.mask.shape
                outputs.append((self._camera_info_pub, camera_info_at_size(info.msg, width, height, header)))
        except ValueError as error:  # a calibration of another aspect than the images
            self._counters.add("bad_camera_info")
            self._log_throttled("camera_info_size", "error",
                                f"camera_info on {self.camera_info_topic} does not fit the images: {error} "
                                "(counted in bad_camera_info)", 10.0)
            return []
        return outputs

    def _warn_resized_once(self, colour_hw: tuple[int, int], aux_hw: tuple[int, int]) -> None:
        if (colour_hw, aux_hw) in self._resize_warned:
            return
        self._resize_warned.add((colour_hw, aux_hw))
        self._log.warning(
            f"{self.aux_topic} is {aux_hw[0]}x{aux_hw[1]} and {self.rgb_topic} {colour_hw[0]}x{colour_hw[1]} (HxW): "
            "the aux image is resized (nearest neighbour) to the colour size, taken as the same view at another "
            "resolution. Warned once for these sizes."
        )

    def _on_worker_error(self, job, error: BaseException) -> None:
        if self._shutting_down:
            return
        self._counters.add("inference_errors")
        self._log_throttled(f"worker:{type(error).__name__}", "error",
                            f"inference failed: {type(error).__name__}: {error} (frame skipped)")

    def _ensure_optional_publishers(self) -> None:
        if self._config["outputs.overlay"] and self._overlay_pub is None:
            self._overlay_pub = self.create_publisher(Image, "~/overlay", _OUTPUTS_QOS)
        if self._config["outputs.confidence"] and self._confidence_pub is None:
            self._confidence_pub = self.create_publisher(Image, "~/confidence", _OUTPUTS_QOS)
        if self._config["outputs.fused_image"] and self._fused_pub is None:
            self._fused_pub = self.create_publisher(Image, "~/fused_image", _OUTPUTS_QOS)
        if self._config["outputs.points"] and self._points_pub is None:
            self._points_pub = self.create_publisher(PointCloud2, "~/points", _OUTPUTS_QOS)
        if self._config["outputs.camera_info"] and self._camera_info_pub is None:
            self._camera_info_pub = self.create_publisher(CameraInfo, "~/camera_info", _OUTPUTS_QOS)
        wanted = self._config["outputs.points"] or self._config["outputs.camera_info"]
        if wanted and self._camera_info_sub is None and self._input_subs[0] is not None:  # inputs only while active
            self._calibration_wanted_since = time.monotonic()
            # The input QoS: camera drivers publish camera_info as they publish the images.
            self._camera_info_sub = self.create_subscription(CameraInfo, CAMERA_INFO_TOPIC, self._on_camera_info,
                                                             make_qos(self._config["qos.profile"], self._config["qos.depth"]))
            self.camera_info_topic = self._camera_info_sub.topic_name

    def _on_camera_info(self, msg: CameraInfo) -> None:
        refusal = self._camera_info.update(msg)
        if refusal:
            self._counters.add("bad_camera_info")
            self._log_throttled("bad_camera_info", "error",
                                f"bad camera_info on {self.camera_info_topic}: {refusal}; no points until a usable "
                                "one arrives (counted in bad_camera_info; masks keep flowing)", 10.0)

    # ---- health: stats and the no-pair watchdog ---------------------------------------------------------

    def _log_throttled(self, key: str, level: str, message: str, period: float = 5.0) -> None:
        now = time.monotonic()
        with self._throttle_lock:
            last = self._throttle.get(key)
            if last is not None and now - last < period:
                return
            self._throttle[key] = now
        log_at(self._log, level, message)

    def _watchdog(self) -> None:
        """Follow the publishers' QoS (`qos.profile: auto`); warn when no pair was made for no_pair_timeout: once
        per kind of problem per starved spell."""
        if self._config["qos.profile"] == "auto":
            self._follow_publishers_qos()
        timeout = self._config["no_pair_timeout"]
        now = time.monotonic()
        since = now - (self._last_pair if self._last_pair is not None else self._start)
        if since < timeout:
            return
        total_rgb, total_aux = self._pairer.counts.received
        received_rgb, received_aux = total_rgb - self._received_at_pair[0], total_aux - self._received_at_pair[1]
        if received_rgb and received_aux:
            oldest_rgb, oldest_aux = self._pairer.oldest_pending_stamps()
            gap = ""
            if oldest_rgb is not None and oldest_aux is not None:
                gap = f", oldest queued stamps differ by {abs(oldest_rgb - oldest_aux) / 1e9:.3f} s"
            slop = "exact stamps" if self._config["sync.exact"] else f"slop {self._config['sync.slop']} s"
            kind, problem = "never_pair", f"stamps never pair ({slop}{gap})"
        elif received_rgb or received_aux:
            kind = "missing_aux" if received_rgb else "missing_rgb"
            problem = f"missing {'aux' if received_rgb else 'colour'} stream"
        else:
            kind, problem = "no_input", "no input at all"
        last = self._starved_warnings.get(kind)
        if last is not None and now - last < max(timeout, 60.0):
            return
        self._starved_warnings[kind] = now
        publishers = (self.count_publishers(self.rgb_topic), self.count_publishers(self.aux_topic))
        self._log.warning(
            f"no colour/aux pair for {since:.1f} s: {problem}: in that time {self.rgb_topic} got {received_rgb} "
            f"frames ({publishers[0]} publishers), {self.aux_topic} got {received_aux} frames ({publishers[1]} "
            f"publishers); "
            f"subscribed with QoS {self._qos_text}. Check the remappings, the publishers' QoS and the stamps."
        )

    def stats(self) -> dict[str, str]:
        p50, p90, p99 = self._latency.percentiles_ms()
        processing = dict(zip(("p50", "p90", "p99"), self._processing.percentiles_ms()))
        counts = self._pairer.counts
        served = self._served
        return {
            "latency_p50_ms": f"{p50:.1f}",
            "latency_p90_ms": f"{p90:.1f}",
            "latency_p99_ms": f"{p99:.1f}",
            **{f"processing_{name}_ms": f"{value:.1f}" for name, value in processing.items()},
            **{f"{part}_{name}_ms": f"{value:.1f}" for part, window in (("waiting", self._waiting), ("working", self._working))
               for name, value in zip(("p50", "p90"), window.percentiles_ms())},
            "rate_hz": f"{self._latency.rate_hz(max(self._config['stats_period'], 1.0)):.2f}",
            "frames_in_rgb": str(counts.received[0]),
            "frames_in_aux": str(counts.received[1]),
            "pairs": str(counts.pairs),
            "dropped_unpaired": str(counts.dropped_total),
            "dropped_stale": str(self._worker.dropped_stale),
            "bad_input": str(self._counters["bad_input"]),
            "model": served.method if served else "none",
            "checkpoint": served.path if served else "",
            "frames_out": str(self._counters["frames_out"]),
            "dropped_no_model": str(self._counters["dropped_no_model"]),
            "inference_errors": str(self._counters["inference_errors"]),
            "lost_in_transport_rgb": str(self._counters["lost_rgb"]),
            "lost_in_transport_aux": str(self._counters["lost_aux"]),
            "degraded": self._aux_watch.degraded_how or "",
            "frames_colour_only": str(self._counters["frames_colour_only"]),
            "dropped_cannot_degrade": str(self._counters["dropped_cannot_degrade"]),
            "aux_invalid": str(self._counters["aux_invalid"]),
            "points_out": str(self._counters["points_out"]),
            "points_skipped": str(self._counters["points_skipped"]),
            "bad_camera_info": str(self._counters["bad_camera_info"]),
            "device": str(served.engine.device) if served else "",
            "backend": served.engine.backend if served else "",
            "precision": served.engine.precision if served else "",
        }

    def _period_counts(self, values: dict[str, str]) -> dict[str, int]:
        """How much each counter grew since the last report."""
        now = {key: int(values[key]) for key in _PERIOD_COUNTERS}
        grown = {key: value - self._at_last_stats.get(key, 0) for key, value in now.items()}
        self._at_last_stats = now
        return grown

    def _health(self, values: dict[str, str]) -> tuple[bytes, str]:
        """The level and message of an active node's report: ERROR no model, or no input at all; WARN colour
        alone (degraded), no pairs, frames lost in transport, refused or undecodable, more than
        UNPAIRED_WARNING_SHARE of the frames unpaired, an enabled output not produced, stamps from another
        clock; OK otherwise. Judged on what happened since the last report, so a WARN clears when it stops."""
        now = time.monotonic()
        grown = self._period_counts(values)
        no_input_for = now - max(self._last_input_at, self._start)
        starved = self._last_pair is None or now - self._last_pair > self._config["no_pair_timeout"]
        if self._served is None:
            return DiagnosticStatus.ERROR, f"idle: {self._idle_reason}"
        if no_input_for > self._config["no_pair_timeout"]:
            return DiagnosticStatus.ERROR, f"no input on {self.rgb_topic} nor {self.aux_topic} for {no_input_for:.1f} s"
        if values["degraded"]:
            return DiagnosticStatus.WARN, f"degraded: no aux, masks from colour alone by {values['degraded']}"
        if starved:
            return DiagnosticStatus.WARN, "no colour/aux pairs"
        lost = (grown["lost_in_transport_rgb"], grown["lost_in_transport_aux"])
        if any(lost):
            return DiagnosticStatus.WARN, (f"{sum(lost)} frames lost in transport since the last report: "
                                           f"{self._lost_cure(0 if lost[0] else 1)}")
        received = grown["frames_in_rgb"] + grown["frames_in_aux"]
        if received and grown["dropped_unpaired"] > UNPAIRED_WARNING_SHARE * received:
            return DiagnosticStatus.WARN, (
                f"{grown['dropped_unpaired']} of {received} frames received since the last report found no partner "
                f"(more than {UNPAIRED_WARNING_SHARE:.0%}): check the stamps against sync.slop and the streams' rates")
        refused = sum(grown[key] for key in ("bad_input", "inference_errors", "dropped_cannot_degrade"))
        if refused:
            return DiagnosticStatus.WARN, (f"{refused} frames refused, failed or dropped since the last report "
                                           "(see bad_input, inference_errors, dropped_cannot_degrade)")
        silent = self._silent_outputs(grown)
        if silent:
            return DiagnosticStatus.WARN, f"serving {values['model']}; not produced: {silent}"
        if self._other_clock:
            return DiagnosticStatus.WARN, f"serving {values['model']}; stamps from another clock (latency is no delay)"
        return DiagnosticStatus.OK, f"serving {values['model']}"

    def _silent_outputs(self, grown: dict[str, int]) -> str:
        """Enabled outputs that produced nothing while masks went out in the last period, and why."""
        if not grown["frames_out"]:
            return ""
        silent = []
        if self._config["outputs.points"] and not grown["points_out"]:
            info = self._camera_info.snapshot()
            why = ("no camera_info on " + self.camera_info_topic if info.msg is None
                   else f"camera_info refused: {info.refusal}" if info.camera is None
                   else "no metric depth, or no point passed the points.* filters")
            silent.append(f"~/points ({why})")
        served = self._served
        if self._config["outputs.fused_image"] and served is not None and "fused" not in served.engine.extras:
            silent.append(f"~/fused_image ({served.method!r} makes no fused image)")
        return "; ".join(silent)

    def _state_report(self) -> tuple[bytes, str, dict[str, str]]:
        """Level, message and values of /diagnostics in the node's lifecycle state."""
        state = self.lifecycle_state()
        if state == "active" and self._configured:
            values = self.stats()
            return (*self._health(values), values)
        messages = {
            "unconfigured": f"unconfigured ({self._idle_reason}): configure and activate to serve",
            "inactive": "inactive: not subscribed, publishes nothing; activate to serve",
            "finalized": "finalized: shut down through its lifecycle, holds no model and no subscription; restart "
                         "the node to serve",
        }
        level = DiagnosticStatus.ERROR if state == "finalized" else DiagnosticStatus.WARN
        return level, messages.get(state, f"{state}: in a lifecycle transition"), {"state": state}

    def _publish_stats(self) -> None:
        level, message, values = self._state_report()
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}", hardware_id=values.get("device", ""),
                                  level=level, message=message)
        status.values = [KeyValue(key=key, value=value) for key, value in values.items()]
        if "state" not in values:
            # logged before publishing: whoever has read the stats message can find its log line
            self._log.info(
                f"{values['rate_hz']} Hz, latency p50/p90/p99 {values['latency_p50_ms']}/{values['latency_p90_ms']}/"
                f"{values['latency_p99_ms']} ms (stamp -> publish), processing p50/p90 {values['processing_p50_ms']}/"
                f"{values['processing_p90_ms']} ms (pair -> publish); in {values['frames_in_rgb']}/"
                f"{values['frames_in_aux']}, pairs {values['pairs']}, out {values['frames_out']}, dropped unpaired "
                f"{values['dropped_unpaired']} stale {values['dropped_stale']} no-model {values['dropped_no_model']}, "
                f"bad input {values['bad_input']}; model {values['model']}"
            )
            self._stats_pub.publish(status)
        diagnostics = DiagnosticArray(status=[status])
        diagnostics.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(diagnostics)

    def shutdown(self) -> None:
        """Stop the threads, waiting for a frame or a load in progress (they run C++ code: torch, DDS).

        Once this returns nothing publishes, even if a thread outlived its join timeout: the worker checks
        `_shutting_down` under the publishing lock.
        """
        with self._publishing:
            self._shutting_down = True
        if self._configured:
            self._loader.stop(timeout=30.0)
            self._fallback_loader.stop(timeout=30.0)
            self._worker.stop(timeout=10.0)


def main(args=None) -> None:
    """Spin the node until SIGINT or SIGTERM, then stop its threads and exit 0, without a traceback."""
    run_until_stopped(lambda stopping: SegmentNode(stopping=stopping), args, stop_threads=SegmentNode.shutdown)


if __name__ == "__main__":
    main()
