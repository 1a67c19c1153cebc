"""Small synthetic data sets in the exact on-disk layouts of MM5, MFNet, PST900, FMB and the generic folder layout.

For tests and for smoke runs of the benchmark configs without the real data (`rgbd-fusion-seg train
--config config/experiments/mfnet/base.yaml --data-root <replica>`). The frames are the scenes of
`synth.render_frame` (a table with fruit, real and printed, mugs, hot mugs, plates and books), so the labels
are learnable and the auxiliary image is needed: printed fruit differs only in depth, hot mugs only in
thermal. Each layout maps the generator's ten classes onto its own class list (`*_FROM_SYNTH` tables).

Everything is a deterministic function of (seed, frame number, size), as in synth.py. Each writer returns
{"root", "splits": {split: [stems]}, "classes"}.

    write_mm5_replica      synth.generate_mm5's MM5 layout, train / eval lists
    write_mfnet_replica    images/<name>.png  4 channels, OpenCV order B, G, R, thermal (8-bit); names end in
                           D (day: normal light) or N (night: synth's "very dark + noise" lighting);
                           labels/<name>.png; train/val/test (2:1:1 of day and of night), test_day, test_night
    write_pst900_replica   train|test/{rgb, thermal (uint8, 0 = outside the thermal view), thermal_raw
                           (uint16 raw counts, 0 = outside), depth (uint16 mm, 0 = no reading), labels}
    write_fmb_replica      train|test/{Visible, Infrared (uint8), Label}; a 2-pixel border is "unlabeled" (0)
    write_folder_dataset   COMMON.md's folder layout: dataset.yaml, rgb/, depth/ or thermal/, labels/,
                           train.txt, val.txt, all.txt; aux_unit mm | m (depth), raw8 | raw16 | celsius
                           (thermal); `labelled=False` writes no labels/ and no class list
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import yaml

from . import synth
from .fmb import FMB_CLASSES
from .imageio import celsius_from_t16
from .mfnet import MFNET_CLASSES
from .pst900 import PST900_CLASSES
from .registry import register_replica, replica_names, replica_writer

# synth ids: 0 background, 1 apple, 2 fake_apple, 3 orange, 4 fake_orange, 5 lemon, 6 mug, 7 hot_mug,
# 8 plate, 9 book -> the layout's class ids
MFNET_FROM_SYNTH = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 0], np.uint8)
PST900_FROM_SYNTH = np.array([0, 3, 0, 3, 0, 3, 1, 4, 0, 2], np.uint8)
FMB_FROM_SYNTH = np.array([1, 9, 8, 10, 11, 12, 4, 5, 2, 6], np.uint8)  # background: road; wall -> building
FMB_BUILDING = 3
PST900_THERMAL_MARGIN = 8  # leftmost 1/8 of the columns lies outside the thermal camera's view

DAY_LIGHTING, NIGHT_LIGHTING = "RGB2", "RGB8"
FOLDER_UNITS = {"depth": ("mm", "m"), "thermal": ("raw8", "raw16", "celsius")}


def _frame(seed: int, k: int, height: int, width: int, lighting: str = DAY_LIGHTING) -> synth.SynthFrame:
    if height < 16 or width < 16:
        raise ValueError(f"replica images must be at least 16x16, got {height}x{width}")
    return synth.render_frame(synth.SynthSpec(height=int(height), width=int(width)), seed, k, lightings=(lighting,))


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def _bgr(frame: synth.SynthFrame) -> np.ndarray:
    (rgb,) = frame.rgb.values()
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _write_list(path: Path, stems) -> None:
    path.write_text("".join(f"{stem}\n" for stem in stems))


def _check_count(num_frames: int, minimum: int, why: str) -> None:
    if num_frames < minimum:
        raise ValueError(f"num_frames must be at least {minimum} ({why}), got {num_frames}")


@register_replica("mm5")
def write_mm5_replica(root, num_frames: int = 8, height: int = 48, width: int = 64, seed: int = 0) -> dict:
    """MM5 layout: synth.generate_mm5 (every lighting, depth and thermal folders, both split forms)."""
    summary = synth.generate_mm5(root, num_frames=num_frames, seed=seed, height=height, width=width)
    return {"root": summary["root"], "splits": {"train": summary["train"], "eval": summary["eval"]},
            "classes": summary["classes"]}


@register_replica("mfnet")
def write_mfnet_replica(root, num_frames: int = 8, height: int = 48, width: int = 64, seed: int = 0) -> dict:
    """MFNet layout: odd frame numbers are day ("00001D"), even ones night ("00002N")."""
    _check_count(num_frames, 8, "every split needs a day and a night frame")
    root = Path(root)
    splits: dict[str, list[str]] = {name: [] for name in ("train", "val", "test", "test_day", "test_night")}
    for k in range(1, num_frames + 1):
        night = k % 2 == 0
        name = f"{k:05d}{'N' if night else 'D'}"
        frame = _frame(seed, k, height, width, NIGHT_LIGHTING if night else DAY_LIGHTING)
        _write(root / "images" / f"{name}.png", np.dstack([_bgr(frame), frame.thermal_t8]))  # B, G, R, T
        _write(root / "labels" / f"{name}.png", MFNET_FROM_SYNTH[frame.labels])
        split = ("train", "train", "val", "test")[((k - 1) // 2) % 4]  # 2:1:1 within day and within night
        splits[split].append(name)
        if split == "test":
            splits["test_night" if night else "test_day"].append(name)
    for split, names in splits.items():
        _write_list(root / f"{split}.txt", names)
    return {"root": str(root), "splits": splits, "classes": list(MFNET_CLASSES)}


@register_replica("pst900")
def write_pst900_replica(root, num_frames: int = 6, height: int = 36, width: int = 64, seed: int = 0) -> dict:
    """PST900 layout: every third frame is in test/, the others in train/."""
    _check_count(num_frames, 3, "train/ and test/ both need a frame")
    root = Path(root)
    splits: dict[str, list[str]] = {"train": [], "test": []}
    margin = max(width // PST900_THERMAL_MARGIN, 1)
    for k in range(1, num_frames + 1):
        split = "test" if k % 3 == 0 else "train"
        stem = f"{k:06d}"
        frame = _frame(seed, k, height, width)
        thermal = np.maximum(frame.thermal_t8, 1)  # 0 is reserved for "outside the thermal view"
        thermal[:, :margin] = 0
        thermal_raw = frame.thermal_t16.copy()
        thermal_raw[:, :margin] = 0
        folder = root / split
        _write(folder / "rgb" / f"{stem}.png", _bgr(frame))
        _write(folder / "thermal" / f"{stem}.png", thermal)
        _write(folder / "thermal_raw" / f"{stem}.png", thermal_raw)
        _write(folder / "depth" / f"{stem}.png", frame.depth_mm)
        _write(folder / "labels" / f"{stem}.png", PST900_FROM_SYNTH[frame.labels])
        splits[split].append(stem)
    return {"root": str(root), "splits": splits, "classes": list(PST900_CLASSES)}


@register_replica("fmb")
def write_fmb_replica(root, num_frames: int = 8, height: int = 48, width: int = 64, seed: int = 0) -> dict:
    """FMB layout (15-class ids on disk, 0 = unlabeled): every fourth frame is in test/."""
    _check_count(num_frames, 2, "train/ and test/ both need a frame")
    root = Path(root)
    splits: dict[str, list[str]] = {"train": [], "test": []}
    horizon = int(round(synth.SynthSpec().horizon * height))
    for k in range(1, num_frames + 1):
        split = "test" if k % 4 == 0 or (k == num_frames and not splits["test"]) else "train"
        stem = f"{k:05d}"
        frame = _frame(seed, k, height, width)
        labels = FMB_FROM_SYNTH[frame.labels]
        labels[:horizon][frame.labels[:horizon] == 0] = FMB_BUILDING
        labels[:2], labels[-2:], labels[:, :2], labels[:, -2:] = 0, 0, 0, 0
        folder = root / split
        _write(folder / "Visible" / f"{stem}.png", _bgr(frame))
        _write(folder / "Infrared" / f"{stem}.png", frame.thermal_t8)
        _write(folder / "Label" / f"{stem}.png", labels)
        splits[split].append(stem)
    return {"root": str(root), "splits": splits, "classes": list(FMB_CLASSES)}


def _folder_aux(frame: synth.SynthFrame, modality: str, unit: str) -> tuple[np.ndarray, str]:
    """The aux image in `unit` and its file suffix."""
    if unit == "mm":
        return frame.depth_mm, ".png"
    if unit == "m":
        metres = frame.depth_mm.astype(np.float32) / np.float32(1000.0)
        metres[frame.depth_mm == 0] = np.nan
        return metres, ".tiff"
    if unit == "raw8":
        return frame.thermal_t8, ".png"
    if unit == "raw16":
        return frame.thermal_t16, ".png"
    return celsius_from_t16(frame.thermal_t16), ".tiff"


@register_replica("folder")
def write_folder_dataset(
    root,
    modality: str = "thermal",
    aux_unit: str | None = None,
    num_frames: int = 8,
    height: int = 48,
    width: int = 64,
    seed: int = 0,
    labelled: bool = True,
) -> dict:
    """The generic folder layout (COMMON.md); aux_unit defaults to mm for depth, raw16 for thermal.
    Every fourth frame is in val.txt, the others in train.txt; all.txt lists every frame."""
    if modality not in FOLDER_UNITS:
        raise ValueError(f"modality must be one of {', '.join(FOLDER_UNITS)}, got {modality!r}")
    aux_unit = aux_unit or FOLDER_UNITS[modality][0 if modality == "depth" else 1]
    if aux_unit not in FOLDER_UNITS[modality]:
        raise ValueError(f"aux_unit of {modality} must be one of {', '.join(FOLDER_UNITS[modality])}, got {aux_unit!r}")
    _check_count(num_frames, 2, "train and val both need a frame")
    root = Path(root)
    splits: dict[str, list[str]] = {"train": [], "val": [], "all": []}
    for k in range(1, num_frames + 1):
        stem = f"frame_{k:04d}"
        frame = _frame(seed, k, height, width)
        aux, suffix = _folder_aux(frame, modality, aux_unit)
        _write(root / "rgb" / f"{stem}.png", _bgr(frame))
        _write(root / modality / f"{stem}{suffix}", aux)
        if labelled:
            _write(root / "labels" / f"{stem}.png", frame.labels)
        splits["val" if k % 4 == 0 else "train"].append(stem)
        splits["all"].append(stem)
    description = {"format": "rgbd_fusion_seg/folder/1", "modality": modality, "aux_unit": aux_unit}
    if labelled:
        description |= {"classes": list(synth.CLASSES), "ignore_index": 255}
    (root / "dataset.yaml").write_text(yaml.safe_dump(description, sort_keys=False))
    for split, stems in splits.items():
        _write_list(root / f"{split}.txt", stems)
    return {"root": str(root), "splits": splits, "classes": list(synth.CLASSES) if labelled else []}


def main(argv=None) -> None:
    """python -m rgbd_fusion_seg.offline.datasets.replicas mfnet /tmp/mfnet (any layout with a replica writer)"""
    parser = argparse.ArgumentParser(description="write a small synthetic data set in a benchmark layout")
    parser.add_argument("layout", choices=replica_names())
    parser.add_argument("root")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(48, 64), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = replica_writer(args.layout)(args.root, num_frames=args.frames, height=args.size[0],
                                          width=args.size[1], seed=args.seed)
    print(f"wrote {args.layout} replica to {summary['root']}: "
          + ", ".join(f"{split} {len(stems)}" for split, stems in summary["splits"].items()))


if __name__ == "__main__":
    main()
