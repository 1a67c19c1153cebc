"""launch/segment.launch.py and config/segment.yaml, without launch/launch_ros (not installable here).

Three levels: the files read statically (names the launch file uses exist: executable, package, parameters,
the installed config); the launch file *executed* against small stand-ins for launch/launch_ros that
record what it builds (parameters, remappings, overrides); and the real node started with the config
file exactly as the launch file starts it, asked for its parameters over ROS services.
"""
from __future__ import annotations

import ast
import os
import random
import runpy
import sys
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_package import colcon_install  # noqa: F401  (fixture: a real colcon build of the package)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "segment.launch.py"
CONFIG_FILE = REPO / "config" / "segment.yaml"
FAKE_SHARE = "/opt/fake_ws/install/rgbd_fusion_seg/share/rgbd_fusion_seg"
EXPECTED_ARGUMENTS = {
    "fusion_method", "checkpoint", "checkpoint_dir", "modality", "device", "backend", "rgb_topic", "aux_topic",
    "params_file", "namespace", "use_sim_time", "rviz", "rviz_fixed_frame",
}
# Parameters every rclpy node declares itself.
BUILTIN_PARAMETERS = {"use_sim_time"}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_parameters() -> dict:
    document = yaml.safe_load(CONFIG_FILE.read_text())
    assert list(document) == ["segment_node"], "config/segment.yaml must hold the segment_node's parameters only"
    assert list(document["segment_node"]) == ["ros__parameters"]
    return _flatten(document["segment_node"]["ros__parameters"])


@pytest.fixture(scope="module")
def parameter_table():
    return pytest.importorskip("rgbd_fusion_seg.serving.parameters")


# ---- static checks ---------------------------------------------------------------------------------


def _launch_tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def _node_call_keywords() -> dict[str, ast.expr]:
    calls = [n for n in ast.walk(_launch_tree()) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"
             and any(k.arg == "executable" and getattr(k.value, "id", None) == "EXECUTABLE" for k in n.keywords)]
    assert len(calls) == 1, "the launch file should start exactly one segment node (and RViz2 when asked)"
    return {k.arg: k.value for k in calls[0].keywords}


def _module_constant(name: str):
    for node in _launch_tree().body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"the launch file defines no constant {name}")


def test_launch_file_names_the_packages_executable():
    package_name = ET.parse(REPO / "package.xml").getroot().findtext("name")
    assert _module_constant("PACKAGE") == package_name
    executable = _module_constant("EXECUTABLE")
    setup = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(setup) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    scripts = {entry.split("=")[0].strip() for entry in entry_points["console_scripts"]}
    assert executable in scripts, f"launch file runs {executable!r}, setup.py installs {sorted(scripts)}"
    keywords = _node_call_keywords()
    assert getattr(keywords["package"], "id", None) == "PACKAGE" and getattr(keywords["executable"], "id", None) == "EXECUTABLE"


def test_launch_file_parameter_overrides_are_declared_by_the_node(parameter_table, launched):
    names = set(launched.parameter_arguments)
    unknown = names - set(parameter_table.PARAMETERS_BY_NAME) - BUILTIN_PARAMETERS
    assert not unknown, f"the launch file sets parameters the node does not declare: {sorted(unknown)}"


def test_launch_arguments_are_the_tables_with_its_descriptions(parameter_table, launched):
    marked = {spec.name: spec for spec in parameter_table.PARAMETERS if spec.launch_argument}
    assert set(launched.parameter_arguments) == set(marked)
    for name, spec in marked.items():
        description = launched.declared[name].kwargs["description"]
        assert description.startswith(spec.description) and "keep params_file's value" in description
    for argument, base in (("rgb_topic", "rgb/image"), ("aux_topic", "aux/image")):
        assert base in launched.declared[argument].kwargs["description"]


def test_launch_file_default_config_is_installed():
    source = LAUNCH_FILE.read_text()
    assert '"config", "segment.yaml"' in source and "get_package_share_directory(PACKAGE)" in source
    data_files = ast.unparse(next(
        k.value for n in ast.walk(ast.parse((REPO / "setup.py").read_text()))
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup" for k in n.keywords if k.arg == "data_files"
    ))
    assert "share/{package_name}/config" in data_files and "config/*.yaml" in data_files
    assert "share/{package_name}/launch" in data_files and "launch/*.launch.py" in data_files


def test_config_keys_are_exactly_the_node_parameters(parameter_table):
    values = _config_parameters()
    table = parameter_table.PARAMETERS_BY_NAME
    unknown = set(values) - set(table)
    assert not unknown, f"config/segment.yaml sets parameters the node does not declare: {sorted(unknown)}"
    # Every parameter is documented in the file; aux_range only in a comment (ROS cannot type an empty list).
    text = CONFIG_FILE.read_text()
    for name in table:
        if name not in values:
            leaf = name.split(".")[-1]
            assert f"# {leaf}:" in text or f"{leaf}: [" in text, f"config/segment.yaml does not mention {name}"


def test_config_values_are_valid_and_equal_to_the_table_defaults(parameter_table):
    for name, value in _config_parameters().items():
        value = parameter_table.coerce(name, value)
        assert parameter_table.validate(name, value) is None, f"{name}: {parameter_table.validate(name, value)}"
        assert value == parameter_table.PARAMETERS_BY_NAME[name].default, f"{name}: file {value!r} != table default"


def test_every_config_entry_has_a_comment():
    lines = CONFIG_FILE.read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.endswith(":") and not stripped.startswith("-"):
            continue  # comments, blank lines and section headers
        previous = lines[index - 1].strip()
        assert previous.startswith("#"), f"config/segment.yaml line {index + 1} ({stripped!r}) has no comment above it"


# ---- the launch file executed against stand-ins for launch / launch_ros ---------------------------------


class _Recorder:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name, default=None):
        self.name, self.default = name, default

    def perform(self, context):
        return context.launch_configurations.get(self.name, self.default if self.default is not None else "")


class _Context:
    def __init__(self, configurations):
        self.launch_configurations = dict(configurations)


def _stub_modules(share: str) -> dict[str, types.ModuleType]:
    def module(name, **attributes):
        mod = types.ModuleType(name)
        mod.__dict__.update(attributes)
        return mod

    class DeclareLaunchArgument(_Recorder):
        @property
        def name(self):
            return self.args[0] if self.args else self.kwargs["name"]

    class OpaqueFunction(_Recorder):
        pass

    class Node(_Recorder):
        pass

    class LaunchDescription(_Recorder):
        @property
        def entities(self):
            return list(self.args[0] if self.args else self.kwargs.get("initial_entities", []))

    def get_package_share_directory(name):
        if name != "rgbd_fusion_seg":
            raise LookupError(name)
        return share

    return {
        "launch": module("launch", LaunchDescription=LaunchDescription),
        "launch.actions": module("launch.actions", DeclareLaunchArgument=DeclareLaunchArgument, OpaqueFunction=OpaqueFunction),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=_LaunchConfiguration),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=Node),
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module("ament_index_python.packages", get_package_share_directory=get_package_share_directory),
    }


@pytest.fixture
def launched(monkeypatch):
    """launch(**arguments) -> the kwargs of the Node the launch file builds for those launch arguments."""
    for name, stub in _stub_modules(FAKE_SHARE).items():
        monkeypatch.setitem(sys.modules, name, stub)
    namespace = runpy.run_path(str(LAUNCH_FILE))
    description = namespace["generate_launch_description"]()
    declared = [e for e in description.entities if type(e).__name__ == "DeclareLaunchArgument"]
    opaque = [e for e in description.entities if type(e).__name__ == "OpaqueFunction"]
    assert len(opaque) == 1

    def nodes(**arguments):
        """The kwargs of every Node the launch file builds for those launch arguments."""
        configurations = {a.name: a.kwargs.get("default_value", "") for a in declared}
        unknown = set(arguments) - set(configurations)
        assert not unknown, f"not launch arguments: {unknown}"
        configurations.update(arguments)
        function = opaque[0].kwargs.get("function") or opaque[0].args[0]
        actions = function(_Context(configurations))
        return [a.kwargs for a in actions if type(a).__name__ == "Node"]

    def launch(**arguments):
        segment_nodes = [n for n in nodes(**arguments) if n["executable"] == "segment_node"]
        assert len(segment_nodes) == 1
        return segment_nodes[0]

    launch.nodes = nodes
    launch.declared = {a.name: a for a in declared}
    launch.parameter_arguments = namespace["PARAMETER_ARGUMENTS"]
    return launch


def test_launch_declares_the_documented_arguments(launched):
    assert EXPECTED_ARGUMENTS <= set(launched.declared)
    for argument in launched.declared.values():
        assert argument.kwargs.get("description"), f"launch argument {argument.name} has no description"
    assert launched.declared["params_file"].kwargs["default_value"] == os.path.join(FAKE_SHARE, "config", "segment.yaml")


def test_launch_defaults_use_the_installed_config_and_override_nothing(launched):
    node = launched()
    assert node["package"] == "rgbd_fusion_seg" and node["executable"] == "segment_node"
    assert node["name"] == "segment_node"
    params_file, overrides = node["parameters"]
    assert params_file == os.path.join(FAKE_SHARE, "config", "segment.yaml")
    # Empty launch arguments must not clobber the file's values.
    assert overrides == {"use_sim_time": False}
    assert dict(node["remappings"]) == {
        "rgb/image": "/camera/color/image_raw",
        "aux/image": "/camera/aligned_depth_to_color/image_raw",
    }
    assert node["namespace"] == ""
    assert node["arguments"] == ["--ros-args", "--log-level", "info"]


def test_launch_arguments_become_parameters_and_remappings(launched, parameter_table):
    node = launched(
        checkpoint="/models/mid.pt", fusion_method="early", checkpoint_dir="/models", modality="thermal",
        device="cuda:1", rgb_topic="/cam/rgb", aux_topic="/cam/thermal", params_file="/tmp/my.yaml",
        namespace="robot1", use_sim_time="true",
    )
    params_file, overrides = node["parameters"]
    assert params_file == "/tmp/my.yaml"
    assert overrides == {
        "checkpoint": "/models/mid.pt", "fusion_method": "early", "checkpoint_dir": "/models",
        "modality": "thermal", "device": "cuda:1", "use_sim_time": True,
    }
    assert set(overrides) - BUILTIN_PARAMETERS <= set(parameter_table.PARAMETERS_BY_NAME)
    assert dict(node["remappings"]) == {"rgb/image": "/cam/rgb", "aux/image": "/cam/thermal"}
    assert node["namespace"] == "robot1"


# ---- RViz2 -------------------------------------------------------------------------------------------

RVIZ_CONFIG = REPO / "config" / "segment.rviz"
# RViz2 display classes that subscribe, and the message type each reads
RVIZ_DISPLAY_TYPES = {
    "rviz_default_plugins/Image": "sensor_msgs/msg/Image",
    "rviz_default_plugins/PointCloud2": "sensor_msgs/msg/PointCloud2",
}


def _rviz_displays(displays: list) -> list[dict]:
    """Every display of an RViz config, those inside display groups included."""
    found = []
    for display in displays:
        found.append(display)
        found += _rviz_displays(display.get("Displays", []))
    return found


def test_rviz_config_shows_the_nodes_contract_topics():
    from rgbd_fusion_seg.ros.contract import OUTPUT_QOS, TOPICS

    config = yaml.safe_load(RVIZ_CONFIG.read_text())
    manager = config["Visualization Manager"]
    contract = {topic.name: topic for topic in TOPICS}
    shown = {}
    for display in _rviz_displays(manager["Displays"]):
        if "Topic" not in display:
            continue
        assert display["Class"] in RVIZ_DISPLAY_TYPES, f"display {display['Name']!r}: unexpected class {display['Class']}"
        topic = display["Topic"]["Value"]
        # relative to RViz2's namespace, the launch's: <node name>/<output> is the node's ~/<output>
        node_name, _, output = topic.partition("/")
        assert node_name == "segment_node", f"display {display['Name']!r} reads {topic!r}, not the node's output"
        spec = contract.get(f"~/{output}")
        assert spec is not None and spec.direction == "out", f"{topic!r} is not an output of the node's contract"
        assert spec.type == RVIZ_DISPLAY_TYPES[display["Class"]], f"{topic!r} is {spec.type}, the display reads {display['Class']}"
        assert display["Topic"]["Reliability Policy"].lower() == OUTPUT_QOS["reliability"]
        assert display["Topic"]["Durability Policy"].lower() == OUTPUT_QOS["durability"]
        shown[f"~/{output}"] = display
    assert set(shown) == {"~/overlay", "~/mask_color", "~/points"}
    cloud = shown["~/points"]
    assert cloud["Color Transformer"] == "Intensity" and cloud["Channel Name"] == "label"  # coloured by class
    assert cloud["Use Fixed Frame"] is True


def test_rviz_starts_only_when_asked_with_the_installed_config_and_fixed_frame(launched):
    assert launched.declared["rviz"].kwargs["default_value"] == "false"
    assert [n["executable"] for n in launched.nodes()] == ["segment_node"]
    default_frame = launched.declared["rviz_fixed_frame"].kwargs["default_value"]
    assert yaml.safe_load(RVIZ_CONFIG.read_text())["Visualization Manager"]["Global Options"]["Fixed Frame"] == default_frame

    nodes = launched.nodes(rviz="true", rviz_fixed_frame="robot1/camera_depth_optical_frame", namespace="robot1",
                           use_sim_time="true")
    assert [n["executable"] for n in nodes] == ["segment_node", "rviz2"]
    rviz = nodes[1]
    assert rviz["package"] == "rviz2" and rviz["namespace"] == "robot1" == nodes[0]["namespace"]
    assert rviz["arguments"] == ["--display-config", os.path.join(FAKE_SHARE, "config", "segment.rviz"),
                                 "--fixed-frame", "robot1/camera_depth_optical_frame"]
    assert rviz["parameters"] == [{"use_sim_time": True}]


@pytest.mark.slow
def test_colcon_installs_the_rviz_config(colcon_install):
    """The real `colcon build` (test_package's fixture) installs config/segment.rviz where the launch file looks."""
    installed = colcon_install / "share" / "rgbd_fusion_seg" / "config" / "segment.rviz"
    assert installed.is_file() and installed.read_bytes() == RVIZ_CONFIG.read_bytes()


# ---- the real node started with the config file --------------------------------------------------------


@pytest.fixture(scope="module")
def ros_env():
    pytest.importorskip("rclpy")
    from rgbd_fusion_seg.offline.node_harness import ros_environment

    return ros_environment(domain_id=random.Random(os.getpid()).randint(1, 100))


@pytest.mark.slow
def test_node_starts_with_the_config_file_and_reports_its_parameters(tmp_path, ros_env, parameter_table):
    from rcl_interfaces.srv import GetParameters, ListParameters
    from rclpy.parameter import parameter_value_to_python
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from rgbd_fusion_seg.offline.node_benchmark import make_untrained_checkpoint
    from rgbd_fusion_seg.offline.node_harness import NodeProcess, RosSession, image_msg, wait_until

    checkpoint = make_untrained_checkpoint(tmp_path / "mid.pt", method="mid", input_size=(32, 40))
    namespace = f"/launch_test_{os.getpid()}"
    node = NodeProcess(
        checkpoint, params_file=CONFIG_FILE, parameters={"device": "cpu"}, namespace=namespace,
        remappings={"rgb/image": "camera/rgb", "aux/image": "camera/depth"}, env=ros_env, log_path=tmp_path / "node.log",
    )
    session = None
    try:
        session = RosSession("launch_file_test", ros_env)
        ros = session.node
        fqn = f"{namespace}/segment_node"
        list_client = ros.create_client(ListParameters, f"{fqn}/list_parameters")
        get_client = ros.create_client(GetParameters, f"{fqn}/get_parameters")
        assert wait_until(lambda: get_client.service_is_ready() and list_client.service_is_ready(), 60,
                          abort=lambda: not node.alive()), f"node did not come up:\n{node.log_tail()}"

        def call(client, request):
            future = client.call_async(request)
            assert wait_until(future.done, 20), "service call timed out"
            return future.result()

        listed = set(call(list_client, ListParameters.Request()).result.names)
        assert set(parameter_table.PARAMETERS_BY_NAME) <= listed, sorted(set(parameter_table.PARAMETERS_BY_NAME) - listed)
        names = sorted(parameter_table.PARAMETERS_BY_NAME)
        values = call(get_client, GetParameters.Request(names=names)).values
        served = {name: parameter_value_to_python(value) for name, value in zip(names, values)}
        expected = {name: parameter_table.coerce(name, v) for name, v in _config_parameters().items()}
        expected.update(checkpoint=str(checkpoint), device="cpu")
        for name, value in expected.items():
            assert served[name] == value, f"{name}: node has {served[name]!r}, expected {value!r}"
        assert list(served["aux_range"]) == []

        # Proof of life: a colour/depth pair in, a mask with the colour image's stamp out.
        masks = []
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        ros.create_subscription(Image, f"{fqn}/mask", masks.append, qos)
        rgb_pub = ros.create_publisher(Image, f"{namespace}/camera/rgb", qos)
        depth_pub = ros.create_publisher(Image, f"{namespace}/camera/depth", qos)
        rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        depth = np.full((48, 64), 1200, np.uint16)
        deadline = time.monotonic() + 60
        sent = []
        while not masks and time.monotonic() < deadline and node.alive():
            stamp = time.time_ns()
            sent.append(stamp)
            rgb_pub.publish(image_msg(rgb, stamp))
            depth_pub.publish(image_msg(depth, stamp))
            wait_until(lambda: bool(masks), 0.5)
        assert masks, f"no ~/mask from the node:\n{node.log_tail()}"
        mask = masks[0]
        assert (mask.height, mask.width, mask.encoding) == (48, 64, "mono8")
        assert mask.header.stamp.sec * 10**9 + mask.header.stamp.nanosec in sent
    finally:
        if session is not None:
            session.close()
        code = node.stop()
    assert code == 0, f"node did not shut down cleanly on SIGINT (status {code}):\n{node.log_tail()}"
