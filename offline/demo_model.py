"""The demo's model: a small MM5-layout set generated once and a fusion model trained on it once, both cached.

`rgbd-fusion-seg demo` serves it, and `bag evaluate` serves it for depth bags given no --checkpoint. The data
generator is deterministic (same seed, same bytes) and training is seeded, so the first run rebuilds the same
model anywhere; the checkpoint is not shipped (about 58 MB). Why early fusion and this schedule, with the
alternatives measured: see the module docstring of `rgbd_fusion_seg.offline.demo`.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from pathlib import Path

# The embedded default: what the first run generates and trains (and what later runs find cached).
DEFAULT_DATA = {"num_frames": 48, "seed": 0, "height": 240, "width": 320, "val_fraction": 0.25}
DEFAULT_METHOD = "early"  # the study's fastest learner from scratch, and the cheapest step (see offline/demo.py)
DEFAULT_TRAIN = {"steps": 1200, "batch_size": 4, "input_size": (96, 128), "lr": 2.0e-3}
# Depth range of the generated scenes (table 0.75-1.30 m, wall 1.60 m): the demo normalises [0.5, 2.0] m.
DEMO_AUX_RANGE_M = (0.5, 2.0)

# What the model reads: D16 depth decoded to metres, as a 16UC1 camera stream decodes in the node.
DEFAULT_AUX = ("depth", "m")
# The generated camera's focal length in pixels per pixel of image width (fx = fy; principal point at the
# centre). generate_mm5 draws objects at a size relative to the image and gives them heights in metres without
# a camera model; 2.6 widths makes the two agree: an apple 32 px in radius at 320x240 is about 7.5 cm wide at 1 m,
# the 7.5 cm its depth relief says (a 22 degree horizontal field of view).
DEMO_FOCAL_PER_WIDTH = 2.6


def demo_intrinsics(width: int, height: int) -> dict:
    """Pinhole intrinsics (pixels) of the generated depth at width x height: the demo's camera_info."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    focal = DEMO_FOCAL_PER_WIDTH * width
    return {"fx": focal, "fy": focal, "cx": (width - 1) / 2.0, "cy": (height - 1) / 2.0}


def default_work_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rgbd_fusion_seg" / "demo"


def _key(data: dict) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def prepare_data(work_dir: Path, spec: dict, log=print) -> Path:
    """The generated MM5-layout set for `spec` (generate_mm5's arguments), generated once and cached."""
    from rgbd_fusion_seg.offline.datasets.synth import generate_mm5

    root = work_dir / "data" / f"mm5_synth_{spec['height']}x{spec['width']}_n{spec['num_frames']}_s{spec['seed']}_{_key(spec)}"
    if (root / "synth_info.json").is_file():  # written last: its presence means the set is complete
        return root
    log(f"generating {spec['num_frames']} frames ({spec['height']}x{spec['width']}, seed {spec['seed']}) in MM5 layout -> {root}")
    summary = generate_mm5(root, **spec)
    log(f"  {len(summary['train'])} train / {len(summary['eval'])} held-out frames in {summary['seconds']:.1f} s")
    return root


def training_config(data_root: Path, out_dir: Path, method: str, steps: int, batch_size: int, input_size, lr: float) -> dict:
    """The demo's experiment: all eight lightings as augmentation, D16 depth in metres, a fixed step count."""
    return {
        "experiment": f"demo_{method}",
        "model": {"method": method, "pretrained": False, "options": {}},
        "data": {
            "dataset": "mm5",
            "root": str(data_root),
            "lightings": "all",
            "aux_folder": "D16",  # uint16 mm -> metres, as a 16UC1 camera stream decodes in the node
            "label_folder": "ANNO_CLASS",
            "train_split": "list_train_f.txt",
            "val_split": "list_eval_f.txt",
            "input_size": [int(input_size[0]), int(input_size[1])],
            "num_classes": None,
            "aux_range": [float(v) for v in DEMO_AUX_RANGE_M],
        },
        "train": {
            "epochs": 1000,
            "max_steps": int(steps),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "optimizer": "adamw",
            "lr_schedule": "cosine",
            "warmup_steps": min(20, max(int(steps) // 10, 0)),
            "amp": False,
            "num_workers": 0,
            "seed": 0,
            "val_every": 1000,  # validate once, at the end
            "augment": True,
            "checkpoint_every_steps": 100,
        },
        "loss": {"ce": 1.0, "dice": 1.0},
        "out_dir": str(out_dir),
    }


def ensure_checkpoint(work_dir: Path, data_root: Path, method: str, *, steps: int, batch_size: int, input_size,
                      lr: float, device: str, retrain: bool, log=print) -> tuple[Path, dict]:
    """Train (or resume, or reuse) the demo model; returns (serving checkpoint `<method>.pt`, its val metrics)."""
    from rgbd_fusion_seg.core.checkpoint import load_checkpoint, save_checkpoint
    from rgbd_fusion_seg.models import method_class
    from rgbd_fusion_seg.offline.config import config_from_dict
    from rgbd_fusion_seg.offline.train import train

    identity = training_config(Path("<data>"), Path("<out>"), method, steps, batch_size, input_size, lr)
    identity["data_key"] = data_root.name
    # A new version of the method's architecture trains a new model (the cached one would be refused).
    identity["architecture"] = method_class(method).architecture_version
    out_dir = work_dir / "models" / f"{method}_{_key(identity)}"
    served = out_dir / f"{method}.pt"
    if retrain and out_dir.exists():
        shutil.rmtree(out_dir)
    if served.is_file():
        checkpoint = load_checkpoint(served)
        log(f"using the cached {method} model {served} (trained earlier; --retrain to train again)")
        return served, checkpoint.metrics.get("val", {})
    raw = training_config(data_root, out_dir, method, steps, batch_size, input_size, lr)
    config = config_from_dict(raw, source="demo")
    from rgbd_fusion_seg.core.engine import resolve_device

    log(f"training {method} for {steps} steps (batch {batch_size}, input {input_size[0]}x{input_size[1]}) on "
        f"{resolve_device(device)}; "
        "first run only, the checkpoint is cached")
    started, cpu_started = time.monotonic(), _cpu_seconds()
    last = train(config, resume=True, device=device, log=lambda line: log(f"  {line}"))
    checkpoint = load_checkpoint(last)
    checkpoint.train_state = None  # the served file needs no optimiser state
    save_checkpoint(checkpoint, served)
    for leftover in ("last.pt", "best.pt"):  # resumable training state (3x the weights): no longer needed
        (out_dir / leftover).unlink(missing_ok=True)
    # CPU time beside wall time: on a shared machine the wall time says more about the other jobs than this one
    log(f"  trained in {time.monotonic() - started:.0f} s (CPU {_cpu_seconds() - cpu_started:.0f} s user+sys, "
        f"load average {os.getloadavg()[0]:.1f}) -> {served}")
    return served, checkpoint.metrics.get("val", {})


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def default_checkpoint(log=print) -> Path:
    """The cached default model's serving checkpoint (trained on first use: about 470 s of CPU time)."""
    work = default_work_dir()
    data_root = prepare_data(work, DEFAULT_DATA, log)
    path, _ = ensure_checkpoint(work, data_root, DEFAULT_METHOD, steps=DEFAULT_TRAIN["steps"],
                                batch_size=DEFAULT_TRAIN["batch_size"], input_size=DEFAULT_TRAIN["input_size"],
                                lr=DEFAULT_TRAIN["lr"], device="auto", retrain=False, log=log)
    return path
