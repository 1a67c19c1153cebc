"""What the node tells its user, across processes: /diagnostics levels judged on the last period (an enabled
output not produced, frames unpaired, stamps from another clock and back), `qos.profile: auto` following the
publishers' QoS as they come and go, and parameters refused with reasons that name what was wrong."""
import time

import pytest

from ros_helpers import Stamps, client_fixture, domain_id_for, make_checkpoint, random_pair, start_node

pytestmark = pytest.mark.slow  # every test talks to a segment_node in a child process
DOMAIN = domain_id_for(107)
next_stamp = Stamps()
client = client_fixture(DOMAIN)


@pytest.fixture(scope="module")
def ros(client, tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    statuses = []
    client.node.create_subscription(
        DiagnosticArray, "/diagnostics", lambda msg: statuses.extend(s for s in msg.status if s.name == "/segment_node"),
        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    folder = tmp_path_factory.mktemp("monitoring")
    checkpoint = make_checkpoint(folder / "early.pt", "early")
    parameters = {"checkpoint": str(checkpoint), "stats_period": 0.3, "no_pair_timeout": 3.0}
    with start_node(folder / "node.log", DOMAIN, parameters=parameters) as node:
        client.wait_for_node()
        client.prime(next_stamp, random_pair)
        yield node, statuses
        print(node.log())


def next_status(client, statuses, predicate, what, timeout=15.0, start=None):
    """The first status from `start` (default: from now on) that satisfies `predicate`."""
    start = len(statuses) if start is None else start
    client.spin_until(lambda: any(predicate(s) for s in statuses[start:]), timeout, what)
    return next(s for s in statuses[start:] if predicate(s))


def stream(client, seconds: float, stamp_offset_ns: int = 0, extra_colour: bool = False) -> None:
    """Pairs at 10 Hz (stamps shifted by `stamp_offset_ns`); `extra_colour`: one colour frame without a partner
    after each pair (a third of the frames unpaired)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stamp = next_stamp() + stamp_offset_ns
        client.publish_pair(*random_pair(stamp))
        if extra_colour:
            client.spin_for(0.05)
            client.rgb_pub.publish(random_pair(stamp + 50_000_000)[0])
        client.spin_for(0.1)


def test_qos_auto_follows_the_publishers(ros, client):
    """The client's publishers are reliable: auto subscribes reliably; a best-effort publisher joins: best effort
    (a reliable subscription would get nothing from it); it leaves: reliable again."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    node, _ = ros
    assert "/aux/image (aux, sensor_msgs/msg/Image) with QoS auto (reliability reliable" in node.log()
    best_effort = client.node.create_publisher(Image, "rgb/image", qos_profile_sensor_data)
    node.wait_for_log(r"/rgb/image: its publishers now offer auto \(reliability best_effort")
    stamp = next_stamp()
    rgb_msg, aux_msg = random_pair(stamp)
    best_effort.publish(rgb_msg)
    client.aux_pub.publish(aux_msg)
    client.wait_for_stamp(stamp)  # the best-effort publisher's frame is received and paired
    client.node.destroy_publisher(best_effort)
    node.wait_for_log(r"/rgb/image: its publishers now offer auto \(reliability reliable")
    client.prime(next_stamp, random_pair)


def test_stamps_from_another_clock_warn_and_the_warning_clears(ros, client):
    from diagnostic_msgs.msg import DiagnosticStatus

    _, statuses = ros
    stream(client, 1.0, stamp_offset_ns=-3600 * 10**9)  # an hour behind this node's clock
    warn = next_status(client, statuses, lambda s: "another clock" in s.message, "the clock warning")
    assert warn.level == DiagnosticStatus.WARN
    stream(client, 1.0)
    next_status(client, statuses, lambda s: s.level == DiagnosticStatus.OK, "OK again once the stamps agree")


def test_many_unpaired_frames_warn(ros, client):
    from diagnostic_msgs.msg import DiagnosticStatus

    _, statuses = ros
    start = len(statuses)
    stream(client, 2.0, extra_colour=True)
    warn = next_status(client, statuses, lambda s: "found no partner" in s.message, "the unpaired warning", start=start)
    assert warn.level == DiagnosticStatus.WARN and "sync.slop" in warn.message
    stream(client, 1.0)
    next_status(client, statuses, lambda s: s.level == DiagnosticStatus.OK, "OK again")


def test_an_enabled_output_that_is_not_produced_warns(ros, client):
    from diagnostic_msgs.msg import DiagnosticStatus

    _, statuses = ros
    assert client.set_parameters({"outputs.points": True})[0].successful
    start = len(statuses)
    stream(client, 1.0)
    warn = next_status(client, statuses, lambda s: "not produced" in s.message, "the silent-output warning", start=start)
    assert warn.level == DiagnosticStatus.WARN and "~/points (no camera_info on /aux/camera_info)" in warn.message
    assert client.set_parameters({"outputs.points": False})[0].successful
    stream(client, 1.0)
    next_status(client, statuses, lambda s: s.level == DiagnosticStatus.OK, "OK again")


@pytest.mark.parametrize("name, value, reason", [
    ("points.voxel_size", 1e-6, "must be 0 (off), or in [0.001, 1] m, got 1e-06 (finer than 1 mm"),
    ("sync.slop", "0.1", "sync.slop: must be in [0, 1] s, got '0.1'"),
    ("outputs.overlay", 1, "must be true or false (bool), got int 1"),
])
def test_bad_values_are_refused_with_what_was_wrong(ros, client, name, value, reason):
    [result] = client.set_parameters({name: value})
    assert not result.successful and reason in result.reason


def test_an_integer_for_a_double_is_that_double(ros, client):
    assert client.set_parameters({"sync.slop": 1})[0].successful
    assert client.get_parameters(["sync.slop"]) == {"sync.slop": 1.0}
    assert client.set_parameters({"sync.slop": 0.05})[0].successful


def test_a_directory_as_checkpoint_is_called_a_directory(ros, client, tmp_path):
    [result] = client.set_parameters({"checkpoint": str(tmp_path)})
    assert not result.successful and "is a directory, expected a checkpoint file" in result.reason
