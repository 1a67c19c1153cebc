"""What a hostile tester found in the segment node (issue 10), as users meet it: a node process, real topics.

The module's node starts idle (no checkpoint), so that the "no model is served" warning comes first, as it
does for a user who starts the node before choosing a checkpoint; `serving` then gives it one.
"""
import re
import time

import numpy as np
import pytest

from ros_helpers import Stamps, client_fixture, domain_id_for, image_msg, make_checkpoint, random_pair, start_node

DOMAIN = domain_id_for(43)
next_stamp = Stamps()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("checkpoints") / "early.pt", "early", modality="depth", unit="m")


client = client_fixture(DOMAIN)


@pytest.fixture(scope="module")
def node(client, tmp_path_factory):
    log = tmp_path_factory.mktemp("node_log") / "segment_node.log"
    with start_node(log, DOMAIN, parameters={"stats_period": 0.5, "no_pair_timeout": 1.0}) as process:
        client.wait_for_node()
        process.wait_for_log("no checkpoint given", timeout=60)  # torch is imported first: slow on a busy machine
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


@pytest.mark.slow  # a segment_node in a child process
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


@pytest.mark.slow  # a segment_node in a child process
def test_a_future_stamped_burst_then_good_frames_yields_masks(serving, client):
    """10 depth frames stamped 1000 s ahead once filled the pairing queue: no mask for ~1000 s after."""
    future = next_stamp() + 1000 * 10**9
    for index in range(10):
        _, aux_msg = random_pair(future + index * 66_000_000)
        client.aux_pub.publish(aux_msg)
        client.spin_for(0.02)
    good = []
    for _ in range(15):
        good.append(next_stamp())
        client.publish_pair(*random_pair(good[-1]))
        client.spin_for(0.066)
    client.wait_for_stamp(good[-1], timeout=10)
    text = serving.wait_for_log(r"/aux/image: stamps jumped back \d+\.\d{3} s .*dropped the 10 frames queued")
    assert text.count("stamps jumped back") == 1, text
    assert 999 < float(re.search(r"stamps jumped back (\S+) s", text).group(1)) < 1001


def test_a_ros_time_jump_back_clears_the_queues(client):
    """In-process: with use_sim_time, /clock going back (a bag restarted) drops every queued frame, with a warning."""
    from rclpy.parameter import Parameter
    from rclpy.time import Time

    from rgbd_fusion_seg.ros.segment_node import SegmentNode

    node = SegmentNode(context=client.context, namespace="time_jump",
                       parameter_overrides=[Parameter("use_sim_time", value=True)])
    try:
        clock = node.get_clock()
        clock.set_ros_time_override(Time(seconds=1000, clock_type=clock.clock_type))
        for stamp in (1000, 1001):
            node._on_rgb(random_pair(stamp * 10**9)[0])
        assert node._pairer.pending() == (2, 0)
        clock.set_ros_time_override(Time(seconds=10, clock_type=clock.clock_type))
        assert node._pairer.pending() == (0, 0)
        assert node._pairer.counts.dropped == [2, 0]
    finally:
        node.shutdown()
        node.destroy_node()


def _colour_with_aux_of(stamp, aux_height, aux_width):
    rgb_msg, _ = random_pair(stamp, height=48, width=64)
    _, aux_msg = random_pair(stamp, height=aux_height, width=aux_width)
    return rgb_msg, aux_msg


@pytest.mark.slow  # a segment_node in a child process
def test_aux_of_another_size_is_warned_once_and_of_another_shape_refused(serving, client):
    for _ in range(2):  # the same view at half the resolution: resized, with one warning for these sizes
        stamp = next_stamp()
        client.publish_pair(*_colour_with_aux_of(stamp, 24, 32))
        client.wait_for_stamp(stamp)
    text = serving.wait_for_log(r"/aux/image is 24x32 and /rgb/image 48x64 \(HxW\): the aux image is resized")
    assert text.count("/aux/image is 24x32 and /rgb/image 48x64") == 1

    before = int(client.fresh_stats()["bad_input"])
    refused = {(1, 1): "aux 1x1 and colour 48x64 (HxW): aspect ratios 1.000 and 1.333 differ by 25.0%",
               (48, 48): "aux 48x48 and colour 48x64 (HxW): aspect ratios 1.000 and 1.333 differ by 25.0%",
               (40, 50): "aux 40x50 and colour 48x64 (HxW): aspect ratios 1.250 and 1.333 differ by 6.2%"}
    for count, (aux_height, aux_width) in enumerate(refused, start=1):
        stamp = next_stamp()
        client.publish_pair(*_colour_with_aux_of(stamp, aux_height, aux_width))
        client.fresh_stats(predicate=lambda s, n=before + count: int(s["bad_input"]) >= n)
    for reason in refused.values():
        serving.wait_for_log(re.escape(f"bad input on /rgb/image + /aux/image: {reason}"))
    stats = client.fresh_stats()
    assert int(stats["bad_input"]) == before + len(refused) and stats["inference_errors"] == "0", stats


@pytest.mark.parametrize("colour, aux, problem", [
    ((720, 1280), (480, 848), None),  # 16:9 at two resolutions, rounded: 0.6 % apart
    ((480, 640), (120, 160), None),
    ((960, 1280), (60, 80), None),  # a 16x smaller thermal image: the limit
    ((480, 640), (960, 1280), None),  # larger aux: shrunk
    ((480, 640), (1, 1), "aspect ratios 1.000 and 1.333 differ by 25.0% (more than 3%)"),
    ((64, 64), (1, 1), "enlarged 64x (more than 16x)"),
    ((480, 640), (512, 640), "aspect ratios 1.250 and 1.333 differ by 6.2%"),  # 5:4 thermal under 4:3 colour
    ((1080, 1920), (480, 640), "differ by 25.0%"),
])
def test_check_aux_size(colour, aux, problem):
    from rgbd_fusion_seg.core.preprocessing import Preprocessing, PreprocessingError, check_aux_size, prepare_inputs

    rgb, aux_image = np.zeros((*colour, 3), np.uint8), np.zeros(aux, np.float32)
    if problem is None:
        check_aux_size(colour, aux)
        rgb_in, aux_in = prepare_inputs(rgb, aux_image, Preprocessing(input_size=None))
        assert aux_in.shape == (1, *colour)
        return
    for refuse in (lambda: check_aux_size(colour, aux),
                   lambda: prepare_inputs(rgb, aux_image, Preprocessing(input_size=(32, 32)))):
        with pytest.raises(PreprocessingError) as error:
            refuse()
        assert f"aux {aux[0]}x{aux[1]} and colour {colour[0]}x{colour[1]} (HxW)" in str(error.value)
        assert problem in str(error.value)
