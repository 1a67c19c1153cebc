"""Camera bags of real frames (test/recorded_bags.py) replayed into the node at native size.

rgbd_indoor (mcap): rgb8 + 16UC1 at 512x424, 15 Hz, depth jitter up to 6 ms, different frame_ids.
rgbt_layout (sqlite3): bgr8 + mono8 at 1280x720, 10 Hz, aux jitter up to 20 ms, different frame_ids.
rgbt_subterranean: the same layout from the real PST900 frames, where RGBD_FUSION_SEG_REALDATA has them.

The bag is replayed in its recorded order; after each message that completes a pair the replay waits for
that frame's mask, so every pairing colour frame must come back (no newest-pair-wins drops to excuse).
The node subscribes with qos.profile reliable: best-effort delivery of multi-megabyte images between
processes loses fragments with Fast DDS's default transports (the node counts and reports such losses).
"""
import signal
import time

import numpy as np
import pytest

from rgbd_fusion_seg.serving.pairing import ApproximateTimePairer
from recorded_bags import pst900_bag
from ros_helpers import RosClient, domain_id_for, make_checkpoint, read_bag_images, rosbags_to_ros, start_node

pytestmark = pytest.mark.slow  # every test talks to a segment_node in a child process
DOMAIN = domain_id_for(23)
NUM_CLASSES = 5

RGBT = dict(colour="/rgb/image_raw", aux="/thermal/image_raw", modality="thermal", unit="raw8", high=255.0,
            size=(720, 1280), frames=6)
BAG_CASES = {
    "rgbd_indoor": dict(colour="/camera/color/image_raw", aux="/camera/depth/image_rect_raw", modality="depth",
                        unit="m", high=10.0, size=(424, 512), frames=8),
    "rgbt_layout": RGBT,
    "rgbt_subterranean": RGBT,
}


@pytest.fixture(params=list(BAG_CASES))
def bag(request, bags, tmp_path):
    """(name, folder) of each case; the PST900 one is built here from the external frames."""
    if request.param == "rgbt_subterranean":
        return request.param, pst900_bag(tmp_path, request.getfixturevalue("pst900_realdata"))
    return request.param, bags / request.param


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_real_bag_through_the_node(bag, tmp_path):
    bag, folder = bag
    case = BAG_CASES[bag]
    frames = [(topic, rosbags_to_ros(msg)) for topic, msg in read_bag_images(folder, {case["colour"], case["aux"]})]
    checkpoint = tmp_path / f"{bag}.pt"
    parameters = {
        "checkpoint": str(checkpoint),
        "modality": case["modality"],
        "qos.profile": "reliable",
        "stats_period": 1.0,
    }
    remaps = {"rgb/image": case["colour"], "aux/image": case["aux"]}
    make_checkpoint(checkpoint, "early", num_classes=NUM_CLASSES, modality=case["modality"], unit=case["unit"],
                    high=case["high"], input_size=(96, 128))
    client = RosClient(DOMAIN, rgb_topic=case["colour"], aux_topic=case["aux"])
    try:
        with start_node(tmp_path / "node.log", DOMAIN, parameters=parameters, remaps=remaps) as node:
            client.wait_for_node(timeout=40)
            node.wait_for_log(r"serving method 'early'", timeout=40)
            text = node.log()
            assert (f"subscribed to {case['colour']} (colour, sensor_msgs/msg/Image) and {case['aux']} "
                    "(aux, sensor_msgs/msg/Image) with QoS reliable") in text

            pairer = ApproximateTimePairer(queue_size=10, slop=0.05)  # the node's defaults
            expected, round_trips = [], []
            for topic, msg in frames:
                publisher = client.rgb_pub if topic == case["colour"] else client.aux_pub
                sent = time.monotonic()
                publisher.publish(msg)
                pair = pairer.add(0 if topic == case["colour"] else 1, stamp_of(msg), msg)
                if pair is not None:
                    expected.append(pair.first)
                    for output in ("mask", "mask_color"):  # two topics: either may be taken first
                        client.wait_for_stamp(pair.first_stamp, output, timeout=30)
                    round_trips.append(time.monotonic() - sent)
            assert len(expected) == case["frames"]  # every colour frame of these bags pairs

            height, width = case["size"]
            masks = {stamp_of(m): m for m in client.received["mask"]}
            colours = {stamp_of(m): m for m in client.received["mask_color"]}
            for colour_msg in expected:
                stamp = stamp_of(colour_msg)
                mask, coloured = masks[stamp], colours[stamp]
                assert (mask.encoding, mask.height, mask.width) == ("mono8", height, width)
                assert (coloured.encoding, coloured.height, coloured.width) == ("rgb8", height, width)
                assert mask.header.frame_id == coloured.header.frame_id == colour_msg.header.frame_id
                assert np.frombuffer(mask.data, np.uint8).max() < NUM_CLASSES

            stats = client.fresh_stats(predicate=lambda s: int(s["frames_out"]) >= case["frames"])
            assert stats["bad_input"] == "0" and stats["inference_errors"] == "0", stats
            assert int(stats["pairs"]) == case["frames"] and int(stats["frames_in_rgb"]) == case["frames"]
            assert stats["model"] == "early"
            # stamps from the recording: stamp -> publish spans years, the node's processing time does not
            assert float(stats["latency_p50_ms"]) > 1e6 and 0 < float(stats["processing_p50_ms"]) < 10_000, stats
            print(f"{bag}: {len(expected)} frames at {width}x{height}; publish -> mask_color "
                  f"{np.median(round_trips) * 1e3:.0f} ms median; node stats {stats}")

            assert node.stop(signal.SIGINT) == 0
            text = node.log()
            assert "[ERROR]" not in text and "Traceback" not in text, text
            assert text.count("frame_ids differ") == 1  # the drivers' optical frames differ; warned once
            # Replayed without its clock, the recording's stamps are far from now: the node says so, once.
            assert text.count("stamps are") == 1 and "use_sim_time:=true" in text, text
    finally:
        client.close()
