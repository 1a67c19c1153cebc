"""Launch the RGB-X fusion segmentation node.

    ros2 launch rgbd_fusion_seg segment.launch.py checkpoint:=/path/to/mid.pt \
        rgb_topic:=/camera/color/image_raw aux_topic:=/camera/aligned_depth_to_color/image_raw

Every parameter of the node lives in a ros__parameters file, by default the installed
config/segment.yaml (`params_file:=my.yaml` to use another). The launch arguments named after parameters
(those the node's parameter table, rgbd_fusion_seg/serving/parameters.py, marks `launch_argument`;
`ros2 launch rgbd_fusion_seg segment.launch.py --show-args` lists them with their descriptions) override that
file only when they are given a value: left empty (their default) they keep what the file says.

rgb_topic and aux_topic remap the node's base names, so with `transport: {rgb: compressed}` in the params
file the node subscribes to <rgb_topic>/compressed, as image_transport does.

`rviz:=true` also starts RViz2 with the installed config/segment.rviz (the overlay, the colour mask and the
labelled point cloud), in the node's namespace, with `rviz_fixed_frame` (the depth camera's optical frame) as
its fixed frame. The overlay and the cloud appear when the params file turns on outputs.overlay and
outputs.points.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from rgbd_fusion_seg.ros.contract import launch_parameter_arguments, launch_remap_description

PACKAGE = "rgbd_fusion_seg"
EXECUTABLE = "segment_node"
RVIZ_CONFIG = ("config", "segment.rviz")  # under the package's share folder

# Launch arguments that set the node parameter of the same name when non-empty: the parameters marked
# `launch_argument` in the node's parameter table, with its descriptions (rgbd_fusion_seg.ros.contract and
# .parameters are plain data: no ROS or torch import).
PARAMETER_ARGUMENTS = launch_parameter_arguments()


def _node(context, *args, **kwargs):
    """Builds the node once the launch arguments have values (so that empty ones can be left out)."""

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = {name: value(name) for name in PARAMETER_ARGUMENTS if value(name)}
    overrides["use_sim_time"] = value("use_sim_time").strip().lower() in ("true", "1", "yes")
    rviz = []
    if value("rviz").strip().lower() in ("true", "1", "yes"):
        config = os.path.join(get_package_share_directory(PACKAGE), *RVIZ_CONFIG)
        rviz.append(Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            namespace=value("namespace"),  # so that the config's relative topics name this node's outputs
            output="screen",
            parameters=[{"use_sim_time": overrides["use_sim_time"]}],
            arguments=["--display-config", config, "--fixed-frame", value("rviz_fixed_frame")],
        ))
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name="segment_node",
            namespace=value("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[value("params_file"), overrides],
            remappings=[("rgb/image", value("rgb_topic")), ("aux/image", value("aux_topic"))],
            arguments=["--ros-args", "--log-level", value("log_level")],
        ),
        *rviz,
    ]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "segment.yaml")
    arguments = [DeclareLaunchArgument(name, default_value="", description=text) for name, text in PARAMETER_ARGUMENTS.items()]
    arguments += [
        DeclareLaunchArgument("rgb_topic", default_value="/camera/color/image_raw",
                              description=launch_remap_description("rgb/image")),
        DeclareLaunchArgument("aux_topic", default_value="/camera/aligned_depth_to_color/image_raw",
                              description=launch_remap_description("aux/image")),
        DeclareLaunchArgument("params_file", default_value=default_params, description="Node parameter file (ros__parameters YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node and its outputs"),
        DeclareLaunchArgument(
            "use_sim_time", default_value="false", choices=["true", "false"], description="Use /clock (true when replaying a rosbag with --clock)"
        ),
        DeclareLaunchArgument("log_level", default_value="info", description="Logging level of the node (debug, info, warn, error)"),
        DeclareLaunchArgument("rviz", default_value="false", choices=["true", "false"],
                              description="Also start RViz2 with the installed config/segment.rviz (overlay, colour mask, labelled points)"),
        DeclareLaunchArgument("rviz_fixed_frame", default_value="camera_color_optical_frame",
                              description="RViz2's fixed frame: the depth image's frame_id (the frame of ~/points)"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_node)])
