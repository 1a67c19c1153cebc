"""The segment node's contract in one place: its topics (here) and its parameters (`parameters.PARAMETERS`).

Everything else is rendered from these two tables: the topic and parameter tables of the docs (between
`<!-- contract:topics -->` / `<!-- contract:parameters -->` markers), config/segment.yaml with its comments,
and the launch file's parameter arguments. test_contract.py fails when any of them drifts, or when the node
itself subscribes or publishes something the table does not say. Regenerate them all with

    python -m rgbd_fusion_seg.ros.contract --write README.md docs/node.md config/segment.yaml

No ROS import and nothing heavy here: the launch file imports this module.
"""
from __future__ import annotations

import argparse
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..serving.parameters import PARAMETERS, PARAMETERS_BY_NAME, SECTION_NOTES, ParameterSpec

NODE_NAME = "segment_node"
REGENERATE = "python -m rgbd_fusion_seg.ros.contract --write README.md docs/node.md config/segment.yaml"
INPUT_QOS = (f"`qos.profile`, `qos.depth` (default {PARAMETERS_BY_NAME['qos.profile'].default}: the reliability "
             f"and durability the publishers offer, keep last {PARAMETERS_BY_NAME['qos.depth'].default})")
# What the node's publishers use: a subscriber asking for reliable delivery gets every mask. A reliable writer
# drops the oldest unacknowledged sample when its history is full, so the depth is the slack a slow reader
# has over UDP (20: 0.7 s at 30 Hz); over shared memory samples go straight to the reader's own queue.
OUTPUT_QOS = {"reliability": "reliable", "durability": "volatile", "depth": 20}
# /diagnostics warns when more than this share of the frames received in a report period left the pairing
# queues unpaired: a few frames at the start or end of a stream are normal, a fifth means stamps that
# rarely fall within sync.slop or one stream far slower than the other.
UNPAIRED_WARNING_SHARE = 0.2
OUTPUT_QOS_TEXT = f"reliable, volatile, keep last {OUTPUT_QOS['depth']}"


@dataclass(frozen=True)
class TopicSpec:
    direction: str  # "in" | "out"
    name: str  # as the node names it: relative inputs (remap them), private outputs (~/)
    type: str  # as `ros2 topic info` writes it
    content: str  # encodings and meaning
    qos: str
    # (parameter, value), or a tuple of them: the topic exists only with that setting (any one of them)
    when: tuple | None = None

    @property
    def settings(self) -> tuple[tuple[str, Any], ...]:
        return () if self.when is None else (self.when,) if isinstance(self.when[0], str) else self.when

    @property
    def condition(self) -> str:
        if self.when is None:
            return "always"
        return " or ".join(f"`{name}: {str(value).lower() if isinstance(value, bool) else value}`"
                           for name, value in self.settings)


COLOUR = "colour: rgb8, bgr8, rgba8, bgra8, mono8"
AUX = ("depth: 16UC1 (units of `depth_scale`, 0 = none), 32FC1 (m, NaN = none), mono8, 8UC1, mono16 (raw); "
       "thermal: mono8, 8UC1, mono16, 16UC1 (raw), 32FC1 (degrees C)")
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
CAMERA_INFO, POINT_CLOUD = "sensor_msgs/msg/CameraInfo", "sensor_msgs/msg/PointCloud2"
CALIBRATION_OUTPUTS = (("outputs.points", True), ("outputs.camera_info", True))

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("in", "rgb/image", IMAGE, COLOUR, INPUT_QOS, ("transport.rgb", "raw")),
    TopicSpec("in", "rgb/image/compressed", COMPRESSED, "colour: jpeg or png (image_transport's compressed)",
              INPUT_QOS, ("transport.rgb", "compressed")),
    TopicSpec("in", "aux/image", IMAGE, AUX + "; aligned pixel to pixel with the colour image", INPUT_QOS,
              ("transport.aux", "raw")),
    TopicSpec("in", "aux/image/compressed", COMPRESSED, "depth or thermal: png of the encodings above", INPUT_QOS,
              ("transport.aux", "compressed")),
    TopicSpec("in", "aux/image/compressedDepth", COMPRESSED,
              "depth: png or rvl (compressed_depth_image_transport; 16UC1 exact, 32FC1 as inverse depth)", INPUT_QOS,
              ("transport.aux", "compressedDepth")),
    TopicSpec("in", "aux/camera_info", CAMERA_INFO,
              "the depth camera's calibration (pinhole; plumb_bob, rational_polynomial or equidistant distortion)",
              INPUT_QOS, CALIBRATION_OUTPUTS),
    TopicSpec("out", "~/mask", IMAGE, "mono8 class ids (16UC1 beyond 256 classes)", OUTPUT_QOS_TEXT),
    TopicSpec("out", "~/mask_color", IMAGE, "rgb8: the checkpoint's palette colours", OUTPUT_QOS_TEXT),
    TopicSpec("out", "~/overlay", IMAGE, "rgb8: the colour mask blended over the camera image (`overlay_alpha`)",
              OUTPUT_QOS_TEXT, ("outputs.overlay", True)),
    TopicSpec("out", "~/confidence", IMAGE, "32FC1: softmax probability of the chosen class", OUTPUT_QOS_TEXT,
              ("outputs.confidence", True)),
    TopicSpec("out", "~/fused_image", IMAGE, "rgb8: the fused RGB-X image (SC-CoSF; the colour image's header)",
              OUTPUT_QOS_TEXT, ("outputs.fused_image", True)),
    TopicSpec("out", "~/points", POINT_CLOUD,
              "x y z (m, the depth camera's optical frame), rgb (packed as RViz reads it), label (uint16), "
              "confidence (float32, NaN without `outputs.confidence`); the depth image's frame_id, the pair's stamp",
              OUTPUT_QOS_TEXT, ("outputs.points", True)),
    TopicSpec("out", "~/camera_info", CAMERA_INFO, "aux/camera_info scaled to the mask's size, the mask's header",
              OUTPUT_QOS_TEXT, ("outputs.camera_info", True)),
    TopicSpec("out", "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray",
              "every `stats_period`, in every lifecycle state: the ~/stats status (name: the node's full name) "
              "with its level, judged on the last period: ERROR no model, no input, or finalized; WARN "
              "unconfigured or inactive, degraded (colour alone), no pairs, frames lost in transport (with the "
              f"cure), over {UNPAIRED_WARNING_SHARE:.0%} of frames unpaired, frames refused, an enabled output not produced, another clock; "
              "OK otherwise (rqt_robot_monitor, diagnostic_aggregator)", OUTPUT_QOS_TEXT),
    TopicSpec("out", "~/stats", "diagnostic_msgs/msg/DiagnosticStatus",
              "every `stats_period`: latency p50/p90/p99 (colour stamp -> publish), processing p50/p90/p99 (pair "
              "completed -> publish, needs no shared clock) split into waiting (for the running inference) and "
              "working (decode -> publish) p50/p90, rate, pairs, drops, bad input, model, device, backend and "
              "precision as they run",
              OUTPUT_QOS_TEXT),
)
IMAGE_OUTPUTS_NOTE = "Every image output carries the colour image's header (stamp and frame_id)."


def topics_for(config: dict[str, Any]) -> list[TopicSpec]:
    """The topics a node with this configuration (full or partial: missing names take the defaults) has."""
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    values = {**defaults, **config}
    return [topic for topic in TOPICS
            if topic.when is None or any(values[name] == value for name, value in topic.settings)]


# ---- markdown ---------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Markdown table cell: `|` escaped, and `<` `>` outside code spans, where they would open HTML tags."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    parts[::2] = [part.replace("<", "&lt;").replace(">", "&gt;") for part in parts[::2]]
    return "`".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_topics() -> str:
    rows = [[t.direction, f"`{t.name}`", t.type, t.content, t.qos, t.condition] for t in TOPICS]
    note = (f"Inputs are relative names: remap them (`-r rgb/image:=/camera/color/image_raw`); compressed inputs "
            f"follow the remapped base name, as image_transport does. {IMAGE_OUTPUTS_NOTE}")
    return _table(["", "topic", "type", "content", "QoS", "when"], rows) + "\n\n" + note


def _markdown_value(value: Any) -> str:
    return f"`{_yaml_scalar(value) if not isinstance(value, list) else value}`"


def markdown_parameters() -> str:
    rows = []
    for spec in PARAMETERS:
        allowed = spec.constraints or ("true, false" if spec.type == "bool" else "")
        text = spec.description + (" Read-only: set at start." if spec.read_only else "")
        rows.append([f"`{spec.name}`", spec.type, _markdown_value(spec.default), allowed, text])
    note = ("A value out of range is refused with the reason: at start the default is used (and the error "
            "logged), a model parameter leaves the node idle; at runtime `ros2 param set` answers why, and nothing "
            "changes.")
    return _table(["parameter", "type", "default", "allowed", "meaning"], rows) + "\n\n" + note


MARKDOWN = {"topics": markdown_topics, "parameters": markdown_parameters}
_REGION = re.compile(r"(<!-- contract:(\w+) -->\n)(.*?)(<!-- /contract:\2 -->)", re.S)


def marked_regions(text: str) -> dict[str, str]:
    """{kind: the text between `<!-- contract:kind -->` and `<!-- /contract:kind -->`} of a markdown file."""
    return {match.group(2): match.group(3) for match in _REGION.finditer(text)}


def update_markdown(text: str) -> str:
    """`text` with each marked region replaced by the table it names (unknown kinds raise KeyError)."""
    return _REGION.sub(lambda m: f"{m.group(1)}{MARKDOWN[m.group(2)]()}\n{m.group(4)}", text)


# ---- config/segment.yaml ----------------------------------------------------------------------------

_WIDTH = 112


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if re.fullmatch(r"[A-Za-z_][\w.:/-]*", value) and value not in ("true", "false", "null") \
            else f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    return repr(value)


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, _WIDTH - len(indent) - 2)]


def _yaml_entry(spec: ParameterSpec, indent: str) -> list[str]:
    allowed = f" Allowed: {spec.constraints}." if spec.bounds else ""
    read_only = " Read-only: set at start." if spec.read_only else ""
    key = spec.name.split(".")[-1]
    lines = _comment(spec.description + allowed + read_only, indent)
    if spec.default == []:
        # ROS cannot type an empty YAML list: leave the entry out, show how it is set.
        lines += _comment("Left out: ROS cannot type an empty list in YAML. To set it, e.g.:", indent)
        return lines + [f"{indent}# {key}: {_yaml_scalar(spec.example)}"]
    return lines + [f"{indent}{key}: {_yaml_scalar(spec.default)}"]


def _yaml_header() -> list[str]:
    inputs = ", ".join(f"{t.name} ({t.type.split('/')[-1]})" for t in TOPICS if t.direction == "in")
    outputs = ", ".join(t.name for t in TOPICS if t.direction == "out")
    text = (f"Inputs, remapped rather than set here: {inputs}, by the transport parameters below. Outputs: {outputs}. "
            + IMAGE_OUTPUTS_NOTE)
    return [
        f"# Parameters of rgbd_fusion_seg's {NODE_NAME}, generated from rgbd_fusion_seg/serving/parameters.py by",
        f"#   {REGENERATE}",
        "# (edit the table there, not this file). Use it with:",
        f"#   {NODE_NAME} --ros-args --params-file config/segment.yaml -p checkpoint:=/path/to/mid.pt",
        "#   ros2 launch rgbd_fusion_seg segment.launch.py checkpoint:=/path/to/mid.pt",
        *_comment(text, ""),
    ]


def params_yaml() -> str:
    """config/segment.yaml: every parameter at its default, under its section, with its meaning and range."""
    lines = [*_yaml_header(), f"{NODE_NAME}:", "  ros__parameters:"]
    section, group = None, None
    for spec in PARAMETERS:
        if spec.section != section:
            section, group = spec.section, None
            if lines[-1] != "  ros__parameters:":
                lines.append("")
            lines.append(f"    # {section} ".ljust(_WIDTH, "-"))
            if section in SECTION_NOTES:
                lines += _comment(SECTION_NOTES[section], "    ")
        prefix = spec.name.rpartition(".")[0]
        if prefix != group:
            group = prefix
            if prefix:
                lines.append(f"    {prefix}:")
        lines += _yaml_entry(spec, "      " if prefix else "    ")
    return "\n".join(lines) + "\n"


# ---- the launch file --------------------------------------------------------------------------------


def launch_parameter_arguments() -> dict[str, str]:
    """Launch argument -> description, for the parameters the launch file sets (when given a value)."""
    return {spec.name: f"{spec.description} Empty: keep params_file's value." for spec in PARAMETERS
            if spec.launch_argument}


def launch_remap_description(base: str) -> str:
    """The description of the launch argument that remaps input `base` (rgb/image or aux/image)."""
    raw = next(t for t in TOPICS if t.name == base)
    transport = raw.when[0]
    return (f"Topic remapped onto {base} ({raw.type}: {raw.content}); with `{transport}` compressed or "
            f"compressedDepth the node subscribes to <this topic>/<transport>")


# ---- command line -----------------------------------------------------------------------------------


def render(path: Path) -> str:
    """What `path` (config/segment.yaml, or a markdown file with marked regions) should hold."""
    if path.suffix == ".yaml":
        return params_yaml()
    return update_markdown(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rgbd_fusion_seg.ros.contract",
        description="Print the node's topic and parameter tables (markdown), or rewrite the files made from them.")
    parser.add_argument("files", nargs="*", type=Path,
                        help="markdown files (their <!-- contract:KIND --> regions) and/or config/segment.yaml")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the files in place")
    action.add_argument("--check", action="store_true", help="exit 1 naming each file that differs")
    args = parser.parse_args(argv)
    if not args.files:
        print(f"{markdown_topics()}\n\n{markdown_parameters()}")
        return 0
    stale = []
    for path in args.files:
        text = render(path)
        if path.suffix != ".yaml" and not marked_regions(text):
            parser.error(f"{path} has no <!-- contract:topics --> or <!-- contract:parameters --> region")
        if args.write:
            path.write_text(text)
        elif args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            print(text, end="")
    if stale:
        print(f"out of date (regenerate with `{REGENERATE}`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
