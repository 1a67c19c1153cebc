"""Evaluating a checkpoint: `rgbd-fusion-seg evaluate --checkpoint runs/x/last.pt [--json out.json]`.

The model and its preprocessing are rebuilt from the checkpoint alone; the data settings (dataset,
root, lightings, folders, validation split) default to what the checkpoint recorded at training time and
can be overridden. The model is evaluated in its deploy form, as the node serves it.

Resolution (`resolution`):
- "native" (default): the labels stay at the size they have on disk and are never resized. Each frame
  goes through exactly what the node does (`SegmentationEngine.predict`): the decoded images pass through
  `prepare_inputs` with the checkpoint's preprocessing, the logits are upsampled (bilinear) to the
  label's size, then the argmax. This is the whole-image protocol of the RGB-X literature. Frames of
  different sizes cannot share a batch, so the default batch size is 1 here.
- "input": image and labels both at the model's input size (labels resized with nearest neighbour), as
  the validation during training does (and as the MM5 study's 224x224 numbers were computed).

Metrics: confusion-matrix mIoU / mAcc / pixel accuracy / per-class IoU with ignore index 255 (metrics.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from rgbd_fusion_seg.core.checkpoint import CheckpointError, load_checkpoint
from rgbd_fusion_seg.core.engine import resolve_device
from rgbd_fusion_seg.core.preprocessing import Preprocessing, prepare_inputs

from .metrics import ConfusionMatrix
from .train import dataset_lightings, open_dataset

RESOLUTIONS = ("native", "input")


class NativeFrames(Dataset):
    """Frames of a dataset as the node sees them: network inputs from `prepare_inputs`, labels at native size."""

    def __init__(self, dataset, preprocessing: Preprocessing):
        self.dataset = dataset
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        raw = self.dataset.read_raw(index)
        rgb, aux = prepare_inputs(raw["rgb"], raw["aux"], self.preprocessing)
        return {
            "rgb": torch.from_numpy(rgb),
            "aux": torch.from_numpy(aux),
            "label": torch.from_numpy(np.asarray(raw["label"]).astype(np.int64)),
        }


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Atomic JSON write (NaN/inf -> null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


@torch.no_grad()
def evaluate(
    checkpoint_path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    lightings=None,
    split=None,
    device: str = "auto",
    out_json: str | os.PathLike | None = None,
    resolution: str = "native",
    batch_size: int | None = None,
    num_workers: int = 0,
    precision: str = "fp32",
) -> dict:
    """Evaluate a checkpoint on a dataset split; returns (and optionally writes) the metrics as a dict."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution {resolution!r} is not one of {', '.join(RESOLUTIONS)}")
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision {precision!r} is not one of fp32, fp16, bf16")
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    recorded = checkpoint.data or {}
    dataset_name = recorded.get("dataset", "mm5")
    if data_root is None:
        data_root = recorded.get("root")
        if not data_root:
            raise CheckpointError(f"{checkpoint_path} does not record its data root; pass --data-root")
    if lightings is None:
        lightings = recorded.get("lightings") or "all"
    if split is None:
        split = recorded.get("val_split")
        if not split:
            raise CheckpointError(f"{checkpoint_path} does not record a validation split; pass --split")
    for key in ("aux_folder", "label_folder"):
        if not recorded.get(key):
            raise CheckpointError(f"{checkpoint_path} does not record data.{key}; it cannot be evaluated")

    preprocessing = checkpoint.preprocessing
    model_size = preprocessing.input_size
    native = resolution == "native"
    dataset = open_dataset(
        dataset=dataset_name,
        root=Path(data_root),
        lightings=lightings,
        aux_folder=recorded["aux_folder"],
        label_folder=recorded["label_folder"],
        split=split,
        preprocessing=preprocessing,
        num_classes=checkpoint.num_classes,
        augment=False,
    )
    dataset.validate(full=False)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r} of {data_root} has no frames to evaluate")

    torch_device = resolve_device(device)
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    use_autocast = autocast_dtype is not None and torch_device.type == "cuda"
    model = checkpoint.build_model().deploy().eval().to(torch_device)
    if batch_size is None:
        batch_size = 1 if native else 8  # native frames may differ in size between files
    frames = NativeFrames(dataset, preprocessing) if native else dataset
    loader = DataLoader(frames, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch_device.type == "cuda")
    confusion = ConfusionMatrix(checkpoint.num_classes)
    for batch in loader:
        rgb = batch["rgb"].to(torch_device, non_blocking=True)
        aux = batch["aux"].to(torch_device, non_blocking=True)
        label = batch["label"].to(torch_device, non_blocking=True)
        with torch.autocast(torch_device.type, dtype=autocast_dtype or torch.float32, enabled=use_autocast):
            logits = model(rgb, aux).logits
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
        confusion.update(logits.argmax(dim=1), label)

    metrics = confusion.compute()
    result = metrics.to_dict(checkpoint.classes)
    result = {
        "checkpoint": str(checkpoint_path),
        "method": checkpoint.method,
        **result,
        "settings": {
            "dataset": dataset_name,
            "data_root": str(data_root),
            "lightings": dataset_lightings(dataset, lightings),
            "split": split,
            "aux_folder": recorded["aux_folder"],
            "label_folder": recorded["label_folder"],
            "num_frames": len(dataset),
            "input_size": list(model_size) if model_size is not None else None,
            "resolution": resolution,
            "device": str(torch_device),
            "precision": precision if use_autocast else "fp32",
            "ignore_index": confusion.ignore_index,
        },
        "training": {
            "metrics": checkpoint.metrics,
            "data": recorded,
        },
    }
    if out_json is not None:
        write_json(result, out_json)
    return result


def format_summary(result: dict) -> str:
    lines = [
        f"{result['method']} on {result['settings']['num_frames']} frames "
        f"({', '.join(result['settings']['lightings'])}, split {result['settings']['split']}, "
        f"{result['settings']['resolution']} resolution)",
        f"mIoU {_pct(result['miou'])}  mAcc {_pct(result['macc'])}  pixel acc {_pct(result['pixel_accuracy'])}",
        f"{'id':>3}  {'class':<28} {'IoU':>7} {'Acc':>7} {'GT px':>10}",
    ]
    for row in result["per_class"]:
        lines.append(f"{row['id']:>3}  {row['name'][:28]:<28} {_pct(row['iou']):>7} {_pct(row['accuracy']):>7} "
                     f"{row['gt_pixels']:>10}")
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `train` (last.pt / best.pt)")
    parser.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    parser.add_argument("--lightings", nargs="+", help="lightings to evaluate, e.g. RGB1 RGB2, or 'all' "
                        "(default: the checkpoint's)")
    parser.add_argument("--split", help="split file relative to the data root (default: the checkpoint's val split)")
    parser.add_argument("--resolution", choices=RESOLUTIONS, default="native",
                        help="score at the labels' native size (default) or at the model input size")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="autocast precision on CUDA (CPU always runs fp32)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--json", dest="out_json", help="write the full result (per-class IoU, confusion matrix) here")


def run(args: argparse.Namespace) -> int:
    lightings = args.lightings
    if lightings == ["all"]:
        lightings = "all"
    result = evaluate(
        args.checkpoint,
        data_root=args.data_root,
        lightings=lightings,
        split=args.split,
        device=args.device,
        out_json=args.out_json,
        resolution=args.resolution,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        precision=args.precision,
    )
    print(format_summary(result))
    if args.out_json:
        print(f"wrote {args.out_json}")
    return 0
