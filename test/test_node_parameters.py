"""The node's parameter table: every number has bounds with a reason, and a device that can never work on this
machine is refused, at start and at runtime alike (the node in-process, on its own rclpy Context)."""
import math
import time

import pytest

from rgbd_fusion_seg.serving import parameters as params
from ros_helpers import domain_id_for, make_checkpoint

NUMERIC_TYPES = ("integer", "double", "double_array")


def _unusable_cuda_device() -> str:
    """'cuda' on a machine without CUDA, else the first index past the last device."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "cuda" if count == 0 else f"cuda:{count}"


# ---- the table -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [s for s in params.PARAMETERS if s.type in NUMERIC_TYPES], ids=lambda s: s.name)
def test_every_numeric_parameter_has_bounds_with_a_reason(spec):
    bounds = spec.bounds
    assert bounds is not None, f"{spec.name} has no bounds"
    assert math.isfinite(bounds.low) and math.isfinite(bounds.high) and bounds.low < bounds.high
    assert len(bounds.why) > 20, f"{spec.name}: say why the bounds are what they are"
    assert bounds.constraints in spec.constraints  # what `ros2 param describe` shows
    if spec.type == "double_array":
        inside, below, above = [bounds.low, bounds.high], [bounds.low - 1, bounds.high], [bounds.low, bounds.high + 1]
    else:
        step = 1 if spec.type == "integer" else bounds.high * 1e-6
        inside, below, above = bounds.low, bounds.low - step, bounds.high + step
        if spec.type == "integer":
            assert isinstance(bounds.low, int) and isinstance(bounds.high, int)
    assert params.validate(spec.name, inside) is None
    for value in (below, above):
        reason = params.validate(spec.name, value)
        assert reason is not None and reason.startswith(spec.name) and bounds.why in reason, (value, reason)


@pytest.mark.parametrize("name, value, reason", [
    ("stats_period", 1e-9, "stats_period: must be in [0.1, 3600] s, got 1e-09"),
    ("stats_period", 1e9, "must be in [0.1, 3600] s"),
    ("no_pair_timeout", 0.01, "must be in [0.5, 3600] s"),
    ("sync.queue_size", 10**6, "must be an integer in [1, 300]"),
    ("sync.queue_size", 2.0, "must be an integer in [1, 300], got 2.0"),
    ("sync.slop", 30.0, "must be in [0, 1] s"),
    ("qos.depth", 10**5, "must be an integer in [1, 100]"),
    ("depth_scale", 1e-12, "must be in [1e-05, 1] m per unit"),
    ("aux_range", [0.0, 1e12], "values in [-100000, 100000]"),
    ("aux_range", [1.0, 1.0 + 1e-9], "high > low by at least 0.001"),
    ("overlay_alpha", -0.1, "must be in [0, 1]"),
    ("stats_period", float("inf"), "got inf"),
    ("stats_period", True, "got True"),
])
def test_out_of_range_numbers_are_refused_with_the_range(name, value, reason):
    message = params.validate(name, value)
    assert message is not None and reason in message, message


def test_a_cuda_device_this_machine_lacks_is_refused_with_the_reason():
    device = _unusable_cuda_device()
    reason = params.validate("device", device)
    assert reason is not None and reason.startswith(f"device: device {device!r}"), reason
    assert "'cpu'" in reason  # says what would work instead
    assert params.validate("device", "cpu") is None and params.validate("device", "auto") is None


# ---- the node in-process -------------------------------------------------------------------------------


@pytest.fixture
def ros_context():
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id_for(73))
    yield context
    rclpy.try_shutdown(context=context)


def _start_node(context, **overrides):
    from rclpy.parameter import Parameter

    from rgbd_fusion_seg.ros.segment_node import SegmentNode

    return SegmentNode(context=context, parameter_overrides=[Parameter(n, value=v) for n, v in overrides.items()])


def _set(node, name, value):
    from rclpy.parameter import Parameter

    [result] = node.set_parameters([Parameter(name, value=value)])
    return result


@pytest.mark.slow
def test_unusable_device_is_refused_at_start_and_at_runtime(ros_context, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "rgb.pt", "rgb")
    device = _unusable_cuda_device()
    node = _start_node(ros_context, checkpoint=str(checkpoint), device=device, stats_period=1e-9)
    try:
        # At start: no load is attempted on the device, the node says why it is idle.
        assert node.stats()["model"] == "none"
        assert f"device {device!r}" in node._models.idle_reason
        # The bad number fell back to its default (the timer does not fire a billion times a second).
        assert node.get_parameter("stats_period").value == 5.0

        # At runtime: a model change that leaves the unusable device in place is refused, naming it...
        other = make_checkpoint(tmp_path / "early.pt", "early")
        refused = _set(node, "checkpoint", str(other))
        assert not refused.successful and f"device {device!r}" in refused.reason, refused.reason
        assert node.get_parameter("checkpoint").value == str(checkpoint)
        # ...as is asking for the device itself, and a number out of range.
        assert not _set(node, "device", device).successful
        period = _set(node, "stats_period", 1e-9)
        assert not period.successful and "must be in [0.1, 3600] s" in period.reason

        # Fixing the device serves the checkpoint.
        assert _set(node, "device", "cpu").successful
        deadline = time.monotonic() + 60
        while node.stats()["model"] == "none" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert node.stats()["model"] == "rgb" and node.stats()["device"] == "cpu"
    finally:
        node.shutdown()
        node.destroy_node()
