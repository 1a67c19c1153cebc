"""The segment node's parameters: one table (name, type, default, description, read-only flag, validation,
the section it is documented under, whether the launch file sets it).

The node declares every parameter from `PARAMETERS` and validates every change (at start and through the
set-parameters callback) with `validate`, which returns None for a good value or the reason a value is
refused. Nested names use dots, so a params file writes them nested:

    segment_node:
      ros__parameters:
        checkpoint: /path/to/mid.pt
        sync: {queue_size: 10, slop: 0.05}
        outputs: {overlay: true}

No ROS import here (and nothing heavy: the launch file imports it): the table is plain data, tested without
rclpy. `contract.py` renders it, with the topics, into the docs, config/segment.yaml and the launch arguments.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

QOS_PROFILES = ("auto", "sensor_data", "reliable", "system_default")
MODALITIES = ("", "depth", "thermal")
PRECISIONS = ("fp32", "fp16", "bf16")
BACKENDS = ("auto", "torch", "onnxruntime")
# image_transport's names: the topic is the base name, or `<base>/<transport>` carrying sensor_msgs/CompressedImage
TRANSPORTS = ("raw", "compressed", "compressedDepth")
COLOUR_TRANSPORTS = ("raw", "compressed")
# How often the node checks that pairs are being made (the lower bound of no_pair_timeout).
WATCHDOG_PERIOD_S = 0.5
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

Validator = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Bounds:
    """The closed range [low, high] a number (or each number of an array) must lie in, and why.

    Also the parameter's validator; `constraints` is what `ros2 param describe` and the docs show.
    """
    low: float
    high: float
    why: str
    unit: str = ""
    integer: bool = False
    min_width: float | None = None  # arrays [low, high]: the smallest high - low
    min_nonzero: float | None = None  # 0 means "off"; any other value must be at least this

    @property
    def range_text(self) -> str:
        low = self.low if self.min_nonzero is None else self.min_nonzero
        return f"[{low:g}, {self.high:g}]" + (f" {self.unit}" if self.unit else "")

    @property
    def constraints(self) -> str:
        if self.min_width is not None:
            return f"[] or [low, high] with high > low by at least {self.min_width:g}, values in {self.range_text}"
        if self.min_nonzero is not None:
            return f"0 (off), or in {self.range_text}"
        return ("an integer in " if self.integer else "in ") + self.range_text

    def __call__(self, value) -> str | None:
        if self.min_width is not None:
            return self._check_pair(value)
        well_typed = isinstance(value, int) and not isinstance(value, bool) if self.integer else _finite(value)
        too_fine = self.min_nonzero is not None and well_typed and 0 < value < self.min_nonzero
        if well_typed and self.low <= value <= self.high and not too_fine:
            return None
        return f"must be {self.constraints}, got {value!r} ({self.why})"

    def _check_pair(self, value) -> str | None:
        values = list(value)
        if not values:
            return None
        if len(values) != 2 or not all(_finite(v) for v in values):
            return f"must be [] or [low, high] (two finite numbers), got {values!r}"
        if not all(self.low <= v <= self.high for v in values) or values[1] - values[0] < self.min_width:
            return f"must be {self.constraints}, got {values!r} ({self.why})"
        return None


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: str  # "string" | "integer" | "double" | "bool" | "double_array" | "integer_array"
    default: Any
    description: str
    read_only: bool = False
    validate: Validator | None = None
    constraints: str = ""  # derived from `validate` when it carries its own (Bounds, one-of choices)
    section: str = ""  # heading it is documented under (config/segment.yaml, docs)
    launch_argument: bool = False  # segment.launch.py has an argument that sets it
    example: Any = None  # a value to show where the default cannot be written (ROS cannot type `[]`)

    def __post_init__(self):
        if not self.constraints and hasattr(self.validate, "constraints"):
            object.__setattr__(self, "constraints", self.validate.constraints)

    @property
    def bounds(self) -> Bounds | None:
        return self.validate if isinstance(self.validate, Bounds) else None


# ---- validators: value -> None (good) or the reason it is refused ----------------------------------


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(choices) -> Validator:
    def check(value):
        if value in choices:
            return None
        shown = ", ".join(repr(c) for c in choices)
        return f"{value!r} is not one of {shown}"

    check.constraints = ", ".join(choice or "''" for choice in choices)
    return check


def _fusion_method(value: str) -> str | None:
    if value == "":
        return None
    from ..models import available_methods  # ROS-free; imports torch

    methods = available_methods()
    return None if value in methods else f"unknown fusion method {value!r}; available: {', '.join(methods)}"


def _existing_file(value: str) -> str | None:
    if value == "" or os.path.isfile(value):
        return None
    if os.path.isdir(value):
        return f"{value!r} is a directory, expected a checkpoint file (.pt written by rgbd-fusion-seg train, or .onnx)"
    return f"checkpoint file {value!r} does not exist"


def _existing_dir(value: str) -> str | None:
    if value == "" or os.path.isdir(value):
        return None
    return f"checkpoint_dir {value!r} is not a directory"


def _device(value: str) -> str | None:
    if not isinstance(value, str) or not _DEVICE_RE.match(value):
        return f"device {value!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'"
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"device {value!r} was asked for but CUDA is not available on this machine; use 'auto' or 'cpu'"
        index = int(value.split(":")[1]) if ":" in value else 0
        count = torch.cuda.device_count()
        if index >= count:
            return (f"device {value!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                    "use one of those, 'auto' or 'cpu'")
    return None


def _class_ids(value) -> str | None:
    bad = [v for v in value if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535)]
    return f"must be class ids in [0, 65535], got {bad!r}" if bad else None


MODEL = "Model"
PAIRING = "Pairing of rgb/image and aux/image (message_filters ApproximateTimeSynchronizer semantics)"
QOS = "Subscription QoS"
TRANSPORT = "Input transport, named as image_transport names it"
OUTPUTS = "Outputs"
DECODING = "Decoding of the auxiliary image"
MONITORING = "Monitoring"
MISSING_AUX = "When the aux camera drops out"
POINTS = "Semantic point cloud (depth checkpoints; aux/camera_info gives the depth camera's intrinsics)"
SECTION_NOTES = {
    QOS: "Must be compatible with the camera driver's, or no message ever arrives.",
    TRANSPORT: "raw: sensor_msgs/Image on the topic itself. compressed / compressedDepth: sensor_msgs/CompressedImage "
               "on <topic>/compressed / <topic>/compressedDepth, where <topic> is rgb/image or aux/image after "
               "remapping (-r rgb/image:=/camera/color/image_raw -> /camera/color/image_raw/compressed). Decoded on "
               "the inference worker.",
}

PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("checkpoint", "string", "",
                  "Model file to serve: a .pt checkpoint written by `rgbd-fusion-seg train`, or a .onnx file "
                  "written by `rgbd-fusion-seg export`; either carries the method, classes, palette and preprocessing. Changing it at runtime loads the new file in the background (the old "
                  "model serves until then); a file that cannot be served is refused. Empty: the node runs idle "
                  "until one is set.",
                  validate=_existing_file, constraints="'' or a checkpoint file", section=MODEL, launch_argument=True),
    ParameterSpec("fusion_method", "string", "",
                  "Fusion method to serve (docs/methods.md). Empty: the checkpoint's own method. Setting a method "
                  "loads <checkpoint_dir>/<method>.pt (unless `checkpoint` already holds that method); refused if "
                  "unknown or missing.",
                  validate=_fusion_method, constraints="'' or a registered method", section=MODEL,
                  launch_argument=True),
    ParameterSpec("checkpoint_dir", "string", "",
                  "Folder where <method>.pt checkpoints are looked up for fusion_method switches. Empty: the "
                  "checkpoint's folder.",
                  validate=_existing_dir, constraints="'' or a folder", section=MODEL, launch_argument=True),
    ParameterSpec("modality", "string", "",
                  "Auxiliary modality on aux/image, depth or thermal; must match the checkpoint's (refused otherwise). Empty: whatever "
                  "the checkpoint was trained on.",
                  validate=_one_of(MODALITIES), section=MODEL, launch_argument=True),
    ParameterSpec("device", "string", "auto",
                  "Inference device: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N. A CUDA device this "
                  "machine lacks is refused.",
                  validate=_device, constraints="auto, cpu, cuda, cuda:N", section=MODEL, launch_argument=True),
    ParameterSpec("precision", "string", "fp32",
                  "Inference precision (torch backend): fp32, or fp16/bf16 autocast. On a CPU, bf16 runs where the "
                  "CPU has bf16 instructions (AVX512-BF16 or AMX) and fp16 never; the log and ~/stats say which "
                  "precision runs and why.",
                  validate=_one_of(PRECISIONS), section=MODEL),
    ParameterSpec("backend", "string", "auto",
                  "What runs the network: torch, onnxruntime, or auto (ONNX Runtime for an exported .onnx file, "
                  "PyTorch for a .pt checkpoint). onnxruntime with a .pt checkpoint exports it first (once, into "
                  "onnx_cache_dir); it serves the mask and confidence in fp32, or fp16 as TensorRT engines on CUDA. "
                  "Switched at runtime like the method.",
                  validate=_one_of(BACKENDS), section=MODEL, launch_argument=True),
    ParameterSpec("compile", "bool", False,
                  "torch backend: torch.compile the network (compiled while loading, minutes on a CPU; a network "
                  "that does not compile is served eagerly and the log says why).", section=MODEL),
    ParameterSpec("onnx_cache_dir", "string", "",
                  "Where .pt checkpoints served by onnxruntime are exported, named by their content and reused. "
                  "Empty: $ROS_HOME/rgbd_fusion_seg/onnx (ROS_HOME defaults to ~/.ros).", section=MODEL),
    ParameterSpec("tensorrt_cache_dir", "string", "",
                  "onnxruntime on CUDA: try TensorRT first and keep its engines in this folder (building them "
                  "takes minutes, once). Empty: no TensorRT (CUDA, then the CPU).", section=MODEL),
    ParameterSpec("sync.queue_size", "integer", 10, "Messages of each stream kept while waiting for a partner.",
                  validate=Bounds(1, 300, "each queued message is a whole image; 300 is 10 s at 30 Hz, longer than a "
                                  "partner is worth waiting for", integer=True), section=PAIRING),
    ParameterSpec("sync.slop", "double", 0.05,
                  "Largest stamp difference (seconds) between the colour and aux image of a pair.",
                  validate=Bounds(0.0, 1.0, "images more than a second apart do not show the same scene; a 9 Hz "
                                  "thermal camera's period is 0.11 s", unit="s"), section=PAIRING),
    ParameterSpec("sync.exact", "bool", False,
                  "true: pair only identical stamps (ExactTime); false: nearest stamps within sync.slop.",
                  section=PAIRING),
    ParameterSpec("qos.profile", "string", "auto",
                  "auto: the reliability and durability the topic's publishers offer (as rosbag2 records: reliable "
                  "when every publisher is, best effort otherwise), re-checked when publishers come and go; or "
                  "sensor_data (best effort), reliable or system_default.",
                  read_only=True, validate=_one_of(QOS_PROFILES), section=QOS),
    ParameterSpec("qos.depth", "integer", 5, "History depth of the input subscriptions.", read_only=True,
                  validate=Bounds(1, 100, "the middleware keeps this many whole images per input, and the node "
                                  "only uses the newest pair", integer=True), section=QOS),
    ParameterSpec("transport.rgb", "string", "raw", "Colour: raw, or compressed (jpeg or png).",
                  read_only=True, validate=_one_of(COLOUR_TRANSPORTS), section=TRANSPORT),
    ParameterSpec("transport.aux", "string", "raw",
                  "Depth or thermal: raw, compressed (png) or compressedDepth (compressed_depth_image_transport, png "
                  "or rvl: 16UC1 exact, 32FC1 as inverse depth).",
                  read_only=True, validate=_one_of(TRANSPORTS), section=TRANSPORT),
    ParameterSpec("outputs.overlay", "bool", False,
                  "Publish ~/overlay (rgb8: the colour mask blended over the camera image).", section=OUTPUTS),
    ParameterSpec("outputs.confidence", "bool", False,
                  "Publish ~/confidence (32FC1: softmax probability of the chosen class).", section=OUTPUTS),
    ParameterSpec("outputs.fused_image", "bool", False,
                  "Publish ~/fused_image (rgb8: the fused RGB-X image of a method that makes one, SC-CoSF); the "
                  "model is reloaded with its fusion branch, which costs time per frame.", section=OUTPUTS),
    ParameterSpec("outputs.points", "bool", False,
                  "Publish ~/points (PointCloud2: the labelled depth pixels in 3-D); needs depth as the aux modality "
                  "and aux/camera_info.", section=OUTPUTS),
    ParameterSpec("outputs.camera_info", "bool", False,
                  "Publish ~/camera_info: aux/camera_info scaled to the mask's size, with the mask's header.",
                  section=OUTPUTS),
    ParameterSpec("overlay_alpha", "double", 0.5, "Opacity of the mask in ~/overlay.",
                  validate=Bounds(0.0, 1.0, "an opacity: 0 shows the image alone, 1 the mask alone"), section=OUTPUTS),
    ParameterSpec("depth_scale", "double", 0.001,
                  "Metres per unit of 16UC1 depth (0.001: millimetres, the REP 118 convention; 0 = no reading).",
                  validate=Bounds(1e-5, 1.0, "16UC1 holds up to 65535 units: below 1e-05 m the farthest depth is "
                                  "0.65 m, above 1 m a unit is coarser than any depth camera", unit="m per unit"),
                  section=DECODING),
    ParameterSpec("aux_range", "double_array", [],
                  "[low, high] overriding the checkpoint's aux normalisation range, in its unit (m for depth, "
                  "degrees C for calibrated thermal). Empty: the checkpoint's.",
                  validate=Bounds(-1e5, 1e5, "no aux unit reaches beyond 65535 (raw16), and the range divides the "
                                  "aux values, so a narrower one only amplifies noise", min_width=1e-3),
                  section=DECODING, example=[0.2, 5.0]),
    ParameterSpec("aux_timeout", "double", 1.0,
                  "After this many seconds without an aux image (or for a frame whose aux image has no valid "
                  "reading) masks come from colour alone: by fallback_checkpoint, else by the served model when it "
                  "was trained with train.aux_dropout (or uses no aux), else nothing is published; fusion resumes "
                  "when aux returns.",
                  validate=Bounds(0.1, 60.0, "shorter than a frame period of a 10 Hz camera would flap; longer than "
                                  "a minute leaves the robot blind", unit="s"), section=MISSING_AUX),
    ParameterSpec("fallback_checkpoint", "string", "",
                  "Checkpoint served while the aux camera is missing (for example the rgb baseline, with the same "
                  "classes); loaded in the background at start. Empty: none.",
                  validate=_existing_file, constraints="'' or a checkpoint file", section=MISSING_AUX),
    ParameterSpec("points.stride", "integer", 2,
                  "Use every n-th depth pixel in both axes (stride 1 at 640x480: 307200 points, 7.4 MB a message).",
                  validate=Bounds(1, 64, "64 leaves 10x7 points of a 640x480 image", integer=True), section=POINTS),
    ParameterSpec("points.voxel_size", "double", 0.0,
                  "Keep one point per cube of this size (the one nearest the cube's centroid); 0 = off.",
                  # Voxel keys pack three cell indices into 64 bits: 1 mm cells still cover a cube 200 m across
                  # ((2e5)^3 = 8e15 < 2^62 keys), and no depth camera resolves finer.
                  validate=Bounds(0.0, 1.0, "finer than 1 mm is below any depth camera's resolution and overflows "
                                  "the voxel keys of a cloud metres across; coarser than 1 m leaves a room as a "
                                  "handful of points", unit="m", min_nonzero=1e-3),
                  section=POINTS),
    ParameterSpec("points.z_range", "double_array", [],
                  "[min, max] depth (z, m) kept, inclusive. Empty: every valid depth.",
                  validate=Bounds(0.0, 100.0, "no depth camera reads beyond 100 m", unit="m", min_width=0.01),
                  section=POINTS, example=[0.3, 8.0]),
    ParameterSpec("points.exclude_classes", "integer_array", [],
                  "Class ids that give no point (for example the floor's).", validate=_class_ids,
                  constraints="[] or class ids in [0, 65535]", section=POINTS, example=[0]),
    ParameterSpec("camera_info_timeout", "double", 5.0,
                  "Warn when ~/points is on and no aux/camera_info came for this many seconds (masks keep flowing).",
                  validate=Bounds(WATCHDOG_PERIOD_S, 3600.0, f"the watchdog looks every {WATCHDOG_PERIOD_S} s",
                                  unit="s"), section=POINTS),
    ParameterSpec("autostart", "bool", True,
                  "Configure and activate at start (the node is a managed lifecycle node); false: it waits "
                  "unconfigured for `ros2 lifecycle set /segment_node configure`, then `activate`.",
                  read_only=True, section=MONITORING, launch_argument=False),
    ParameterSpec("stats_period", "double", 5.0,
                  "Seconds between ~/stats messages (latency p50/p90/p99, rate, pairs, drops) and their log lines.",
                  validate=Bounds(0.1, 3600.0, "each period publishes ~/stats and logs a line: faster floods the "
                                  "log, slower than an hour leaves the node unmonitored", unit="s"), section=MONITORING),
    ParameterSpec("no_pair_timeout", "double", 5.0,
                  "Warn when no colour/aux pair has been made for this many seconds (naming both topics and the QoS).",
                  validate=Bounds(WATCHDOG_PERIOD_S, 3600.0, f"the watchdog looks every {WATCHDOG_PERIOD_S} s; longer "
                                  "than an hour leaves dead inputs unreported", unit="s"), section=MONITORING),
)

PARAMETERS_BY_NAME: dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}
# Parameters whose change means serving a different engine (loaded in the background).
MODEL_PARAMETERS = frozenset({"checkpoint", "fusion_method", "checkpoint_dir", "modality", "device", "precision",
                              "backend", "compile", "onnx_cache_dir", "tensorrt_cache_dir", "outputs.fused_image"})
SYNC_PARAMETERS = frozenset({"sync.queue_size", "sync.slop", "sync.exact"})


def defaults() -> dict[str, Any]:
    return {spec.name: (list(spec.default) if isinstance(spec.default, list) else spec.default) for spec in PARAMETERS}


def coerce(name: str, value: Any) -> Any:
    """An integer where a double is declared is taken as that double (YAML `slop: 1`); arrays become lists."""
    spec = PARAMETERS_BY_NAME[name]
    if spec.type == "double" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.type == "double_array" and value is not None:
        return [float(v) for v in value]
    if spec.type == "integer_array" and value is not None:
        return [int(v) for v in value]
    return value


# The types a numeric parameter wants are said by its Bounds, with the range.
_TYPE_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "integer_array": ("a list of integers", lambda v: isinstance(v, (list, tuple)) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in v)),
}


def validate(name: str, value: Any) -> str | None:
    """None if `value` is acceptable for parameter `name`, else the reason (one line) it is refused."""
    spec = PARAMETERS_BY_NAME.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    wanted, is_type = _TYPE_CHECKS.get(spec.type, ("", None))
    if is_type is not None and not is_type(value):
        return f"{name}: must be {wanted} ({spec.type}), got {type(value).__name__} {value!r}"
    if spec.validate is None:
        return None
    reason = spec.validate(value)
    return None if reason is None else f"{name}: {reason}"


def ros_arguments(params_file=None, parameters: dict | None = None, remappings: dict | None = None) -> list[str]:
    """`--ros-args` for starting the node from another process (demo, benchmark, tests), in ROS's own syntax."""

    def text(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(text(v) for v in value) + "]"
        return str(value)

    arguments = ["--ros-args"]
    if params_file is not None:
        arguments += ["--params-file", str(params_file)]
    for name, value in (parameters or {}).items():
        arguments += ["-p", f"{name}:={text(value)}"]
    for source, target in (remappings or {}).items():
        arguments += ["-r", f"{source}:={target}"]
    return arguments
