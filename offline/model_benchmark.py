"""`rgbd-fusion-seg bench`: size, compute, latency, memory and training throughput of the fusion methods.

For every method (default: all registered) on one device:
- parameters (millions) of the training form and of the deploy form (what the node serves; fewer for
  methods that merge branches, e.g. RSFNet);
- GFLOPs and GMACs of one forward pass at batch 1 and `--size`, counted by torch.utils.flop_counter
  (a multiply-add counts as 2 FLOPs; only convolutions, matrix products and attention are counted);
- forward latency p50/p90 (ms) at batch 1 and `--size` of the deploy form (what the node serves), after
  warm-up iterations, with CUDA synchronisation around each pass on a GPU, optionally under fp16/bf16
  autocast;
- peak GPU memory (MiB) of that inference loop and of training (CUDA only);
- training throughput (images/s): AdamW steps on random batches of `--train-batch` at `--train-size`,
  with the method's own loss (`compute_loss`, cross-entropy as the segmentation loss).

Models are built with `pretrained=False` and 32 classes (MM5) unless told otherwise; inputs are random,
which does not change the cost of any of these networks.

`--rsfnet` measures RSFNet's encoder pairs instead (9 classes, MFNet's, unless --num-classes says
otherwise) and prints them beside the figures of the RSFNet paper's Table III.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from rgbd_fusion_seg.core.engine import PRECISIONS, resolve_device
from rgbd_fusion_seg.models import available_methods, build_model
from rgbd_fusion_seg.models.encoders import ENCODERS
from rgbd_fusion_seg.models.methods.rsfnet import PAPER_ENCODER_PAIRS, parse_encoders
from rgbd_fusion_seg.models.registry import method_class

MM5_NUM_CLASSES = 32
MFNET_NUM_CLASSES = 9
MIB = 1024 * 1024

# RSFNet paper, Table III (MFNet test set, 480x640): parameters (M), "FLOPs" (G) and frames per second on a
# GeForce RTX 2080Ti and a TITAN Xp. Their FLOPs count multiply-adds: the table's FLOPs difference between
# K = 5 and K = 3 (Table VIII) is exactly the multiply-adds of the RSF KxK convolutions at 480x640.
PAPER_TABLE_III = {
    "resnet50-resnet18": {"params_m": 44.53, "gmacs": 64.69, "fps_2080ti": 81.36, "fps_titan_xp": 40.47},
    "densenet161-densenet121": {"params_m": 44.10, "gmacs": 95.02, "fps_2080ti": 34.15, "fps_titan_xp": 14.10},
    "resnet101-resnet34": {"params_m": 73.63, "gmacs": 98.82, "fps_2080ti": 57.31, "fps_titan_xp": 28.40},
}

FLOPS_NOTE = (
    "FLOPs: torch.utils.flop_counter.FlopCounterMode, one forward pass at batch 1; a multiply-add counts as "
    "2 FLOPs (GMACs = GFLOPs / 2); convolutions, matrix products and attention only (no BN, activations, "
    "interpolation)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD", help="methods to measure (default: all registered)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--size", nargs=2, type=int, default=[480, 640], metavar=("H", "W"), help="inference input size (default: 480 640)")
    parser.add_argument("--iters", type=int, default=20, help="timed inference passes (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed inference passes first (default: 3)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="autocast precision (default: fp32)")
    parser.add_argument("--train-batch", type=int, default=8, help="training batch size (default: 8)")
    parser.add_argument("--train-size", nargs=2, type=int, default=[224, 224], metavar=("H", "W"), help="training input size (default: 224 224)")
    parser.add_argument("--train-iters", type=int, default=5, help="timed training steps (default: 5; 0 skips training)")
    parser.add_argument("--train-warmup", type=int, default=2, help="untimed training steps first (default: 2)")
    parser.add_argument("--num-classes", type=int, default=None, help="output classes (default: 32, MM5; 9, MFNet, with --rsfnet)")
    parser.add_argument("--rsfnet", nargs="*", default=None, metavar="RGB-AUX",
                        help="measure RSFNet with these encoder pairs (none named: the paper's three) beside Table III")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=0)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {name} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")


def _inputs(batch: int, size, device: torch.device, generator: torch.Generator):
    height, width = size
    rgb = torch.randn(batch, 3, height, width, generator=generator).to(device)
    aux = torch.rand(batch, 1, height, width, generator=generator).to(device)
    return rgb, aux


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Attention kernels torch's FlopCounterMode has no formula for (it knows the CUDA flash/efficient/cudnn ones):
# without these, attention on the CPU would count as zero.
_EXTRA_FLOP_FORMULAS = {
    getattr(torch.ops.aten, name): _sdpa_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    if hasattr(torch.ops.aten, name)
}


def count_flops(model: torch.nn.Module, rgb: torch.Tensor, aux: torch.Tensor) -> int:
    """Total FLOPs of one forward pass (multiply-add = 2), in full precision."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with torch.inference_mode(), counter:
        model(rgb, aux)
    return int(counter.get_total_flops())


def measure_latency(model, rgb, aux, device, precision: str, iters: int, warmup: int) -> list[float]:
    """Milliseconds per forward pass, one value per timed iteration."""
    times = []
    with torch.inference_mode(), _autocast(device, precision):
        for index in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            model(rgb, aux)
            _sync(device)
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return times


def measure_training(method: str, args, device: torch.device, generator: torch.Generator, options=None) -> dict:
    """Images per second over `train_iters` AdamW steps (after `train_warmup` steps)."""
    model = build_model(method, args.num_classes, pretrained=False, **(options or {})).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16" and device.type == "cuda")
    rgb, aux = _inputs(args.train_batch, args.train_size, device, generator)
    label = torch.randint(0, args.num_classes, (args.train_batch, *args.train_size), generator=generator).to(device)
    batch = {"rgb": rgb, "aux": aux, "label": label}
    if "confidence" in getattr(method_class(method), "extra_targets", ()):
        batch["confidence_target"] = torch.rand(args.train_batch, 2, generator=generator).to(device)

    def seg_loss(logits, target):
        return F.cross_entropy(logits.float(), target, ignore_index=255)

    def step():
        with _autocast(device, args.precision):
            output = model(rgb, aux)
            loss, _ = model.compute_loss(output, batch, seg_loss)
        optimiser.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.train_warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.train_iters):
        step()
    _sync(device)
    elapsed = time.perf_counter() - start
    result = {"train_images_per_s": args.train_batch * args.train_iters / elapsed}
    if device.type == "cuda":
        result["train_peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return result


def benchmark_method(method: str, args, device: torch.device, options: dict | None = None, name: str | None = None) -> dict:
    """The figures of one method (built with `options`), reported under `name` (default: the method)."""
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = build_model(method, args.num_classes, pretrained=False, **(options or {}))
    result = {
        "method": name or method,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    model = model.deploy().eval().to(device)
    result["deploy_params_m"] = sum(p.numel() for p in model.parameters()) / 1e6  # what the node serves
    rgb, aux = _inputs(1, args.size, device, generator)

    flops = count_flops(model, rgb, aux)
    result["gflops"] = flops / 1e9
    result["gmacs"] = flops / 2e9

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = measure_latency(model, rgb, aux, device, args.precision, args.iters, args.warmup)
    result["latency_ms_p50"] = float(np.percentile(times, 50))
    result["latency_ms_p90"] = float(np.percentile(times, 90))
    if device.type == "cuda":
        result["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    del model, rgb, aux
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if args.train_iters > 0:
        result.update(measure_training(method, args, device, generator, options))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _cell(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: list[dict], cuda: bool) -> list[str]:
    """A Markdown table of the measured methods, then one comment line per method that failed."""
    columns = [
        ("params_m", "params M (training form)", 2),
        ("deploy_params_m", "deploy params M", 2),
        ("gflops", "GFLOPs", 2),
        ("gmacs", "GMACs", 2),
        ("latency_ms_p50", "p50 ms", 2),
        ("latency_ms_p90", "p90 ms", 2),
    ]
    if cuda:
        columns += [("peak_mem_mib", "peak MiB", 0), ("train_peak_mem_mib", "train peak MiB", 0)]
    columns += [("train_images_per_s", "train img/s", 2)]
    rows = [["method"] + [title for _, title, _ in columns]]
    rows += [[r["method"]] + [_cell(r.get(key), digits) for key, _, digits in columns] for r in results if "error" not in r]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    lines += [f"# {r['method']} failed: {r['error']}" for r in results if "error" in r]
    return lines


def format_paper_comparison(results: list[dict]) -> list[str]:
    """RSFNet's measured deploy form beside the paper's Table III (its FLOPs are multiply-adds: GMACs)."""
    lines = [
        "| RSFNet encoders | params M | GMACs | p50 ms | FPS | paper params M | paper GMACs | paper FPS 2080Ti | paper FPS TITAN Xp |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        if "error" in result:
            continue
        pair = result["method"].removeprefix("rsfnet ")
        paper = PAPER_TABLE_III.get(pair, {})
        params = result["deploy_params_m"]
        cells = [f"{params:.2f}", f"{result['gmacs']:.2f}", f"{result['latency_ms_p50']:.1f}",
                 f"{1000.0 / result['latency_ms_p50']:.2f}"]
        cells += [_cell(paper.get(key), 2) for key in ("params_m", "gmacs", "fps_2080ti", "fps_titan_xp")]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return lines


def _jobs(args) -> list[tuple[str, dict]]:
    """(method, extra benchmark_method arguments) to measure, checked before any measuring."""
    if args.rsfnet is not None and args.methods:
        raise ValueError("--methods and --rsfnet exclude each other: --rsfnet measures RSFNet's encoder pairs only")
    if args.rsfnet is None:
        methods = args.methods or available_methods()
        for method in methods:  # fail early, before minutes of measuring, on a misspelt name
            method_class(method)
        return [(method, {}) for method in methods]
    pairs = args.rsfnet or list(PAPER_ENCODER_PAIRS)
    for pair in pairs:
        unknown = [arch for arch in parse_encoders(pair) if arch not in ENCODERS]
        if unknown:
            raise ValueError(f"--rsfnet {pair}: {', '.join(unknown)} is not one of {', '.join(ENCODERS)}")
    return [("rsfnet", {"options": {"encoders": pair}, "name": f"rsfnet {pair}"}) for pair in pairs]


def run(args) -> int:
    device = resolve_device(args.device)
    if args.num_classes is None:
        args.num_classes = MM5_NUM_CLASSES if args.rsfnet is None else MFNET_NUM_CLASSES
    jobs = _jobs(args)
    if min(args.iters, *args.size, args.train_batch, *args.train_size) < 1 or args.warmup < 0 or args.train_iters < 0:
        raise ValueError("--iters, --size, --train-batch and --train-size must be positive; warm-ups and --train-iters not negative")

    settings = {
        "device": str(device),
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "precision": args.precision,
        "size": list(args.size),
        "iters": args.iters,
        "warmup": args.warmup,
        "num_classes": args.num_classes,
        "train_batch": args.train_batch,
        "train_size": list(args.train_size),
        "train_iters": args.train_iters,
        "train_warmup": args.train_warmup,
        "flops_note": FLOPS_NOTE,
    }
    height, width = args.size
    print(f"# rgbd-fusion-seg bench on {settings['device_name']} [{device}], torch {torch.__version__}, {args.precision}")
    print(f"# latency: batch 1 at {height}x{width}, {args.warmup} warm-up + {args.iters} timed passes of the deploy form")
    print(f"# {FLOPS_NOTE}; at {height}x{width}")
    if args.train_iters:
        th, tw = args.train_size
        print(
            f"# training: AdamW, batch {args.train_batch} at {th}x{tw}, {args.train_warmup} warm-up + "
            f"{args.train_iters} timed steps; {args.num_classes} classes, pretrained=False"
        )
    sys.stdout.flush()

    results = []
    for method, extra in jobs:
        name = extra.get("name", method)
        try:
            result = benchmark_method(method, args, device, **extra)
        except (RuntimeError, KeyError, ValueError, NotImplementedError) as error:  # e.g. out of memory
            result = {"method": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.append(result)
        print(f"# {name} done", file=sys.stderr, flush=True)

    for line in format_table(results, device.type == "cuda"):
        print(line)
    if args.rsfnet is not None:
        print("# RSFNet beside its paper (Table III; the paper's FLOPs are multiply-adds, so they sit under GMACs)")
        for line in format_paper_comparison(results):
            print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
        print(f"# figures written to {args.json}")
    return 1 if any("error" in r for r in results) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rgbd-fusion-seg bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
