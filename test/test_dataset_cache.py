"""The cached full-validation report: hit without reading a file, invalidated by a change to a file it depends on."""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from rgbd_fusion_seg.offline.datasets.folder import FolderDataset
from rgbd_fusion_seg.offline.datasets.mm5 import MM5Dataset
from rgbd_fusion_seg.offline.datasets.replicas import write_folder_dataset
from rgbd_fusion_seg.offline.dataset_cache import CACHE_FOLDER, validated_report


def open_split(root, split="train_dataset.csv"):
    return MM5Dataset(root, lightings=["RGB2"], split=split)


def forbid_reading(monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("the images were read although the cached report was valid")

    monkeypatch.setattr(MM5Dataset, "validate", fail)


def test_second_call_reads_no_image_and_a_changed_file_invalidates(mm5_copy, monkeypatch):
    cache = mm5_copy / CACHE_FOLDER
    before = set(cache.glob("validation-*.json"))  # the copied entries name the original root: not used
    first = validated_report(open_split(mm5_copy))
    assert not first.pop("from_cache")
    assert sum(first["class_pixels"]) == 9 * 64 * 80
    assert len(set(cache.glob("validation-*.json")) - before) == 1

    with monkeypatch.context() as patch:
        forbid_reading(patch)
        second = validated_report(open_split(mm5_copy))
        assert second.pop("from_cache") and second == first
        # another split of the same root is another entry
        with pytest.raises(AssertionError, match="cached report"):
            validated_report(open_split(mm5_copy, "eval_dataset.csv"))

    # a file the split does not read changes nothing; a rewritten label of the split (all background now)
    # makes the report stale
    eval_label = mm5_copy / "ANNO_CLASS" / f"{open_split(mm5_copy, 'eval_dataset.csv').stems[0]}.png"
    cv2.imwrite(str(eval_label), np.zeros((64, 80), np.uint8))
    with monkeypatch.context() as patch:
        forbid_reading(patch)
        assert validated_report(open_split(mm5_copy))["from_cache"]
    label = mm5_copy / "ANNO_CLASS" / f"{open_split(mm5_copy).stems[0]}.png"
    cv2.imwrite(str(label), np.zeros((64, 80), np.uint8))
    os.utime(label, ns=(label.stat().st_atime_ns, label.stat().st_mtime_ns + 10**9))
    third = validated_report(open_split(mm5_copy))
    assert not third.pop("from_cache")
    assert third["class_pixels"][0] > first["class_pixels"][0]
    assert validated_report(open_split(mm5_copy))["from_cache"]


def test_read_only_root_falls_back_to_the_user_cache(mm5_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shutil.rmtree(mm5_copy / CACHE_FOLDER, ignore_errors=True)  # copied along when other tests trained on it
    (mm5_copy / CACHE_FOLDER).write_text("a file where the cache folder would go: the root is not usable")
    assert not validated_report(open_split(mm5_copy))["from_cache"]
    (entry,) = (tmp_path / "xdg" / "rgbd_fusion_seg").glob("validation-*.json")
    assert json.loads(entry.read_text())["identity"]["root"] == str(mm5_copy.resolve())
    assert validated_report(open_split(mm5_copy))["from_cache"]


def test_folder_dataset_yaml_is_part_of_the_fingerprint(tmp_path):
    root = tmp_path / "folder"
    write_folder_dataset(root, modality="depth", aux_unit="mm", num_frames=3, height=16, width=20)
    first = validated_report(FolderDataset(root, split="all"))
    assert not first.pop("from_cache") and first["ignore_pixels"] == 0
    assert validated_report(FolderDataset(root, split="all"))["from_cache"]
    # class 0 declared "ignore" in dataset.yaml: same images, other counts, so the cached report is stale
    description = root / "dataset.yaml"
    description.write_text(description.read_text().replace("ignore_index: 255", "ignore_index: 0"))
    os.utime(description, ns=(description.stat().st_atime_ns, description.stat().st_mtime_ns + 10**9))
    second = validated_report(FolderDataset(root, split="all"))
    assert not second.pop("from_cache")
    assert second["ignore_pixels"] == first["class_pixels"][0] > 0 and second["class_pixels"][0] == 0
