"""When the aux camera drops out, across processes: colour alone after aux_timeout (by the fallback checkpoint,
or by a model trained with aux dropout, or nothing when neither exists), a WARN on /diagnostics, and fusion
again when aux returns."""
import time

import numpy as np
import pytest

from ros_helpers import NodeProcess, Stamps, client_fixture, domain_id_for, image_msg, make_checkpoint, random_pair

DOMAIN = domain_id_for(101)
next_stamp = Stamps()
client = client_fixture(DOMAIN)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("degraded")
    make_checkpoint(folder / "early.pt", "early", seed=1)
    make_checkpoint(folder / "rgb.pt", "rgb", seed=2)  # the same classes: a fallback
    make_checkpoint(folder / "early_dropout.pt", "early", seed=3, data={"aux_dropout": 0.5})
    make_checkpoint(folder / "rgb_other_classes.pt", "rgb", num_classes=6)
    return folder


@pytest.fixture(scope="module")
def ros(client, checkpoints, tmp_path_factory):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    diagnostics = []
    client.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append,
                                    QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    parameters = {"checkpoint": str(checkpoints / "early.pt"), "fallback_checkpoint": str(checkpoints / "rgb.pt"),
                  "aux_timeout": 0.5, "stats_period": 0.3, "qos.profile": "reliable"}
    with NodeProcess(tmp_path_factory.mktemp("log") / "node.log", DOMAIN, parameters=parameters) as node:
        client.wait_for_node()
        node.wait_for_log("fallback ready", timeout=60)
        client.prime(next_stamp, random_pair)
        yield node, diagnostics
        print(node.log())


def colour_only(client, seconds: float) -> list[int]:
    """Publish colour frames alone at 10 Hz for `seconds`; their stamps."""
    stamps = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stamp = next_stamp()
        client.rgb_pub.publish(random_pair(stamp)[0])
        stamps.append(stamp)
        client.spin_for(0.1)
    return stamps


def latest_status(diagnostics, predicate, client, timeout=15.0):
    start = len(diagnostics)

    def found():
        return [s for array in diagnostics[start:] for s in array.status if s.name == "/segment_node" and predicate(s)]

    client.spin_until(found, timeout, "a /diagnostics status")
    return found()[-1]


def test_aux_stopped_then_back_degrades_to_the_fallback_and_fuses_again(ros, client):
    from diagnostic_msgs.msg import DiagnosticStatus

    node, diagnostics = ros
    ok = latest_status(diagnostics, lambda s: s.level == DiagnosticStatus.OK, client)
    assert ok.message == "serving early"
    stamps = colour_only(client, 3.0)
    node.wait_for_log(r"no aux on /aux/image for \d+\.\d s: degraded, masks from colour alone by fallback_checkpoint")
    served = set(client.stamps("mask"))
    assert sum(stamp in served for stamp in stamps[-15:]) >= 10  # after aux_timeout, colour frames get masks
    warn = latest_status(diagnostics, lambda s: s.level == DiagnosticStatus.WARN, client)
    assert "degraded: no aux, masks from colour alone by fallback_checkpoint" in warn.message
    assert {kv.key: kv.value for kv in warn.values}["degraded"].startswith("fallback_checkpoint")

    client.prime(next_stamp, random_pair)  # aux is back: pairs again
    node.wait_for_log("aux back on /aux/image: fusing again with 'early'")
    stats = client.fresh_stats(predicate=lambda s: s["degraded"] == "")
    assert int(stats["frames_colour_only"]) >= 10
    latest_status(diagnostics, lambda s: s.level == DiagnosticStatus.OK, client)


def test_without_a_way_to_degrade_nothing_is_published_and_it_is_said(ros, client, checkpoints):
    node, _ = ros
    [result] = client.set_parameters({"fallback_checkpoint": str(checkpoints / "rgb_other_classes.pt")})
    assert result.successful, result.reason
    node.wait_for_log("fallback ready: method 'rgb' from .*rgb_other_classes.pt")
    before = int(client.fresh_stats()["dropped_cannot_degrade"])
    stamps = colour_only(client, 1.5)
    node.wait_for_log("has other classes than")
    assert not set(stamps) & set(client.stamps("mask"))  # no masks from a model that never saw missing aux
    client.fresh_stats(predicate=lambda s: int(s["dropped_cannot_degrade"]) > before)
    client.prime(next_stamp, random_pair)


def test_a_model_trained_with_aux_dropout_serves_colour_alone_itself(ros, client, checkpoints):
    node, _ = ros
    swap = {"fallback_checkpoint": "", "checkpoint": str(checkpoints / "early_dropout.pt")}
    assert client.set_parameters_atomically(swap).successful
    client.fresh_stats(predicate=lambda s: s["checkpoint"].endswith("early_dropout.pt"), timeout=30)
    client.prime(next_stamp, random_pair)
    stamps = colour_only(client, 1.5)
    node.wait_for_log("by 'early' itself, trained with aux dropout 0.5")
    assert set(stamps) & set(client.stamps("mask"))
    client.prime(next_stamp, random_pair)


def test_an_aux_image_without_any_reading_is_served_from_colour_alone(ros, client):
    before = int(client.fresh_stats()["aux_invalid"])
    stamp = next_stamp()
    rgb_msg, _ = random_pair(stamp)
    blank = image_msg(np.zeros((48, 64), np.uint16), "16UC1", 48, 64, 128, stamp)  # 0 = no reading
    client.publish_pair(rgb_msg, blank)
    client.wait_for_stamp(stamp)
    client.fresh_stats(predicate=lambda s: int(s["aux_invalid"]) > before)


def test_aux_watch_counts_colour_alone_from_the_first_colour_frame_after_aux():
    from rgbd_fusion_seg.ros.degraded import AuxWatch

    watch = AuxWatch()
    assert watch.colour_arrived(100.0) == 0.0  # a stream's first colour frame, its aux a few ms behind
    watch.aux_arrived()
    assert watch.missing_for(100.5) == 0.0 and watch.colour_arrived(130.0) == 0.0  # a pause of both cameras
    assert watch.colour_arrived(130.6) == pytest.approx(0.6) and watch.missing_for(131.0) == pytest.approx(1.0)
    assert [watch.frame_served(True, "rgb"), watch.frame_served(True, "rgb"), watch.frame_served(False)] == \
        ["entered", None, "left"]
    assert watch.degraded_how is None
