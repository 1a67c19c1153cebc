"""segment_node as a managed node, across processes: the lifecycle transitions from a client (deactivate stops
the masks, cleanup frees the model, configure and activate bring it back), and `autostart: false`."""
import pytest

from ros_helpers import Stamps, client_fixture, domain_id_for, make_checkpoint, random_pair, start_node

pytestmark = pytest.mark.slow  # every test talks to a segment_node in a child process
DOMAIN = domain_id_for(103)
next_stamp = Stamps()
client = client_fixture(DOMAIN)


class Lifecycle:
    """The node's lifecycle services (lifecycle_msgs), as `ros2 lifecycle` calls them."""

    def __init__(self, client):
        from lifecycle_msgs.srv import ChangeState, GetState

        self.client = client
        self.change = client.node.create_client(ChangeState, "/segment_node/change_state")
        self.get = client.node.create_client(GetState, "/segment_node/get_state")

    def _call(self, service, request):
        client = self.client
        client.spin_until(service.service_is_ready, 20, f"{service.srv_name}")
        future = service.call_async(request)
        client.spin_until(future.done, 60, f"{service.srv_name} to answer")
        return future.result()

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(self.get, GetState.Request()).current_state.label

    def set(self, transition: str) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = getattr(Transition, f"TRANSITION_{transition.upper()}")
        return self._call(self.change, request).success


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("lifecycle") / "early.pt", "early")


def masks_flow(client) -> bool:
    stamp = next_stamp()
    client.publish_pair(*random_pair(stamp))
    try:
        client.wait_for_stamp(stamp, timeout=3.0)
        return True
    except AssertionError:
        return False


def test_transitions_from_a_client(client, checkpoint, tmp_path):
    lifecycle = Lifecycle(client)
    with start_node(tmp_path / "node.log", DOMAIN, parameters={"checkpoint": str(checkpoint)}) as node:
        client.wait_for_node()
        node.wait_for_log("serving method 'early'", timeout=60)
        client.prime(next_stamp, random_pair)
        assert lifecycle.state() == "active"  # autostart

        assert lifecycle.set("deactivate") and lifecycle.state() == "inactive"
        node.wait_for_log("inactive: unsubscribed, the model stays loaded")
        client.spin_until(lambda: client.rgb_pub.get_subscription_count() == 0, 10, "the node to unsubscribe")
        assert not masks_flow(client)
        assert lifecycle.set("activate") and lifecycle.state() == "active"
        client.prime(next_stamp, random_pair)

        assert lifecycle.set("deactivate") and lifecycle.set("cleanup") and lifecycle.state() == "unconfigured"
        node.wait_for_log("unconfigured: threads stopped, models freed")
        assert client.node.count_publishers("/segment_node/mask") == 0
        assert lifecycle.set("configure") and lifecycle.state() == "inactive"
        node.wait_for_log("serving method 'early'", count=2, timeout=60)
        assert lifecycle.set("activate")
        client.wait_for_node()
        client.prime(next_stamp, random_pair)
        assert node.stop() == 0 and "Traceback" not in node.log()


def test_without_autostart_it_waits_unconfigured(client, checkpoint, tmp_path):
    lifecycle = Lifecycle(client)
    parameters = {"checkpoint": str(checkpoint), "autostart": False}
    with start_node(tmp_path / "node.log", DOMAIN, parameters=parameters) as node:
        node.wait_for_log("autostart is false: unconfigured")
        assert lifecycle.state() == "unconfigured"
        assert client.rgb_pub.get_subscription_count() == 0 and "loading" not in node.log()
        # set while unconfigured, read by configure
        assert all(r.successful for r in client.set_parameters({"outputs.overlay": True}))
        assert lifecycle.set("configure") and lifecycle.set("activate")
        client.wait_for_node(outputs=("mask", "mask_color", "overlay"))
        node.wait_for_log("serving method 'early'", timeout=60)
        client.prime(next_stamp, random_pair)
        assert node.stop() == 0 and "Traceback" not in node.log()


def diagnostics_of(client):
    """The node's /diagnostics statuses as they arrive."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    statuses = []
    client.node.create_subscription(
        DiagnosticArray, "/diagnostics",
        lambda msg: statuses.extend(s for s in msg.status if s.name == "/segment_node"),
        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    return statuses


def wait_for_status(client, statuses, predicate, what: str, timeout: float = 20.0):
    start = len(statuses)
    client.spin_until(lambda: any(predicate(s) for s in statuses[start:]), timeout, what)
    return next(s for s in statuses[start:] if predicate(s))


def test_shutdown_from_active_finalizes_the_node(client, checkpoint, tmp_path):
    """ROS 2's shutdown transition from any state: nothing subscribed or published, /diagnostics says it is
    finalized, parameter changes are refused with the reason."""
    from diagnostic_msgs.msg import DiagnosticStatus

    lifecycle = Lifecycle(client)
    statuses = diagnostics_of(client)
    with start_node(tmp_path / "node.log", DOMAIN, parameters={"checkpoint": str(checkpoint),
                                                                "stats_period": 0.3}) as node:
        client.wait_for_node()
        node.wait_for_log("serving method 'early'", timeout=60)
        client.prime(next_stamp, random_pair)
        assert lifecycle.set("active_shutdown") and lifecycle.state() == "finalized"
        node.wait_for_log(r"finalized \(shut down from active\)")
        client.spin_until(lambda: client.rgb_pub.get_subscription_count() == 0
                          and client.aux_pub.get_subscription_count() == 0, 10, "the node to unsubscribe")
        assert client.node.count_publishers("/segment_node/mask") == 0
        status = wait_for_status(client, statuses, lambda s: "finalized" in s.message, "a finalized status")
        assert status.level == DiagnosticStatus.ERROR
        assert not masks_flow(client)
        [result] = client.set_parameters({"checkpoint": str(checkpoint)})
        assert not result.successful and "finalized" in result.reason
        assert node.stop() == 0 and "Traceback" not in node.log()


def test_cleanup_then_configure_starts_every_counter_afresh(client, checkpoint, tmp_path):
    from diagnostic_msgs.msg import DiagnosticStatus

    lifecycle = Lifecycle(client)
    statuses = diagnostics_of(client)
    parameters = {"checkpoint": str(checkpoint), "stats_period": 0.3, "no_pair_timeout": 1.0}
    with start_node(tmp_path / "node.log", DOMAIN, parameters=parameters) as node:
        client.wait_for_node()
        node.wait_for_log("serving method 'early'", timeout=60)
        client.prime(next_stamp, random_pair)
        before = client.fresh_stats(predicate=lambda s: int(s["frames_out"]) > 0)
        assert int(before["frames_in_rgb"]) > 0

        assert lifecycle.set("deactivate") and lifecycle.state() == "inactive"
        inactive = wait_for_status(client, statuses, lambda s: "inactive" in s.message, "an inactive status")
        assert inactive.level == DiagnosticStatus.WARN
        assert lifecycle.set("cleanup") and lifecycle.state() == "unconfigured"
        wait_for_status(client, statuses, lambda s: s.message.startswith("unconfigured"), "an unconfigured status")
        client.spin_for(1.5)  # longer than no_pair_timeout: the old watchdog clock would now say "no pair"
        assert lifecycle.set("configure") and lifecycle.set("activate")
        active = wait_for_status(client, statuses, lambda s: not s.message.startswith(("inactive", "unconfigured")),
                                 "a status once active again")
        # while the model loads "idle: loading ...", then "serving" or "no input": never the cleanup's reason
        assert "cleaned up" not in active.message
        node.wait_for_log("serving method 'early'", count=2, timeout=60)
        client.wait_for_node()
        first = client.fresh_stats(predicate=lambda s: s["model"] == "early")
        assert int(first["frames_out"]) == 0 and int(first["pairs"]) == 0 and int(first["frames_in_rgb"]) == 0
        client.prime(next_stamp, random_pair)
        after = client.fresh_stats(predicate=lambda s: int(s["frames_out"]) > 0)
        assert int(after["frames_out"]) <= int(after["pairs"]) <= int(after["frames_in_rgb"])
        assert int(after["frames_out"]) < int(before["frames_out"]) + int(after["pairs"])
        assert " got -" not in node.log()  # no negative frame counts from a clock kept over cleanup
        assert node.stop() == 0 and "Traceback" not in node.log()
