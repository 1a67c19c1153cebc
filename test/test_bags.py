"""`rgbd-fusion-seg bag play|evaluate|export|import` on the real recordings and on generated data.

The evaluations start the real segment_node once per bag (the slow part) with tiny checkpoints trained here
on the generated MM5-layout set: depth from D16 (metres, as 16UC1 decodes) and thermal from T8 (raw8, as
mono8 decodes).
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import tiny_experiment
from ros_helpers import domain_id_for
from rgbd_fusion_seg.offline.bags.export import export
from rgbd_fusion_seg.offline.bags.import_ import import_dataset, open_source
from rgbd_fusion_seg.offline.bags.reading import BagError, deserialize, messages, pixels, reading, stamp_ns
from rgbd_fusion_seg.offline.bags.writing import BagWriter, image_message
from rgbd_fusion_seg.offline.cli import main as cli

DOMAIN = domain_id_for(61)
INDOOR = dict(rgb="/camera/color/image_raw", aux="/camera/depth/image_rect_raw", jpeg="/camera/color/image_raw/compressed")
SUBT = dict(rgb="/rgb/image_raw", aux="/thermal/image_raw")


def bag_images(bag, topic) -> list[tuple[int, np.ndarray, str]]:
    """(stamp, pixels as the encoding lays them out, encoding) of every message on `topic`."""
    out = []
    with reading(bag) as reader:
        connection = next(c for c in reader.connections if c.topic == topic)
        for conn, _, raw in messages(reader, [connection]):
            msg = deserialize(raw, conn)
            image, encoding = pixels(msg, topic)
            out.append((stamp_ns(msg), np.array(image), encoding))
    return out


def folder_images(root: Path, modality: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    stems = (root / "all.txt").read_text().split()
    return {s: (cv2.imread(str(root / "rgb" / f"{s}.png"), cv2.IMREAD_UNCHANGED),
                cv2.imread(str(next((root / modality).glob(f"{s}.*"))), cv2.IMREAD_UNCHANGED)) for s in stems}


# ---- export / import ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bag, topics, modality, unit", [
    pytest.param("rgbd_indoor", INDOOR, "depth", "mm", marks=pytest.mark.slow),
    ("rgbt_layout", SUBT, "thermal", "raw8"),
])
def test_real_bag_export_import_round_trips_pixel_for_pixel(bag, topics, modality, unit, tmp_path, bags):
    first = export(bags / bag, tmp_path / "first", topics["rgb"], topics["aux"], modality, log=lambda *a: None)
    assert first["aux_unit"] == unit and first["source"]["pairs"] == first["source"]["colour_messages"]
    assert not (tmp_path / "first" / "labels").exists()
    result = import_dataset(open_source(tmp_path / "first"), tmp_path / "bag")  # stamps.csv: the recorded stamps
    assert result["labelled"] == 0 and result["label_topic"] is None
    export(tmp_path / "bag", tmp_path / "second", result["colour_topic"], result["aux_topic"], modality)
    assert (tmp_path / "first" / "stamps.csv").read_text() == (tmp_path / "second" / "stamps.csv").read_text()
    one, two = folder_images(tmp_path / "first", modality), folder_images(tmp_path / "second", modality)
    assert one.keys() == two.keys()
    for stem in one:
        for a, b in zip(one[stem], two[stem]):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    # and the imported bag holds the recorded aux pixels, as recorded (16UC1 / mono8)
    recorded = {s: (image, enc) for s, image, enc in bag_images(bags / bag, topics["aux"])}
    for stamp, image, encoding in bag_images(tmp_path / "bag", result["aux_topic"]):
        assert encoding == recorded[stamp][1]
        np.testing.assert_array_equal(image, recorded[stamp][0])


@pytest.mark.parametrize("colour_encoding, modality, aux_encoding, dtype", [
    ("rgb8", "depth", "16UC1", np.uint16),
    ("bgr8", "depth", "32FC1", np.float32),
    ("bgr8", "thermal", "mono8", np.uint8),
    ("rgb8", "thermal", "mono16", np.uint16),
    ("rgb8", "thermal", "32FC1", np.float32),
])
def test_encodings_round_trip_through_export_and_import(colour_encoding, modality, aux_encoding, dtype, tmp_path):
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (4, 12, 16, 3), dtype=np.uint8)
    if dtype == np.float32:
        aux = rng.uniform(0.2, 40.0, (4, 12, 16)).astype(np.float32)
        aux[:, 0, 0] = np.nan
    else:
        aux = rng.integers(0, np.iinfo(dtype).max, (4, 12, 16), endpoint=True).astype(dtype)
    stamps = [1_000_000_000 + k * 100_000_000 for k in range(4)]
    with BagWriter(tmp_path / "in", "sqlite3") as writer:
        for k, stamp in enumerate(stamps):
            writer.write_message("/c", stamp, image_message(colour[k], colour_encoding, stamp, "cam"))
            writer.write_message("/a", stamp + 3_000_000, image_message(aux[k], aux_encoding, stamp + 3_000_000, "cam"))
    export(tmp_path / "in", tmp_path / "set", "/c", "/a", modality)
    import_dataset(open_source(tmp_path / "set"), tmp_path / "out", colour_encoding=colour_encoding,
                   colour_topic="/c", aux_topic="/a")
    for topic, originals in (("/c", colour), ("/a", aux)):
        back = bag_images(tmp_path / "out", topic)
        expected_encoding = colour_encoding if topic == "/c" else ("mono16" if aux_encoding == "mono16" else aux_encoding)
        assert [b[2] for b in back] == [expected_encoding] * 4
        assert [b[0] for b in back] == [s + (3_000_000 if topic == "/a" else 0) for s in stamps]
        np.testing.assert_array_equal(np.stack([b[1] for b in back]), originals)


@pytest.mark.parametrize("compress_colour, compress_aux",
                         [("png", "compressedDepth"), ("png", "compressedDepth-rvl"), ("jpeg", "png")])
def test_compressed_topics_export_like_raw_ones(compress_colour, compress_aux, tmp_path, bags):
    """A bag with CompressedImage colour and depth (16UC1 in png / compressedDepth png or rvl) exports the same
    pixels."""
    export(bags / "rgbd_indoor", tmp_path / "raw_set", INDOOR["rgb"], INDOOR["aux"], "depth")
    made = import_dataset(open_source(tmp_path / "raw_set"), tmp_path / "bag", compress_colour=compress_colour,
                          compress_aux=compress_aux)
    suffix = "/compressedDepth" if compress_aux.startswith("compressedDepth") else "/compressed"
    assert made["colour_topic"] == "/camera/color/image_raw/compressed"
    assert made["aux_topic"] == f"/camera/depth/image_raw{suffix}"
    with reading(tmp_path / "bag") as reader:
        assert {c.msgtype for c in reader.connections} == {"sensor_msgs/msg/CompressedImage"}
    export(tmp_path / "bag", tmp_path / "again", made["colour_topic"], made["aux_topic"], "depth")
    one, two = folder_images(tmp_path / "raw_set", "depth"), folder_images(tmp_path / "again", "depth")
    for stem in one:
        np.testing.assert_array_equal(one[stem][1], two[stem][1])  # 16-bit depth: exact
        error = np.abs(one[stem][0].astype(int) - two[stem][0])
        assert error.max() == 0 if compress_colour == "png" else error.mean() < 6


def test_export_pairs_like_the_node_and_resizes_mismatched_aux(tmp_path):
    """An unpaired aux frame is left out; an aux of another size is resized (nearest) and counted."""
    with BagWriter(tmp_path / "in") as writer:
        for k in range(3):
            stamp = 2_000_000_000 + k * 100_000_000
            writer.write_message("/c", stamp, image_message(np.full((8, 10, 3), k, np.uint8), "rgb8", stamp, "c"))
            depth = np.full((4, 5), 1000 + k, np.uint16)
            writer.write_message("/d", stamp + 1000, image_message(depth, "16UC1", stamp + 1000, "d"))
        writer.write_message("/d", 2_900_000_000, image_message(np.ones((4, 5), np.uint16), "16UC1", 2_900_000_000, "d"))
    warnings = []
    info = export(tmp_path / "in", tmp_path / "set", "/c", "/d", "depth", log=warnings.append)
    assert info["source"]["pairs"] == 3 and info["source"]["aux_resized_to_colour"] == 3
    assert "resized" in warnings[0]
    depth = cv2.imread(str(tmp_path / "set" / "depth" / "000002.png"), cv2.IMREAD_UNCHANGED)
    assert depth.shape == (8, 10) and depth.dtype == np.uint16 and (depth == 1002).all()


def test_bag_commands_build_their_parser_without_torch_or_rclpy():
    """`rgbd-fusion-seg bag ... --help` stays quick: the actions import torch and rclpy only when run."""
    import subprocess
    import sys

    code = ("import argparse, sys; from rgbd_fusion_seg.offline.bags import cli; "
            "cli.add_arguments(argparse.ArgumentParser()); "
            "loaded = [m for m in ('torch', 'rclpy') if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_recordings_without_images_give_clear_errors(storage, tmp_path, capsys, bags):
    code = cli(["bag", "export", str(bags / f"talker_{storage}"), "--rgb-topic", "/camera/color/image_raw",
                "--aux-topic", "/camera/depth/image_raw", "--modality", "depth", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "has no topic '/camera/color/image_raw'" in err
    assert "/topic (std_msgs/msg/String, 10 messages)" in err and "/rosout (rcl_interfaces/msg/Log" in err
    assert not (tmp_path / "x").exists()

    code = cli(["bag", "evaluate", str(bags / f"cdr_test_{storage}"), "--rgb-topic", "/test_topic", "--aux-topic",
                "/array_topic", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")])
    assert code == 2 and "does not exist" in capsys.readouterr().err  # the checkpoint is checked first
    with pytest.raises(BagError, match=r"'/test_topic' .* has type test_msgs/msg/BasicTypes; the colour topic must be"):
        export(bags / f"cdr_test_{storage}", tmp_path / "y", "/test_topic", "/array_topic", "depth")
    code = cli(["bag", "play", str(bags / f"cdr_test_{storage}")])
    captured = capsys.readouterr()
    assert code == 2 and "skipping /array_topic (test_msgs/msg/Arrays): no Python message package" in captured.out
    assert "nothing to play" in captured.err and "/test_topic (test_msgs/msg/BasicTypes, 3 messages)" in captured.err
    with reading(bags / f"cdr_test_{storage}") as reader:
        connection, _, raw = next(iter(messages(reader, [])))
        with pytest.raises(BagError, match="test_msgs/msg/.* is not known to the rosbags type store"):
            deserialize(raw, connection)


@pytest.mark.parametrize("rate", ["0", "-1", "nan", "fast"])
def test_a_bad_rate_is_refused_before_anything_starts(rate, capsys, bags):
    for action in (["play", str(bags / "rgbd_indoor")],
                   ["evaluate", str(bags / "rgbd_indoor"), "--rgb-topic", INDOOR["rgb"], "--aux-topic", INDOOR["aux"]]):
        with pytest.raises(SystemExit) as info:  # an argparse usage error: no checkpoint trained, no node started
            cli(["bag", *action, "--rate", rate])
        assert info.value.code == 2 and "must be a speed factor > 0" in capsys.readouterr().err


def test_missing_truncated_and_wrong_bags(tmp_path, bags):
    with pytest.raises(BagError, match="no bag at"):
        export(tmp_path / "nothing", tmp_path / "a", "/c", "/d", "depth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"):
        export(tmp_path / "empty", tmp_path / "a", "/c", "/d", "depth")
    broken = Path(shutil.copytree(bags / "rgbd_indoor", tmp_path / "broken"))
    data = (broken / "rgbd_indoor.mcap").read_bytes()
    (broken / "rgbd_indoor.mcap").chmod(0o644)
    (broken / "rgbd_indoor.mcap").write_bytes(data[: len(data) // 2])
    with pytest.raises(BagError, match=r"cannot read bag .*broken|could not be read to the end"):
        export(broken, tmp_path / "b", INDOOR["rgb"], INDOOR["aux"], "depth")
    with pytest.raises(BagError, match="'/thermal/image_raw' is mono8, which the folder layout cannot hold as depth"):
        export(bags / "rgbt_layout", tmp_path / "c", SUBT["rgb"], SUBT["aux"], "depth")
    assert not (tmp_path / "c").exists()  # refused before anything is written
    with pytest.raises(BagError, match="exists already"):
        BagWriter(bags / "rgbd_indoor")


def test_import_errors_name_the_option_or_the_file(tmp_path):
    with BagWriter(tmp_path / "in") as writer:
        writer.write_message("/c", 5, image_message(np.zeros((4, 6, 3), np.uint8), "rgb8", 5, "c"))
        writer.write_message("/t", 5, image_message(np.zeros((4, 6), np.uint8), "mono8", 5, "t"))
    export(tmp_path / "in", tmp_path / "set", "/c", "/t", "thermal")
    with pytest.raises(BagError, match="--compress-aux compressedDepth cannot carry this data set's mono8 images"):
        import_dataset(open_source(tmp_path / "set"), tmp_path / "out", compress_aux="compressedDepth")
    (tmp_path / "set" / "stamps.csv").write_text("stem,rgb_stamp_ns\n000000,5\n")  # hand-edited: a column lost
    with pytest.raises(BagError, match="stamps.csv: expected the columns stem,rgb_stamp_ns,aux_stamp_ns"):
        open_source(tmp_path / "set")


def test_evaluate_checks_every_label_before_the_node_starts(tmp_path):
    """Labels that could not be scored are refused up front (naming topic and stamp), not after the run."""
    from rgbd_fusion_seg.offline.bags.evaluate import read_labels

    with BagWriter(tmp_path / "in") as writer:
        for stamp, ids in ((5, [0, 3, 255]), (6, [0, 7, 255])):
            labels = np.array([ids] * 2, np.uint8)
            writer.write_message("/labels", stamp, image_message(labels, "mono8", stamp, "c"))
        writer.write_message("/wide", 5, image_message(np.zeros((2, 3), np.uint16), "16UC1", 5, "c"))
    assert sorted(read_labels(tmp_path / "in", "/labels", 8)) == [5, 6]
    with pytest.raises(BagError, match="'/labels' .* stamp 6 has class id.s. 7; the checkpoint has 4 classes"):
        read_labels(tmp_path / "in", "/labels", 4)
    with pytest.raises(BagError, match="'/wide' .* is 16UC1 at stamp 5; labels must be mono8 or 8UC1"):
        read_labels(tmp_path / "in", "/wide", 4)


def test_evaluate_without_checkpoint_checks_every_input_before_training(tmp_path, capsys, monkeypatch, bags):
    """No --checkpoint means training the default model (minutes): a bad bag, topic, label topic, --out or a
    bag the default model cannot read is refused within seconds, before anything is generated or trained."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no cached default model here
    (tmp_path / "a_file").write_text("")
    indoor = [str(bags / "rgbd_indoor"), "--rgb-topic", INDOOR["rgb"], "--aux-topic", INDOOR["aux"]]
    cases = [
        ([str(tmp_path / "no_bag"), "--rgb-topic", INDOOR["rgb"], "--aux-topic", INDOOR["aux"]], "out", "no bag at"),
        ([str(bags / "rgbd_indoor"), "--rgb-topic", "/nope", "--aux-topic", INDOOR["aux"]], "out",
         "has no topic '/nope' .asked for as the colour topic."),
        ([str(bags / "talker_mcap"), "--rgb-topic", "/topic", "--aux-topic", "/topic"], "out",
         "'/topic' in bag .* has type std_msgs/msg/String"),
        ([*indoor, "--label-topic", INDOOR["aux"]], "out", "label topic .* is 16UC1; labels must be mono8 or 8UC1"),
        (indoor, "a_file/out", r"a_file is a file, not a folder"),
        ([str(bags / "rgbt_layout"), "--rgb-topic", SUBT["rgb"], "--aux-topic", SUBT["aux"]], "out",
         r"'/thermal/image_raw' is mono8, which the node decodes to depth in 'raw8', but the default model .* 'm'"),
        ([*indoor, "--modality", "thermal"], "out", "a thermal bag needs --checkpoint"),
    ]
    for args, out, message in cases:
        started = time.monotonic()
        code = cli(["bag", "evaluate", *args, "--out", str(tmp_path / out)])
        captured = capsys.readouterr()
        assert code == 2 and re.search(message, captured.err), (message, captured.err)
        assert time.monotonic() - started < 10, captured.out
        assert "generating" not in captured.out and "training" not in captured.out
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()  # nothing made, nothing trained


def test_score_latency_rate_and_drops_from_the_recorded_times():
    from rgbd_fusion_seg.offline.bags.evaluate import Recorded, score

    ms, recorded = 1_000_000, Recorded()
    for k in range(4):  # colour k played at 100k ms, its pair completed by the aux 5 ms later
        recorded.played[k] = (100 * k * ms, (100 * k + 5) * ms)
    for k in range(3):  # masks published 20 ms after the pair; the last pair gets none
        recorded.masks[k] = ((100 * k + 25) * ms, 0, np.zeros((2, 2), np.uint8))
    result = score(recorded, {0: np.zeros((2, 2), np.uint8), 9: np.zeros((2, 2), np.uint8)}, 2, ["a", "b"])
    assert result["latency_ms"]["p50"] == pytest.approx(20.0) and result["latency_ms"]["p99"] == pytest.approx(20.0)
    assert result["latency_from_colour_ms"]["p50"] == pytest.approx(25.0)
    assert result["rate_hz"] == pytest.approx(10.0)  # masks 100 ms apart
    assert (result["pairs_expected"], result["masks_received"], result["drops"]) == (4, 3, 1)
    assert (result["labelled_frames"], result["scored_frames"]) == (2, 1)  # matched by stamp


def test_a_writer_interrupted_part_way_leaves_a_valid_bag(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with BagWriter(tmp_path / "partial") as writer:
            writer.write_message("/c", 5, image_message(np.zeros((2, 2, 3), np.uint8), "rgb8", 5, "c"))
            raise KeyboardInterrupt
    with reading(tmp_path / "partial") as reader:
        assert [(c.topic, c.msgcount) for c in reader.connections] == [("/c", 1)]


# ---- play ----------------------------------------------------------------------------------------------


def test_play_decompresses_with_recorded_timing_and_clock(tmp_path, bags):
    """The jpeg topic comes out as sensor_msgs/Image on the base topic, at half speed, with /clock."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from rgbd_fusion_seg.offline.bags.play import PlayOptions, Player
    from rgbd_fusion_seg.offline.node_harness import RosSession, ros_environment, wait_until
    from rgbd_fusion_seg.ros.messages import colour_from_msg

    session = RosSession("test_bag_play", ros_environment(DOMAIN))
    received, clocks = [], []
    try:
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        session.node.create_subscription(Image, "/replay/color", lambda m: received.append((time.monotonic(), m)), qos)
        session.node.create_subscription(Clock, "/clock", clocks.append, 10)
        options = PlayOptions(topics=[INDOOR["jpeg"]], rate=0.5, decompress=True, clock_hz=20.0,
                              remap={INDOOR["jpeg"]: "/replay/color"})
        player = Player(session.node, bags / "rgbd_indoor", options)
        assert wait_until(lambda: all(player.subscriber_counts().values()), 10.0)
        counts = player.run()
        player.close()
        assert wait_until(lambda: len(received) == 8, 5.0), len(received)
    finally:
        session.close()
    assert counts[INDOOR["jpeg"]] == 8 and counts["seconds"] == pytest.approx(2 * 0.4672, abs=0.15)
    raw = {s: image for s, image, _ in bag_images(bags / "rgbd_indoor", INDOOR["rgb"])}
    for _, msg in received:
        assert msg.encoding == "rgb8"  # the recorded format says "rgb8; jpeg compressed bgr8"
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        assert np.abs(colour_from_msg(msg).astype(int) - raw[stamp]).mean() < 6  # jpeg: close, not exact
    gaps = np.diff([t for t, _ in received])
    assert gaps.mean() == pytest.approx(2 * 0.4667 / 7, rel=0.25)  # 15 Hz recorded, played at 0.5x
    assert len(clocks) > 10 and clocks[-1].clock.sec == 1_700_000_000


def test_play_start_offset_loop_and_remap_errors(bags):
    import threading

    from rgbd_fusion_seg.offline.bags.play import PlayOptions, Player, parse_remaps
    from rgbd_fusion_seg.offline.node_harness import RosSession, ros_environment

    session = RosSession("test_bag_play_loop", ros_environment(DOMAIN))
    try:
        played, stop = [], threading.Event()

        def collect(item):
            played.append(item)
            stop.set() if len(played) == 14 else None

        options = PlayOptions(topics=[SUBT["rgb"]], rate=20.0, start_offset=0.25, loop=True)
        player = Player(session.node, bags / "rgbt_layout", options, on_played=collect)
        counts = player.run(stop)
        player.close()
        # from 0.25 s on, /rgb/image_raw has 3 frames (0.301, 0.401, 0.501 s): played again and again
        stamps = [stamp_ns(p.msg) % 1_000_000_000 // 1_000_000 for p in played]
        assert stamps[:6] == [299, 400, 500, 299, 400, 500] and counts[SUBT["rgb"]] == 14
        assert all(p.topic == SUBT["rgb"] and p.msgtype == "sensor_msgs/msg/Image" for p in played)
        with pytest.raises(BagError, match=r"has no topic '/nope'.*\n  /rgb/image_raw \(sensor_msgs/msg/Image, 6"):
            Player(session.node, bags / "rgbt_layout", PlayOptions(topics=["/nope"]))
        with pytest.raises(BagError, match="past the end"):
            Player(session.node, bags / "rgbt_layout", PlayOptions(start_offset=5.0)).run()
        with pytest.raises(BagError, match="no Python message package"):
            Player(session.node, bags / "cdr_test_mcap", PlayOptions(topics=["/test_topic"]))
        # decompressed, the jpeg topic would go out on the raw colour topic's name
        with pytest.raises(BagError, match="would both be played on '/camera/color/image_raw'; use --remap"):
            Player(session.node, bags / "rgbd_indoor", PlayOptions(decompress=True))
        with pytest.raises(ValueError, match="bad --remap"):
            parse_remaps(["/a=/b"])
    finally:
        session.close()


# ---- evaluate through the real node ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(mm5_root, tmp_path_factory):
    """Tiny `early` fusion checkpoints: depth (D16, metres) and thermal (T8, raw8)."""
    from rgbd_fusion_seg.offline.config import config_from_dict
    from rgbd_fusion_seg.offline.train import train

    out = {}
    for modality, folder in (("depth", "D16"), ("thermal", "T8")):
        run = tmp_path_factory.mktemp(f"bag_{modality}") / "run"
        raw = tiny_experiment(mm5_root, run, model={"method": "early"}, data={"aux_folder": folder},
                              train={"epochs": 1})
        out[modality] = train(config_from_dict(raw, source="test"), device="cpu", log=lambda message: None)
    return out


def evaluate(tmp_path, capsys, bag, *args) -> dict:
    code = cli(["bag", "evaluate", str(bag), "--out", str(tmp_path), "--domain-id", str(DOMAIN), "--timeout", "90", *args])
    text = capsys.readouterr()
    assert code == 0, text.out[-3000:] + text.err[-3000:] + (tmp_path / "node.log").read_text()[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert "stopped segment_node (exit status 0)" in text.out
    assert "latency:" in text.out and (tmp_path / "summary.txt").is_file()
    with reading(tmp_path / "outputs") as reader:  # a valid bag: inputs and the node's outputs
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/rgbd_fusion_seg_bag/segment_node/mask"] == report["masks_received"] > 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] < 10_000
    assert report["masks_received"] + report["drops"] == report["pairs_expected"]
    assert "node processing:" in text.out and 0 < float(report["node_stats"]["processing_p50_ms"]) < 10_000
    return report | {"_counts": counts, "_out": text.out}


@pytest.mark.slow
def test_evaluate_rgbd_indoor_raw_and_jpeg(checkpoints, tmp_path, capsys, bags):
    report = evaluate(tmp_path / "raw", capsys, bags / "rgbd_indoor", "--rgb-topic", INDOOR["rgb"], "--aux-topic",
                      INDOOR["aux"], "--checkpoint", str(checkpoints["depth"]), "--overlays")
    assert report["pairs_expected"] == 8 and report["frames_in_bag"] == {INDOOR["rgb"]: 8, INDOOR["aux"]: 8}
    assert int(report["node_stats"]["pairs"]) == 8 + report["warm_up_pairs"]  # warm-up pairs included
    assert 1 <= report["warm_up_pairs"] <= report["warm_up_frames"]
    assert report["node_stats"]["bad_input"] == "0"
    assert report["_counts"]["/rgbd_fusion_seg_bag/segment_node/mask_color"] == report["masks_received"]
    assert len(list((tmp_path / "raw" / "overlays").glob("*.png"))) == report["masks_received"]
    assert "miou" not in report  # no label topic
    report = evaluate(tmp_path / "jpeg", capsys, bags / "rgbd_indoor", "--rgb-topic", INDOOR["jpeg"], "--aux-topic",
                      INDOOR["aux"], "--checkpoint", str(checkpoints["depth"]), "--rate", "0.5")
    assert report["pairs_expected"] == 8 and report["topics"]["rgb"]["msgtype"] == "sensor_msgs/msg/CompressedImage"
    assert report["_counts"]["/camera/color/image_raw"] == 8  # played decompressed, on the base topic


@pytest.mark.slow
def test_evaluate_rgbt_layout_thermal(checkpoints, tmp_path, capsys, bags):
    report = evaluate(tmp_path, capsys, bags / "rgbt_layout", "--rgb-topic", SUBT["rgb"], "--aux-topic", SUBT["aux"],
                      "--checkpoint", str(checkpoints["thermal"]), "--rate", "0.5")
    assert report["modality"] == "thermal" and report["pairs_expected"] == 6
    assert report["node_stats"]["bad_input"] == "0"
    # the depth checkpoint is refused for the thermal bag before any node starts
    code = cli(["bag", "evaluate", str(bags / "rgbt_layout"), "--rgb-topic", SUBT["rgb"], "--aux-topic", SUBT["aux"],
                "--checkpoint", str(checkpoints["depth"]), "--modality", "thermal", "--out", str(tmp_path / "refused")])
    assert code == 2 and "trained on depth" in capsys.readouterr().err
    for bag, message in (("talker_sqlite3", re.escape("has no topic '/rgb/image_raw' (asked for as the colour topic); "
                                                      "its topics: /topic (std_msgs/msg/String, 10 messages)")),
                         ("cdr_test_mcap", "'/test_topic' in bag .* has type test_msgs/msg/BasicTypes")):
        colour = "/test_topic" if bag.startswith("cdr") else SUBT["rgb"]
        code = cli(["bag", "evaluate", str(bags / bag), "--rgb-topic", colour, "--aux-topic", SUBT["aux"],
                    "--checkpoint", str(checkpoints["thermal"]), "--out", str(tmp_path / bag)])
        assert code == 2 and re.search(message, capsys.readouterr().err)
        assert not (tmp_path / bag).exists()


@pytest.mark.slow
def test_evaluate_an_imported_mm5_bag_with_labels_gives_miou(checkpoints, mm5_root, tmp_path, capsys):
    source = open_source(mm5_root, "eval_dataset.csv", "RGB2", "D16")
    imported = import_dataset(source, tmp_path / "mm5_bag", rate=5.0)
    assert imported["labelled"] == imported["frames"] == 3
    report = evaluate(tmp_path / "eval", capsys, tmp_path / "mm5_bag", "--rgb-topic", imported["colour_topic"],
                      "--aux-topic", imported["aux_topic"], "--label-topic", imported["label_topic"],
                      "--checkpoint", str(checkpoints["depth"]))
    assert report["labelled_frames"] == 3 and report["scored_frames"] == report["masks_received"]
    assert 0.0 <= report["miou"] <= 1.0 and 0.0 <= report["macc"] <= 1.0
    assert "mIoU:" in report["_out"]
    assert report["_counts"][imported["label_topic"]] == 3


@pytest.mark.slow
def test_evaluate_interrupted_leaves_a_valid_partial_bag_and_no_node(checkpoints, tmp_path, bags):
    """Ctrl-C while the bag plays: exit 130, the node is stopped, outputs/ is a valid bag of what was written."""
    import os
    import signal
    import subprocess
    import sys
    import threading

    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from rgbd_fusion_seg.offline.bags.evaluate import NODE, WARMUP_STAMP
    from rgbd_fusion_seg.offline.node_harness import RosSession, ros_environment, stamp_of

    command = [sys.executable, "-m", "rgbd_fusion_seg.offline.cli", "bag", "evaluate", str(bags / "rgbd_indoor"),
               "--rgb-topic", INDOOR["rgb"], "--aux-topic", INDOOR["aux"], "--checkpoint", str(checkpoints["depth"]),
               "--rate", "0.05", "--out", str(tmp_path), "--domain-id", str(DOMAIN)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    session = RosSession("test_bag_interrupt", ros_environment(DOMAIN))
    played_pair_answered = threading.Event()  # a mask of a played pair: frames of the bag are in outputs/
    session.node.create_subscription(Image, f"{NODE}/mask",
                                     lambda msg: stamp_of(msg) != WARMUP_STAMP and played_pair_answered.set(),
                                     QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
    # A shell that starts a job in the background (`cmd &`, as CI runners may) makes SIGINT ignored in
    # it, and Python keeps an inherited SIG_IGN: give the command the terminal's default, as for a user.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("node serving"):  # playing starts: 8 frames over 9 s at --rate 0.05
                assert played_pair_answered.wait(60), "".join(lines)
                process.send_signal(signal.SIGINT)
                break
    except BaseException:
        process.kill()
        raise
    finally:
        session.close()
    out = "".join(lines) + process.communicate(timeout=60)[0]
    assert process.returncode == 130, out
    assert "warmed up" in out
    assert "interrupted" in out and "stopped segment_node (exit status 0)" in out
    pid = int(out.split("started segment_node (pid ")[1].split(")")[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with reading(tmp_path / "outputs") as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert 0 < counts[INDOOR["rgb"]] < 8, counts  # partial: interrupted part way through
