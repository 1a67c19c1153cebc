"""The node's health in-process, without rclpy: ~/stats' values, /diagnostics' judgement of each period, the
reports outside `active`, the no-pair watchdog's decisions and the throttled log."""
from __future__ import annotations

import time

import pytest

from rgbd_fusion_seg.serving import parameters as params
from rgbd_fusion_seg.serving.cloud_output import CameraInfoSnapshot
from rgbd_fusion_seg.serving.node_health import ERROR, OK, WARN, Inputs, NodeHealth, ThrottledLog, stats_line
from rgbd_fusion_seg.serving.pairing import ApproximateTimePairer
from test_frame_pipeline import RecordingLogger, models  # noqa: F401 - models: the served-model fixture

NO_CALIBRATION = CameraInfoSnapshot(None, None, "", float("inf"))


def health(reliable=(False, False), **overrides):
    config = {**params.defaults(), "no_pair_timeout": 5.0,
              **{name.replace("__", "."): value for name, value in overrides.items()}}
    inputs = Inputs("/rgb/image", "/aux/image", "/aux/camera_info", reliable=list(reliable), qos_text="reliable (...)")
    return NodeHealth(lambda: config, inputs, unpaired_share=0.2)


def serving(h: NodeHealth, pairer: ApproximateTimePairer, pairs: int = 3) -> None:
    """Pairs came in just now."""
    for stamp in range(pairs):
        pairer.add(0, stamp, "c")
        pairer.add(1, stamp, "a")
        h.pair_made(pairer.counts.received)
    h.last_input_at = time.monotonic()


def judge(h, pairer, served, degraded=None, calibration=NO_CALIBRATION):
    values = h.stats(served, pairer.counts, dropped_stale=0, degraded_how=degraded)
    return h.judge(values, served, "no model loaded yet", calibration)


def test_stats_report_the_counters_the_pairing_and_the_model(models):
    h, pairer = health(), ApproximateTimePairer()
    serving(h, pairer, pairs=2)
    pairer.add(0, 100, "unpaired")
    h.counters.add("frames_out", 2)
    h.counters.add("lost_aux", 3)
    h.frame_timed(latency_s=0.04, paired_at=time.monotonic() - 0.01, started=time.monotonic() - 0.005)
    values = h.stats(models.early, pairer.counts, dropped_stale=1, degraded_how="rgb")
    assert {key: values[key] for key in ("frames_in_rgb", "frames_in_aux", "pairs", "frames_out", "dropped_stale",
                                         "lost_in_transport_aux", "model", "degraded", "device", "backend")} == {
        "frames_in_rgb": "3", "frames_in_aux": "2", "pairs": "2", "frames_out": "2", "dropped_stale": "1",
        "lost_in_transport_aux": "3", "model": "early", "degraded": "rgb", "device": "cpu", "backend": "torch"}
    assert values["latency_p50_ms"] == "40.0" and 0 < float(values["processing_p50_ms"]) < 1000
    assert values["checkpoint"].endswith("early.pt")
    assert "in 3/2, pairs 2, out 2" in stats_line(values) and stats_line(values).endswith("model early")
    idle = h.stats(None, pairer.counts, 0, None)
    assert (idle["model"], idle["checkpoint"], idle["device"]) == ("none", "", "")


def test_the_judgement_of_an_active_node(models):
    h, pairer = health(), ApproximateTimePairer()
    assert judge(h, pairer, None) == (ERROR, "idle: no model loaded yet")
    h.start = time.monotonic() - 10  # active for 10 s, nothing arrived
    assert judge(h, pairer, models.early) == (ERROR, "no input on /rgb/image nor /aux/image for 10.0 s")
    h.last_input_at = time.monotonic()
    assert judge(h, pairer, models.early) == (WARN, "no colour/aux pairs")
    serving(h, pairer)
    assert judge(h, pairer, models.early) == (OK, "serving early")
    assert judge(h, pairer, models.early, degraded="fallback_checkpoint x") == (
        WARN, "degraded: no aux, masks from colour alone by fallback_checkpoint x")


def test_a_warning_is_judged_on_its_period_and_clears_when_it_stops(models):
    h, pairer = health(reliable=(False, True)), ApproximateTimePairer()
    serving(h, pairer)
    assert judge(h, pairer, models.early)[0] == OK
    h.counters.add("lost_aux", 2)
    level, message = judge(h, pairer, models.early)
    assert level == WARN and message.startswith("2 frames lost in transport since the last report: the publisher's "
                                                "history replaced frames")  # the aux subscription is reliable
    assert judge(h, pairer, models.early) == (OK, "serving early")  # nothing lost in this period
    h.counters.add("lost_rgb", 1)
    assert "best-effort delivery of large images" in judge(h, pairer, models.early)[1]

    for stamp in range(10, 30):  # 20 colour frames alone: the 10 beyond sync.queue_size are dropped unpaired
        pairer.add(0, stamp * 10**9, "never paired")
    h.last_input_at = time.monotonic()
    level, message = judge(h, pairer, models.early)
    assert level == WARN and message.startswith("10 of 20 frames received since the last report found no partner")
    h.counters.add("bad_input")
    h.counters.add("dropped_cannot_degrade")
    assert judge(h, pairer, models.early) == (WARN, "2 frames refused, failed or dropped since the last report (see "
                                                    "bad_input, inference_errors, dropped_cannot_degrade)")
    h.other_clock = True
    assert judge(h, pairer, models.early) == (WARN, "serving early; stamps from another clock (latency is no delay)")


def test_enabled_outputs_that_stay_silent_are_named(models):
    h, pairer = health(outputs__points=True, outputs__fused_image=True), ApproximateTimePairer()
    serving(h, pairer)
    judge(h, pairer, models.early)
    h.counters.add("frames_out", 5)
    assert judge(h, pairer, models.early) == (
        WARN, "serving early; not produced: ~/points (no camera_info on /aux/camera_info); ~/fused_image ('early' "
              "makes no fused image)")
    h.counters.add("frames_out", 5)
    refused = CameraInfoSnapshot(object(), None, "fx = 0.0 is not a finite positive focal length", 1.0)
    assert "~/points (camera_info refused: fx = 0.0" in judge(h, pairer, models.early, calibration=refused)[1]


def test_reports_outside_active_say_why_nothing_is_served():
    assert NodeHealth.state_report("unconfigured", "cleaned up: configure to serve again") == (
        WARN, "unconfigured (cleaned up: configure to serve again): configure and activate to serve")
    assert NodeHealth.state_report("inactive", "")[1].startswith("inactive: not subscribed")
    assert NodeHealth.state_report("finalized", "")[0] == ERROR
    assert NodeHealth.state_report("activating", "") == (WARN, "activating: in a lifecycle transition")


@pytest.mark.parametrize("arrivals, problem", [
    ((), "no input at all"),
    (((0, 1),), "missing aux stream"),
    (((1, 1),), "missing colour stream"),
    (((0, 1), (1, 9 * 10**9)), "stamps never pair (slop 0.05 s, oldest queued stamps differ by 9.000 s)"),
])
def test_the_watchdog_names_the_problem_once_per_starved_spell(arrivals, problem):
    h, pairer = health(), ApproximateTimePairer()
    for stream, stamp in arrivals:
        pairer.add(stream, stamp, "frame")
    now = h.start + 1.0
    assert h.starvation(pairer, now) is None  # not starved yet
    starved = h.starvation(pairer, now + 5.0)
    assert starved.problem == problem and starved.since_s == pytest.approx(6.0)
    assert h.starvation(pairer, now + 6.0) is None  # said once for this spell
    text = starved.describe(h._inputs, publishers=(1, 0))
    assert text.startswith("no colour/aux pair for 6.0 s: ") and "/aux/image got" in text and "(0 publishers)" in text
    h.pair_made(pairer.counts.received)  # a pair ends the spell
    assert h.starvation(pairer, time.monotonic() + 1.0) is None


def test_throttled_lines_are_said_once_per_period_per_key():
    log = RecordingLogger()
    say = ThrottledLog(log)
    for _ in range(3):
        say("warning", "bad input A", "bad:A", period=60.0)
        say("error", "bad input B", "bad:B", period=60.0)
        say("info", "always")
    assert log.lines.count(("warning", "bad input A")) == 1 and log.lines.count(("error", "bad input B")) == 1
    assert log.lines.count(("info", "always")) == 3
    say("warning", "bad input A", "bad:A", period=0.0)
    assert log.lines.count(("warning", "bad input A")) == 2
    with pytest.raises(ValueError, match="unknown log level"):
        say("debug", "x")
