"""The MM5 loader on generated data in the true on-disk layout: decoding, splits, checks and errors."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing, prepare_inputs
from rgbd_fusion_seg.offline.datasets import synth
from rgbd_fusion_seg.offline.datasets.imageio import DatasetError, celsius_to_t16
from rgbd_fusion_seg.offline.datasets.mm5 import (
    MM5_CLASSES,
    MM5Dataset,
    default_aux_normalisation,
    mm5_class_names,
    read_split,
)

H, W = 48, 64
NATIVE = Preprocessing(input_size=None)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mm5") / "MM5"
    synth.generate_mm5(root, num_frames=6, seed=7, height=H, width=W)
    return root


@pytest.fixture
def root(source, tmp_path) -> Path:
    """A private copy that a test may damage."""
    return Path(shutil.copytree(source, tmp_path / "MM5"))


def native(aux_folder: str) -> Preprocessing:
    return Preprocessing(input_size=None, aux=default_aux_normalisation(aux_folder))


@pytest.mark.parametrize("aux_folder", ["D_FocusN", "D16", "T8", "T16"])
def test_sample_shapes_and_types(source, aux_folder):
    dataset = MM5Dataset(source, lightings="RGB3", split="train", aux_folder=aux_folder)
    sample = dataset[0]
    assert sample["rgb"].shape == (3, 224, 224) and sample["rgb"].dtype == torch.float32
    assert sample["aux"].shape == (1, 224, 224) and sample["aux"].dtype == torch.float32
    assert sample["label"].shape == (224, 224) and sample["label"].dtype == torch.int64
    assert sample["lighting"] == "RGB3" and sample["stem"] == dataset.stems[0]
    assert 0.0 <= float(sample["aux"].min()) and float(sample["aux"].max()) <= 1.0
    assert float(sample["aux"].std()) > 0.0
    assert int(sample["label"].max()) < dataset.num_classes == len(synth.CLASSES)
    spec = native(aux_folder)
    native_set = MM5Dataset(source, lightings="RGB3", split="train", aux_folder=aux_folder, preprocessing=spec)
    native_sample = native_set[0]
    assert native_sample["rgb"].shape == (3, H, W) and native_sample["aux"].shape == (1, H, W)
    assert native_sample["label"].shape == (H, W)


def test_colour_is_rgb_and_labels_match_the_file(source):
    dataset = MM5Dataset(source, lightings="RGB5", split=["2"], preprocessing=native("D_FocusN"))
    raw = dataset.read_raw(0)
    bgr = cv2.imread(str(source / "RGB5" / "2.png"))
    assert np.array_equal(raw["rgb"], bgr[..., ::-1])
    expected, _ = prepare_inputs(raw["rgb"], raw["aux"], dataset.preprocessing)
    assert torch.equal(dataset[0]["rgb"], torch.from_numpy(expected))
    labels = cv2.imread(str(source / "ANNO_CLASS" / "2.png"), cv2.IMREAD_UNCHANGED)
    assert torch.equal(dataset[0]["label"], torch.from_numpy(labels.astype(np.int64)))


def test_16_bit_values_round_trip_to_metres_and_celsius(root):
    depth = cv2.imread(str(root / "D16" / "1.png"), cv2.IMREAD_UNCHANGED)
    depth[0, 0], depth[0, 1] = 1234, 0  # 1.234 m, and no reading
    cv2.imwrite(str(root / "D16" / "1.png"), depth)
    thermal = cv2.imread(str(root / "T16" / "1.png"), cv2.IMREAD_UNCHANGED)
    thermal[0, 0] = 19082  # 19082 / 64 - 273.15 = 25.00625 deg C
    assert celsius_to_t16(25.00625) == 19082
    cv2.imwrite(str(root / "T16" / "1.png"), thermal)
    focus = cv2.imread(str(root / "D_FocusN" / "1.png"), cv2.IMREAD_UNCHANGED)
    focus[0, 0], focus[0, 1] = 0, 200
    cv2.imwrite(str(root / "D_FocusN" / "1.png"), focus)

    d16 = MM5Dataset(root, lightings="RGB2", split=["1"], aux_folder="D16", preprocessing=native("D16"))
    metres = d16.read_aux("1")
    assert metres.dtype == np.float32 and metres[0, 0] == pytest.approx(1.234, abs=1e-6) and np.isnan(metres[0, 1])
    low, high = default_aux_normalisation("D16").low, default_aux_normalisation("D16").high
    assert d16.preprocessing.aux.unit == "m"
    assert float(d16[0]["aux"][0, 0, 0]) == pytest.approx((1.234 - low) / (high - low), abs=1e-6)
    assert float(d16[0]["aux"][0, 0, 1]) == 0.0  # no reading -> 0

    t16 = MM5Dataset(root, lightings="RGB2", split=["1"], aux_folder="T16", preprocessing=native("T16"))
    assert t16.read_aux("1")[0, 0] == pytest.approx(25.00625, abs=1e-4)
    spec = default_aux_normalisation("T16")
    assert spec.unit == "celsius" and spec.modality == "thermal"
    assert float(t16[0]["aux"][0, 0, 0]) == pytest.approx((25.00625 - spec.low) / (spec.high - spec.low), abs=1e-5)

    focusn = MM5Dataset(root, lightings="RGB2", split=["1"], aux_folder="D_FocusN", preprocessing=native("D_FocusN"))
    values = focusn.read_aux("1")
    assert np.isnan(values[0, 0]) and values[0, 1] == 200.0
    assert float(focusn[0]["aux"][0, 0, 0]) == 0.0 and float(focusn[0]["aux"][0, 0, 1]) == pytest.approx(200 / 255)
    t8 = MM5Dataset(root, lightings="RGB2", split=["1"], aux_folder="T8", preprocessing=native("T8"))
    assert not np.isnan(t8.read_aux("1")).any()  # 8-bit thermal has no "no reading" code


def test_all_lightings_multiply_the_samples(source):
    one = MM5Dataset(source, lightings="RGB1", split="list_train_f.txt")
    every = MM5Dataset(source, lightings="all", split="list_train_f.txt")
    two = MM5Dataset(source, lightings=["RGB4", "RGB8"], split="list_train_f.txt")
    assert len(every) == 8 * len(one) and len(two) == 2 * len(one)
    assert {s[1] for s in every.samples} == {f"RGB{k}" for k in range(1, 9)}
    assert {every[i]["lighting"] for i in range(8)} == {f"RGB{k}" for k in range(1, 9)}


def test_csv_txt_keyword_and_list_splits_agree(source, tmp_path):
    forms = (("train", "list_train_f.txt", "train_dataset.csv"), ("eval", "list_eval_f.txt", "eval_dataset.csv"))
    for name, txt, csv_file in forms:
        from_txt = read_split(source, txt)
        assert read_split(source, csv_file) == from_txt == read_split(source, name)
        assert read_split(source, source / csv_file) == from_txt  # absolute path
        assert MM5Dataset(source, lightings="RGB2", split=csv_file).stems == from_txt
        assert MM5Dataset(source, lightings="RGB2", split=list(from_txt)).stems == from_txt
    pandas_style = tmp_path / "split.csv"
    pandas_style.write_text("Unnamed: 0,ID,Label\n0,3.0,x\n1,4.png,y\n")
    assert read_split(source, pandas_style) == ["3", "4"]
    with pytest.raises(DatasetError, match="lists no frames"):
        read_split(source, [])


def test_split_entries_that_leave_the_data_root_are_refused(root, tmp_path):
    """A list entry climbing out with '..' or naming an absolute path would read a file from elsewhere."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "RGB2" / "1.png", outside / "1.png")  # a readable frame, so only the check can refuse it
    for entry in ("../../outside/1", str(outside / "1")):
        for name, text in (("split.txt", f"2\n# comment\n{entry}\n"), ("split.csv", f"ID\n2\n{entry}\n")):
            (root / name).write_text(text)
            pattern = rf"{re.escape(str(root / name))} line 3: entry '{re.escape(entry)}' leaves the data root"
            with pytest.raises(DatasetError, match=pattern):
                MM5Dataset(root, lightings="RGB2", split=name)
        with pytest.raises(DatasetError, match=rf"split list item 1: entry '{re.escape(entry)}' leaves the data root"):
            MM5Dataset(root, lightings="RGB2", split=["2", entry])
    (root / "split.txt").write_text("2\nfolder/../1\n")  # a path that stays inside is an ordinary stem
    assert read_split(root, "split.txt") == ["2", "folder/../1"]


def test_three_channel_labels(source, root):
    synth.generate_mm5(root, num_frames=6, seed=7, height=H, width=W, label_channels=3)
    assert cv2.imread(str(root / "ANNO_CLASS" / "1.png"), cv2.IMREAD_UNCHANGED).ndim == 3
    three = MM5Dataset(root, lightings="RGB2", split="train")
    single = MM5Dataset(source, lightings="RGB2", split="train")
    assert torch.equal(three[0]["label"], single[0]["label"])
    # channels that differ: the id is OpenCV's channel 0, as in the public MM5 loader
    labels = cv2.imread(str(source / "ANNO_CLASS" / "1.png"), cv2.IMREAD_UNCHANGED)
    mixed = np.dstack([labels, np.full_like(labels, 77), np.full_like(labels, 99)])
    cv2.imwrite(str(root / "ANNO_CLASS" / "1.png"), mixed)
    dataset = MM5Dataset(root, lightings="RGB2", split=["1"], preprocessing=NATIVE)
    assert np.array_equal(dataset.read_labels("1"), labels)


def test_class_names(source, tmp_path):
    assert mm5_class_names(source) == list(synth.CLASSES)
    # the seed study's form: classes.txt without background, next to label_mapping.csv
    (tmp_path / "classes.txt").write_text("Lemon\nMandarin\n")
    (tmp_path / "label_mapping.csv").write_text("ID,Label Name\n1,Lemon\n2,Mandarin\n")
    assert mm5_class_names(tmp_path) == ["background", "Lemon", "Mandarin"]
    (tmp_path / "classes.txt").unlink()
    assert mm5_class_names(tmp_path) == ["background", "Lemon", "Mandarin"]
    (tmp_path / "label_mapping.csv").unlink()
    assert mm5_class_names(tmp_path) == list(MM5_CLASSES) and len(MM5_CLASSES) == 32
    with pytest.raises(DatasetError, match="classes.txt"):
        mm5_class_names(tmp_path, default=None)


def test_num_classes_option(source):
    with pytest.warns(UserWarning, match="class_<id>"):
        wide = MM5Dataset(source, lightings="RGB2", split="train", num_classes=32)
    assert wide.num_classes == 32 and len(wide.classes) == 32 and wide.classes[10] == "class_10"
    with pytest.raises(DatasetError, match="num_classes=4"):
        MM5Dataset(source, lightings="RGB2", split="train", num_classes=4)


def test_validate_reads_everything_and_counts_classes(source):
    dataset = MM5Dataset(source, lightings="all", split="train", aux_folder="D16")
    report = dataset.validate(full=True)
    frames = len(dataset.stems)
    assert report["frames"] == frames and report["samples"] == 8 * frames
    assert report["files_checked"] == frames * 10
    assert sum(report["class_pixels"]) == frames * H * W and report["ignore_pixels"] == 0
    assert 0.5 < report["aux_valid_fraction"] < 1.0
    assert dataset.describe()["lightings"] == [f"RGB{k}" for k in range(1, 9)]


def test_augmentation_is_consistent_and_seeded(source):
    plain = MM5Dataset(source, lightings="RGB2", split=["1"], aux_folder="D16", preprocessing=native("D16"))
    flip_only = MM5Dataset(
        source, lightings="RGB2", split=["1"], aux_folder="D16", preprocessing=native("D16"), augment=True, max_zoom=1.0
    )
    reference = plain[0]
    flips = set()
    for seed in range(8):
        torch.manual_seed(seed)
        sample = flip_only[0]
        flipped = torch.equal(sample["label"], reference["label"].flip(-1))
        same = torch.equal(sample["label"], reference["label"])
        assert flipped or same
        expected = {k: (reference[k].flip(-1) if flipped and not same else reference[k]) for k in ("rgb", "aux")}
        if flipped and not same:
            flips.add(True)
        elif same and not flipped:
            flips.add(False)
        assert torch.equal(sample["rgb"], expected["rgb"]) and torch.equal(sample["aux"], expected["aux"])
    assert flips == {True, False}
    zoomed = MM5Dataset(source, lightings="RGB2", split=["1"], augment=True, max_zoom=1.5)
    torch.manual_seed(1)
    first = zoomed[0]
    torch.manual_seed(1)
    second = zoomed[0]
    assert torch.equal(second["rgb"], first["rgb"]) and torch.equal(second["label"], first["label"])
    assert first["rgb"].shape == (3, 224, 224) and first["label"].shape == (224, 224)
    assert set(first["label"].unique().tolist()) <= set(reference["label"].unique().tolist())
    native_zoom = MM5Dataset(source, lightings="RGB2", split=["1"], preprocessing=NATIVE, augment=True, max_zoom=1.5)
    assert native_zoom[0]["rgb"].shape == (3, H, W) and native_zoom[0]["label"].shape == (H, W)


def test_works_in_a_dataloader(source):
    dataset = MM5Dataset(source, lightings=["RGB1", "RGB7"], split="train", augment=True)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=False, num_workers=0)))
    assert batch["rgb"].shape == (3, 3, 224, 224) and batch["label"].shape == (3, 224, 224)
    assert batch["lighting"] == ["RGB1", "RGB7", "RGB1"]


def test_rgb_only_dataset(source):
    sample = MM5Dataset(source, lightings="RGB2", split="train", aux_folder=None)[0]
    assert sample["aux"].shape == (1, 224, 224) and float(sample["aux"].abs().sum()) == 0.0


# ----------------------------------------------------------------------------------------------------
# Every bad input is an error that names the file or folder


def test_missing_root_and_folder(root, tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        MM5Dataset(tmp_path / "nowhere", lightings="RGB1", split="train")
    shutil.rmtree(root / "D16")
    with pytest.raises(DatasetError, match="lacks folder.*D16"):
        MM5Dataset(root, lightings="RGB1", split="train", aux_folder="D16")
    with pytest.raises(DatasetError, match="lacks folder.*RGB9"):
        MM5Dataset(root, lightings="RGB9", split="train")


def test_frame_missing_in_one_modality(root):
    stem = read_split(root, "train")[0]
    (root / "T8" / f"{stem}.png").unlink()
    with pytest.raises(DatasetError, match=rf"frame '{stem}' missing in T8/"):
        MM5Dataset(root, lightings="RGB1", split="train", aux_folder="T8")
    MM5Dataset(root, lightings="RGB1", split="train", aux_folder="D_FocusN")  # other folders are fine
    with pytest.raises(DatasetError, match="frame 'nope' missing in RGB1/"):
        MM5Dataset(root, lightings="RGB1", split=["nope"])
    with pytest.raises(DatasetError, match="split file .*missing.txt"):
        MM5Dataset(root, lightings="RGB1", split="missing.txt")


def test_label_out_of_range(root):
    labels = cv2.imread(str(root / "ANNO_CLASS" / "2.png"), cv2.IMREAD_UNCHANGED)
    labels[0, :3] = (12, 255, 40)  # 255 = ignore is allowed
    cv2.imwrite(str(root / "ANNO_CLASS" / "2.png"), labels)
    dataset = MM5Dataset(root, lightings="RGB1", split=["1", "2"])
    assert dataset[0]["label"].shape == (224, 224)
    with pytest.raises(DatasetError, match=r"ANNO_CLASS/2\.png has class id\(s\) 12, 40 >= num_classes 10"):
        dataset[1]
    with pytest.raises(DatasetError, match=r"ANNO_CLASS/2\.png"):
        dataset.validate(full=True)
    labels[0, :3] = (1, 255, 2)
    cv2.imwrite(str(root / "ANNO_CLASS" / "2.png"), labels)
    report = MM5Dataset(root, lightings="RGB1", split=["1", "2"]).validate()
    assert report["ignore_pixels"] == 1


def test_corrupt_and_unreadable_images(root):
    path = root / "RGB2" / "3.png"
    path.write_bytes(path.read_bytes()[:60])  # truncated: the header survives, the pixels do not
    dataset = MM5Dataset(root, lightings="RGB2", split=["3"])
    with pytest.raises(DatasetError, match=r"cannot decode image .*RGB2/3\.png"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"RGB2/3\.png"):
        dataset.validate(full=True)
    (root / "D_FocusN" / "4.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"D_FocusN/4\.png is not a readable PNG"):
        MM5Dataset(root, lightings="RGB2", split=["4"])


def test_size_mismatch_and_wrong_pixel_type(root):
    cv2.imwrite(str(root / "D_FocusN" / "5.png"), np.full((H // 2, W // 2), 100, np.uint8))
    with pytest.raises(DatasetError, match=r"frame '5' has images of different sizes: .*D_FocusN 24x32"):
        MM5Dataset(root, lightings="RGB2", split=["5"])
    cv2.imwrite(str(root / "D16" / "6.png"), np.full((H, W), 100, np.uint8))  # 8-bit where 16-bit belongs
    with pytest.raises(DatasetError, match=r"D16/6\.png is 8-bit \(uint8\), but MM5 D16/ images must be uint16"):
        MM5Dataset(root, lightings="RGB2", split=["6"], aux_folder="D16")[0]


def test_unknown_aux_folder_and_mismatched_preprocessing(source):
    with pytest.raises(DatasetError, match="unknown MM5 auxiliary folder 'T24'"):
        MM5Dataset(source, lightings="RGB1", split="train", aux_folder="T24")
    with pytest.raises(DatasetError, match="unknown MM5 auxiliary folder"):
        default_aux_normalisation("UV")
    metres = Preprocessing(aux=AuxNormalisation(modality="depth", unit="m", low=0.0, high=4.0))
    with pytest.raises(DatasetError, match="D_FocusN holds depth in 'raw8'"):
        MM5Dataset(source, lightings="RGB1", split="train", aux_folder="D_FocusN", preprocessing=metres)
