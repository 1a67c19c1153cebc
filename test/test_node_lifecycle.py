"""segment_node as a managed node, across processes: the lifecycle transitions from a client (deactivate stops
the masks, cleanup frees the model, configure and activate bring it back), and `autostart: false`."""
import pytest

from ros_helpers import NodeProcess, Stamps, client_fixture, domain_id_for, make_checkpoint, random_pair

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
    with NodeProcess(tmp_path / "node.log", DOMAIN, parameters={"checkpoint": str(checkpoint)}) as node:
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
    with NodeProcess(tmp_path / "node.log", DOMAIN, parameters=parameters) as node:
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
