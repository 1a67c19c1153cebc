"""`rgbd-fusion-seg gpu-report`: on a machine without CUDA, `--quick` writes the markdown and JSON report with
every GPU row "n/a: no CUDA", also where rclpy, onnxruntime and mambapy do not import (each skipped with its
reason, the rest measured); rows past the time budget say so; bad arguments are refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgbd_fusion_seg.offline import gpu_report
from rgbd_fusion_seg.offline.gpu_report import NO_CUDA, SERVING_ROWS, Report, markdown_table

ROOT = Path(__file__).resolve().parents[1]
UNIMPORTABLE = ("rclpy", "onnxruntime", "mambapy")


@pytest.mark.slow  # a child process importing torch, and the chunked scan timed on the CPU
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_quick_report_without_cuda_nor_optional_packages(tmp_path):
    stubs = tmp_path / "stubs"
    for package in UNIMPORTABLE:  # found before the installed ones: importing them fails as if absent
        (stubs / package).mkdir(parents=True)
        (stubs / package / "__init__.py").write_text(f"raise ImportError('{package} made unimportable by the test')\n")
    environment = os.environ | {"PYTHONPATH": os.pathsep.join([str(stubs), str(ROOT)])}
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "rgbd_fusion_seg.offline.cli", "gpu-report", "--out", str(out), "--quick"],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[" in done.stdout and "scan" in done.stdout  # progress, section by section
    report = json.loads((out / "gpu_report.json").read_text())
    markdown = (out / "gpu_report.md").read_text()

    environment_rows = {row["item"]: row["value"] for row in report["environment"]}
    assert environment_rows["GPU"] == NO_CUDA
    for package in UNIMPORTABLE:
        assert environment_rows[package] == f"skipped: {package} is not importable ({package} made unimportable by the test)"
    serving = report["serving"]
    assert [row["method"] for row in serving] == ["rgb"] * len(SERVING_ROWS) + ["sccosf ConvNeXt-B"] * len(SERVING_ROWS)
    assert [row["row"] for row in serving[:len(SERVING_ROWS)]] == list(SERVING_ROWS)
    for section in ("serving", "node", "training"):
        assert report[section] and all(row["result"] == NO_CUDA for row in report[section]), section
    scans = {row["backend"]: row for row in report["scan"]}
    assert scans["chunked"]["forward ms"] > 0 and scans["chunked"]["device"] == "cpu"
    assert scans["mambapy"]["result"] == "skipped: mambapy is not importable (mambapy made unimportable by the test)"
    assert scans["mamba_ssm"]["result"] == NO_CUDA
    assert report["settings"]["device"] == NO_CUDA and report["settings"]["elapsed_s"] < 120
    for heading in ("## environment", "## serving", "## node", "## scan", "## training"):
        assert heading in markdown
    assert f"| rgb | 480x640 | TensorRT fp16 | {NO_CUDA} |" in markdown


def test_rows_past_the_time_budget_say_so(capsys):
    report = Report(budget_s=0.0)
    gpu_report.scan_rows(report, None, quick=True)
    rows = {row["backend"]: row["result"] for row in report.sections["scan"]}
    assert rows["chunked"] == "skipped: the time budget was spent" and rows["mamba_ssm"] == NO_CUDA
    assert "backend chunked" in capsys.readouterr().out


def test_markdown_table_takes_every_rows_columns():
    lines = markdown_table([{"method": "mid", "p50 ms": 12.345}, {"method": "rgb", "result": NO_CUDA}])
    assert lines == ["| method | p50 ms | result |", "|---|---|---|", "| mid | 12.3 | - |", f"| rgb | - | {NO_CUDA} |"]
    assert markdown_table([]) == ["(no rows)"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="--methods: unknown resnet; known: rgb, early"):
        gpu_report._chosen_methods(["resnet"], quick=False)
    with pytest.raises(ValueError, match="gpu-report measures a GPU"):
        gpu_report._cuda_device("cpu")
    assert [label for label, _, _ in gpu_report._chosen_methods(None, quick=True)] == ["rgb", "sccosf ConvNeXt-B"]
    assert [label for label, _, _ in gpu_report._chosen_methods(["mid", "se"], quick=True)] == ["mid", "se"]
