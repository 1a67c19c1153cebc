"""The MM5-layout generator: files, types, determinism, and that the scenes need fusion as designed."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from rgbd_fusion_seg.offline.datasets import synth
from rgbd_fusion_seg.offline.datasets.imageio import celsius_from_t16

H, W = 64, 80
FRAMES = 6


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "MM5"
    summary = synth.generate_mm5(root, num_frames=FRAMES, seed=3, height=H, width=W)
    return root, summary


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def test_writes_every_folder_with_the_right_types(generated):
    root, summary = generated
    stems = [str(k) for k in range(1, FRAMES + 1)]
    expected = {f"RGB{k}": (np.uint8, (H, W, 3)) for k in range(1, 9)}
    expected.update(
        {
            "D16": (np.uint16, (H, W)),
            "D_FocusN": (np.uint8, (H, W)),
            "T16": (np.uint16, (H, W)),
            "T8": (np.uint8, (H, W)),
            "ANNO_CLASS": (np.uint8, (H, W)),
        }
    )
    for folder, (dtype, shape) in expected.items():
        assert sorted(p.stem for p in (root / folder).iterdir()) == sorted(stems), folder
        for stem in stems:
            image = _read(root / folder / f"{stem}.png")
            assert image.dtype == dtype and image.shape == shape, (folder, image.dtype, image.shape)
    labels = np.stack([_read(root / "ANNO_CLASS" / f"{s}.png") for s in stems])
    assert labels.max() < len(synth.CLASSES)
    assert len(np.unique(labels)) >= 5  # several classes appear
    assert (root / "classes.txt").read_text().splitlines() == list(synth.CLASSES)
    assert summary["classes"] == list(synth.CLASSES) and summary["lightings"] == list(synth.LIGHTINGS)
    assert json.loads((root / "synth_info.json").read_text())["seed"] == 3


def test_split_lists_in_both_forms_agree(generated):
    root, summary = generated
    train_txt = (root / "list_train_f.txt").read_text().split()
    eval_txt = (root / "list_eval_f.txt").read_text().split()
    with open(root / "train_dataset.csv", newline="") as handle:
        train_csv = [row["ID"] for row in csv.DictReader(handle)]
    with open(root / "eval_dataset.csv", newline="") as handle:
        eval_csv = [row["ID"] for row in csv.DictReader(handle)]
    assert train_txt == train_csv == summary["train"]
    assert eval_txt == eval_csv == summary["eval"]
    assert eval_txt and train_txt and not set(train_txt) & set(eval_txt)
    assert sorted(train_txt + eval_txt, key=int) == [str(k) for k in range(1, FRAMES + 1)]


def test_encoded_depth_and_thermal_agree_with_the_16_bit_files(generated):
    root, _ = generated
    for stem in ("1", "2"):
        d16 = _read(root / "D16" / f"{stem}.png")
        focus = _read(root / "D_FocusN" / f"{stem}.png")
        assert np.array_equal(d16 == 0, focus == 0)  # same holes
        assert 0 < (d16 == 0).mean() < 0.3
        valid = d16 > 0
        near, far = synth.DEPTH_FOCUSN_RANGE_M
        expected = np.clip(1 + np.rint(254 * (d16[valid] / 1000.0 - near) / (far - near)), 1, 255)
        assert np.abs(expected - focus[valid]).max() <= 1
        celsius = celsius_from_t16(_read(root / "T16" / f"{stem}.png"))
        t8 = _read(root / "T8" / f"{stem}.png").astype(float)
        low, high = synth.THERMAL_T8_RANGE_C
        assert np.abs(np.clip(255 * (celsius - low) / (high - low), 0, 255) - t8).max() <= 1.01
        assert 15 < np.median(celsius) < 30  # room temperature


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path, generated):
    root, _ = generated
    again = tmp_path / "again"
    synth.generate_mm5(again, num_frames=FRAMES, seed=3, height=H, width=W, workers=1)
    assert _tree_bytes(again) == _tree_bytes(root)
    other = tmp_path / "other"
    synth.generate_mm5(other, num_frames=2, seed=4, height=H, width=W)
    for folder in ("RGB2", "ANNO_CLASS", "D16", "T16"):
        assert (other / folder / "1.png").read_bytes() != (root / folder / "1.png").read_bytes(), folder
    # a frame does not depend on how many frames are generated
    assert (other / "RGB3" / "2.png").read_bytes() == synth_frame_png(4, 2)


def synth_frame_png(seed: int, frame: int) -> bytes:
    image = synth.render_frame(synth.SynthSpec(height=H, width=W), seed, frame).rgb["RGB3"]
    return bytes(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), synth._PNG_IMAGE)[1])


def _class_statistics(frames: int = 40, height: int = 96, width: int = 128):
    spec = synth.SynthSpec(height=height, width=width)
    plane_mm = synth.table_depth(spec) * 1000.0
    colour = {c: [] for c in range(len(synth.CLASSES))}
    height_mm = {c: [] for c in range(len(synth.CLASSES))}
    celsius = {c: [] for c in range(len(synth.CLASSES))}
    brightness = {name: [] for name in synth.LIGHTINGS}
    for k in range(1, frames + 1):
        frame = synth.render_frame(spec, 11, k)
        labels = frame.labels
        valid = frame.depth_mm > 0
        rgb = frame.rgb["RGB2"].astype(np.float64) / 255.0
        thermal = celsius_from_t16(frame.thermal_t16)
        for name, image in frame.rgb.items():
            brightness[name].append(image.mean())
        for c in np.unique(labels):
            mask = labels == c
            colour[c].append(rgb[mask].mean(0))
            if (mask & valid).any():
                height_mm[c].append((plane_mm - frame.depth_mm)[mask & valid].mean())
            celsius[c].append(thermal[mask].mean())
    mean = lambda values: np.mean(values, axis=0)  # noqa: E731
    return (
        {c: mean(v) for c, v in colour.items() if v},
        {c: mean(v) for c, v in height_mm.items() if v},
        {c: mean(v) for c, v in celsius.items() if v},
        {name: float(np.mean(v)) for name, v in brightness.items()},
    )


@pytest.fixture(scope="module")
def statistics():
    return _class_statistics()


def test_fake_fruit_looks_like_the_real_one_but_is_flat(statistics):
    colour, height_mm, _, _ = statistics
    ids = synth.CLASS_ID
    for real, fake in (("apple", "fake_apple"), ("orange", "fake_orange")):
        assert np.abs(colour[ids[real]] - colour[ids[fake]]).max() < 0.06, (real, colour[ids[real]], colour[ids[fake]])
        assert height_mm[ids[fake]] < 2.0  # a printed photo: the depth of the table behind it
        assert height_mm[ids[real]] > 20.0
    # while the real classes differ from each other in colour
    assert np.abs(colour[ids["apple"]] - colour[ids["orange"]]).max() > 0.15


def test_twins_render_identically_except_in_depth_or_thermal():
    spec = synth.SynthSpec(height=120, width=160)
    rng = np.random.default_rng(0)
    fields = {
        "low": rng.standard_normal((120, 160)).astype(np.float32),
        "fine": rng.standard_normal((120, 160)).astype(np.float32),
        "room": np.full((120, 160), 22.0, np.float32),
    }
    for real, twin in (("apple", "fake_apple"), ("orange", "fake_orange"), ("mug", "hot_mug")):
        params, radius = synth._object_params(real, np.random.default_rng(5), 120.0)
        a = synth._RENDER[real](synth._Object(real, 80, 60, radius, 1.0, params), fields, spec)
        b = synth._RENDER[twin](synth._Object(twin, 80, 60, radius, 1.0, params), fields, spec)
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.radiance, b.radiance), real
        if twin == "hot_mug":
            assert np.array_equal(a.height, b.height)  # same shape
            assert b.celsius[b.mask].mean() > a.celsius[a.mask].mean() + 25  # only the thermal differs
        else:
            assert a.height[a.mask].max() > 0.03 and b.height[b.mask].max() < 0.001


def test_hot_mug_differs_from_mug_in_thermal_only(statistics):
    _, height_mm, celsius, _ = statistics
    ids = synth.CLASS_ID
    assert abs(height_mm[ids["mug"]] - height_mm[ids["hot_mug"]]) < 10.0
    assert celsius[ids["hot_mug"]] > 45.0 and abs(celsius[ids["mug"]] - 22.0) < 3.0


def test_lightings_darken_and_shift_colour(statistics, generated):
    _, _, _, brightness = statistics
    assert brightness["RGB1"] > brightness["RGB2"] > brightness["RGB3"] > brightness["RGB4"]
    assert brightness["RGB4"] < 0.2 * brightness["RGB2"] and brightness["RGB8"] < 0.2 * brightness["RGB2"]
    root, _ = generated
    images = {k: _read(root / k / "1.png").astype(np.float64)[..., ::-1] for k in synth.LIGHTINGS}  # to RGB
    red_blue = {k: im[..., 0].mean() / max(im[..., 2].mean(), 1e-6) for k, im in images.items()}
    assert red_blue["RGB5"] > 2.0 * red_blue["RGB2"]  # warm light
    assert red_blue["RGB6"] < 0.5 * red_blue["RGB2"]  # blue/green light
    # the spotlight makes brightness vary far more across the image than even lighting does
    blocks = lambda im: cv2.resize(im.mean(2), (4, 4), interpolation=cv2.INTER_AREA)  # noqa: E731
    assert blocks(images["RGB7"]).std() / blocks(images["RGB7"]).mean() > 1.5 * (
        blocks(images["RGB2"]).std() / blocks(images["RGB2"]).mean()
    )


def test_three_channel_labels_and_subset_rendering(tmp_path):
    synth.generate_mm5(tmp_path, num_frames=1, seed=0, height=32, width=40, label_channels=3)
    labels = _read(tmp_path / "ANNO_CLASS" / "1.png")
    assert labels.shape == (32, 40, 3) and (labels == labels[..., :1]).all()
    full = synth.render_frame(synth.SynthSpec(height=32, width=40), 0, 1)
    one = synth.render_frame(synth.SynthSpec(height=32, width=40), 0, 1, lightings=("RGB5",))
    assert list(one.rgb) == ["RGB5"] and np.array_equal(one.rgb["RGB5"], full.rgb["RGB5"])
    assert np.array_equal(labels[..., 0], full.labels)
    with pytest.raises(ValueError, match="RGB9"):
        synth.render_frame(synth.SynthSpec(height=32, width=40), 0, 1, lightings=("RGB9",))


def test_cli_hooks(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "cli"), "--frames", "2", "--seed", "1", "--size", "24", "32"])
    assert synth.run(args) == 0
    assert "wrote 2 frames" in capsys.readouterr().out
    assert _read(tmp_path / "cli" / "D16" / "2.png").shape == (24, 32)
