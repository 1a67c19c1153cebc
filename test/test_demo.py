"""`rgbd-fusion-seg demo` end to end with tiny settings: generate, train, serve through the real node, report."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rgbd_fusion_seg.offline.demo_model import DEFAULT_METHOD

pytest.importorskip("rclpy")

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--data-frames", "12", "--size", "64", "80", "--input-size", "32", "40", "--train-steps", "2",
    "--batch-size", "4", "--frames", "8", "--rate", "10", "--device", "cpu",
]
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def _figure(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in the demo's output:\n{text}"
    return [float(v) for v in match.groups()]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rgbd_fusion_seg.offline.cli", "demo", *TINY, "--work-dir", str(tmp_path / "cache"),
               "--out", str(out), "--domain-id", str(random.Random(os.getpid() + 7).randint(1, 100))]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-6000:]

    sent, = _figure(r"frames sent:\s+" + NUMBER, text)
    received, = _figure(r"masks received:\s+" + NUMBER, text)
    drops, = _figure(r"drops:\s+" + NUMBER, text)
    assert sent == 8 and 0 < received <= sent and drops == sent - received
    p50, p90, p99 = _figure(rf"latency \(receiver\):\s+p50 {NUMBER} ms\s+p90 {NUMBER} ms\s+p99 {NUMBER} ms", text)
    assert 0 < p50 <= p90 <= p99
    _figure(rf"latency \(node\):\s+p50 {NUMBER} ms", text)
    pairs, = _figure(r"pairs:\s+" + NUMBER, text)
    assert pairs >= received
    miou, macc = _figure(rf"mIoU:\s+{NUMBER} %\s+mAcc:\s+{NUMBER} %", text)
    assert 0 <= miou <= 100 and 0 <= macc <= 100

    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == received
    _check_point_clouds(out, text, received)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["masks_received"] == received and summary["frames_sent"] == 8
    assert summary["latency_ms"]["p50"] > 0
    assert summary["rate_hz"] is None or summary["rate_hz"] > 0  # None with a single mask
    assert summary["node_stats"]["model"] == DEFAULT_METHOD
    assert "stopped segment_node (exit status 0)" in text

    # The second run reuses the cached data and checkpoint instead of training again.
    from rgbd_fusion_seg.offline.demo_model import DEFAULT_DATA, DEFAULT_TRAIN, ensure_checkpoint, prepare_data

    lines = []
    spec = dict(DEFAULT_DATA, num_frames=12, height=64, width=80)
    data_root = prepare_data(tmp_path / "cache", spec, log=lines.append)
    path, _ = ensure_checkpoint(tmp_path / "cache", data_root, DEFAULT_METHOD, steps=2, batch_size=4, input_size=(32, 40),
                                lr=DEFAULT_TRAIN["lr"], device="cpu", retrain=False, log=lines.append)
    assert path.is_file() and path.name == f"{DEFAULT_METHOD}.pt"
    assert not (path.parent / "last.pt").exists(), "the resumable training state is removed once served"
    assert lines and all("generating" not in line and "training" not in line for line in lines), lines
    assert "cached" in lines[-1]


def _check_point_clouds(out: Path, text: str, received: float) -> None:
    """~/points arrived, and each saved cloud's labels are the node's mask's at the pixels its points project to."""
    import cv2
    import numpy as np

    from rgbd_fusion_seg.offline.demo_model import demo_intrinsics

    clouds, per_cloud = _figure(rf"point clouds:\s+{NUMBER} received, {NUMBER} points per cloud", text)
    assert 0 < clouds <= received and per_cloud > 0
    p50, p99 = _figure(rf"latency \(~/points\):\s+p50 {NUMBER} ms\s+p90 {NUMBER} ms\s+p99 {NUMBER} ms", text)[::2]
    assert 0 < p50 <= p99
    saved = sorted((out / "point_clouds").glob("*.npz"))
    assert saved and len(saved) == len(list((out / "point_clouds").glob("*.png")))
    for path in saved:
        with np.load(path) as stored:
            points, mask = stored["points"], stored["mask"]
        height, width = mask.shape
        k = demo_intrinsics(width, height)
        assert points.size > 0 and (points["z"] > 0).all()
        sample = np.random.default_rng(0).choice(points.size, min(points.size, 200), replace=False)
        z = points["z"][sample].astype(np.float64)
        u = k["fx"] * points["x"][sample] / z + k["cx"]
        v = k["fy"] * points["y"][sample] / z + k["cy"]
        columns, rows = np.rint(u).astype(int), np.rint(v).astype(int)
        assert np.abs(u - columns).max() < 1e-2 and np.abs(v - rows).max() < 1e-2, "points are not at pixel centres"
        assert (columns % 2 == 0).all() and (rows % 2 == 0).all(), "the node's default points.stride is 2"
        np.testing.assert_array_equal(points["label"][sample], mask[rows, columns], err_msg=path.name)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clouds_received"] == clouds and summary["cloud_label_agreement"] == 1.0
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[1] == 5 * width  # camera | depth | mask | ground truth | point cloud


def test_demo_fails_cleanly_when_the_node_dies(tmp_path):
    """A node that exits at start-up: the demo reports it with the node's log instead of hanging."""
    from rgbd_fusion_seg.offline.demo import DemoClient, stream
    from rgbd_fusion_seg.offline.node_harness import NodeProcess, RosSession, ros_environment

    env = ros_environment(random.Random(os.getpid() + 11).randint(1, 100))
    node = NodeProcess(None, env=env, log_path=tmp_path / "node.log", module="rgbd_fusion_seg.no_such_module")
    session = RosSession("demo_failure_test", env)
    try:
        client = DemoClient(session, "/rgbd_fusion_seg_demo/segment_node")
        with pytest.raises(RuntimeError, match="No module named|exited|did not connect"):
            stream(client, [], 10.0, node, ready_timeout=20.0)
    finally:
        session.close()
        node.stop()
