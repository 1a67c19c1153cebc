"""`rgbd-fusion-seg bench --backends`: one method served every way the engine can, side by side in one run.

Each row times the engine's whole `predict` on camera frames (preprocessing, network, upsampling, argmax,
the mask copied back), batch 1, the network at `--size`, the frames at `--frame`:

    eager        PyTorch eager in NCHW with int64 ids: the plain path the fast path replaced; parity reference
    fast         the engine's default: channels_last network and post-processing (masks bit-identical)
    compile      the fast path under torch.compile (its compile time is reported apart)
    bf16         the fast path under bf16 autocast (CUDA, or a CPU with bf16 instructions)
    fp16         the fast path under fp16 autocast (CUDA only)
    onnxruntime  the exported logits graph (`export --logits`) by ONNX Runtime, CPU or CUDA: the engine
                 upsamples and takes the argmax (what every export was before the mask graph)
    onnxruntime-mask  the exported mask graph (export's default: upsampling and argmax in the graph); on CUDA
                 through I/O binding, the mask the only copy back
    tensorrt     the mask graph by ONNX Runtime's TensorRT provider (CUDA with TensorRT only), fp32 engines
    tensorrt-fp16  the same as TensorRT fp16 engines (`precision: fp16` for an .onnx)

The logits graph is exported once per method and the mask graph made from it by export's own `add_mask_head`
(one trace, not two: a large method's trace takes minutes).

Columns: latency p50/p90 (ms), images/s (1000 / mean ms), the share of mask pixels equal to eager's, the
network's GFLOP/s at p50 (its FLOPs over the whole predict), and peak memory: on a CPU the process's peak
resident set while the row ran (VmHWM, reset before each row), on CUDA the peak allocated by torch. A row
that cannot run here says why instead. On a CPU, the header gives the machine's measured fp32 peak through
oneDNN (a large 1x1 convolution), so each row's GFLOP/s reads as a share of what the CPU can do.

The weights are fitted for a few steps to labels that follow the aux image (`fitted_model`): an untrained
network gives one class nearly everywhere, and agreement on a constant mask would compare nothing.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rgbd_fusion_seg.core.checkpoint import Checkpoint, save_checkpoint
from rgbd_fusion_seg.core.engine import Prediction, SegmentationEngine, resolve_device
from rgbd_fusion_seg.core.palette import default_palette
from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing, prepare_inputs

from .benchmarking import (MIB, bench_options, class_names, count_flops, fitted_model, parse_options, peak_rss_mib,
                           peak_rss_reset)

ROWS = ("eager", "fast", "compile", "bf16", "fp16", "onnxruntime", "onnxruntime-mask", "tensorrt", "tensorrt-fp16")
NUM_CLASSES = 9
AUX = AuxNormalisation("depth", "m", 0.0, 5.0)
MIN_TIMED_ITERS = 3


class NotHere(Exception):
    """A row this machine cannot run, and why."""


def plain_masks(model, preprocessing: Preprocessing, rgb: np.ndarray, aux: np.ndarray) -> np.ndarray:
    """The straightforward path: NCHW throughout, int64 ids (what the engine did before its fast path)."""
    rgb_in, aux_in = prepare_inputs(rgb, aux, preprocessing)
    with torch.inference_mode():
        logits = model(torch.from_numpy(rgb_in)[None], torch.from_numpy(aux_in)[None]).logits
        logits = F.interpolate(logits.float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].argmax(dim=0).numpy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this mode, for `bench --backends` (model_benchmark.py owns the shared ones)."""
    parser.add_argument("--frame", nargs=2, type=int, default=[480, 640], metavar=("H", "W"),
                        help="with --backends: camera frame size (default: 480 640)")


def cpu_peak_gflops(repeats: int = 30) -> float:
    """fp32 GFLOP/s of a 1x1 convolution 512 -> 512 over 1x512x64x64 in channels_last (oneDNN): the most this
    CPU's convolutions reach, as the yardstick for each row. The fastest of `repeats` passes: a peak, so the
    pass least disturbed by anything else running."""
    conv = torch.nn.Conv2d(512, 512, 1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 512, 64, 64).contiguous(memory_format=torch.channels_last)
    flops = 2 * 512 * 512 * 64 * 64
    times = []
    with torch.inference_mode():
        for index in range(repeats + 3):
            start = time.perf_counter()
            conv(x)
            if index >= 3:
                times.append(time.perf_counter() - start)
    return flops / min(times) / 1e9


class _EagerEngine:
    """The plain path (`plain_masks`, on `device`) behind the engine's `predict` interface."""

    backend = "torch (plain NCHW)"

    def __init__(self, deployed, preprocessing: Preprocessing, device: torch.device):
        # a copy: the network moved to the device is freed with this row (later rows' peak memory is their own)
        self.model, self.preprocessing, self.device = copy.deepcopy(deployed).to(device), preprocessing, device

    def predict(self, rgb, aux) -> Prediction:
        rgb_in, aux_in = prepare_inputs(rgb, aux, self.preprocessing)
        with torch.inference_mode():
            output = self.model(torch.from_numpy(rgb_in)[None].to(self.device),
                                torch.from_numpy(aux_in)[None].to(self.device))
            logits = F.interpolate(output.logits.float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)
            return Prediction(logits[0].argmax(dim=0).cpu().numpy(), None)


def _engine_for(row: str, checkpoint_path: Path, deployed, preprocessing: Preprocessing, device: torch.device,
                folder: Path):
    """The engine of `row`, warmed up, and how long building it took beyond loading (compile, export)."""
    height, width = preprocessing.input_size
    start = time.perf_counter()
    if row == "eager":
        engine = _EagerEngine(deployed, preprocessing, device)
    elif row.startswith(("onnxruntime", "tensorrt")):
        tensorrt = row.startswith("tensorrt")
        if tensorrt and device.type != "cuda":
            raise NotHere("TensorRT runs on CUDA only")
        try:
            import onnxruntime  # only these rows need it
        except ImportError as error:
            raise NotHere(f"onnxruntime is not importable ({error})") from None
        needed = "TensorrtExecutionProvider" if tensorrt else "CUDAExecutionProvider" if device.type == "cuda" else None
        if needed and needed not in onnxruntime.get_available_providers():  # known before minutes of export
            raise NotHere(f"this onnxruntime has no {needed} (it has "
                          f"{', '.join(onnxruntime.get_available_providers())}): onnxruntime-gpu is needed")
        from rgbd_fusion_seg.core.onnx_model import OnnxModelError
        from rgbd_fusion_seg.core.onnx_export import ExportError

        try:
            logits_path, mask_path = exported_graphs(checkpoint_path, folder)
            engine = SegmentationEngine.from_file(
                logits_path if row == "onnxruntime" else mask_path, device=str(device),
                tensorrt_cache=folder / "tensorrt" if tensorrt else None,
                precision="fp16" if row == "tensorrt-fp16" else "fp32")
        except (ExportError, OnnxModelError) as error:
            raise NotHere(str(error)) from None
        if tensorrt and ("Tensorrt" not in engine.backend or engine.precision_note):
            raise NotHere(f"TensorRT did not start; ONNX Runtime runs {engine.backend}")
    else:
        precision = row if row in ("bf16", "fp16") else "fp32"
        engine = SegmentationEngine.from_file(checkpoint_path, device=str(device), precision=precision,
                                              compile=row == "compile")
        if engine.precision != precision:
            raise NotHere(engine.precision_note)
    if hasattr(engine, "warm_up"):
        engine.warm_up(height, width)
        if engine.compile_note:
            raise NotHere(engine.compile_note)
    return engine, time.perf_counter() - start


def exported_graphs(checkpoint_path: Path, folder: Path) -> tuple[Path, Path]:
    """The checkpoint's logits graph and mask graph in `folder`, exported once and reused by every row."""
    logits_path, mask_path = folder / "model-logits.onnx", folder / "model-mask.onnx"
    if not mask_path.exists():
        import onnx

        from rgbd_fusion_seg.core.onnx_export import add_mask_head, export_onnx

        export_onnx(checkpoint_path, logits_path, outputs=("logits",))
        logits = onnx.load(str(logits_path))
        onnx.save(add_mask_head(logits, NUM_CLASSES), str(mask_path))
    return logits_path, mask_path


def _time_row(engine, frames, reference, iters: int, warmup: int, budget_s: float | None = None) -> dict:
    """`iters` timed predicts after `warmup`; with `budget_s`, fewer once the timed ones took that long (at
    least MIN_TIMED_ITERS)."""
    for index in range(warmup):
        engine.predict(*frames[index % len(frames)])
    times, agree = [], []
    for index in range(iters):
        if budget_s is not None and index >= MIN_TIMED_ITERS and sum(times) / 1000.0 > budget_s:
            break
        rgb, aux = frames[index % len(frames)]
        start = time.perf_counter()
        mask = engine.predict(rgb, aux).mask  # a NumPy array: the device has finished
        times.append((time.perf_counter() - start) * 1000.0)
        agree.append(float(np.mean(mask == reference[index % len(frames)])))
    return {"p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
            "images_per_s": 1000.0 / float(np.mean(times)), "agreement": float(np.mean(agree)),
            "timed_iters": len(times)}


def run_backends(method: str, rows, size, frame, device_name: str = "auto", iters: int = 20, warmup: int = 3,
                 options: dict | None = None, row_budget_s: float | None = None, deadline: float | None = None,
                 progress=lambda _line: None) -> dict:
    """Every row of `rows` for `method`: {"settings": ..., "rows": [{"row", figures... | "not_here"}]}. With
    `row_budget_s` each row's timing stops after that many seconds; a row not started by `deadline` (a
    time.monotonic() value) is not run, and says so. `progress` gets a line as each row starts."""
    device = resolve_device(device_name)
    unknown = [row for row in rows if row not in ROWS]
    if unknown:
        raise ValueError(f"--backends: unknown row {', '.join(unknown)}; rows: {', '.join(ROWS)}")
    preprocessing = Preprocessing(input_size=tuple(size), aux=AUX)
    options = bench_options(method, NUM_CLASSES, options or {})
    model = fitted_model(method, NUM_CLASSES, options)
    checkpoint = Checkpoint(method, NUM_CLASSES, class_names(NUM_CLASSES), default_palette(NUM_CLASSES),
                            preprocessing, model.state_dict(), options=options, data={"dataset": "bench"})
    rng = np.random.default_rng(0)
    frames = [(rng.integers(0, 256, (*frame, 3), dtype=np.uint8), rng.random(tuple(frame), dtype=np.float32) * 5.0)
              for _ in range(4)]
    deployed = model.deploy().eval()
    reference = [plain_masks(deployed, preprocessing, rgb, aux) for rgb, aux in frames]
    flops = count_flops(deployed, torch.randn(1, 3, *size), torch.rand(1, 1, *size))
    settings = {"method": method, "device": str(device), "size": list(size), "frame": list(frame), "iters": iters,
                "warmup": warmup, "torch": torch.__version__, "gflops_per_image": flops / 1e9,
                "cpu_peak_gflops": cpu_peak_gflops() if device.type == "cpu" else None}
    results = []
    with tempfile.TemporaryDirectory(prefix="rgbd_fusion_seg_bench_") as folder:
        checkpoint_path = save_checkpoint(checkpoint, Path(folder) / f"{method}.pt")
        for row in rows:
            if deadline is not None and time.monotonic() > deadline:
                results.append({"row": row, "not_here": "skipped: the time budget was spent"})
                continue
            progress(f"{method}: {row}")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            peak_rss_reset()
            try:
                engine, build_s = _engine_for(row, Path(checkpoint_path), deployed, preprocessing, device, Path(folder))
                figures = _time_row(engine, frames, reference, iters, warmup, row_budget_s)
            except NotHere as reason:
                results.append({"row": row, "not_here": str(reason)})
                continue
            if device.type == "cuda":  # ONNX Runtime's device memory is its own arena, not torch's
                peak = None if row.startswith(("onnxruntime", "tensorrt")) else torch.cuda.max_memory_allocated(device) / MIB
            else:
                peak = peak_rss_mib()
            results.append({"row": row, "backend": engine.backend,
                            "build_s": build_s, "peak_mib": peak,
                            "gflops_per_s": flops / 1e9 / (figures["p50_ms"] / 1000.0), **figures})
            del engine
    return {"settings": settings, "rows": results}


def format_backends(figures: dict) -> list[str]:
    settings = figures["settings"]
    peak = settings["cpu_peak_gflops"]
    lines = [f"# {settings['method']} on {settings['device']}: network {settings['size'][0]}x{settings['size'][1]}, "
             f"frames {settings['frame'][0]}x{settings['frame'][1]}, batch 1, {settings['warmup']} warm-up + "
             f"{settings['iters']} timed predicts per row; {settings['gflops_per_image']:.1f} GFLOP per image"]
    if peak:
        lines.append(f"# this CPU's fp32 peak through oneDNN (1x1 conv 512->512, 64x64): {peak:.0f} GFLOP/s")
    lines.append(f"{'row':<18} {'p50 ms':>8} {'p90 ms':>8} {'img/s':>7} {'= eager':>8} {'GFLOP/s':>8} "
                 f"{'of peak':>7} {'peak MiB':>9} {'build s':>8}  backend")
    for row in figures["rows"]:
        if "not_here" in row:
            lines.append(f"{row['row']:<18} n/a: {row['not_here']}")
            continue
        share = f"{row['gflops_per_s'] / peak:.0%}" if peak else "-"
        memory = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "-"
        lines.append(f"{row['row']:<18} {row['p50_ms']:>8.1f} {row['p90_ms']:>8.1f} {row['images_per_s']:>7.1f} "
                     f"{row['agreement']:>8.2%} {row['gflops_per_s']:>8.0f} {share:>7} {memory:>9} "
                     f"{row['build_s']:>8.1f}  {row['backend']}")
    return lines


def run(args) -> int:
    methods = args.methods or ["mid"]
    rows = args.backends or list(ROWS)
    everything = []
    for method in methods:
        figures = run_backends(method, rows, args.size, args.frame, args.device, args.iters, args.warmup,
                               options=parse_options(args.option))
        for line in format_backends(figures):
            print(line, flush=True)
        everything.append(figures)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"backends": everything}, indent=2) + "\n")
        print(f"# figures written to {args.json}")
    return 0
