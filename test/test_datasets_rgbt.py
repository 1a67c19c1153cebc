"""MFNet, PST900, FMB and folder-layout loaders on replicas of their on-disk layouts (datasets/replicas.py),
the real PST900 frame, augmentation, the catalogue, the data section of the config, and every bad input."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from rgbd_fusion_seg.core.preprocessing import Preprocessing
from rgbd_fusion_seg.offline.config import DEFAULT_AUGMENTATION, ConfigError, config_from_dict, load_config
from rgbd_fusion_seg.offline.datasets import replicas
from rgbd_fusion_seg.offline.datasets.augment import Augmentation, augment_frame
from rgbd_fusion_seg.offline.datasets.catalog import build_preprocessing, open_dataset
from rgbd_fusion_seg.offline.datasets.fmb import FMB_CLASSES, FMBDataset
from rgbd_fusion_seg.offline.datasets.fmb import default_aux_normalisation as fmb_aux
from rgbd_fusion_seg.offline.datasets.folder import FolderDataset
from rgbd_fusion_seg.offline.datasets.imageio import DatasetError
from rgbd_fusion_seg.offline.datasets.mfnet import MFNET_CLASSES, MFNetDataset
from rgbd_fusion_seg.offline.datasets.pst900 import PST900Dataset
from rgbd_fusion_seg.offline.datasets.pst900 import default_aux_normalisation as pst900_aux

REPO = Path(__file__).resolve().parents[1]
NATIVE = Preprocessing(input_size=None)
H, W = 48, 64


def native(dataset_aux) -> Preprocessing:
    return Preprocessing(input_size=None, aux=dataset_aux)


def read(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def replica_roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("replicas")
    roots = {"mfnet": base / "mfnet", "pst900": base / "pst900", "fmb": base / "fmb"}
    replicas.write_mfnet_replica(roots["mfnet"])
    replicas.write_pst900_replica(roots["pst900"])
    replicas.write_fmb_replica(roots["fmb"])
    for modality, unit in (("depth", "mm"), ("depth", "m"), ("thermal", "raw8"), ("thermal", "raw16"), ("thermal", "celsius")):
        roots[unit] = base / f"folder_{unit}"
        replicas.write_folder_dataset(roots[unit], modality=modality, aux_unit=unit)
    return roots


@pytest.fixture
def copy_of(replica_roots, tmp_path):
    """copy_of(name) -> a private, writable copy of one replica."""
    return lambda name: Path(shutil.copytree(replica_roots[name], tmp_path / name))


# ----------------------------------------------------------------------------------------------------
# MFNet


def test_mfnet_channels_units_groups_and_splits(replica_roots):
    root = replica_roots["mfnet"]
    dataset = MFNetDataset(root, split="train")
    assert dataset.preprocessing.input_size is None and dataset.classes == list(MFNET_CLASSES)
    raw = dataset.read_raw(0)
    stored = read(root / "images" / f"{raw['stem']}.png")  # OpenCV order: B, G, R, thermal
    assert stored.shape == (H, W, 4)
    assert np.array_equal(raw["rgb"], stored[..., [2, 1, 0]])
    assert np.array_equal(raw["aux"], stored[..., 3].astype(np.float32))
    assert np.array_equal(raw["label"], read(root / "labels" / f"{raw['stem']}.png"))
    sample = dataset[0]
    assert sample["rgb"].shape == (3, H, W) and sample["aux"].shape == (1, H, W) and sample["label"].shape == (H, W)
    assert torch.allclose(sample["aux"][0], torch.from_numpy(stored[..., 3] / np.float32(255.0)))
    assert {dataset[i]["group"] for i in range(len(dataset))} == {"day", "night"}
    for split, groups in (("test", {"day", "night"}), ("test_day", {"day"}), ("test_night", {"night"})):
        part = MFNetDataset(root, split=split)
        assert set(part.groups) == groups and part.split == split
    assert len(MFNetDataset(root, split="val")) == 2 and len(MFNetDataset(root, split="test")) == 2
    report = dataset.validate(full=True)
    assert len(report["class_pixels"]) == 9 and sum(report["class_pixels"]) == 4 * H * W
    assert report["files_checked"] == 8  # image (colour + thermal) and labels of 4 frames


def test_mfnet_three_channel_image_and_bad_labels(copy_of):
    root = copy_of("mfnet")
    image = read(root / "images" / "00001D.png")
    cv2.imwrite(str(root / "images" / "00001D.png"), image[..., :3])
    dataset = MFNetDataset(root, split=["00001D", "00002N"])
    with pytest.raises(DatasetError, match=r"00001D\.png has 3 channel\(s\).*must have 4"):
        dataset[0]
    labels = read(root / "labels" / "00002N.png")
    labels[0, 0], labels[0, 1] = 9, 200
    cv2.imwrite(str(root / "labels" / "00002N.png"), labels)
    with pytest.raises(DatasetError, match=r"labels/00002N\.png has class id\(s\) 9, 200 >= num_classes 9"):
        dataset[1]
    with pytest.raises(DatasetError, match=r"(?s)\(2 problem\(s\)\).*00001D.*00002N"):
        dataset.validate(full=True)  # every problem, not just the first


def test_mfnet_layout_errors(copy_of):
    root = copy_of("mfnet")
    (root / "test_day.txt").unlink()
    with pytest.raises(DatasetError, match=r"no split file test_day\.txt; it has: .*train\.txt.*expected the MFNet layout"):
        MFNetDataset(root, split="test_day")
    with pytest.raises(DatasetError, match="unknown MFNet aux choice 'depth'"):
        MFNetDataset(root, split="train", aux_folder="depth")
    (root / "labels" / "00003D.png").unlink()
    with pytest.raises(DatasetError, match=r"frame '00003D' missing in labels/"):
        MFNetDataset(root, split="train")
    shutil.rmtree(root / "images")
    with pytest.raises(DatasetError, match=r"lacks folder\(s\) images/; it has: labels/.*expected the MFNet layout"):
        MFNetDataset(root, split="train")


def test_named_split_entries_that_leave_the_data_root_are_refused(copy_of, tmp_path):
    """MFNet and folder-layout split lists: '..' and absolute entries would read frames from elsewhere."""
    for name, loader, folder, stem in (("mfnet", MFNetDataset, "images", "00001D"), ("mm", FolderDataset, "rgb", "frame_0001")):
        root = copy_of(name)
        outside = tmp_path / f"outside_{name}"
        shutil.copytree(root, outside)
        for entry in (f"../../outside_{name}/{folder}/{stem}", str(outside / folder / stem)):
            (root / "escape.txt").write_text(f"{stem}\n{entry}\n")
            pattern = rf"{re.escape(str(root / 'escape.txt'))} line 2: entry '{re.escape(entry)}' leaves the data root"
            with pytest.raises(DatasetError, match=pattern):
                loader(root, split="escape")
            with pytest.raises(DatasetError, match=rf"split list item 1: entry '{re.escape(entry)}' leaves the data root"):
                loader(root, split=[stem, entry])


# ----------------------------------------------------------------------------------------------------
# PST900


def test_pst900_aux_choices_and_units(replica_roots):
    root = replica_roots["pst900"]
    train = PST900Dataset(root, split="train")
    assert len(train) == 4 and len(PST900Dataset(root, split="test")) == 2
    assert train.groups == ["train"] and train.num_classes == 5 and train.classes[0] == "background"
    stem = train.stems[0]
    thermal = train.read_raw(0)["aux"]
    stored = read(root / "train" / "thermal" / f"{stem}.png")
    assert stored.dtype == np.uint8 and np.isnan(thermal[:, 0]).all()  # 0 = outside the thermal view
    assert np.array_equal(thermal[stored > 0], stored[stored > 0].astype(np.float32))
    raw16 = PST900Dataset(root, split="train", aux_folder="thermal_raw", preprocessing=native(pst900_aux("thermal_raw")))
    stored16 = read(root / "train" / "thermal_raw" / f"{stem}.png")
    assert stored16.dtype == np.uint16 and raw16.preprocessing.aux.unit == "raw16"
    assert np.array_equal(raw16.read_raw(0)["aux"][stored16 > 0], stored16[stored16 > 0].astype(np.float32))
    low, high = raw16.validate()["aux_value_range"]  # raw counts of a room: (273.15 + ~20 deg C) * 64
    assert 18000 < low < high < 20500
    depth = PST900Dataset(root, split="train", aux_folder="depth")
    stored_mm = read(root / "train" / "depth" / f"{stem}.png")
    metres = depth.read_raw(0)["aux"]
    assert depth.preprocessing.aux.unit == "m" and np.isnan(metres[stored_mm == 0]).all()
    assert np.allclose(metres[stored_mm > 0], stored_mm[stored_mm > 0] / 1000.0)
    assert 0.5 < np.nanmedian(metres) < 2.0  # the replica's table scene: about a metre away
    report = train.validate()
    assert len(report["class_pixels"]) == 5 and 0.8 < report["aux_valid_fraction"] < 0.9  # 1/8 outside the view


def test_pst900_bad_inputs(copy_of):
    root = copy_of("pst900")
    with pytest.raises(DatasetError, match="unknown PST900 aux choice 'T16'.*thermal, thermal_raw, depth"):
        PST900Dataset(root, aux_folder="T16")
    with pytest.raises(DatasetError, match="splits train, test"):
        PST900Dataset(root, split="val")
    stem = "000001"
    cv2.imwrite(str(root / "train" / "thermal" / f"{stem}.png"), np.full((H // 2, W), 9, np.uint16))
    with pytest.raises(DatasetError, match=rf"frame '{stem}' has images of different sizes: train/rgb 36x64, train/thermal 24x64"):
        PST900Dataset(root)
    cv2.imwrite(str(root / "train" / "thermal" / f"{stem}.png"), np.full((36, W), 9, np.uint16))
    with pytest.raises(DatasetError, match=rf"thermal/{stem}\.png is 16-bit \(uint16\), but PST900 thermal/ images must be uint8"):
        PST900Dataset(root)[0]
    shutil.rmtree(root / "test" / "depth")
    with pytest.raises(DatasetError, match=r"lacks folder\(s\) test/depth/.*expected the PST900 layout"):
        PST900Dataset(root, split="test", aux_folder="depth")


def test_pst900_reads_the_real_frame(pst900_realdata, tmp_path):
    """The real 1280x720 PST900 colour and thermal frames in a PST900 layout, labels written here."""
    root = tmp_path / "PST900"
    for folder, source in (("rgb", "pst900_rgb.png"), ("thermal", "pst900_thermal_mono8.png")):
        (root / "train" / folder).mkdir(parents=True)
        shutil.copy(pst900_realdata / source, root / "train" / folder / "real.png")
    labels = np.zeros((720, 1280), np.uint8)
    labels[300:500, 600:900] = 4  # a "survivor" box
    (root / "train" / "labels").mkdir()
    cv2.imwrite(str(root / "train" / "labels" / "real.png"), labels)
    dataset = PST900Dataset(root, split="train")
    raw = dataset.read_raw(0)
    assert raw["rgb"].shape == (720, 1280, 3) and raw["aux"].shape == (720, 1280)
    assert np.array_equal(raw["rgb"], read(pst900_realdata / "pst900_rgb.png")[..., ::-1])
    assert np.array_equal(raw["aux"], read(pst900_realdata / "pst900_thermal_mono8.png").astype(np.float32))
    assert dataset.validate()["class_pixels"] == [720 * 1280 - 200 * 300, 0, 0, 0, 200 * 300]
    recipe = load_config(REPO / "config" / "experiments" / "pst900" / "base.yaml").data.augmentation
    augmented = PST900Dataset(root, split="train", augment=True, augmentation=Augmentation.from_config(recipe))
    torch.manual_seed(0)
    sample = augmented[0]
    assert sample["rgb"].shape == (3, 360, 640) and sample["aux"].shape == (1, 360, 640)
    assert set(sample["label"].unique().tolist()) <= {0, 4, 255}


# ----------------------------------------------------------------------------------------------------
# FMB


def test_fmb_15_and_14_classes(replica_roots):
    root = replica_roots["fmb"]
    full = FMBDataset(root, split="train", fmb_classes=15)
    short = FMBDataset(root, split="train", fmb_classes=14)
    assert full.classes == list(FMB_CLASSES) and short.classes == list(FMB_CLASSES[1:])
    stored = read(root / "train" / "Label" / f"{full.stems[0]}.png")
    assert (stored == 0).any() and np.array_equal(full.read_raw(0)["label"], stored)
    shifted = short.read_raw(0)["label"]
    assert (shifted[stored == 0] == 255).all() and np.array_equal(shifted[stored > 0], stored[stored > 0] - 1)
    full_report, short_report = full.validate(), short.validate()
    assert full_report["class_pixels"][1:] == short_report["class_pixels"]
    assert short_report["ignore_pixels"] == full_report["class_pixels"][0] > 0
    assert full[0]["rgb"].shape == (3, H, W) and full.groups == ["train"] and len(FMBDataset(root, split="test")) == 2


def test_fmb_bad_inputs(copy_of):
    root = copy_of("fmb")
    with pytest.raises(DatasetError, match="FMB has no validation split"):
        FMBDataset(root, split="val")
    with pytest.raises(DatasetError, match="fmb_classes must be 15 .* or 14"):
        FMBDataset(root, fmb_classes=9)
    labels = read(root / "test" / "Label" / "00004.png")
    labels[5, 5] = 20
    cv2.imwrite(str(root / "test" / "Label" / "00004.png"), labels)
    with pytest.raises(DatasetError, match=r"Label/00004\.png has class id\(s\) 20 outside FMB's 0\.\.14"):
        FMBDataset(root, split="test", fmb_classes=14).validate()
    shutil.rmtree(root / "train" / "Infrared")
    with pytest.raises(DatasetError, match=r"lacks folder\(s\) train/Infrared/"):
        FMBDataset(root)


# ----------------------------------------------------------------------------------------------------
# Folder layout (the user's own data, the bag export)


@pytest.mark.parametrize("unit", ["mm", "m", "raw8", "raw16", "celsius"])
def test_folder_units(replica_roots, unit):
    root = replica_roots[unit]
    dataset = FolderDataset(root, split="train")
    assert dataset.groups == ["train"] and len(FolderDataset(root, split="val")) == 2
    listed = FolderDataset(root, split=dataset.stems[:2])  # a list of stems, as data.*_split allows
    assert listed.stems == dataset.stems[:2] and listed.split == "list"
    expected_unit = {"mm": "m", "m": "m"}.get(unit, unit)
    assert dataset.preprocessing.aux.unit == expected_unit and dataset.num_classes == 10
    aux = dataset.read_raw(0)["aux"]
    stem = dataset.stems[0]
    modality = "depth" if unit in ("mm", "m") else "thermal"
    stored = read(root / modality / f"{stem}{'.tiff' if unit in ('m', 'celsius') else '.png'}")
    if unit == "mm":
        assert np.isnan(aux[stored == 0]).all() and np.allclose(aux[stored > 0], stored[stored > 0] / 1000.0)
    elif unit == "m":
        assert stored.dtype == np.float32 and np.array_equal(np.isnan(aux), np.isnan(stored))
        assert 0.5 < np.nanmedian(aux) < 2.0
    elif unit == "celsius":
        assert np.allclose(aux, stored) and 15.0 < np.median(aux) < 30.0  # a room, in deg C
    else:
        assert np.array_equal(aux, stored.astype(np.float32))
    assert dataset[0]["aux"].shape == (1, H, W)


def test_folder_unlabelled_and_bad_inputs(tmp_path, copy_of):
    unlabelled = tmp_path / "export"
    replicas.write_folder_dataset(unlabelled, modality="depth", labelled=False, num_frames=2)
    with pytest.raises(DatasetError, match="no labels/ folder.*training and evaluation need labels"):
        FolderDataset(unlabelled, split="all")
    with pytest.raises(DatasetError, match="no labels/ folder"):
        open_dataset(dataset="folder", root=unlabelled, split="all", preprocessing=NATIVE)
    images = FolderDataset(unlabelled, split="all", require_labels=False)
    assert "label" not in images[0] and images.read_raw(1)["aux"].shape == (H, W)
    root = copy_of("raw16")
    with pytest.raises(DatasetError, match="aux choice 'depth' but .*dataset.yaml says the data set holds thermal"):
        FolderDataset(root, aux_folder="depth")
    with pytest.raises(DatasetError, match="unknown folder-layout aux choice 'T16'"):
        FolderDataset(root, aux_folder="T16")
    with pytest.raises(DatasetError, match=r"no split file test\.txt; it has: all\.txt, train\.txt, val\.txt"):
        FolderDataset(root, split="test")
    description = yaml.safe_load((root / "dataset.yaml").read_text())
    (root / "dataset.yaml").write_text(yaml.safe_dump(description | {"aux_unit": "mm"}))
    with pytest.raises(DatasetError, match="modality 'thermal' with aux_unit 'mm': thermal takes raw8, raw16, celsius"):
        FolderDataset(root)
    (root / "dataset.yaml").write_text(yaml.safe_dump(description | {"aux_unit": "raw8"}))
    with pytest.raises(DatasetError, match=r"thermal/frame_0001\.png is uint16 .* aux_unit 'raw8' .* uint8"):
        FolderDataset(root)[0]
    (root / "dataset.yaml").unlink()
    with pytest.raises(DatasetError, match="dataset.yaml is missing"):
        FolderDataset(root)


# ----------------------------------------------------------------------------------------------------
# Augmentation


def test_augmentation_keeps_modalities_aligned_and_pads_as_missing():
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 9, (6, 8)), np.ones((8, 8), np.int64)).astype(np.uint8)  # 48x64 blocks
    aux = labels.astype(np.float32) * 10 + 5  # aux encodes the label: alignment is checkable pixel by pixel
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    spec = Augmentation(hflip=True, scale=(0.6, 1.4), crop=(32, 40), rotate=20.0, colour_jitter=0.3)
    padded = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out_rgb, out_aux, out_labels, size = augment_frame(rgb, aux, labels, spec)
        assert size == (32, 40) and out_rgb.shape[:2] == out_aux.shape == out_labels.shape
        valid = out_labels != 255
        assert np.array_equal(out_aux[valid], out_labels[valid] * 10.0 + 5)
        assert np.isnan(out_aux[~valid]).all()
        padded += int((~valid).sum())
    assert padded > 0  # rotation corners and zoom-out borders were padded as "no reading" / ignore
    torch.manual_seed(3)
    first = augment_frame(rgb, aux, labels, spec)
    torch.manual_seed(3)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(first[:3], augment_frame(rgb, aux, labels, spec)[:3]))


def test_config_default_augmentation_is_the_loaders_default():
    assert Augmentation.from_config(DEFAULT_AUGMENTATION) == Augmentation()


# ----------------------------------------------------------------------------------------------------
# Catalogue and configuration


def rgbt_config(root, **data) -> dict:
    return {
        "model": {"method": "rgb", "pretrained": False},
        "data": {"dataset": "mfnet", "root": str(root), "train_split": "train", "val_split": "val",
                 "input_size": None, "num_classes": 9, **data},
    }  # fmt: skip


def test_catalogue_opens_every_dataset_from_a_config(replica_roots):
    for name, root, extra in (
        ("mfnet", replica_roots["mfnet"], {}),
        ("pst900", replica_roots["pst900"], {"num_classes": 5, "aux_folder": "depth", "val_split": "test"}),
        ("fmb", replica_roots["fmb"], {"num_classes": 14, "fmb_classes": 14, "val_split": "test"}),
        ("folder", replica_roots["celsius"], {"num_classes": None, "aux_range": [0.0, 40.0]}),
    ):
        config = config_from_dict(rgbt_config(root, dataset=name, rgb_mean=[0, 0, 0], rgb_std=[1, 1, 1], **extra))
        preprocessing = build_preprocessing(config)
        assert preprocessing.rgb_mean == (0.0, 0.0, 0.0) and preprocessing.rgb_std == (1.0, 1.0, 1.0)
        dataset = open_dataset(dataset=name, root=root, split=config.data.train_split, preprocessing=preprocessing,
                               num_classes=config.data.num_classes, aux_folder=config.data.aux_folder)
        assert dataset.dataset_name == name and dataset.describe()["dataset"] == name
        sample = dataset[0]
        assert 0.0 <= float(sample["rgb"].min()) and float(sample["rgb"].max()) <= 1.0  # inputs in [0, 1]
    assert preprocessing.aux.unit == "celsius" and (preprocessing.aux.low, preprocessing.aux.high) == (0.0, 40.0)
    reopened = open_dataset(dataset="fmb", root=replica_roots["fmb"], split="test", num_classes=14,
                            preprocessing=native(fmb_aux()))
    assert reopened.num_classes == 14  # evaluation reopens FMB from the checkpoint's class count alone


def test_data_section_errors(tmp_path):
    cases = [
        ({"aux_folder": "D16"}, r"'data.aux_folder': 'D16' is not an aux choice of mfnet; choose one of thermal"),
        ({"num_classes": 32}, r"'data.num_classes' is 32 but mfnet has 9 classes"),
        ({"fmb_classes": 14}, r"'data.fmb_classes' applies to dataset fmb only"),
        ({"label_folder": "ANNO_CLASS"}, r"keeps its labels in labels/"),
        ({"augmentation": {"flip": True}}, r"data.augmentation': unknown field\(s\) flip"),
        ({"augmentation": {"rotate": 200}}, r"more than a half turn"),
        ({"augmentation": {"scale": [1.5, 1.0]}}, r"high must be at least low"),
        ({"rgb_std": [1, 0, 1]}, r"'data.rgb_std'"),
        ({"dataset": "nyu"}, r"'nyu' is not one of fmb, folder, mfnet, mm5, pst900"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(rgbt_config(tmp_path, **data))
    config = config_from_dict(rgbt_config(tmp_path, aux_folder=None, augmentation={"rotate": 5}))
    assert config.data.aux_folder == "thermal" and config.data.label_folder == "labels"
    assert config.data.augmentation == DEFAULT_AUGMENTATION | {"rotate": 5.0}  # unset fields keep the defaults
    mm5 = config_from_dict({"data": {"dataset": "mm5"}})
    assert (mm5.data.aux_folder, mm5.data.label_folder) == ("D_FocusN", "ANNO_CLASS")


def test_every_experiment_yaml_validates():
    files = sorted((REPO / "config" / "experiments").rglob("*.yaml"))
    assert len(files) > 50
    for path in files:
        load_config(path)
    benchmarks = {name: load_config(REPO / "config" / "experiments" / name / "base.yaml") for name in ("mfnet", "pst900", "fmb")}
    assert benchmarks["mfnet"].data.augmentation["crop"] == [256, 512] and benchmarks["mfnet"].data.rgb_std == [1, 1, 1]
    assert benchmarks["pst900"].data.augmentation["crop"] == [360, 640] and benchmarks["pst900"].data.val_split == "test"
    assert benchmarks["fmb"].data.num_classes == benchmarks["fmb"].data.fmb_classes == 15
