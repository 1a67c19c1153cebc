"""When the aux camera drops out, across processes: colour alone after aux_timeout (by the fallback checkpoint,
or by a model trained with aux dropout, or nothing when neither exists), a WARN on /diagnostics, and fusion
again when aux returns."""
import time

import numpy as np
import pytest

from ros_helpers import Stamps, client_fixture, domain_id_for, image_msg, make_checkpoint, random_pair, start_node

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
    with start_node(tmp_path_factory.mktemp("log") / "node.log", DOMAIN, parameters=parameters) as node:
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


@pytest.mark.slow  # a segment_node in a child process
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

    # aux is back: the first colour frame, after the aux stream's long silence, is still served alone (its aux
    # partner arrives after it); the pairs after it fuse again
    client.prime(next_stamp, random_pair)
    client.prime(next_stamp, random_pair)
    node.wait_for_log("aux back on /aux/image: fusing again with 'early'")
    stats = client.fresh_stats(predicate=lambda s: s["degraded"] == "")
    assert int(stats["frames_colour_only"]) >= 10
    latest_status(diagnostics, lambda s: s.level == DiagnosticStatus.OK, client)


@pytest.mark.slow  # a segment_node in a child process
def test_a_fallback_that_cannot_serve_colour_alone_or_has_other_classes_is_refused(ros, client, checkpoints):
    node, _ = ros
    [other_classes] = client.set_parameters({"fallback_checkpoint": str(checkpoints / "rgb_other_classes.pt")})
    assert not other_classes.successful and "has other classes than the served model" in other_classes.reason
    [fusion] = client.set_parameters({"fallback_checkpoint": str(checkpoints / "early.pt")})
    assert not fusion.successful and "cannot serve colour alone" in fusion.reason
    log = node.wait_for_log("refused fallback_checkpoint: .*early.pt")
    assert log.count("fallback ready") == 1  # the fixture's rgb.pt stays the fallback


@pytest.mark.slow  # a segment_node in a child process
def test_without_a_way_to_degrade_nothing_is_published_and_it_is_said(ros, client, checkpoints):
    node, _ = ros
    assert client.set_parameters({"fallback_checkpoint": ""})[0].successful
    before = int(client.fresh_stats()["dropped_cannot_degrade"])
    stamps = colour_only(client, 1.5)
    node.wait_for_log("was not trained with train.aux_dropout and no usable fallback_checkpoint is set")
    assert not set(stamps) & set(client.stamps("mask"))  # no masks from a model that never saw missing aux
    client.fresh_stats(predicate=lambda s: int(s["dropped_cannot_degrade"]) > before)
    client.prime(next_stamp, random_pair)
    assert client.set_parameters({"fallback_checkpoint": str(checkpoints / "rgb.pt")})[0].successful
    node.wait_for_log("fallback ready", count=2, timeout=60)


@pytest.mark.slow  # a segment_node in a child process
def test_each_stamp_gets_one_mask_whichever_camera_comes_first(ros, client):
    """Pairs slower than aux_timeout, aux first for every other one: the colour-first frames are decided on the
    aux stream's silence, and a frame served alone is never paired again, so no stamp gets two masks."""
    stamps = []
    for index in range(6):
        stamp = next_stamp()
        rgb_msg, aux_msg = random_pair(stamp)
        first, second = (aux_msg, rgb_msg) if index % 2 == 0 else (rgb_msg, aux_msg)
        (client.aux_pub if first is aux_msg else client.rgb_pub).publish(first)
        client.spin_for(0.02)
        (client.aux_pub if second is aux_msg else client.rgb_pub).publish(second)
        stamps.append(stamp)
        client.spin_for(0.8)  # longer than the fixture's aux_timeout of 0.5 s
    client.spin_until(lambda: all(stamp in client.stamps("mask") for stamp in stamps), 15, "a mask for each stamp")
    client.spin_for(1.0)  # a second mask would come within this
    masks = client.stamps("mask")
    assert {stamp: masks.count(stamp) for stamp in stamps} == {stamp: 1 for stamp in stamps}
    client.prime(next_stamp, random_pair)


@pytest.mark.slow  # a segment_node in a child process
def test_flaky_aux_frames_are_said_once_and_counted(ros, client):
    """Aux frames that alternate between readings and none: each colour-only spell is counted, the lines
    saying so are throttled."""
    node, _ = ros
    before = node.log().count("degraded, masks from colour alone")
    for index in range(16):
        stamp = next_stamp()
        rgb_msg, aux_msg = random_pair(stamp)
        if index % 2:
            aux_msg = image_msg(np.zeros((48, 64), np.uint16), "16UC1", 48, 64, 128, stamp)  # 0 = no reading
        client.publish_pair(rgb_msg, aux_msg)
        client.wait_for_stamp(stamp)
    assert node.log().count("degraded, masks from colour alone") - before <= 1
    client.prime(next_stamp, random_pair)


@pytest.mark.slow  # a segment_node in a child process
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


@pytest.mark.slow  # a segment_node in a child process
def test_an_aux_image_without_any_reading_is_served_from_colour_alone(ros, client, checkpoints):
    """The fallback (rgb.pt) serves the frame: its mask is the one rgb.pt makes of the colour image alone."""
    from rgbd_fusion_seg.ros.messages import colour_from_msg
    from rgbd_fusion_seg.serving.model_serving import Runtime, load_served_model

    node, _ = ros
    ready = node.log().count("fallback ready")
    assert client.set_parameters({"fallback_checkpoint": str(checkpoints / "rgb.pt")})[0].successful
    node.wait_for_log("fallback ready", count=ready + 1, timeout=60)
    before = client.fresh_stats()
    stamp = next_stamp()
    rgb_msg, _ = random_pair(stamp)
    blank = image_msg(np.zeros((48, 64), np.uint16), "16UC1", 48, 64, 128, stamp)  # 0 = no reading
    client.publish_pair(rgb_msg, blank)
    client.wait_for_stamp(stamp)
    stats = client.fresh_stats(predicate=lambda s: int(s["aux_invalid"]) > int(before["aux_invalid"]))
    assert int(stats["frames_colour_only"]) == int(before["frames_colour_only"]) + 1
    assert stats["degraded"].startswith("fallback_checkpoint") and stats["degraded"].endswith("rgb.pt ('rgb')")

    msg = client.received["mask"][client.stamps("mask").index(stamp)]
    mask = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)
    rgb = colour_from_msg(rgb_msg)
    by_model = {name: load_served_model(str(checkpoints / f"{name}.pt"), Runtime(device="cpu"),
                                        warm_up=False).engine.predict(rgb, None).mask
                for name in ("rgb", "early_dropout")}  # the fallback, and the served model fed no aux
    assert np.mean(by_model["rgb"] != by_model["early_dropout"]) > 0.1  # the two tell apart
    assert np.mean(mask == by_model["rgb"]) >= 0.999
    assert client.set_parameters({"fallback_checkpoint": ""})[0].successful
    client.prime(next_stamp, random_pair)


@pytest.mark.slow  # a segment_node in a child process
def test_a_model_that_uses_no_aux_is_never_degraded(ros, client, checkpoints):
    from diagnostic_msgs.msg import DiagnosticStatus

    node, diagnostics = ros
    assert client.set_parameters({"checkpoint": str(checkpoints / "rgb.pt")})[0].successful
    before = client.fresh_stats(predicate=lambda s: s["model"] == "rgb", timeout=30)
    stamps = colour_only(client, 1.5)
    assert set(stamps[-5:]) <= set(client.stamps("mask"))
    stats = client.fresh_stats()
    assert stats["degraded"] == "" and stats["frames_colour_only"] == before["frames_colour_only"]
    status = latest_status(diagnostics, lambda s: True, client)
    assert "degraded" not in status.message and status.level != DiagnosticStatus.ERROR
    client.prime(next_stamp, random_pair)


def test_aux_watch_measures_the_aux_streams_own_silence():
    from rgbd_fusion_seg.serving.degraded import AuxWatch

    watch = AuxWatch()
    assert watch.colour_arrived(100.0) == 0.0  # a stream's first colour frame, its aux a few ms behind
    assert watch.colour_arrived(100.3) == pytest.approx(0.3)  # no aux yet: counted from the first colour frame
    watch.aux_arrived(100.4)
    assert watch.colour_arrived(101.9) == pytest.approx(1.5)  # since the last aux, whatever came in between
    watch.aux_arrived(101.95)
    assert watch.silence(102.0) == pytest.approx(0.05)
    assert [watch.frame_served(True, "rgb"), watch.frame_served(True, "rgb"), watch.frame_served(False),
            watch.frame_served(True, "rgb")] == ["entered", None, "left", "entered"]
    assert watch.spells == 2 and watch.degraded_how == "rgb"
