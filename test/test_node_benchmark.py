"""`rgbd-fusion-seg bench-node` briefly at a tiny size: every run reports positive latency figures."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

pytest.importorskip("rclpy")


@pytest.mark.slow
def test_bench_node_reports_all_four_runs(tmp_path):
    figures = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "rgbd_fusion_seg.offline.cli", "bench-node", "--size", "48", "64", "--input-size", "32", "32",
        "--duration", "2", "--rate", "15", "--device", "cpu", "--json", str(figures), "--work-dir", str(tmp_path),
        "--domain-id", str(random.Random(os.getpid() + 3).randint(1, 100)),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    for title in ("(i)   bare model", "(ii)  ROS end to end", "(iii) transport only", "(iv)  naive node", "node overhead",
                  "= waiting for the running inference", "semantic point cloud per frame at 64x48"):
        assert title in result.stdout, result.stdout
    data = json.loads(figures.read_text())
    for run in ("model", "node", "transport", "naive"):
        row = data[run]
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"], (run, row)
        assert row["rate_hz"] > 0, (run, row)
        if run != "model":
            assert row["sent"] > 0 and 0 < row["received"] <= row["sent"] and row["drops"] == row["sent"] - row["received"]
    stats = data["node"]["node_stats"]
    assert stats["model"] == "mid"
    waiting, working = float(stats["waiting_p50_ms"]), float(stats["working_p50_ms"])
    assert waiting >= 0 and 0 < working <= float(stats["processing_p90_ms"]) + 1.0
    assert set(data["points"]) == {"1", "4"} and all(ms > 0 for ms in data["points"].values())
    stream = data["stream"]
    assert 0 < stream["p50_ms"] <= stream["p90_ms"] and 0 < stream["stream_received"] <= stream["stream_sent"]
    assert "bare model under the stream (v)" in result.stdout
    assert data["node_overhead_ratio_p50"] > 0
    logs = {path.name: path.read_text() for path in tmp_path.rglob("*_node.log")}
    assert set(logs) == {"segment_node.log", "naive_node.log"}, logs.keys()
    for name, text in logs.items():  # both node processes were stopped with SIGINT, cleanly
        assert "Traceback" not in text, (name, text[-3000:])
