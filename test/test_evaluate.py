"""Evaluation rebuilds everything from the checkpoint and scores exactly what the node would publish."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rgbd_fusion_seg.core.checkpoint import CheckpointError, load_checkpoint
from rgbd_fusion_seg.core.engine import SegmentationEngine
from rgbd_fusion_seg.offline.datasets.mm5 import MM5Dataset
from rgbd_fusion_seg.offline.datasets.synth import CLASSES
from rgbd_fusion_seg.offline.evaluate import evaluate
from rgbd_fusion_seg.offline.metrics import ConfusionMatrix

VAL_FRAMES = 3  # of the tiny set (64x80)


def test_input_resolution_reproduces_the_training_validation(tiny_checkpoint):
    result = evaluate(tiny_checkpoint, device="cpu", resolution="input")
    recorded = load_checkpoint(tiny_checkpoint).metrics["val"]
    assert result["miou"] == pytest.approx(recorded["miou"], abs=1e-9)
    assert result["macc"] == pytest.approx(recorded["macc"], abs=1e-9)
    assert np.sum(result["confusion_matrix"]) == VAL_FRAMES * 32 * 40


def test_native_resolution_result_and_json(tiny_checkpoint, mm5_root, tmp_path):
    out = tmp_path / "eval.json"
    result = evaluate(tiny_checkpoint, device="cpu", out_json=out)
    assert result["settings"]["resolution"] == "native"
    assert result["settings"]["lightings"] == ["RGB2"] and result["settings"]["num_frames"] == VAL_FRAMES
    assert result["settings"]["data_root"] == str(mm5_root)
    assert np.sum(result["confusion_matrix"]) == VAL_FRAMES * 64 * 80  # labels never resized
    assert [row["name"] for row in result["per_class"]] == list(CLASSES)
    written = json.loads(out.read_text())  # strict JSON: NaN written as null
    assert written["miou"] == pytest.approx(result["miou"])
    present = [row["iou"] for row in written["per_class"] if row["gt_pixels"] or row["predicted_pixels"]]
    assert written["miou"] == pytest.approx(np.mean(present))
    assert all(row["iou"] is None for row in written["per_class"] if not (row["gt_pixels"] or row["predicted_pixels"]))


def test_native_evaluation_matches_the_engine_the_node_uses(tiny_checkpoint, mm5_root):
    checkpoint = load_checkpoint(tiny_checkpoint)
    engine = SegmentationEngine(checkpoint, device="cpu")
    dataset = MM5Dataset(mm5_root, lightings=["RGB2"], split="eval_dataset.csv",
                         preprocessing=checkpoint.preprocessing, num_classes=checkpoint.num_classes)
    confusion = ConfusionMatrix(checkpoint.num_classes)
    for index in range(len(dataset)):
        raw = dataset.read_raw(index)
        confusion.update(engine.predict(raw["rgb"], raw["aux"]).mask, raw["label"])
    result = evaluate(tiny_checkpoint, device="cpu")
    np.testing.assert_array_equal(np.asarray(result["confusion_matrix"]), confusion.matrix)


def test_checkpoint_alone_is_enough_and_settings_can_be_overridden(tiny_checkpoint, tmp_path):
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(tiny_checkpoint, alone)
    result = evaluate(alone, device="cpu", lightings=["RGB5", "RGB6"], split="list_train_f.txt")
    assert result["settings"]["lightings"] == ["RGB5", "RGB6"]
    assert result["settings"]["num_frames"] == 2 * 9
    assert result["method"] == "rgb"


def test_evaluation_errors_name_the_problem(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(tmp_path / "missing.pt", device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate(tiny_checkpoint, data_root=tmp_path / "nowhere", device="cpu")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        evaluate(broken, device="cpu")
