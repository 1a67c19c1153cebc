"""`rgbd-fusion-seg bench --scan`: the selective-scan backends (rgbd_fusion_seg/models/ssm.py) side by side in
one run, forward and forward+backward time and peak memory of `selective_scan` on the shapes SC-CoSF scans, for
every backend available on the device:

- sequential: the reference loop over time (one Python step per position);
- mambapy: mambapy's parallel (Blelloch) scan, pure PyTorch;
- chunked: chunks of ssm.CHUNK_LENGTH steps, two levels (pure PyTorch; what the ONNX graph holds);
- numba: the compiled CPU loop (models/scan_kernel.py), on a CPU where numba is installed (`auto` there);
- mamba_ssm: the fused CUDA kernel, only where CUDA is present and mamba-ssm is installed (`auto` there).

The speed-up columns compare `auto`'s choice on the device with every row.

Shapes: one S6 scan of d_inner = 256 channels, d_state 16, batch 1, at 1/16 of 480x640 (L = 30 x 40 = 1200)
and at 1/4 (L = 120 x 160 = 19200). Inputs are random (the cost does not depend on them). Times are the median
of up to `iters` passes after one warm-up pass, fewer where the passes so far took ROW_BUDGET_S (the slow
rows), with CUDA synchronisation on a GPU. Memory, measured in the warm-up pass: on a CPU the process's peak
resident set above its resident set at the pass's start (Linux VmRSS and VmHWM, reset before it), run with glibc's malloc told to
map every block of 64 KiB or more on its own (mallopt M_MMAP_THRESHOLD) and the heap's free pages returned
first (malloc_trim), so that the peak counts what the pass held at most, not what earlier passes left; on CUDA
torch's peak allocated memory.

With `--methods sccosf` it also times the whole model: SC-CoSF's whole predict (`bench --backends` rows fast and
onnxruntime, at `--size`, built with `--option`s) once with its scans as served (`auto`) and once with every
scan replaced by the identity (y = u: a benchmark-only patch, never a model option), to show what the scans cost.
"""
from __future__ import annotations

import contextlib
import json

import torch

from rgbd_fusion_seg.models import ssm
from rgbd_fusion_seg.models.scan_kernel import numba_available

from . import backend_benchmark
from .benchmarking import device_name, parse_options, time_call

# (label, batch, channels (directions x d_inner), length, d_state, groups)
DEFAULT_SIZES = (
    ("1/16 of 480x640", 1, 256, 30 * 40, 16, 1),
    ("1/4 of 480x640", 1, 256, 120 * 160, 16, 1),
)
# Autograd through the sequential loop keeps graph nodes per step: its forward+backward took 99 s at L = 1200
# here (docs/sccosf.md), so from that length on only its forward is timed.
SEQUENTIAL_BACKWARD_MAX_LENGTH = 1024
# A row stops repeating once its passes have taken this long (at least one timed pass).
ROW_BUDGET_S = 20.0
WHOLE_MODEL_ROWS = ("fast", "onnxruntime")


def available_backends(device: torch.device) -> list[str]:
    backends = ["sequential", "mambapy", "chunked"]
    if device.type == "cpu" and numba_available():
        backends.append("numba")
    if device.type == "cuda" and ssm.mamba_ssm_scan() is not None:
        backends.append("mamba_ssm")
    return backends


def scan_inputs(batch, channels, length, state, groups, device, generator):
    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).to(device)

    return {
        "u": rand(batch, channels, length), "delta": rand(batch, channels, length, scale=0.5),
        "A": -torch.exp(rand(channels, state, scale=0.5)), "B": rand(batch, groups, state, length).squeeze(1),
        "C": rand(batch, groups, state, length).squeeze(1), "D": rand(channels), "delta_bias": rand(channels, scale=0.1),
    }


def measure_scan_backends(device="cpu", sizes=DEFAULT_SIZES, iters: int = 3, seed: int = 0) -> list[dict]:
    """One dict per (size, backend): label, backend, device, shape, forward_ms, forward_backward_ms and their
    peak memory forward_mib, forward_backward_mib (None where not timed, with `skipped` saying why)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    tiny = scan_inputs(1, 2, 8, 2, 1, device, generator)
    for backend in available_backends(device):  # numba compiles or loads its kernels here, not in a measured pass
        scan_forward_backward(tiny, backend)
    results = []
    for label, batch, channels, length, state, groups in sizes:
        inputs = scan_inputs(batch, channels, length, state, groups, device, generator)
        for backend in available_backends(device):
            row = {"size": label, "backend": backend, "device": str(device),
                   "shape": {"batch": batch, "channels": channels, "length": length, "d_state": state, "groups": groups}}
            row["forward_ms"], row["forward_mib"] = time_call(lambda: scan_forward(inputs, backend), device, iters,
                                                             ROW_BUDGET_S)
            if backend == "sequential" and length > SEQUENTIAL_BACKWARD_MAX_LENGTH:
                row.update(forward_backward_ms=None, forward_backward_mib=None,
                           skipped=f"backward: autograd through {length} loop steps")
            else:
                row["forward_backward_ms"], row["forward_backward_mib"] = time_call(
                    lambda: scan_forward_backward(inputs, backend), device, iters, ROW_BUDGET_S)
            results.append(row)
    return results


def scan_forward(inputs: dict, backend: str) -> None:
    with torch.no_grad():
        ssm.selective_scan(**inputs, backend=backend)


def scan_forward_backward(inputs: dict, backend: str) -> None:
    leaves = {k: v.detach().requires_grad_(k in ("u", "delta", "B", "C")) for k, v in inputs.items()}
    ssm.selective_scan(**leaves, backend=backend).sum().backward()


def format_scan_table(results: list[dict]) -> list[str]:
    """Markdown lines: one row per size and backend, with the speed-ups of `auto`'s backend on the device over
    each row, forward and forward+backward."""
    chosen = ssm.resolve_backend("auto", torch.device(results[0]["device"]))
    lines = ["| shape | backend | device | forward (ms) | forward peak MiB | forward + backward (ms) | "
             f"forward + backward peak MiB | auto ({chosen}) faster: forward | auto faster: forward + backward |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    auto = {row["size"]: row for row in results if row["backend"] == chosen}

    def number(value):
        return "-" if value is None else f"{value:.1f}"

    def ratio(key, row):
        base = auto.get(row["size"], {}).get(key)
        return f"{row[key] / base:.1f}x" if base and row[key] else "-"

    for row in results:
        shape = row["shape"]
        label = f"{row['size']} (B {shape['batch']}, D {shape['channels']}, L {shape['length']}, N {shape['d_state']})"
        backward = number(row["forward_backward_ms"]) if row["forward_backward_ms"] is not None else row["skipped"]
        lines.append(f"| {label} | {row['backend']} | {row['device']} | {number(row['forward_ms'])} | "
                     f"{number(row['forward_mib'])} | {backward} | {number(row['forward_backward_mib'])} | "
                     f"{ratio('forward_ms', row)} | {ratio('forward_backward_ms', row)} |")
    return lines


@contextlib.contextmanager
def identity_scans():
    """Every selective scan replaced by y = u while inside (benchmark only: what the rest of a model costs)."""
    original = ssm.selective_scan
    ssm.selective_scan = lambda u, *args, **kwargs: u
    try:
        yield
    finally:
        ssm.selective_scan = original


def measure_whole_model(size, frame, iters: int, warmup: int, options: dict | None = None,
                        rows=WHOLE_MODEL_ROWS) -> list[dict]:
    """SC-CoSF's whole predict on the CPU (backend_benchmark.run_backends) with its scans as served and with
    identity scans: [{"scans": "auto" | "identity", **run_backends' figures}]."""
    results = []
    for scans in ("auto", "identity"):
        with identity_scans() if scans == "identity" else contextlib.nullcontext():
            figures = backend_benchmark.run_backends("sccosf", rows, size, frame, "cpu", iters, warmup, options)
        results.append({"scans": scans, **figures})
    return results


def format_whole_model(results: list[dict]) -> list[str]:
    settings = results[0]["settings"]
    lines = [f"# sccosf whole predict on cpu, network {settings['size'][0]}x{settings['size'][1]}, batch 1, "
             f"{settings['warmup']} warm-up + {settings['iters']} timed predicts per row; scans as served (auto = "
             f"{ssm.resolve_backend('auto', torch.device('cpu'))} through PyTorch here, chunked in the ONNX graph) "
             "and replaced by the identity",
             "| row | scans | p50 ms | p90 ms | peak MiB | build s | auto / identity (p50) |", "|---|---|---:|---:|---:|---:|---:|"]
    identity = {row["row"]: row for row in results[1]["rows"] if "not_here" not in row}
    for result in results:
        for row in result["rows"]:
            if "not_here" in row:
                lines.append(f"| {row['row']} | {result['scans']} | n/a: {row['not_here']} | | | | |")
                continue
            base = identity.get(row["row"])
            share = f"{row['p50_ms'] / base['p50_ms']:.2f}x" if base and result["scans"] == "auto" else ""
            memory = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            lines.append(f"| {row['row']} | {result['scans']} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | "
                         f"{memory} | {row['build_s']:.1f} | {share} |")
    return lines


def run(args) -> int:
    """`bench --scan`: the backends table; with `--methods sccosf` the whole-model rows too."""
    from rgbd_fusion_seg.core.engine import resolve_device

    methods = args.methods or []
    if any(method != "sccosf" for method in methods):
        raise ValueError(f"--scan times the scans of sccosf only; got --methods {' '.join(methods)}")
    device = resolve_device(args.device)
    print(f"# selective scan backends on {device_name(device)} [{device}], torch {torch.__version__}; "
          f"chunk length {ssm.CHUNK_LENGTH}", flush=True)
    figures = {"scan": measure_scan_backends(device, sizes=DEFAULT_SIZES, iters=args.iters)}
    for line in format_scan_table(figures["scan"]):
        print(line, flush=True)
    if methods:
        figures["whole_model"] = measure_whole_model(args.size, args.frame, args.iters, args.warmup,
                                                     parse_options(args.option))
        for line in format_whole_model(figures["whole_model"]):
            print(line, flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"# figures written to {args.json}")
    return 0
