"""The node's per-frame logic in-process, without rclpy: `FramePipeline` driven with arrays, real small
checkpoints served on the CPU, and a recording logger in place of the node's."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from ros_helpers import make_checkpoint
from rgbd_fusion_seg.serving import parameters as params
from rgbd_fusion_seg.serving.frame_pipeline import Calibration, Frame, FramePipeline, PairJob
from rgbd_fusion_seg.serving.image_codec import decode_aux
from rgbd_fusion_seg.serving.model_host import ModelHost
from rgbd_fusion_seg.serving.model_serving import Runtime, load_served_model
from rgbd_fusion_seg.serving.node_health import Inputs, NodeHealth, ThrottledLog
from rgbd_fusion_seg.serving.pairing import ApproximateTimePairer

H, W = 48, 64


class RecordingLogger:
    """What the node's logger would have printed, as (level, message)."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []
        self._changed = threading.Condition()

    def _add(self, level, message):
        with self._changed:
            self.lines.append((level, message))
            self._changed.notify_all()

    def error(self, message):
        self._add("error", message)

    def warning(self, message):
        self._add("warning", message)

    def info(self, message):
        self._add("info", message)

    def text(self) -> str:
        return "\n".join(message for _, message in self.lines)

    def count(self, part: str) -> int:
        return sum(part in message for _, message in self.lines)

    def wait_for(self, part: str, timeout: float = 60.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.count(part) > 0, timeout), self.text()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Served models of 4-class checkpoints with the same classes: a depth fusion model, one trained with aux
    dropout, the rgb baseline (a fallback)."""
    folder = tmp_path_factory.mktemp("pipeline")
    paths = {
        "early": make_checkpoint(folder / "early.pt", "early", seed=1),
        "dropout": make_checkpoint(folder / "dropout.pt", "early", seed=3, data={"aux_dropout": 0.5}),
        "rgb": make_checkpoint(folder / "rgb.pt", "rgb", seed=2),
    }
    loaded = {name: load_served_model(str(path), Runtime(device="cpu"), warm_up=False) for name, path in paths.items()}
    return SimpleNamespace(paths=paths, **loaded)


@dataclass
class Rig:
    pipeline: FramePipeline
    models: ModelHost
    health: NodeHealth
    pairer: ApproximateTimePairer
    log: RecordingLogger
    config: dict


def rig(served=None, fallback=None, **overrides) -> Rig:
    config = {**params.defaults(), **{name.replace("__", "."): value for name, value in overrides.items()}}
    log = RecordingLogger()
    say = ThrottledLog(log)
    inputs = Inputs("/rgb/image", "/aux/image", "/aux/camera_info")
    host = ModelHost(lambda: config, say)
    host.served, host.fallback = served, fallback
    host.idle_reason = "" if served is not None else "no model loaded yet"
    health = NodeHealth(lambda: config, inputs, unpaired_share=0.2)
    pairer = ApproximateTimePairer(config["sync.queue_size"], config["sync.slop"], config["sync.exact"])
    return Rig(FramePipeline(lambda: config, pairer, host, health, inputs, say), host, health, pairer, log, config)


def colour(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def depth_mm(seed=0, reading=True) -> np.ndarray:
    if not reading:
        return np.zeros((H, W), np.uint16)  # 0 = no reading
    return np.random.default_rng(seed).integers(300, 5000, (H, W), dtype=np.uint16)


def decoded(image: np.ndarray, encoding="16UC1", modality="depth"):
    return decode_aux(modality, encoding, *image.shape[:2], image.strides[0], False, image)


def serve(r: Rig, job: PairJob, rgb: np.ndarray, aux_image: np.ndarray | None, encoding="16UC1"):
    """What the node's worker does with a job, the decoding done on arrays."""
    plan = r.pipeline.plan(job)
    assert plan is not None
    aux = decoded(aux_image, encoding, plan.aux_decoding[0]) if plan.aux_decoding is not None else None
    return r.pipeline.process(plan, Frame(rgb, aux, header="colour header", aux_frame_id="depth_optical")), plan


def aux_silent_for(r: Rig, seconds: float) -> None:
    """The aux stream's last frame arrived `seconds` ago."""
    r.pipeline.aux_watch.aux_arrived(time.monotonic() - seconds)


def test_a_pair_serves_every_enabled_output_with_its_header(models):
    r = rig(models.early, outputs__overlay=True, outputs__confidence=True)
    assert r.pipeline.arrived(0, 1_000, "color_optical", "colour message") == []
    [job] = r.pipeline.arrived(1, 1_000, "depth_optical", "aux message")
    assert (job.colour, job.aux) == ("colour message", "aux message")
    rgb, depth = colour(1), depth_mm(1)
    outputs, plan = serve(r, job, rgb, depth)
    assert plan.aux_decoding == ("depth", 0.001) and not plan.colour_only

    expected = models.early.engine.predict(rgb, decoded(depth).image, with_confidence=True)
    np.testing.assert_array_equal(outputs.mask, expected.mask)
    assert outputs.mask.shape == (H, W) and outputs.mask.dtype == np.uint8 and outputs.mask.max() < 4
    np.testing.assert_array_equal(outputs.mask_color, models.early.palette[outputs.mask])
    assert outputs.overlay.shape == (H, W, 3) and not np.array_equal(outputs.overlay, rgb)
    assert np.all((outputs.confidence >= 0.25 - 1e-6) & (outputs.confidence <= 1.0))
    assert outputs.fused is None and outputs.points is None and outputs.camera_info is None
    assert outputs.header == "colour header" and outputs.served is models.early and not outputs.colour_only
    assert r.log.count("frame_ids differ: /rgb/image is in 'color_optical', /aux/image in 'depth_optical'") == 1

    r.pipeline.published(outputs, latency_s=0.05, paired_at=job.paired_at, started=plan.started)
    assert r.health.counters["frames_out"] == 1 and r.health.latency.count == 1 and r.health.processing.count == 1
    assert r.health.last_pair is not None and r.pairer.counts.pairs == 1


def test_outputs_turned_off_are_not_made(models):
    r = rig(models.early)
    [job] = [*r.pipeline.arrived(0, 5, "cam", "c"), *r.pipeline.arrived(1, 5, "cam", "a")]
    outputs, _ = serve(r, job, colour(), depth_mm())
    assert outputs.overlay is None and outputs.confidence is None and outputs.fused is None
    assert r.log.count("frame_ids differ") == 0


def test_colour_alone_while_aux_is_silent_is_served_by_the_fallback(models):
    r = rig(models.early, fallback=models.rgb, aux_timeout=1.0)
    aux_silent_for(r, 10.0)
    [job] = r.pipeline.arrived(0, 2_000, "cam", "colour message")
    assert job.aux is None and r.pairer.pending() == (0, 0)  # served alone, never queued for a late partner
    rgb = colour(2)
    outputs, plan = serve(r, job, rgb, None)
    assert plan.colour_only and plan.aux_decoding is None
    assert outputs.served is models.rgb and outputs.colour_only
    np.testing.assert_array_equal(outputs.mask, models.rgb.engine.predict(rgb, None).mask)
    assert r.health.counters["frames_colour_only"] == 1
    assert r.pipeline.aux_watch.degraded_how.startswith("fallback_checkpoint")
    assert r.log.count("no aux on /aux/image for ") == 1 and r.log.count("masks from colour alone by fallback") == 1

    # aux back: a pair fuses again with the main model, and the spell's end is said
    r.pipeline.arrived(1, 3_000, "cam", "a")
    [job] = r.pipeline.arrived(0, 3_000, "cam", "c")
    outputs, _ = serve(r, job, rgb, depth_mm())
    assert outputs.served is models.early and not outputs.colour_only
    assert r.pipeline.aux_watch.degraded_how is None and r.log.count("aux back on /aux/image: fusing again") == 1


def test_colour_alone_by_a_model_trained_with_aux_dropout_itself(models):
    r = rig(models.dropout, aux_timeout=1.0)
    aux_silent_for(r, 5.0)
    [job] = r.pipeline.arrived(0, 1, "cam", "c")
    rgb = colour(3)
    outputs, _ = serve(r, job, rgb, None)
    assert outputs.served is models.dropout and outputs.colour_only
    np.testing.assert_array_equal(outputs.mask, models.dropout.engine.predict(rgb, None).mask)
    assert "itself, trained with aux dropout 0.5" in r.pipeline.aux_watch.degraded_how


def test_without_a_way_to_degrade_nothing_is_served_and_the_frame_waits_for_its_aux(models):
    r = rig(models.early, aux_timeout=1.0)
    aux_silent_for(r, 5.0)
    assert r.pipeline.arrived(0, 7, "cam", "c") == []
    assert r.pairer.pending() == (1, 0)  # queued: its aux may still come
    assert r.health.counters["dropped_cannot_degrade"] == 1
    assert r.log.count("was not trained with train.aux_dropout and no usable fallback_checkpoint is set") == 1
    [job] = r.pipeline.arrived(1, 7, "cam", "a")
    assert job.aux == "a"


def test_an_aux_image_without_any_reading_is_served_from_colour_alone(models):
    r = rig(models.early, fallback=models.rgb)
    [job] = [*r.pipeline.arrived(0, 9, "cam", "c"), *r.pipeline.arrived(1, 9, "cam", "a")]
    rgb = colour(4)
    outputs, _ = serve(r, job, rgb, depth_mm(reading=False))
    assert outputs.served is models.rgb and outputs.colour_only
    np.testing.assert_array_equal(outputs.mask, models.rgb.engine.predict(rgb, None).mask)
    assert r.health.counters["aux_invalid"] == 1 and r.health.counters["frames_colour_only"] == 1
    assert r.log.count("aux on /aux/image has no valid reading: degraded") == 1


def test_a_model_that_uses_no_aux_is_never_degraded(models):
    r = rig(models.rgb, aux_timeout=1.0)
    aux_silent_for(r, 5.0)
    [job] = r.pipeline.arrived(0, 11, "cam", "c")
    outputs, plan = serve(r, job, colour(), None)
    assert outputs.served is models.rgb and not outputs.colour_only and plan.aux_decoding is None
    assert r.pipeline.aux_watch.degraded_how is None and r.health.counters["frames_colour_only"] == 0


def test_an_aux_image_in_another_unit_is_bad_input(models):
    r = rig(models.early)
    [job] = [*r.pipeline.arrived(0, 13, "cam", "c"), *r.pipeline.arrived(1, 13, "cam", "a")]
    outputs, _ = serve(r, job, colour(), np.zeros((H, W), np.uint8), encoding="mono8")
    assert outputs is None and r.health.counters["bad_input"] == 1
    assert r.log.count("bad input on /aux/image: encoding 'mono8' decodes to depth in 'raw8', but the checkpoint") == 1


def test_aux_of_another_size_is_resized_and_said_once(models):
    r = rig(models.early)
    for stamp in (15, 16):
        [job] = [*r.pipeline.arrived(0, stamp, "cam", "c"), *r.pipeline.arrived(1, stamp, "cam", "a")]
        outputs, _ = serve(r, job, colour(), depth_mm()[::2, ::2].copy())
        assert outputs.mask.shape == (H, W)
    assert r.log.count("/aux/image is 24x32 and /rgb/image 48x64 (HxW): the aux image is resized") == 1


def test_pairs_without_a_model_are_dropped_and_counted(models):
    r = rig(None)
    r.pipeline.arrived(0, 17, "cam", "c")
    assert r.pipeline.arrived(1, 17, "cam", "a") == []
    assert r.health.counters["dropped_no_model"] == 1
    assert r.log.count("pair dropped: no model is served (no model loaded yet)") == 1
    assert r.pipeline.plan(PairJob("c", "a", 0.0)) is None and r.health.counters["dropped_no_model"] == 2


def camera_info(width=W, height=H, fx=50.0):
    return SimpleNamespace(width=width, height=height, k=[fx, 0, (width - 1) / 2, 0, fx, (height - 1) / 2, 0, 0, 1],
                           p=[fx, 0, (width - 1) / 2, 0, 0, fx, (height - 1) / 2, 0, 0, 0, 1, 0], d=[0.0] * 5,
                           r=[1, 0, 0, 0, 1, 0, 0, 0, 1], distortion_model="plumb_bob", roi=None)


def test_points_and_camera_info_follow_the_calibration(models):
    r = rig(models.early, outputs__points=True, outputs__camera_info=True, points__stride=1)
    [job] = [*r.pipeline.arrived(0, 19, "cam", "c"), *r.pipeline.arrived(1, 19, "depth_optical", "a")]
    outputs, _ = serve(r, job, colour(), depth_mm())
    assert outputs.points is None and outputs.camera_info is None  # no calibration yet: skipped, masks go on
    assert r.health.counters["points_skipped"] == 1

    info = camera_info(W * 2, H * 2)  # the same camera at twice the size
    r.pipeline.camera_info_arrived(info)
    outputs, _ = serve(r, job, colour(), depth_mm())
    assert outputs.points.size == H * W and outputs.points_frame_id == "depth_optical"
    np.testing.assert_array_equal(outputs.points["label"].reshape(H, W), outputs.mask)
    assert outputs.camera_info == Calibration(info, W, H)
    r.pipeline.published(outputs, 0.01, job.paired_at, job.paired_at)
    assert r.health.counters["points_out"] == 1

    r.pipeline.camera_info_arrived(camera_info(fx=0.0))  # an uncalibrated camera: refused, counted, said
    assert r.health.counters["bad_camera_info"] == 1 and r.log.count("bad camera_info on /aux/camera_info") == 1
    r.pipeline.camera_info_arrived(camera_info(W * 3, H))  # another aspect than the images
    outputs, _ = serve(r, job, colour(), depth_mm())
    assert outputs.points is None and outputs.camera_info is None and outputs.mask is not None
    assert r.health.counters["bad_camera_info"] == 2 and r.log.count("does not fit the images") == 1


def test_stamps_from_another_clock_are_said_and_judged(models):
    r = rig(models.early)
    [job] = [*r.pipeline.arrived(0, 21, "cam", "c"), *r.pipeline.arrived(1, 21, "cam", "a")]
    outputs, plan = serve(r, job, colour(), depth_mm())
    r.pipeline.published(outputs, latency_s=3600.0, paired_at=job.paired_at, started=plan.started)
    assert r.health.other_clock and r.log.count("stamps are 3600 s from this node's clock") == 1
    r.pipeline.published(outputs, latency_s=0.02, paired_at=job.paired_at, started=plan.started)
    assert not r.health.other_clock and r.log.count("stamps agree with this node's clock again") == 1


def test_the_model_host_loads_the_start_up_model_and_the_fallback_in_the_background(models):
    config = {**params.defaults(), "checkpoint": str(models.paths["early"]),
              "fallback_checkpoint": str(models.paths["rgb"]), "device": "cpu"}
    log = RecordingLogger()
    host = ModelHost(lambda: config, ThrottledLog(log))
    host.start()
    try:
        host.start_serving(config, [], stopping=None)
        assert host.idle_reason == f"loading {models.paths['early']}"
        log.wait_for("serving method 'early'")
        log.wait_for("fallback ready")
        assert host.served.method == "early" and host.fallback.method == "rgb" and host.idle_reason == ""
    finally:
        host.stop()
