"""What a hostile tester found in the segment node (issue 10), as users meet it: a node process, real topics.

The module's node starts idle (no checkpoint), so that the "no model is served" warning comes first, as it
does for a user who starts the node before choosing a checkpoint; `serving` then gives it one.
"""
import time

import numpy as np
import pytest

from ros_helpers import NodeProcess, RosClient, Stamps, domain_id_for, image_msg, make_checkpoint, random_pair

DOMAIN = domain_id_for(43)
next_stamp = Stamps()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("checkpoints") / "early.pt", "early", modality="depth", unit="m")


@pytest.fixture(scope="module")
def client():
    ros = RosClient(DOMAIN)
    yield ros
    ros.close()


@pytest.fixture(scope="module")
def node(client, tmp_path_factory):
    log = tmp_path_factory.mktemp("node_log") / "segment_node.log"
    with NodeProcess(log, DOMAIN, parameters={"stats_period": 0.5, "no_pair_timeout": 1.0}) as process:
        client.wait_for_node()
        process.wait_for_log("no checkpoint given")
        yield process
        print(process.log())  # shown with -s or on failure


@pytest.fixture
def serving(node, client, checkpoint):
    """The module's node, serving `checkpoint`, with a pair already through (discovery done both ways)."""
    if client.get_parameters(["checkpoint"])["checkpoint"] != str(checkpoint):
        [result] = client.set_parameters({"checkpoint": str(checkpoint)})
        assert result.successful, result.reason
        client.fresh_stats(predicate=lambda s: s["model"] == "early", timeout=30)
    deadline = time.monotonic() + 30
    while True:
        stamp = next_stamp()
        client.publish_pair(*random_pair(stamp))
        try:
            client.wait_for_stamp(stamp, timeout=0.5)
            return node
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def test_bad_input_is_logged_after_the_no_model_warning(node, client, checkpoint):
    """rclpy once bound the throttled-log call site to WARN ("no model is served"); every later bad-input
    ERROR through it raised, was swallowed and counted as an inference error: the user saw nothing."""
    for _ in range(3):
        client.publish_pair(*random_pair(next_stamp()))
        client.spin_for(0.2)
    node.wait_for_log("pair dropped: no model is served")
    [result] = client.set_parameters({"checkpoint": str(checkpoint)})
    assert result.successful, result.reason
    client.fresh_stats(predicate=lambda s: s["model"] == "early", timeout=30)

    stamp = next_stamp()
    _, good_aux = random_pair(stamp, height=8, width=10)
    client.publish_pair(image_msg(np.zeros((8, 10, 3), np.uint8), "yuv422", 8, 10, 20, stamp), good_aux)
    text = node.wait_for_log(r"bad input on /rgb/image: .*yuv422", timeout=15)
    stats = client.fresh_stats(predicate=lambda s: int(s["bad_input"]) >= 1)
    assert stats["inference_errors"] == "0", stats
    assert "Logger severity cannot be changed" not in text and "inference failed" not in text
