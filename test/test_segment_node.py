"""The segment node as users run it: a separate process, real rclpy topics and parameter services.

One node (module fixture `node`) serves a depth 'early' checkpoint with all outputs on; a second one
(`test_idle_start_...`) starts with a checkpoint that does not exist, from a params file with nested names.
"""
import signal

import numpy as np
import pytest

from ros_helpers import Stamps, client_fixture, domain_id_for, image_msg, make_checkpoint, random_pair, start_node

DOMAIN = domain_id_for(11)
MS = 1_000_000


next_stamp = Stamps()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    make_checkpoint(folder / "early.pt", "early", modality="depth", unit="m", seed=1)
    return folder


@pytest.fixture(scope="module")
def all_checkpoints(checkpoints):
    make_more_checkpoints(checkpoints)
    return checkpoints


def make_more_checkpoints(folder):
    """The ones the switching tests need (written while the module's node starts, if it does)."""
    if (folder / "misfit.pt").exists():
        return
    make_checkpoint(folder / "mid.pt", "mid", modality="depth", unit="m", seed=2)
    make_checkpoint(folder / "se.pt", "early", modality="depth", unit="m", seed=3)  # named se, holds early
    make_checkpoint(folder / "thermal_early.pt", "early", modality="thermal", unit="raw8", high=255.0)
    make_checkpoint(folder / "misfit.pt", "early", num_classes=4, num_classes_in_weights=6)
    make_checkpoint(folder / "sccosf.pt", "sccosf", modality="depth", unit="m", options=SCCOSF_TINY)
    make_checkpoint(folder / "sartm.pt", "sartm", modality="depth", unit="m", options=SARTM_TINY)


SCCOSF_TINY = {"encoder": "micro", "d_state": 4, "blocks_per_stage": 1, "reaw_width": 8}
SARTM_TINY = {"encoder": "micro", "class_names": [f"class{i}" for i in range(4)], "text_standin": True}


client = client_fixture(DOMAIN)


@pytest.fixture(scope="module")
def node(checkpoints, client, tmp_path_factory):
    log = tmp_path_factory.mktemp("node_log") / "segment_node.log"
    with start_node(log, DOMAIN, parameters={
        "checkpoint": str(checkpoints / "early.pt"),
        "outputs.overlay": True,
        "outputs.confidence": True,
        "stats_period": 0.5,
        "no_pair_timeout": 1.0,
    }) as process:
        make_more_checkpoints(checkpoints)
        client.wait_for_node(outputs=("mask", "mask_color", "overlay", "confidence"))
        process.wait_for_log("serving method 'early'")
        prime(client)
        yield process
        print(process.log())  # shown with -s or on failure


def prime(client, timeout=30.0):
    """Publish pairs until one comes back (discovery is done on both sides and a model serves)."""
    client.prime(next_stamp, random_pair, timeout)


def send_and_wait(client, rgb_msg, aux_msg, stamp, output="mask"):
    client.publish_pair(rgb_msg, aux_msg)
    client.wait_for_stamp(stamp, output)


@pytest.mark.slow  # a segment_node in a child process
def test_logs_the_topics_and_qos_it_subscribed_with(node):
    text = node.log()
    assert ("subscribed to /rgb/image (colour, sensor_msgs/msg/Image) and /aux/image (aux, sensor_msgs/msg/Image) "
            "with QoS auto (reliability reliable") in text  # auto: what the client's reliable publishers offer


@pytest.mark.slow  # a segment_node in a child process
def test_pairs_publish_every_output_with_the_colour_header(node, client):
    for _ in range(3):
        stamp = next_stamp()
        rgb_msg, aux_msg = random_pair(stamp, height=48, width=64, frame_id="color_optical")
        aux_msg.header.frame_id = "depth_optical"  # a real RGB-D driver: different frames
        aux_msg.header.stamp.nanosec = (aux_msg.header.stamp.nanosec + 3 * MS) % 1_000_000_000  # jitter
        if aux_msg.header.stamp.nanosec < 3 * MS:
            aux_msg.header.stamp.sec += 1
        client.publish_pair(rgb_msg, aux_msg)
        for output in ("mask", "mask_color", "overlay", "confidence"):
            client.wait_for_stamp(stamp, output)
        by_output = {
            output: next(m for m in client.received[output]
                         if m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec == stamp)
            for output in ("mask", "mask_color", "overlay", "confidence")
        }
        expected = {"mask": ("mono8", 64), "mask_color": ("rgb8", 192), "overlay": ("rgb8", 192),
                    "confidence": ("32FC1", 256)}
        for output, msg in by_output.items():
            assert (msg.encoding, msg.height, msg.width, msg.step) == (expected[output][0], 48, 64, expected[output][1])
            assert msg.header.frame_id == "color_optical"
        mask = np.frombuffer(by_output["mask"].data, np.uint8)
        assert mask.max() < 4  # class ids of a 4-class model
        confidence = np.frombuffer(by_output["confidence"].data, np.float32)
        assert np.all((confidence >= 0.25 - 1e-6) & (confidence <= 1.0))
    text = node.log()
    assert text.count("frame_ids differ") == 1 and "'color_optical'" in text and "'depth_optical'" in text


@pytest.mark.slow  # a segment_node in a child process
def test_stats_report_the_contract_keys(node, client):
    stats = client.fresh_stats(predicate=lambda s: int(s["frames_out"]) > 0)
    for key in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "rate_hz", "frames_in_rgb", "frames_in_aux",
                "pairs", "dropped_unpaired", "dropped_stale", "bad_input", "model", "checkpoint"):
        assert key in stats
    assert stats["model"] == "early" and stats["checkpoint"].endswith("early.pt")
    assert 0 < float(stats["latency_p50_ms"]) < 10_000
    # the node's own share (pair completed -> publish) is part of stamp -> publish
    assert 0 < float(stats["processing_p50_ms"]) <= float(stats["latency_p50_ms"]) + 1.0
    assert int(stats["pairs"]) >= int(stats["frames_out"])
    assert "Hz, latency p50/p90/p99" in node.log()


def _bad_pairs(stamp):
    good_rgb, good_aux = random_pair(stamp, height=8, width=10)
    rgb = np.zeros((8, 10, 3), np.uint8)
    return {
        "unsupported colour encoding": (image_msg(rgb, "yuv422", 8, 10, 20, stamp), good_aux),
        "empty image": (image_msg(b"", "rgb8", 8, 10, 30, stamp), good_aux),
        "truncated image": (image_msg(rgb.tobytes()[:-7], "rgb8", 8, 10, 30, stamp), good_aux),
        "step too small": (image_msg(rgb, "rgb8", 8, 10, 24, stamp), good_aux),
        "unsupported depth encoding 'rgb8'": (good_rgb, image_msg(rgb, "rgb8", 8, 10, 30, stamp)),
        "decodes to depth in 'raw8', but the checkpoint": (
            good_rgb, image_msg(np.zeros((8, 10), np.uint8), "mono8", 8, 10, 10, stamp)),
    }


@pytest.mark.slow  # a segment_node in a child process
def test_bad_input_is_survived_counted_and_logged(node, client):
    before = int(client.fresh_stats()["bad_input"])
    kinds = list(_bad_pairs(0))
    for count, kind in enumerate(kinds, start=1):
        stamp = next_stamp()
        client.publish_pair(*_bad_pairs(stamp)[kind])
        client.fresh_stats(predicate=lambda s, n=before + count: int(s["bad_input"]) >= n)
        good = next_stamp()
        send_and_wait(client, *random_pair(good), good)  # still serving
        assert stamp not in client.stamps()
    text = node.log()
    for kind in kinds:
        assert kind in text, kind
    assert "bad input on /rgb/image" in text and "bad input on /aux/image" in text
    assert "Traceback" not in text
    assert node.process.poll() is None


@pytest.mark.slow  # a segment_node in a child process
def test_missing_aux_stream_warns_with_topics_qos_and_counts(node, client):
    for _ in range(8):
        rgb_msg, _ = random_pair(next_stamp())
        client.rgb_pub.publish(rgb_msg)
        client.spin_for(0.2)
    text = node.wait_for_log(r"missing aux stream", timeout=10)
    line = next(line for line in text.splitlines() if "missing aux stream" in line)
    assert "/rgb/image got" in line and "/aux/image got" in line and "QoS auto (reliability" in line
    prime(client)  # pairs again afterwards


@pytest.mark.slow  # a segment_node in a child process
def test_stamps_that_never_pair_are_dropped_and_warned(node, client):
    before = int(client.fresh_stats()["dropped_unpaired"])
    for _ in range(15):  # more than sync.queue_size (10): the queues overflow
        stamp = next_stamp()
        rgb_msg, aux_msg = random_pair(stamp)
        aux_msg.header.stamp.sec -= 100  # far off: never within slop of anything queued
        client.publish_pair(rgb_msg, aux_msg)
        client.spin_for(0.1)
    node.wait_for_log(r"stamps never pair \(slop 0.05 s", timeout=10)
    stats = client.fresh_stats(predicate=lambda s: int(s["dropped_unpaired"]) >= before + 10)
    assert int(stats["dropped_unpaired"]) >= before + 10
    prime(client)


@pytest.mark.slow  # a segment_node in a child process
def test_runtime_fusion_method_switch_and_refusals(node, client, all_checkpoints):
    checkpoints = all_checkpoints
    [result] = client.set_parameters({"fusion_method": "mid"})
    assert result.successful, result.reason
    client.fresh_stats(predicate=lambda s: s["model"] == "mid", timeout=30)
    stamp = next_stamp()
    send_and_wait(client, *random_pair(stamp), stamp)

    refusals = {
        "fusion_method": [("no_such_method", "unknown fusion method 'no_such_method'"),
                          ("late", "no checkpoint"),  # registered method, but no late.pt
                          ("se", "holds method 'early', not 'se'")],
        "checkpoint": [(str(checkpoints / "missing.pt"), "does not exist"),
                       (str(checkpoints / "misfit.pt"), "weights do not fit")],
        "modality": [("thermal", "trained on depth"), ("sonar", "not one of")],
        "device": [("cuda:99", "cuda:99"), ("gpu", "is not 'auto', 'cpu', 'cuda' or 'cuda:N'")],
        "precision": [("fp64", "not one of")],
        "sync.slop": [(-1.0, "must be in [0, 1] s, got -1.0")],
        "aux_range": [([3.0, 1.0], "high > low")],
    }
    for name, cases in refusals.items():
        for value, reason in cases:
            [result] = client.set_parameters({name: value})
            assert not result.successful, (name, value)
            assert reason in result.reason, (name, value, result.reason)
    [read_only] = client.set_parameters({"qos.profile": "reliable"})
    assert not read_only.successful

    assert client.fresh_stats()["model"] == "mid"  # the old model kept serving through all of that
    stamp = next_stamp()
    send_and_wait(client, *random_pair(stamp), stamp)
    assert client.get_parameters(["fusion_method", "modality"]) == {"fusion_method": "mid", "modality": ""}

    # A thermal checkpoint is accepted when the modality changes with it, in one atomic request.
    thermal = {"checkpoint": str(checkpoints / "thermal_early.pt"), "modality": "thermal", "fusion_method": ""}
    assert client.set_parameters_atomically(thermal).successful
    client.fresh_stats(predicate=lambda s: s["checkpoint"].endswith("thermal_early.pt"), timeout=30)
    stamp = next_stamp()
    send_and_wait(client, *random_pair(stamp, depth_encoding="mono8"), stamp)
    back = {"checkpoint": str(checkpoints / "early.pt"), "modality": "depth"}
    assert client.set_parameters_atomically(back).successful
    client.fresh_stats(predicate=lambda s: s["checkpoint"].endswith("/early.pt"), timeout=30)
    prime(client)


@pytest.mark.slow  # a segment_node in a child process
def test_runtime_switch_to_sccosf_and_sartm_and_the_fused_image(node, client, all_checkpoints):
    assert client.set_parameters_atomically({"fusion_method": "sccosf", "outputs.fused_image": True}).successful
    client.fresh_stats(predicate=lambda s: s["model"] == "sccosf", timeout=60)
    node.wait_for_log("serving its fused output")
    stamp = next_stamp()
    rgb_msg, aux_msg = random_pair(stamp, height=50, width=70)
    client.publish_pair(rgb_msg, aux_msg)
    client.wait_for_stamp(stamp, "fused_image")
    client.wait_for_stamp(stamp, "mask")
    fused = client.received["fused_image"][client.stamps("fused_image").index(stamp)]
    assert (fused.encoding, fused.height, fused.width) == ("rgb8", 50, 70)
    assert fused.header.frame_id == rgb_msg.header.frame_id and len(fused.data) == 50 * 70 * 3

    # Off again: the model is reloaded without its fusion branch, and masks go on without fused images.
    assert client.set_parameters({"outputs.fused_image": False})[0].successful
    node.wait_for_log("serving method 'sccosf'", count=2)
    stamp = next_stamp()
    send_and_wait(client, *random_pair(stamp), stamp)
    client.spin_for(0.5)  # a fused image, had one been published, would have arrived by now
    assert stamp not in client.stamps("fused_image")

    # SARTM (SAM2 encoder, padded to a multiple of 32 inside) on an odd camera size, and it has no fused image:
    # asked for one, the node says it stays silent.
    assert client.set_parameters_atomically({"fusion_method": "sartm", "outputs.fused_image": True}).successful
    client.fresh_stats(predicate=lambda s: s["model"] == "sartm", timeout=60)
    node.wait_for_log("makes no fused image")
    stamp = next_stamp()
    client.publish_pair(*random_pair(stamp, height=45, width=61))
    client.wait_for_stamp(stamp, "mask")
    mask = client.received["mask"][client.stamps("mask").index(stamp)]
    assert (mask.height, mask.width) == (45, 61)
    assert client.set_parameters_atomically({"fusion_method": "", "checkpoint": str(all_checkpoints / "early.pt"),
                                             "outputs.fused_image": True}).successful
    assert client.set_parameters({"outputs.fused_image": False})[0].successful
    client.fresh_stats(predicate=lambda s: s["checkpoint"].endswith("/early.pt"), timeout=30)
    prime(client)


def _mask_of(client, stamp):
    msg = client.received["mask"][client.stamps("mask").index(stamp)]
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)


@pytest.mark.slow  # a segment_node in a child process
def test_runtime_backend_switch_onnxruntime_and_precision(node, client, checkpoints, tmp_path):
    from rgbd_fusion_seg.core.engine import cpu_has_native_bf16

    def same_images(stamp):
        return random_pair(stamp, height=40, width=56, seed=7)

    stamp = next_stamp()
    send_and_wait(client, *same_images(stamp), stamp)
    torch_mask = _mask_of(client, stamp)

    # The .pt checkpoint by ONNX Runtime: exported on the loader thread into the cache, then served.
    cache = tmp_path / "onnx_cache"
    assert client.set_parameters_atomically({"backend": "onnxruntime", "onnx_cache_dir": str(cache)}).successful
    stats = client.fresh_stats(predicate=lambda s: s["backend"].startswith("onnxruntime"), timeout=180)
    assert stats["backend"] == "onnxruntime (CPUExecutionProvider)" and stats["checkpoint"].endswith("/early.pt")
    [exported] = cache.glob("early-*.onnx")
    node.wait_for_log(f"exported to {exported}")
    stamp = next_stamp()
    send_and_wait(client, *same_images(stamp), stamp)
    assert np.mean(_mask_of(client, stamp) == torch_mask) >= 0.999

    # Refused, the exported model serving on: what ONNX Runtime cannot do, and a torch backend for an .onnx file.
    [refused] = client.set_parameters({"precision": "bf16"})
    assert not refused.successful and "its mask and confidence only; precision bf16" in refused.reason
    assert client.set_parameters_atomically({"checkpoint": str(exported), "backend": "auto"}).successful
    client.fresh_stats(predicate=lambda s: s["checkpoint"].endswith(".onnx"), timeout=60)
    [refused] = client.set_parameters({"backend": "torch"})
    assert not refused.successful and "is an exported ONNX file" in refused.reason

    # Back to PyTorch, in bf16 where this CPU has bf16 instructions (and saying fp32 runs where it has not).
    back = {"checkpoint": str(checkpoints / "early.pt"), "precision": "bf16"}
    assert client.set_parameters_atomically(back).successful
    stats = client.fresh_stats(predicate=lambda s: s["checkpoint"].endswith("/early.pt"), timeout=60)
    assert stats["backend"] == "torch" and stats["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    if not cpu_has_native_bf16():
        node.wait_for_log("this CPU has no bf16 instructions")
    assert client.set_parameters({"precision": "fp32"})[0].successful
    client.fresh_stats(predicate=lambda s: s["precision"] == "fp32", timeout=60)
    prime(client)


def _pair_off_by(stamp, offset_ms):
    """A pair whose aux stamp is `offset_ms` after the colour's."""
    rgb_msg, aux_msg = random_pair(stamp)
    aux_msg.header.stamp.sec, aux_msg.header.stamp.nanosec = divmod(stamp + offset_ms * MS, 1_000_000_000)
    return rgb_msg, aux_msg


def _confidence_of(client, stamp):
    msg = client.received["confidence"][client.stamps("confidence").index(stamp)]
    return np.frombuffer(bytes(msg.data), np.float32).reshape(msg.height, msg.width)


@pytest.mark.slow  # a segment_node in a child process
def test_runtime_output_and_sync_changes_apply(node, client, checkpoints):
    from rgbd_fusion_seg.ros.messages import aux_from_msg, colour_from_msg
    from rgbd_fusion_seg.serving.model_serving import Runtime, load_served_model

    results = client.set_parameters({"outputs.overlay": False, "sync.slop": 0.02, "aux_range": [0.0, 10.0],
                                     "stats_period": 0.4})
    assert all(r.successful for r in results), [r.reason for r in results]
    # sync.slop 0.02: stamps 30 ms apart no longer pair (they did at 0.05); 10 ms apart still do.
    received = client.fresh_stats()
    apart = next_stamp()
    next_stamp.last = apart + 500 * MS  # far from `apart`: neither of its frames is within slop of `close`'s
    close = next_stamp()
    client.publish_pair(*_pair_off_by(apart, 30))
    send_and_wait(client, *_pair_off_by(close, 10), close, output="confidence")
    client.fresh_stats(predicate=lambda s: int(s["frames_in_aux"]) >= int(received["frames_in_aux"]) + 2)
    assert apart not in client.stamps() and close in client.stamps()
    client.spin_for(0.5)  # an overlay, had one been published, would have arrived by now
    assert close not in client.stamps("overlay")

    # aux_range [0, 10] normalises the depth as the model loaded with that range does, not as its checkpoint does
    images = random_pair(close)
    rgb, depth = colour_from_msg(images[0]), aux_from_msg(images[1], "depth").image
    confidence = {aux_range: load_served_model(str(checkpoints / "early.pt"), Runtime(device="cpu"), aux_range,
                                               warm_up=False).engine.predict(rgb, depth, with_confidence=True).confidence
                  for aux_range in ((), (0.0, 10.0))}
    assert np.abs(confidence[()] - confidence[(0.0, 10.0)]).max() > 2e-3  # the range changes the confidences
    assert np.abs(_confidence_of(client, close) - confidence[(0.0, 10.0)]).max() < 5e-4

    results = client.set_parameters({"outputs.overlay": True, "aux_range": [], "sync.slop": 0.05})
    assert all(r.successful for r in results), [r.reason for r in results]
    stamp = next_stamp()
    send_and_wait(client, *_pair_off_by(stamp, 30), stamp, output="overlay")  # pairs again at slop 0.05
    client.wait_for_stamp(stamp, "confidence")
    again = random_pair(stamp)
    expected = load_served_model(str(checkpoints / "early.pt"), Runtime(device="cpu"), warm_up=False).engine.predict(
        colour_from_msg(again[0]), aux_from_msg(again[1], "depth").image, with_confidence=True).confidence
    assert np.abs(_confidence_of(client, stamp) - expected).max() < 5e-4  # the checkpoint's own range again


@pytest.mark.slow  # a segment_node in a child process
def test_aux_of_another_size_is_resized_to_the_colour_image(node, client):
    stamp = next_stamp()
    rgb_msg, _ = random_pair(stamp, height=48, width=64)
    _, aux_msg = random_pair(stamp, height=24, width=32)
    send_and_wait(client, rgb_msg, aux_msg, stamp)
    mask = next(m for m in client.received["mask"] if m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec == stamp)
    assert (mask.height, mask.width) == (48, 64)


@pytest.mark.slow  # a segment_node in a child process
def test_start_with_weights_that_do_not_fit_runs_idle(all_checkpoints, client):
    checkpoints = all_checkpoints
    """In-process (own namespace): the start-up path that refuses a checkpoint whose weights do not fit."""
    from rclpy.parameter import Parameter

    from rgbd_fusion_seg.ros.segment_node import SegmentNode

    node = SegmentNode(context=client.context, namespace="inproc",
                       parameter_overrides=[Parameter("checkpoint", value=str(checkpoints / "misfit.pt"))])
    try:
        stats = node.stats()
        assert stats["model"] == "none" and stats["checkpoint"] == ""
        assert "weights do not fit" in node._models.idle_reason
    finally:
        node.shutdown()
        node.destroy_node()


@pytest.mark.slow  # a segment_node in a child process
def test_sigint_shuts_down_cleanly(node):
    assert node.stop(signal.SIGINT) == 0
    text = node.log()
    assert "Traceback" not in text and "terminate called" not in text


@pytest.mark.slow  # a segment_node in a child process
def test_idle_start_then_checkpoint_parameter_and_load_failures(all_checkpoints, client, tmp_path):
    """Missing checkpoint at start -> idle; refused misfit; load-time failure keeps the old model; SIGTERM."""
    import torch

    from rgbd_fusion_seg.core.checkpoint import Checkpoint, save_checkpoint
    from rgbd_fusion_seg.core.palette import default_palette
    from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing
    from rgbd_fusion_seg.models import build_model

    # Weights with the right names and shapes but no data: only the full load finds out.
    with torch.device("meta"):
        hollow = build_model("rgb", 4).state_dict()
    save_checkpoint(Checkpoint("rgb", 4, list("abcd"), default_palette(4),
                               Preprocessing((64, 64), aux=AuxNormalisation("depth", "m", 0, 5)), hollow),
                    tmp_path / "hollow.pt")
    make_checkpoint(tmp_path / "rgb.pt", "rgb")
    params_file = tmp_path / "segment.yaml"
    params_file.write_text(
        "segment_node:\n"
        "  ros__parameters:\n"
        f"    checkpoint: {tmp_path / 'nowhere.pt'}\n"
        "    sync:\n"
        "      queue_size: 7\n"
        "      slop: 0.03\n"
        "    outputs:\n"
        "      overlay: true\n"
        "    stats_period: 0.5\n"
        "    no_pair_timeout: 2\n"  # an integer for a double: taken as 2.0
        "    overlay_alpha: 7.0\n"  # out of range: logged, default used
        "    qos:\n"
        "      profile: reliable\n"
    )
    with start_node(tmp_path / "idle.log", DOMAIN, params_file=params_file) as node:
        client.wait_for_node(outputs=("mask", "overlay"))
        node.wait_for_log("does not exist; no model: running idle")
        names = ["sync.queue_size", "sync.slop", "outputs.overlay", "no_pair_timeout", "overlay_alpha", "qos.profile"]
        assert client.get_parameters(names) == {"sync.queue_size": 7, "sync.slop": 0.03, "outputs.overlay": True,
                                                "no_pair_timeout": 2.0, "overlay_alpha": 0.5, "qos.profile": "reliable"}
        text = node.log()
        assert "overlay_alpha: must be in [0, 1], got 7.0 (an opacity" in text and "; using the default 0.5" in text
        assert "with QoS reliable (reliability reliable" in text

        # A best-effort publisher cannot feed a reliable subscription: the node says so.
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        best_effort = client.node.create_publisher(Image, "rgb/image", qos_profile_sensor_data)
        node.wait_for_log("/rgb/image: a publisher's QoS is incompatible with ours")
        client.node.destroy_publisher(best_effort)
        stats = client.fresh_stats()
        assert stats["model"] == "none" and stats["_message"].startswith("idle")

        for _ in range(3):
            stamp = next_stamp()
            client.publish_pair(*random_pair(stamp))
            client.spin_for(0.2)
        client.fresh_stats(predicate=lambda s: int(s["dropped_no_model"]) > 0)
        assert not client.received["mask"] or stamp not in client.stamps()

        [misfit] = client.set_parameters({"checkpoint": str(all_checkpoints / "misfit.pt")})
        assert not misfit.successful and "weights do not fit" in misfit.reason

        [hollow_result] = client.set_parameters({"checkpoint": str(tmp_path / "hollow.pt")})
        assert hollow_result.successful  # the cheap check passes...
        node.wait_for_log("could not load .*hollow.pt.*staying idle")  # ...the load does not

        [good] = client.set_parameters({"checkpoint": str(tmp_path / "rgb.pt")})
        assert good.successful, good.reason
        client.fresh_stats(predicate=lambda s: s["model"] == "rgb", timeout=30)
        prime(client)

        [again] = client.set_parameters({"checkpoint": str(tmp_path / "hollow.pt")})
        assert again.successful
        node.wait_for_log("could not load .*hollow.pt.*keeping 'rgb'")
        stamp = next_stamp()
        send_and_wait(client, *random_pair(stamp), stamp)
        assert client.fresh_stats()["model"] == "rgb"

        assert node.stop(signal.SIGTERM) == 0
        assert "Traceback" not in node.log()


# ---- ROS-free parts of the node: the parameter table, the one-slot worker, the loader, the latency window ----


def test_parameter_table_is_the_contract():
    from rgbd_fusion_seg.serving import parameters as params

    assert params.defaults() == {
        "checkpoint": "", "fusion_method": "", "checkpoint_dir": "", "modality": "", "device": "auto",
        "precision": "fp32", "backend": "auto", "compile": False, "onnx_cache_dir": "", "tensorrt_cache_dir": "",
        "sync.queue_size": 10, "sync.slop": 0.05, "sync.exact": False,
        "qos.profile": "auto", "qos.depth": 5, "transport.rgb": "raw", "transport.aux": "raw",
        "outputs.overlay": False, "outputs.confidence": False, "outputs.fused_image": False,
        "outputs.points": False, "outputs.camera_info": False,
        "overlay_alpha": 0.5, "depth_scale": 0.001, "aux_range": [], "aux_timeout": 1.0, "fallback_checkpoint": "",
        "points.stride": 2, "points.voxel_size": 0.0, "points.z_range": [], "points.exclude_classes": [],
        "camera_info_timeout": 5.0, "autostart": True, "stats_period": 5.0, "no_pair_timeout": 5.0,
    }
    assert {s.name for s in params.PARAMETERS if s.read_only} == {"qos.profile", "qos.depth", "transport.rgb",
                                                                  "transport.aux", "autostart"}
    assert all(s.description for s in params.PARAMETERS)
    for spec in params.PARAMETERS:
        assert params.validate(spec.name, spec.default) is None, spec.name


@pytest.mark.parametrize("name, value, reason", [
    ("fusion_method", "nope", "unknown fusion method 'nope'; available: rgb"),
    ("checkpoint", "/no/such.pt", "does not exist"),
    ("checkpoint_dir", "/no/such/dir", "is not a directory"),
    ("device", "tpu", "is not 'auto'"),
    ("precision", "int8", "not one of"),
    ("sync.queue_size", 0, "an integer in [1, 300]"),
    ("sync.slop", float("nan"), "in [0, 1] s, got nan"),
    ("qos.profile", "fast", "not one of"),
    ("transport.rgb", "compressedDepth", "'compressedDepth' is not one of 'raw', 'compressed'"),
    ("transport.aux", "theora", "not one of 'raw', 'compressed', 'compressedDepth'"),
    ("overlay_alpha", 1.5, "[0, 1]"),
    ("depth_scale", 0.0, "in [1e-05, 1] m per unit"),
    ("aux_range", [1.0], "[] or [low, high]"),
    ("stats_period", -1.0, "in [0.1, 3600] s"),
    ("no_pair_timeout", 0.0, "in [0.5, 3600] s"),
])
def test_parameter_validation_gives_a_reason(name, value, reason):
    from rgbd_fusion_seg.serving.parameters import validate

    message = validate(name, value)
    assert message is not None and message.startswith(name) and reason in message


def test_parameter_coercion():
    from rgbd_fusion_seg.serving.parameters import coerce

    assert coerce("sync.slop", 1) == 1.0 and isinstance(coerce("sync.slop", 1), float)
    assert coerce("aux_range", (1, 2)) == [1.0, 2.0]
    assert coerce("sync.queue_size", 3) == 3


def test_worker_newest_pair_wins_and_survives_errors():
    import threading

    from rgbd_fusion_seg.serving.inference_worker import InferenceWorker

    started, release = threading.Event(), threading.Event()
    finished = threading.Semaphore(0)  # released once per item processed or failed
    done, errors = [], []

    def process(item):
        started.set()
        release.wait(5)
        if item == "bad":
            raise RuntimeError("boom")
        done.append(item)
        finished.release()

    def on_error(item, error):
        errors.append((item, str(error)))
        finished.release()

    worker = InferenceWorker(process, on_error).start()
    try:
        worker.submit(1)
        assert started.wait(5)
        assert [worker.submit(n) for n in (2, 3, 4)] == [False, True, True]  # 2 and 3 are replaced
        release.set()
        assert finished.acquire(timeout=5) and finished.acquire(timeout=5)
        assert done == [1, 4] and worker.dropped_stale == 2
        worker.submit("bad")  # the worker is idle: it takes "bad" alone, and it fails
        assert finished.acquire(timeout=5)
        assert errors == [("bad", "boom")] and worker.alive
        worker.submit(5)  # and it goes on
        assert finished.acquire(timeout=5)
        assert done == [1, 4, 5] and worker.dropped_stale == 2
    finally:
        worker.stop()
    assert not worker.alive


def test_background_loader_loads_the_newest_request():
    import threading

    from rgbd_fusion_seg.serving.model_serving import BackgroundLoader, LoadRequest, Runtime

    gate, loading_a = threading.Event(), threading.Event()
    settled = threading.Semaphore(0)  # released once per load that succeeded or failed
    loaded, failed, calls = [], [], []

    def load(path, runtime, aux_range, extras=()):
        calls.append(path)
        if path == "a":
            loading_a.set()
        gate.wait(5)
        if path == "broken":
            raise ValueError("cannot")
        return f"model:{path}"

    def on_loaded(request, model):
        loaded.append(model)
        settled.release()

    def on_failed(request, error):
        failed.append(str(error))
        settled.release()

    def request(generation, path):
        loader.request(LoadRequest(generation, path, Runtime(device="cpu"), (), "test"))

    loader = BackgroundLoader(on_loaded, on_failed, load=load)
    try:
        request(1, "a")
        assert loading_a.wait(5)  # a is loading (held at the gate) ...
        request(2, "b")
        request(3, "c")  # ... so b waits in the mailbox, and c replaces it there
        gate.set()
        assert settled.acquire(timeout=5) and settled.acquire(timeout=5)
        assert calls == ["a", "c"] and loaded == ["model:a", "model:c"]
        request(4, "broken")
        assert settled.acquire(timeout=5)
        assert failed == ["cannot"] and loaded == ["model:a", "model:c"]
    finally:
        loader.stop()


def test_latency_window():
    from rgbd_fusion_seg.serving.inference_worker import LatencyWindow

    window = LatencyWindow(size=100)
    assert all(np.isnan(window.percentiles_ms())) and window.rate_hz(1.0) == 0.0
    for index in range(200):  # only the latest 100 count
        window.add(latency_s=(index % 100) / 1000 if index >= 100 else 10.0, at=100.0 + index * 0.1)
    p50, p90, p99 = window.percentiles_ms()
    assert 49 <= p50 <= 50 and 89 <= p90 <= 90 and 98 <= p99 <= 99
    assert window.rate_hz(horizon_s=5.0, now=100.0 + 199 * 0.1) == pytest.approx(10.0)
