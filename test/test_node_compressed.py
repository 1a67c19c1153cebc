"""segment_node with compressed inputs (transport.rgb / transport.aux), as image_transport users run it.

One node process: jpeg or png colour on the remapped base name + /compressed, 16UC1 depth as compressedDepth (png
or rvl inside) on a topic remapped by its full name, corrupt messages counted as bad input. A bad transport value at start is
checked in-process (no second node process).
"""
import array

import numpy as np
import pytest

from ros_helpers import RosClient, Stamps, compressed_msg, domain_id_for, make_checkpoint, start_node

DOMAIN = domain_id_for(23)
COLOUR = "/camera/color/image_raw"  # remapped as the base name: the node adds /compressed
DEPTH = "/camera/depth/image_rect_raw/compressedDepth"  # remapped by its full name


next_stamp = Stamps()


def compressed_pair(stamp, colour_kind="jpeg", depth_shape=(48, 64), depth_kind="compressedDepth"):
    y, x = np.mgrid[0:48, 0:64]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8)  # smooth: jpeg keeps it close
    depth = np.random.default_rng(stamp % 2**32).integers(300, 5000, depth_shape, dtype=np.uint16)
    depth[: depth_shape[0] // 4] = 0  # no readings
    return (compressed_msg(rgb, "rgb8", colour_kind, stamp, "color_optical"),
            compressed_msg(depth, "16UC1", depth_kind, stamp, "color_optical"))


@pytest.fixture(scope="module")
def client():
    from sensor_msgs.msg import CompressedImage

    ros = RosClient(DOMAIN, rgb_topic=f"{COLOUR}/compressed", aux_topic=DEPTH, input_type=CompressedImage)
    yield ros
    ros.close()


@pytest.fixture(scope="module")
def node(client, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compressed")
    make_checkpoint(folder / "early.pt", "early", modality="depth", unit="m")
    parameters = {"checkpoint": str(folder / "early.pt"), "transport.rgb": "compressed",
                  "transport.aux": "compressedDepth", "stats_period": 0.5}
    remaps = {"rgb/image": COLOUR, "aux/image/compressedDepth": DEPTH}
    with start_node(folder / "node.log", DOMAIN, parameters=parameters, remaps=remaps) as process:
        client.wait_for_node()
        process.wait_for_log("serving method 'early'", timeout=60)
        client.prime(next_stamp, compressed_pair)
        yield process
        print(process.log())  # shown with -s or on failure


@pytest.mark.slow  # the node process starts in about 10 s
def test_logs_the_transport_topics_types_and_qos(node):
    assert (f"subscribed to {COLOUR}/compressed (colour, sensor_msgs/msg/CompressedImage) and {DEPTH} "
            "(aux, sensor_msgs/msg/CompressedImage) with QoS auto (reliability reliable") in node.log()


@pytest.mark.slow
@pytest.mark.parametrize("colour_kind, depth_shape, depth_kind", [
    ("jpeg", (48, 64), "compressedDepth"), ("png", (48, 64), "compressedDepth"), ("jpeg", (24, 32), "compressedDepth"),
    ("jpeg", (48, 64), "compressedDepth-rvl"),
])
def test_compressed_pairs_give_masks_with_the_colour_header(node, client, colour_kind, depth_shape, depth_kind):
    stamp = next_stamp()
    rgb_msg, depth_msg = compressed_pair(stamp, colour_kind, depth_shape, depth_kind)
    codec = "rvl" if depth_kind.endswith("rvl") else "png"
    assert rgb_msg.format == f"rgb8; {colour_kind} compressed bgr8" and depth_msg.format == f"16UC1; compressedDepth {codec}"
    client.publish_pair(rgb_msg, depth_msg)
    client.wait_for_stamp(stamp)
    mask = next(m for m in client.received["mask"] if m.header.stamp == rgb_msg.header.stamp)
    assert (mask.encoding, mask.height, mask.width, mask.header.frame_id) == ("mono8", 48, 64, "color_optical")
    assert np.frombuffer(mask.data, np.uint8).max() < 4  # class ids of a 4-class model


@pytest.mark.slow
def test_corrupt_compressed_messages_are_bad_input_and_the_node_serves_on(node, client):
    def corrupt(msg, data=None, format=None):
        msg.data = array.array("B", data if data is not None else bytes(msg.data)[:40])  # truncated by default
        msg.format = format or msg.format
        return msg

    cases = [  # (topic, pair with one bad message, what the log names)
        (f"{COLOUR}/compressed", lambda s: (corrupt(compressed_pair(s)[0], b"\xff\xd8\xff\xe0garbage"), compressed_pair(s)[1]),
         "cannot decode the compressed data (format 'rgb8; jpeg compressed bgr8'"),
        (f"{COLOUR}/compressed", lambda s: (corrupt(compressed_pair(s)[0], format="rgb8; theora"), compressed_pair(s)[1]),
         "unsupported compressed format 'rgb8; theora'"),
        (DEPTH, lambda s: (compressed_pair(s)[0], corrupt(compressed_pair(s)[1])),
         "(format '16UC1; compressedDepth png'"),
        (DEPTH, lambda s: (compressed_pair(s)[0], corrupt(compressed_pair(s, depth_kind="compressedDepth-rvl")[1])),
         "format '16UC1; compressedDepth rvl': the stream ends"),
    ]
    before = int(client.fresh_stats()["bad_input"])
    for count, (topic, make, named) in enumerate(cases, start=1):
        stamp = next_stamp()
        client.publish_pair(*make(stamp))
        client.fresh_stats(predicate=lambda s, n=before + count: int(s["bad_input"]) >= n)
        good = next_stamp()
        client.publish_pair(*compressed_pair(good))
        client.wait_for_stamp(good)  # still serving
        assert stamp not in client.stamps()
        line = next((line for line in node.log().splitlines() if named in line), "")
        assert f"bad input on {topic}: " in line, (named, node.log())
    assert "Traceback" not in node.log() and node.process.poll() is None


def test_bad_transport_value_falls_back_to_raw_with_an_error_naming_it(client, capfd):
    """In-process (own namespace): transport is read-only, so a bad value at start is the only way in."""
    from rclpy.parameter import Parameter

    from rgbd_fusion_seg.ros.segment_node import SegmentNode

    node = SegmentNode(context=client.context, namespace="inproc",
                       cli_args=["--ros-args", "-r", "rgb/image:=camera/rgb"],
                       parameter_overrides=[Parameter("transport.rgb", value="theora"),
                                            Parameter("transport.aux", value="compressed")])
    try:
        assert (node.rgb_topic, node._input_subs[0].msg_type.__name__) == ("/inproc/camera/rgb", "Image")
        assert (node.aux_topic, node._input_subs[1].msg_type.__name__) == ("/inproc/aux/image/compressed", "CompressedImage")
        [result] = node.set_parameters([Parameter("transport.rgb", value="compressed")])
        assert not result.successful and "read-only" in result.reason
    finally:
        node.shutdown()
        node.destroy_node()
    assert "transport.rgb: 'theora' is not one of 'raw', 'compressed'; using the default 'raw'" in capfd.readouterr().err
