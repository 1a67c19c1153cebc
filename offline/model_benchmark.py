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

`--published` measures instead every configuration whose size and compute the methods' authors report
(each method's `published` figures: RSFNet's Table III pairs, SC-CoSF's Table 3 at 600x800, the MM5 study's
code), each at its own input size and class count, and prints them side by side with the differences.
`--option KEY=VALUE` builds the methods measured with that option (e.g. `--methods sartm --option
encoder=tiny`); `--scan` times the selective-scan backends (SC-CoSF) instead of the methods; `--backends`
serves one method every way the engine can (eager, fast path, compile, bf16, ONNX Runtime, TensorRT) side by
side (backend_benchmark.py).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rgbd_fusion_seg.core.engine import PRECISIONS, resolve_device
from rgbd_fusion_seg.models import available_methods, build_model
from rgbd_fusion_seg.models.base import PublishedFigures
from rgbd_fusion_seg.models.registry import method_class

from . import backend_benchmark
from .benchmarking import MIB, bench_options, count_flops, device_name, parse_options, sync

MM5_NUM_CLASSES = 32

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
    parser.add_argument("--num-classes", type=int, default=None, help="output classes (default: 32, MM5's; with "
                        "--published each configuration's own)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a build option for the methods measured (YAML value), e.g. encoder=tiny; repeatable")
    parser.add_argument("--published", nargs="*", default=None, metavar="METHOD",
                        help="measure the configurations the methods' authors report (none named: every method "
                             "that has them), each at its published size, beside the published figures")
    parser.add_argument("--scan", action="store_true", help="time the selective-scan backends (SC-CoSF) instead; "
                        "with --methods sccosf also its whole predict with the scans and with identity scans")
    parser.add_argument("--backends", nargs="*", default=None, metavar="ROW",
                        help="instead: serve one method (default mid) every way the engine can, side by side (rows: "
                             "eager fast compile bf16 fp16 onnxruntime tensorrt; none named: all)")
    backend_benchmark.add_arguments(parser)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=0)


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=PRECISIONS[precision], enabled=precision != "fp32")


def _inputs(batch: int, size, device: torch.device, generator: torch.Generator):
    height, width = size
    rgb = torch.randn(batch, 3, height, width, generator=generator).to(device)
    aux = torch.rand(batch, 1, height, width, generator=generator).to(device)
    return rgb, aux


def measure_latency(model, rgb, aux, device, precision: str, iters: int, warmup: int) -> list[float]:
    """Milliseconds per forward pass, one value per timed iteration."""
    times = []
    with torch.inference_mode(), _autocast(device, precision):
        for index in range(warmup + iters):
            sync(device)
            start = time.perf_counter()
            model(rgb, aux)
            sync(device)
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return times


def measure_training(job: Job, args, device: torch.device, generator: torch.Generator) -> dict:
    """Images per second over `train_iters` AdamW steps (after `train_warmup` steps)."""
    model = _build(job).to(device).train()
    optimiser = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16" and device.type == "cuda")
    rgb, aux = _inputs(args.train_batch, args.train_size, device, generator)
    label = torch.randint(0, job.num_classes, (args.train_batch, *args.train_size), generator=generator).to(device)
    batch = {"rgb": rgb, "aux": aux, "label": label}
    if "confidence" in getattr(method_class(job.method), "extra_targets", ()):
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
    sync(device)
    start = time.perf_counter()
    for _ in range(args.train_iters):
        step()
    sync(device)
    elapsed = time.perf_counter() - start
    result = {"train_images_per_s": args.train_batch * args.train_iters / elapsed}
    if device.type == "cuda":
        result["train_peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    return result


@dataclass(frozen=True)
class Job:
    """One model to measure: a method built with `options`, at `size` with `num_classes` outputs."""

    method: str
    options: dict
    size: tuple[int, int]
    num_classes: int
    name: str
    published: PublishedFigures | None = None


def benchmark_method(job: Job, args, device: torch.device) -> dict:
    """The figures of one job's model. Size and compute are those of the deploy form with every extra
    output the method can serve kept (SC-CoSF's fused image included: its paper counts both tasks)."""
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = _build(job)
    result = {"method": job.name, "params_m": _millions(model.parameters())}
    model = model.deploy(keep_extras=method_class(job.method).serving_extras).eval().to(device)
    result["deploy_params_m"] = _millions(model.parameters())  # what the node serves
    rgb, aux = _inputs(1, job.size, device, generator)

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
        result.update(measure_training(job, args, device, generator))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _millions(parameters) -> float:
    return sum(p.numel() for p in parameters) / 1e6


def _build(job: Job):
    return build_model(job.method, job.num_classes, **bench_options(job.method, job.num_classes, job.options))


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


def format_published_comparison(jobs: list[Job], results: list[dict]) -> list[str]:
    """Each published configuration: measured deploy-form size and compute beside the published figures."""
    lines = [
        "| configuration | at | measured params M | published | diff | measured GMACs | published | diff | p50 ms "
        "| published FPS | source |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    notes = []
    for job, result in zip(jobs, results):
        if "error" in result or job.published is None:
            continue
        paper = job.published
        fps = ", ".join(f"{value:g} ({gpu})" for gpu, value in paper.fps) or "-"
        cells = [job.name, f"{job.size[0]}x{job.size[1]}, {job.num_classes} classes",
                 f"{result['deploy_params_m']:.2f}", _cell(paper.params_m, 2),
                 _difference(result["deploy_params_m"], paper.params_m), f"{result['gmacs']:.2f}",
                 _cell(paper.gmacs, 2), _difference(result["gmacs"], paper.gmacs),
                 f"{result['latency_ms_p50']:.1f}", fps, paper.source]
        lines.append("| " + " | ".join(cells) + " |")
        if paper.note and paper.note not in notes:
            notes.append(paper.note)
    return lines + [f"# {note}" for note in notes]


def _difference(measured: float, published: float | None) -> str:
    return "-" if not published else f"{100.0 * (measured - published) / published:+.1f} %"


def _jobs(args) -> list[Job]:
    """What to measure, checked before any measuring (a misspelt name fails at once, not after minutes)."""
    options = parse_options(args.option)
    if args.published is None:
        num_classes = args.num_classes or MM5_NUM_CLASSES
        methods = args.methods or available_methods()
        for method in methods:
            method_class(method)
        return [Job(method, options, tuple(args.size), num_classes, method) for method in methods]
    if args.methods or options:
        raise ValueError("--published measures the published configurations as published: it takes method names "
                         "itself and no --methods or --option")
    methods = args.published or [m for m in available_methods() if method_class(m).published]
    jobs = []
    for method in methods:
        figures = method_class(method).published
        if not figures:
            raise ValueError(f"method {method!r} has no published size or compute to compare with")
        for paper in figures:
            name = f"{method} {paper.label}".strip()
            jobs.append(Job(method, dict(paper.options), tuple(paper.size), args.num_classes or paper.num_classes,
                            name, paper))
    return jobs


def run(args) -> int:
    if args.scan:
        return _run_scan(args)
    if args.backends is not None:
        return backend_benchmark.run(args)
    device = resolve_device(args.device)
    jobs = _jobs(args)
    if min(args.iters, *args.size, args.train_batch, *args.train_size) < 1 or args.warmup < 0 or args.train_iters < 0:
        raise ValueError("--iters, --size, --train-batch and --train-size must be positive; warm-ups and --train-iters not negative")

    settings = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "precision": args.precision,
        "size": list(args.size),
        "iters": args.iters,
        "warmup": args.warmup,
        "num_classes": sorted({job.num_classes for job in jobs}),
        "options": parse_options(args.option),
        "train_batch": args.train_batch,
        "train_size": list(args.train_size),
        "train_iters": args.train_iters,
        "train_warmup": args.train_warmup,
        "flops_note": FLOPS_NOTE,
    }
    _print_header(settings, args, published=args.published is not None)

    results = []
    for job in jobs:
        try:
            result = benchmark_method(job, args, device)
        except (RuntimeError, KeyError, ValueError, NotImplementedError) as error:  # e.g. out of memory
            result = {"method": job.name, "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        results.append(result)
        print(f"# {job.name} done", file=sys.stderr, flush=True)

    for line in format_table(results, device.type == "cuda"):
        print(line)
    if args.published is not None:
        print("# beside the published figures (measured: the deploy form with its extra outputs, as the node serves it)")
        for line in format_published_comparison(jobs, results):
            print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
        print(f"# figures written to {args.json}")
    return 1 if any("error" in r for r in results) else 0


def _print_header(settings: dict, args, published: bool) -> None:
    height, width = args.size
    where = "each published configuration's own size" if published else f"{height}x{width}"
    print(f"# rgbd-fusion-seg bench on {settings['device_name']} [{settings['device']}], torch {torch.__version__}, "
          f"{args.precision}")
    print(f"# latency: batch 1 at {where}, {args.warmup} warm-up + {args.iters} timed passes of the deploy form")
    print(f"# {FLOPS_NOTE}; at {where}")
    if args.train_iters:
        th, tw = args.train_size
        print(
            f"# training: AdamW, batch {args.train_batch} at {th}x{tw}, {args.train_warmup} warm-up + "
            f"{args.train_iters} timed steps; {', '.join(map(str, settings['num_classes']))} classes, pretrained=False"
        )
    sys.stdout.flush()


def _run_scan(args) -> int:
    from . import scan_benchmark

    return scan_benchmark.run(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rgbd-fusion-seg bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
