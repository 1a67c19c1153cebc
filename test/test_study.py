"""The lighting study end to end on generated data: table (md + csv), results.json and four figures."""
from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

from rgbd_fusion_seg.core.checkpoint import load_checkpoint
from rgbd_fusion_seg.offline.cli import main
from rgbd_fusion_seg.offline.config import config_from_dict
from rgbd_fusion_seg.offline.plots import FIGURE_NAMES
from rgbd_fusion_seg.offline.study import run_study, table_rows, write_tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def study_config(tmp_path):
    return config_from_dict(
        {
            "experiment": "tiny_study",
            "model": {"method": "rgb", "pretrained": False},
            "data": {"root": str(tmp_path / "generated"), "input_size": [32, 48], "num_classes": None},
            "train": {"epochs": 1, "batch_size": 3, "amp": False, "num_workers": 0, "augment": False,
                      "checkpoint_every_steps": None},
            "study": {"methods": ["rgb", "early"], "lightings": ["RGB1", "RGB4"],
                      "generate": {"num_frames": 8, "seed": 1, "height": 48, "width": 64, "val_fraction": 0.25}},
            "out_dir": str(tmp_path / "study"),
        },
        source="tiny study",
    )


@pytest.mark.slow  # a study of several training runs, resumed
def test_tiny_study_writes_table_and_figures_and_resumes(tmp_path):
    config = study_config(tmp_path)
    result = run_study(config, device="cpu", log=lambda m: None)
    out = tmp_path / "study"
    assert (tmp_path / "generated" / "classes.txt").is_file()  # generated on first use

    # the table, recomputed from the per-run JSON files
    expected = {}
    for method in ("rgb", "early"):
        for lighting in ("RGB1", "RGB4"):
            run = json.loads((out / "runs" / method / lighting / "eval.json").read_text())
            assert run["settings"]["lightings"] == [lighting] and run["method"] == method
            expected[method, lighting] = 100 * run["miou"]
    with open(out / "results.csv", newline="") as handle:
        rows = {row["lighting"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["RGB1", "RGB4", "Max", "Mean"]
    for method in ("rgb", "early"):
        values = [expected[method, k] for k in ("RGB1", "RGB4")]
        assert rows["RGB1"][method] == f"{values[0]:.2f}" and rows["RGB4"][method] == f"{values[1]:.2f}"
        assert rows["Max"][method] == f"{max(values):.2f}"
        assert rows["Mean"][method] == f"{np.mean(values):.2f}"
    markdown = (out / "results.md").read_text().splitlines()
    assert markdown[0].split("|")[2].strip() == "RGB baseline" and "Early Fusion" in markdown[0]
    assert [line.split("|")[1].strip() for line in markdown[2:]] == ["RGB1", "RGB4", "Max", "Mean"]
    assert f"{np.mean([expected['early', k] for k in ('RGB1', 'RGB4')]):.2f}" in markdown[-1]
    summary = json.loads((out / "results.json").read_text())
    assert summary["miou_percent"]["rgb"]["RGB4"] == pytest.approx(expected["rgb", "RGB4"])

    for name in FIGURE_NAMES.values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert set(result.files) >= {"markdown", "csv", "json", "heatmap", "per_lighting", "summary", "radar"}
    slim = load_checkpoint(out / "runs" / "rgb" / "RGB1" / "last.pt")  # slimmed once scored
    assert slim.train_state["finished"] and "optimizer" not in slim.train_state

    # rerunning skips every finished run (nothing is trained again)
    messages = []
    again = run_study(config, device="cpu", log=messages.append)
    assert all(run["status"] == "done before" for run in again.runs)
    assert not any("training" in m for m in messages)
    assert again.table == result.table

    # the command line rebuilds the report from the finished runs
    (out / "results.md").unlink()
    assert main(["study", "--config", str(tmp_path / "cfg.yaml"), "--report-only"]) == 2  # no such file
    (tmp_path / "cfg.yaml").write_text(json.dumps(config.to_dict()))  # JSON is YAML
    assert main(["study", "--config", str(tmp_path / "cfg.yaml"), "--report-only", "--device", "cpu"]) == 0
    assert (out / "results.md").is_file()


def test_table_handles_missing_runs(tmp_path):
    table = {"rgb": {"RGB1": 50.0, "RGB2": math.nan}, "mid": {"RGB1": 10.0, "RGB2": 30.0}}
    rows = dict(table_rows(table, ["rgb", "mid"], ["RGB1", "RGB2"]))
    assert rows["Max"] == [50.0, 30.0] and rows["Mean"] == [50.0, 20.0]
    md, csv_path = write_tables(table, ["rgb", "mid"], ["RGB1", "RGB2"], tmp_path)
    assert "| RGB2 | - | 30.00 |" in md.read_text()
    assert csv_path.read_text().splitlines()[2] == "RGB2,,30.00"


def test_missing_data_without_generation_is_a_clear_error(tmp_path):
    raw = study_config(tmp_path).to_dict()
    raw["study"]["generate"] = None
    config = config_from_dict(raw)
    with pytest.raises(FileNotFoundError, match="--generate"):
        run_study(config, device="cpu", log=lambda m: None)
