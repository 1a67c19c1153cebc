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

Metrics: confusion-matrix mIoU / mAcc / pixel accuracy / per-class IoU and Acc with ignore index 255
(metrics.py), over all classes; `exclude_background` leaves class 0 (unlabeled / background) out of mIoU
and mAcc (MFNet and PST900 papers count it: the default).

Test-time augmentation, reported beside the plain result, never in its place (`result["tta"]`):
`flip` (the horizontally flipped input, its prediction flipped back) and `scales` (e.g. 0.5 0.75 1 1.25 1.5
1.75: the network input resized by each factor); the softmax probabilities at the label's size are
averaged over every (scale, flip) combination. Entries: "flip", "multiscale", "multiscale_flip".

Missing aux (`aux="missing"`, `--aux missing`): every frame's aux input is replaced by the "no reading"
input (train_loop.missing_aux_value: what prepare_inputs makes of an all-NaN aux image, and what the node
feeds when the aux camera is absent), to measure how a fusion model degrades without it (see
train.aux_dropout). The result's settings say which (`"aux": "present"` or `"missing"`).

Groups: when the samples carry a "group" (MFNet day / night, MM5 the lighting), every result also has
`groups`: the same metrics per group. `--markdown` writes the per-class table the papers print.

Predictions (`save_predictions` folder): the plain pass's masks as the node publishes them, per frame
`masks/<stem>.png` (class ids) and `mask_color/<stem>.png` (the checkpoint's palette), and for a method
that makes a fused image (SC-CoSF) `fused/<stem>.png` beside them, at the resolution evaluated. The
folder appears complete or not at all (written aside, renamed at the end).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from rgbd_fusion_seg.core.checkpoint import CheckpointError, load_checkpoint
from rgbd_fusion_seg.core.engine import resolve_device
from rgbd_fusion_seg.core.preprocessing import Preprocessing, prepare_inputs
from rgbd_fusion_seg.models import method_class

from .datasets.catalog import open_dataset
from .metrics import ConfusionMatrix, markdown_table
from .train_loop import missing_aux_value

RESOLUTIONS = ("native", "input")
AUX_INPUTS = ("present", "missing")  # the aux images as read, or all replaced by the "no reading" input


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
        frame = {
            "rgb": torch.from_numpy(rgb),
            "aux": torch.from_numpy(aux),
            "label": torch.from_numpy(np.asarray(raw["label"]).astype(np.int64)),
            "stem": raw["stem"],
        }
        if raw.get("group") is not None:
            frame["group"] = raw["group"]
        return frame


def tta_variants(flip: bool, scales) -> dict[str, list[tuple[float, bool]]]:
    """Name -> the (input scale, flipped) passes it combines, for every result to report ("plain" always)."""
    flips = (False, True)
    variants = {"plain": [(1.0, False)]}
    if flip:
        variants["flip"] = [(1.0, f) for f in flips]
    if scales:
        variants["multiscale"] = [(float(s), False) for s in scales]
        if flip:
            variants["multiscale_flip"] = [(float(s), f) for s in scales for f in flips]
    return variants


def predicted_logits(model, rgb, aux, size, scale: float, flipped: bool) -> tuple[torch.Tensor, dict]:
    """Logits at `size` (the labels') of the input resized by `scale`, optionally flipped, and the
    output's extras (as the model gives them)."""
    if scale != 1.0:
        scaled = [max(1, int(round(n * scale))) for n in rgb.shape[-2:]]
        rgb = F.interpolate(rgb, size=scaled, mode="bilinear", align_corners=False)
        aux = F.interpolate(aux, size=scaled, mode="bilinear", align_corners=False)
    if flipped:
        rgb, aux = rgb.flip(-1), aux.flip(-1)
    output = model(rgb, aux)
    logits = output.logits.float()
    if flipped:
        logits = logits.flip(-1)
    if logits.shape[-2:] != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits, output.extras


def combined_prediction(logits: dict, keys: list) -> torch.Tensor:
    """Class ids from one pass (the argmax of its logits, exactly what the node computes) or from several
    (the argmax of their mean softmax probabilities)."""
    if len(keys) == 1:
        return logits[keys[0]].argmax(dim=1)
    return sum(torch.softmax(logits[key], dim=1) for key in keys).argmax(dim=1)


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


PRECISIONS = ("fp32", "fp16", "bf16")
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # fp32 runs without autocast


def check_options(resolution: str, precision: str, scales, aux: str = "present") -> None:
    if scales is not None and (not scales or any(not 0 < float(s) <= 8 for s in scales)):
        raise ValueError(f"scales must be a non-empty list of factors in (0, 8], got {scales}")
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution {resolution!r} is not one of {', '.join(RESOLUTIONS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if aux not in AUX_INPUTS:
        raise ValueError(f"aux {aux!r} is not one of {', '.join(AUX_INPUTS)}")


@dataclass(frozen=True)
class DataSelection:
    """The frames a checkpoint is scored on: what it recorded at training time unless overridden."""

    recorded: dict  # the checkpoint's data settings at training time
    dataset: str
    root: str | os.PathLike
    lightings: object  # a list of lighting names or "all"
    split: str

    @classmethod
    def of(cls, checkpoint, checkpoint_path: Path, *, data_root, lightings, split) -> DataSelection:
        recorded = checkpoint.data or {}
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
        return cls(recorded, recorded.get("dataset", "mm5"), data_root, lightings, split)

    def open(self, checkpoint) -> Dataset:
        """The selected frames, checked, with the checkpoint's preprocessing; an empty split is an error."""
        dataset = open_dataset(
            dataset=self.dataset,
            root=Path(self.root),
            lightings=self.lightings,
            aux_folder=self.recorded["aux_folder"],
            label_folder=self.recorded["label_folder"],
            split=self.split,
            preprocessing=checkpoint.preprocessing,
            num_classes=checkpoint.num_classes,
            augment=False,
        )
        dataset.validate(full=False)
        if len(dataset) == 0:
            raise ValueError(f"split {self.split!r} of {self.root} has no frames to evaluate")
        return dataset

    def settings(self, dataset, input_size) -> dict:
        """The data half of a result's "settings"."""
        return {
            "dataset": self.dataset,
            "data_root": str(self.root),
            "lightings": getattr(dataset, "lightings", None),
            "groups": dataset.groups,
            "split": self.split,
            "aux_folder": self.recorded["aux_folder"],
            "label_folder": self.recorded["label_folder"],
            "num_frames": len(dataset),
            "input_size": list(input_size) if input_size is not None else None,
        }


def frame_loader(dataset, preprocessing: Preprocessing, resolution: str, batch_size: int | None,
                 num_workers: int, device: torch.device) -> DataLoader:
    native = resolution == "native"
    if batch_size is None:
        batch_size = 1 if native else 8  # native frames may differ in size between files
    frames = NativeFrames(dataset, preprocessing) if native else dataset
    return DataLoader(frames, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda")


def confusion_matrices(model, loader, variants: dict, num_classes: int, device: torch.device,
                       autocast_dtype, on_plain=None, missing_aux: float | None = None) -> dict[str, dict]:
    """variant name -> group (None: all frames) -> the confusion matrix of its predictions over `loader`.
    `on_plain(batch, prediction, extras)` sees each batch's plain prediction (for saving it); with
    `missing_aux` every aux input is replaced by that value (the aux camera absent)."""
    passes = sorted({key for keys in variants.values() for key in keys})
    confusions = {name: {None: ConfusionMatrix(num_classes)} for name in variants}
    for batch in loader:
        rgb = batch["rgb"].to(device, non_blocking=True)
        aux = batch["aux"].to(device, non_blocking=True)
        if missing_aux is not None:
            aux = torch.full_like(aux, missing_aux)
        label = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            outputs = {key: predicted_logits(model, rgb, aux, label.shape[-2:], *key) for key in passes}
        logits = {key: value[0] for key, value in outputs.items()}
        groups = batch.get("group")
        for name, keys in variants.items():
            prediction = combined_prediction(logits, keys)
            if name == "plain" and on_plain is not None:
                on_plain(batch, prediction, outputs[keys[0]][1])
            confusions[name][None].update(prediction, label)
            for i, group in enumerate(groups or ()):
                confusions[name].setdefault(str(group), ConfusionMatrix(num_classes)).update(prediction[i], label[i])
    return confusions


@contextlib.contextmanager
def _prediction_writer(folder, palette):
    """A callback writing each frame's mask, colour mask and fused image under `folder` (None: no callback);
    the folder appears only when every frame was written."""
    if folder is None:
        yield None
        return
    import cv2

    from rgbd_fusion_seg.core.palette import colourise

    from .bags.writing import new_output_folder

    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    with new_output_folder(folder, "prediction folder") as staging:
        def write(kind: str, stem: str, image: np.ndarray) -> None:
            path = staging / kind / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), image):
                raise OSError(f"cannot write {path}")

        def on_plain(batch, prediction, extras) -> None:
            for i, stem in enumerate(batch["stem"]):
                mask = prediction[i].cpu().numpy().astype(np.uint8 if len(palette) <= 256 else np.uint16)
                write("masks", stem, mask)
                write("mask_color", stem, colourise(mask, palette)[..., ::-1])
                if "fused" in extras:
                    fused = F.interpolate(extras["fused"][i:i + 1].float(), size=mask.shape, mode="bilinear",
                                          align_corners=False)[0].clamp(0, 1)
                    rgb = (fused * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                    write("fused", stem, rgb[..., ::-1])

        yield on_plain


def metrics_by_group(by_group: dict, excluded: tuple, classes) -> dict:
    """The metrics over all frames, plus "groups" (the same per group) when the frames carry groups."""
    overall = by_group[None].compute(excluded).to_dict(classes)
    groups = {group: by_group[group].compute(excluded).to_dict(classes)
              for group in sorted(g for g in by_group if g is not None)}
    return overall | ({"groups": groups} if groups else {})


@torch.no_grad()
def evaluate_checkpoint(
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
    flip: bool = False,
    scales=None,
    exclude_background: bool = False,
    save_predictions: str | os.PathLike | None = None,
    aux: str = "present",
) -> dict:
    """Evaluate a checkpoint on a dataset split; returns (and optionally writes) the metrics as a dict.
    aux="missing" feeds the "no reading" aux input in place of every aux image."""
    check_options(resolution, precision, scales, aux)
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    selection = DataSelection.of(checkpoint, checkpoint_path, data_root=data_root, lightings=lightings, split=split)
    dataset = selection.open(checkpoint)
    torch_device = resolve_device(device)
    autocast_dtype = AUTOCAST_DTYPES.get(precision) if torch_device.type == "cuda" else None  # CPU runs fp32
    extras = tuple(name for name in ("fused",) if save_predictions is not None
                   and name in method_class(checkpoint.method).serving_extras)
    model = checkpoint.build_model().deploy(keep_extras=extras).eval().to(torch_device)
    loader = frame_loader(dataset, checkpoint.preprocessing, resolution, batch_size, num_workers, torch_device)
    with _prediction_writer(save_predictions, checkpoint.palette) as on_plain:
        confusions = confusion_matrices(model, loader, tta_variants(flip, scales), checkpoint.num_classes,
                                        torch_device, autocast_dtype, on_plain,
                                        missing_aux_value(checkpoint.preprocessing) if aux == "missing" else None)
    excluded = (0,) if exclude_background else ()
    result = {
        "checkpoint": str(checkpoint_path),
        "method": checkpoint.method,
        **metrics_by_group(confusions["plain"], excluded, checkpoint.classes),
        "tta": {name: metrics_by_group(by_group, excluded, checkpoint.classes)
                for name, by_group in confusions.items() if name != "plain"},
        "settings": selection.settings(dataset, checkpoint.preprocessing.input_size) | {
            "resolution": resolution,
            "device": str(torch_device),
            "precision": precision if autocast_dtype is not None else "fp32",
            "ignore_index": confusions["plain"][None].ignore_index,
            "flip": flip,
            "scales": [float(s) for s in scales] if scales else None,
            "exclude_background": exclude_background,
            "aux": aux,
        },
        "training": {"metrics": checkpoint.metrics, "data": selection.recorded, "aux_dropout": checkpoint.aux_dropout},
    }
    if save_predictions is not None:
        result["settings"]["predictions"] = str(save_predictions)
    if out_json is not None:
        write_json(result, out_json)
    return result


def format_summary(result: dict) -> str:
    settings = result["settings"]
    notes = [settings["resolution"] + " resolution"]
    if settings.get("aux") == "missing":
        notes.append("aux MISSING")
    if result.get("training", {}).get("aux_dropout"):
        notes.append(f"trained with aux dropout {result['training']['aux_dropout']:g}")
    lines = [
        f"{result['method']} on {settings['num_frames']} {settings['dataset']} frames "
        f"({', '.join(settings['groups'])}, split {settings['split']}, {', '.join(notes)})",
        f"mIoU {_pct(result['miou'])}  mAcc {_pct(result['macc'])}  pixel acc {_pct(result['pixel_accuracy'])}",
        f"{'id':>3}  {'class':<28} {'IoU':>7} {'Acc':>7} {'GT px':>10}",
    ]
    for row in result["per_class"]:
        star = "*" if row["id"] in result["excluded_from_mean"] else ""
        lines.append(f"{row['id']:>3}  {(row['name'] + star)[:28]:<28} {_pct(row['iou']):>7} "
                     f"{_pct(row['accuracy']):>7} {row['gt_pixels']:>10}")
    if result["excluded_from_mean"]:
        lines.append("* left out of mIoU and mAcc (--exclude-background)")
    for label, entry in result_rows(result).items():
        if label != "plain":
            lines.append(f"{label:<24} mIoU {_pct(entry['miou'])}  mAcc {_pct(entry['macc'])}")
    return "\n".join(lines)


def result_rows(result: dict) -> dict[str, dict]:
    """The plain result, its groups, then each TTA variant and its groups, labelled "plain", "plain day",
    "flip", "flip day", ..."""
    rows = {}
    for name, entry in {"plain": result, **result["tta"]}.items():
        rows[name] = entry
        for group, group_entry in entry.get("groups", {}).items():
            rows[f"{name} {group}"] = group_entry
    return rows


def format_markdown(result: dict) -> str:
    """The papers' per-class table (Acc and IoU per class, mAcc, mIoU in %), one row per result_rows entry."""
    settings = result["settings"]
    title = (f"{result['method']} on {settings['dataset']} {settings['split']} ({settings['num_frames']} frames, "
             f"{settings['resolution']} resolution)")
    rows = {f"{result['method']} {label}": entry for label, entry in result_rows(result).items()}
    legend = "\n\n\\* left out of mAcc and mIoU" if result["excluded_from_mean"] else ""
    return f"{title}\n\n{markdown_table(rows, [row['name'] for row in result['per_class']])}{legend}\n"


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def add_resolution_argument(parser: argparse.ArgumentParser) -> None:
    """--resolution, shared by `evaluate` and `study`."""
    parser.add_argument("--resolution", choices=RESOLUTIONS, default="native",
                        help="score at the labels' native size (default) or at the model input size")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `train` (last.pt / best.pt)")
    parser.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    parser.add_argument("--lightings", nargs="+", help="lightings to evaluate, e.g. RGB1 RGB2, or 'all' "
                        "(default: the checkpoint's)")
    parser.add_argument("--split", help="split file relative to the data root (default: the checkpoint's val split)")
    add_resolution_argument(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="autocast precision on CUDA (CPU always runs fp32)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--json", dest="out_json", help="write the full result (per-class IoU, confusion matrix) here")
    parser.add_argument("--markdown", help="write the per-class table (Acc and IoU per class, mAcc, mIoU) here")
    parser.add_argument("--save-predictions", metavar="FOLDER",
                        help="write each frame's masks/, mask_color/ (and fused/ for SC-CoSF) PNGs into this new "
                             "folder")
    parser.add_argument("--flip", action="store_true", help="also report horizontal-flip test-time augmentation")
    parser.add_argument("--scales", type=float, nargs="+", metavar="S",
                        help="also report multi-scale inference over these input scales, e.g. 0.5 0.75 1 1.25 1.5 1.75")
    parser.add_argument("--aux", choices=AUX_INPUTS, default="present",
                        help="missing: replace every aux image by the 'no reading' input, as the node feeds when "
                             "the aux camera is absent (default: present)")
    parser.add_argument("--exclude-background", action="store_true",
                        help="leave class 0 (unlabeled / background) out of mIoU and mAcc (default: counted)")


def run(args: argparse.Namespace) -> int:
    lightings = args.lightings
    if lightings == ["all"]:
        lightings = "all"
    result = evaluate_checkpoint(
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
        flip=args.flip,
        scales=args.scales,
        exclude_background=args.exclude_background,
        save_predictions=args.save_predictions,
        aux=args.aux,
    )
    print(format_summary(result))
    if args.out_json:
        print(f"wrote {args.out_json}")
    if args.save_predictions:
        print(f"wrote the predictions into {args.save_predictions}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(format_markdown(result))
        print(f"wrote {args.markdown}")
    return 0
