"""Evaluation rebuilds everything from the checkpoint and scores exactly what the node would publish."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassJaccardIndex

from rgbd_fusion_seg.core.checkpoint import CheckpointError, load_checkpoint
from rgbd_fusion_seg.core.engine import SegmentationEngine
from rgbd_fusion_seg.core.preprocessing import prepare_inputs
from rgbd_fusion_seg.offline.config import config_from_dict
from rgbd_fusion_seg.offline.datasets.mfnet import MFNetDataset
from rgbd_fusion_seg.offline.datasets.mm5 import MM5Dataset
from rgbd_fusion_seg.offline.datasets.replicas import write_mfnet_replica
from rgbd_fusion_seg.offline.datasets.synth import CLASSES
from rgbd_fusion_seg.offline.evaluate import evaluate_checkpoint, format_markdown, format_summary
from rgbd_fusion_seg.offline.metrics import ConfusionMatrix
from rgbd_fusion_seg.offline.train import train

VAL_FRAMES = 3  # of the tiny set (64x80)


def test_input_resolution_reproduces_the_training_validation(tiny_checkpoint):
    result = evaluate_checkpoint(tiny_checkpoint, device="cpu", resolution="input")
    recorded = load_checkpoint(tiny_checkpoint).metrics["val"]
    assert result["miou"] == pytest.approx(recorded["miou"], abs=1e-9)
    assert result["macc"] == pytest.approx(recorded["macc"], abs=1e-9)
    assert np.sum(result["confusion_matrix"]) == VAL_FRAMES * 32 * 40


def test_native_resolution_result_and_json(tiny_checkpoint, mm5_root, tmp_path):
    out = tmp_path / "eval.json"
    result = evaluate_checkpoint(tiny_checkpoint, device="cpu", out_json=out)
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
    result = evaluate_checkpoint(tiny_checkpoint, device="cpu")
    np.testing.assert_array_equal(np.asarray(result["confusion_matrix"]), confusion.matrix)


def test_saved_predictions_are_the_engines_masks(tiny_checkpoint, mm5_root, tmp_path):
    import cv2

    from rgbd_fusion_seg.core.palette import colourise

    checkpoint = load_checkpoint(tiny_checkpoint)
    engine = SegmentationEngine(checkpoint, device="cpu")
    out = tmp_path / "predictions"
    result = evaluate_checkpoint(tiny_checkpoint, device="cpu", save_predictions=out)
    dataset = MM5Dataset(mm5_root, lightings=["RGB2"], split="eval_dataset.csv",
                         preprocessing=checkpoint.preprocessing, num_classes=checkpoint.num_classes)
    assert result["settings"]["predictions"] == str(out)
    assert len(list((out / "masks").rglob("*.png"))) == len(dataset) == VAL_FRAMES
    assert not (out / "fused").exists()  # the method makes no fused image
    for index in range(len(dataset)):
        raw = dataset.read_raw(index)
        mask = engine.predict(raw["rgb"], raw["aux"]).mask
        np.testing.assert_array_equal(cv2.imread(str(out / "masks" / f"{raw['stem']}.png"), cv2.IMREAD_UNCHANGED), mask)
        colour = cv2.imread(str(out / "mask_color" / f"{raw['stem']}.png"))[..., ::-1]
        np.testing.assert_array_equal(colour, colourise(mask, np.asarray(checkpoint.palette, np.uint8)))
    with pytest.raises(ValueError, match="exists already"):  # never overwritten
        evaluate_checkpoint(tiny_checkpoint, device="cpu", save_predictions=out)


def test_checkpoint_alone_is_enough_and_settings_can_be_overridden(tiny_checkpoint, tmp_path):
    alone = tmp_path / "elsewhere" / "model.pt"
    alone.parent.mkdir()
    shutil.copy(tiny_checkpoint, alone)
    result = evaluate_checkpoint(alone, device="cpu", lightings=["RGB5", "RGB6"], split="list_train_f.txt")
    assert result["settings"]["lightings"] == ["RGB5", "RGB6"]
    assert result["settings"]["num_frames"] == 2 * 9
    assert result["method"] == "rgb"


def test_evaluation_errors_name_the_problem(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate_checkpoint(tmp_path / "missing.pt", device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        evaluate_checkpoint(tiny_checkpoint, data_root=tmp_path / "nowhere", device="cpu")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        evaluate_checkpoint(broken, device="cpu")


@pytest.fixture(scope="module")
def mfnet_checkpoint(tmp_path_factory):
    """An 8-step `rgb` model on an 8-frame MFNet replica (32x40, native size); test split: 1 day + 1 night."""
    root = tmp_path_factory.mktemp("mfnet") / "MFNet"
    write_mfnet_replica(root, num_frames=8, height=32, width=40, seed=0)
    raw = {
        "model": {"method": "rgb", "pretrained": False},
        "data": {"dataset": "mfnet", "root": str(root), "aux_folder": "thermal", "train_split": "train",
                 "val_split": "test", "input_size": None, "num_classes": 9},
        "train": {"epochs": 4, "batch_size": 2, "lr": 0.01, "amp": False, "num_workers": 0, "augment": False,
                  "checkpoint_every_steps": None},
        "out_dir": str(root.parent / "run"),
    }
    return train(config_from_dict(raw, source="mfnet-tiny"), device="cpu", log=lambda message: None)


@pytest.mark.slow  # trains the MFNet replica model first (4 epochs)
def test_day_night_groups_flip_and_multiscale_are_reported_separately(mfnet_checkpoint, tmp_path):
    scales = [0.5, 1.0, 1.5]
    result = evaluate_checkpoint(mfnet_checkpoint, device="cpu", flip=True, scales=scales, out_json=tmp_path / "r.json")
    assert set(result["groups"]) == {"day", "night"}
    assert set(result["tta"]) == {"flip", "multiscale", "multiscale_flip"}
    assert result["tta"]["multiscale_flip"]["confusion_matrix"] != result["confusion_matrix"]
    for entry in [result, *result["tta"].values()]:
        day, night = (np.asarray(entry["groups"][g]["confusion_matrix"]) for g in ("day", "night"))
        assert day.sum() == night.sum() == 32 * 40
        np.testing.assert_array_equal(day + night, entry["confusion_matrix"])
    # the multiscale + flip entry against a direct computation: mean softmax over 3 scales x 2 flips
    checkpoint = load_checkpoint(mfnet_checkpoint)
    model = checkpoint.build_model().deploy().eval()
    dataset = MFNetDataset(json.loads((tmp_path / "r.json").read_text())["settings"]["data_root"], split="test",
                           preprocessing=checkpoint.preprocessing)
    expected = {"day": ConfusionMatrix(9), "night": ConfusionMatrix(9)}
    jaccard = MulticlassJaccardIndex(9, average="macro", ignore_index=255)
    with torch.no_grad():
        for index in range(len(dataset)):
            raw = dataset.read_raw(index)
            rgb, aux = (torch.from_numpy(a)[None] for a in prepare_inputs(raw["rgb"], raw["aux"],
                                                                          checkpoint.preprocessing))
            total = 0
            for scale in scales:
                size = (round(32 * scale), round(40 * scale))
                x = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
                t = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
                for flipped in (False, True):
                    logits = model(x.flip(-1), t.flip(-1)).logits.flip(-1) if flipped else model(x, t).logits
                    logits = F.interpolate(logits, size=(32, 40), mode="bilinear", align_corners=False)
                    total = total + torch.softmax(logits, dim=1)
            label = torch.from_numpy(raw["label"].astype(np.int64))
            expected[raw["group"]].update(total.argmax(dim=1)[0], label)
            jaccard.update(total.argmax(dim=1)[0], label)
    for group, cm in expected.items():
        np.testing.assert_array_equal(result["tta"]["multiscale_flip"]["groups"][group]["confusion_matrix"], cm.matrix)
    assert result["tta"]["multiscale_flip"]["miou"] == pytest.approx(jaccard.compute().item(), abs=1e-6)


@pytest.mark.slow  # trains the MFNet replica model first (4 epochs)
def test_background_option_and_the_papers_table(mfnet_checkpoint, tmp_path):
    counted = evaluate_checkpoint(mfnet_checkpoint, device="cpu")
    excluded = evaluate_checkpoint(mfnet_checkpoint, device="cpu", exclude_background=True)
    ious = [row["iou"] for row in counted["per_class"]]
    assert counted["miou"] == pytest.approx(np.mean([v for v in ious if v is not None]))
    assert excluded["miou"] == pytest.approx(np.mean([v for v in ious[1:] if v is not None]))
    assert excluded["per_class"] == counted["per_class"] and excluded["excluded_from_mean"] == [0]
    assert counted["tta"] == {} and counted["settings"]["exclude_background"] is False
    table = format_markdown(excluded).splitlines()
    assert table[2].startswith("| | unlabeled* Acc | unlabeled* IoU | car Acc | car IoU |")
    assert [line.split("|")[1].strip() for line in table[4:7]] == ["rgb plain", "rgb plain day", "rgb plain night"]
    assert table[7:] == ["", "\\* left out of mAcc and mIoU"]
    assert table[4].endswith(f"| {100 * excluded['macc']:.1f} | {100 * excluded['miou']:.1f} |")
    # the console summary of a dataset without lightings names its groups (it used to fail on None)
    summary = format_summary(excluded).splitlines()
    assert summary[0].startswith("rgb on ") and "mfnet frames (" in summary[0] and "night" in summary[0]
    assert "* left out of mIoU and mAcc (--exclude-background)" in summary
