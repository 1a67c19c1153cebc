"""~/points and ~/camera_info across processes: a node serving a depth checkpoint, a known depth plane and
known intrinsics, and the bad calibrations the node must survive (missing, refused, of another aspect)."""
import numpy as np
import pytest

from ros_helpers import Stamps, client_fixture, domain_id_for, image_msg, make_checkpoint, start_node

pytestmark = pytest.mark.slow  # every test talks to a segment_node in a child process
DOMAIN = domain_id_for(97)
HEIGHT, WIDTH = 48, 64
FX, FY, CX, CY = 50.0, 40.0, 31.5, 23.5
PLANE_MM = 2000 + 10 * np.arange(WIDTH, dtype=np.uint16)[None].repeat(HEIGHT, 0)  # z grows to the right

next_stamp = Stamps()
client = client_fixture(DOMAIN)


def camera_info(stamp_ns, width=WIDTH, height=HEIGHT, scale=1.0, model="plumb_bob", d=(0.0,) * 5):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = "depth_optical"
    msg.width, msg.height = width, height
    fx, fy, cx, cy = FX * scale, FY * scale, (CX + 0.5) * scale - 0.5, (CY + 0.5) * scale - 0.5
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.distortion_model, msg.d = model, list(d)
    return msg


def plane_pair(stamp):
    rgb = np.random.default_rng(stamp % 1000).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return (image_msg(rgb, "rgb8", HEIGHT, WIDTH, WIDTH * 3, stamp, "colour_optical"),
            image_msg(PLANE_MM, "16UC1", HEIGHT, WIDTH, WIDTH * 2, stamp, "depth_optical")), rgb


@pytest.fixture(scope="module")
def ros(client, tmp_path_factory):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, PointCloud2

    folder = tmp_path_factory.mktemp("points")
    checkpoint = make_checkpoint(folder / "early.pt", "early", modality="depth", unit="m", input_size=(32, 48))
    parameters = {"checkpoint": str(checkpoint), "outputs.points": True, "outputs.camera_info": True,
                  "outputs.confidence": True, "points.stride": 1, "camera_info_timeout": 0.5,
                  "stats_period": 0.5, "qos.profile": "reliable"}
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    info_pub = client.node.create_publisher(CameraInfo, "aux/camera_info", qos)
    received = {"points": [], "camera_info": []}
    client.node.create_subscription(PointCloud2, "/segment_node/points", received["points"].append, qos)
    client.node.create_subscription(CameraInfo, "/segment_node/camera_info", received["camera_info"].append, qos)
    with start_node(folder / "node.log", DOMAIN, parameters=parameters) as node:
        client.wait_for_node(outputs=("mask", "confidence", "points", "camera_info"))
        node.wait_for_log("serving method 'early'", timeout=60)
        client.spin_until(lambda: info_pub.get_subscription_count() > 0, 20, "the node's camera_info subscription")
        yield node, info_pub, received
        print(node.log())


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def send(client, stamp):
    (rgb_msg, aux_msg), rgb = plane_pair(stamp)
    client.publish_pair(rgb_msg, aux_msg)
    client.wait_for_stamp(stamp, "confidence", timeout=30)
    return rgb


def test_without_camera_info_masks_flow_and_the_node_says_why_there_are_no_points(ros, client):
    node, _, received = ros
    client.prime(next_stamp, lambda stamp: plane_pair(stamp)[0])
    client.spin_for(0.6)  # past camera_info_timeout since the node subscribed
    stamp = next_stamp()
    send(client, stamp)
    node.wait_for_log("no camera_info on /aux/camera_info")
    client.spin_for(0.3)
    assert stamp not in [stamp_of(m) for m in received["points"]]
    assert int(client.fresh_stats()["points_skipped"]) >= 1


def test_points_of_a_known_plane_land_where_the_pinhole_model_puts_them(ros, client):
    from rgbd_fusion_seg.ros.messages import cloud_from_msg
    from rgbd_fusion_seg.serving.point_cloud import unpack_rgb

    node, info_pub, received = ros
    info_pub.publish(camera_info(next_stamp()))
    client.spin_for(0.5)
    stamp = next_stamp()
    rgb = send(client, stamp)
    client.spin_until(lambda: stamp in [stamp_of(m) for m in received["points"]], 15, "the points")
    cloud = next(m for m in received["points"] if stamp_of(m) == stamp)
    assert cloud.header.frame_id == "depth_optical" and cloud.height == 1 and cloud.width == HEIGHT * WIDTH
    points = cloud_from_msg(cloud)
    v, u = np.divmod(np.arange(HEIGHT * WIDTH), WIDTH)  # every pixel is valid: row-major order
    z = PLANE_MM.reshape(-1) / 1000.0
    np.testing.assert_allclose(points["z"], z, atol=1e-3)  # to a millimetre
    np.testing.assert_allclose(points["x"], (u - CX) / FX * z, atol=1e-3)
    np.testing.assert_allclose(points["y"], (v - CY) / FY * z, atol=1e-3)
    mask_msg = client.received["mask"][client.stamps("mask").index(stamp)]
    mask = np.frombuffer(bytes(mask_msg.data), np.uint8).reshape(HEIGHT, WIDTH)
    np.testing.assert_array_equal(points["label"], mask.reshape(-1))
    np.testing.assert_array_equal(unpack_rgb(points["rgb"]), rgb.reshape(-1, 3))
    assert np.all((points["confidence"] > 0) & (points["confidence"] <= 1))
    client.spin_until(lambda: stamp in [stamp_of(m) for m in received["camera_info"]], 15, "the camera_info")
    info = next(m for m in received["camera_info"] if stamp_of(m) == stamp)
    assert (info.width, info.height) == (WIDTH, HEIGHT) and info.header.frame_id == "colour_optical"
    np.testing.assert_allclose(info.k, camera_info(0).k)

    # Calibrated at twice the size (same aspect): the intrinsics are scaled, the points do not move.
    info_pub.publish(camera_info(next_stamp(), WIDTH * 2, HEIGHT * 2, scale=2.0))
    client.spin_for(0.5)
    stamp = next_stamp()
    send(client, stamp)
    client.spin_until(lambda: stamp in [stamp_of(m) for m in received["points"]], 15, "the points")
    scaled = cloud_from_msg(next(m for m in received["points"] if stamp_of(m) == stamp))
    np.testing.assert_allclose(scaled["x"], points["x"], atol=1e-3)


@pytest.mark.parametrize("bad, reason", [
    (dict(model="kannala_brandt", d=(0.1, 0.0, 0.0, 0.0)), "distortion"),
    (dict(width=WIDTH, height=WIDTH), "aspect"),
])
def test_a_calibration_it_cannot_use_is_counted_and_said_and_masks_go_on(ros, client, bad, reason):
    node, info_pub, received = ros
    before = int(client.fresh_stats()["bad_camera_info"])
    info_pub.publish(camera_info(next_stamp(), **bad))
    client.spin_for(0.5)
    stamp = next_stamp()
    send(client, stamp)  # the mask still comes
    client.fresh_stats(predicate=lambda s: int(s["bad_camera_info"]) > before)
    assert stamp not in [stamp_of(m) for m in received["points"]]
    node.wait_for_log(reason)
    info_pub.publish(camera_info(next_stamp()))  # a good one again: points again
    client.spin_for(0.5)
    stamp = next_stamp()
    send(client, stamp)
    client.spin_until(lambda: stamp in [stamp_of(m) for m in received["points"]], 15, "points again")


def test_the_real_rgbd_indoor_bag_gives_a_labelled_cloud(ros, client, bags):
    """The ESANet frames (a Kinect v2 view, 512x424) from the rgbd_indoor bag, with the Kinect v2's nominal
    depth intrinsics (the bag has no camera_info): one point per valid depth pixel, labelled by its mask."""
    from ros_helpers import read_bag_images, rosbags_to_ros

    from rgbd_fusion_seg.ros.messages import cloud_from_msg

    node, info_pub, received = ros
    frames = [rosbags_to_ros(msg) for _, msg in read_bag_images(
        bags / "rgbd_indoor", {"/camera/color/image_raw", "/camera/depth/image_rect_raw"})]
    colour = next(m for m in frames if m.encoding == "rgb8")
    depth = next(m for m in frames if m.encoding == "16UC1")
    info = camera_info(next_stamp(), depth.width, depth.height)
    info.k = [365.5, 0.0, 255.5, 0.0, 365.5, 211.5, 0.0, 0.0, 1.0]  # Kinect v2 depth, nominal
    info_pub.publish(info)
    client.spin_for(0.5)
    stamp = next_stamp()
    for msg in (colour, depth):
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    client.publish_pair(colour, depth)
    client.spin_until(lambda: stamp in [stamp_of(m) for m in received["points"]], 30, "the bag frame's points")
    points = cloud_from_msg(next(m for m in received["points"] if stamp_of(m) == stamp))
    raw = np.frombuffer(bytes(depth.data), np.uint16).reshape(depth.height, depth.width)
    valid = raw > 0  # about 11 % of this frame has no reading
    assert points.size == int(valid.sum()) and 0.8 * raw.size < points.size < raw.size
    np.testing.assert_allclose(points["z"], raw[valid] / 1000.0, atol=1e-6)
    client.wait_for_stamp(stamp, "mask")
    mask_msg = client.received["mask"][client.stamps("mask").index(stamp)]
    mask = np.frombuffer(bytes(mask_msg.data), np.uint8).reshape(mask_msg.height, mask_msg.width)
    np.testing.assert_array_equal(points["label"], mask[valid])
    v, u = np.nonzero(valid)
    np.testing.assert_allclose(points["x"], (u - 255.5) / 365.5 * points["z"], rtol=1e-5, atol=1e-5)
