"""Selective-scan backends side by side (rgbd_fusion_seg/models/ssm.py): forward and forward+backward time of
`selective_scan` on the shapes SC-CoSF scans, for every backend available on the device.

- sequential: the reference loop over time (CPU or GPU; slow, one step per position);
- mambapy: mambapy's parallel (Blelloch) scan, pure PyTorch;
- mamba_ssm: the fused CUDA kernel, only where CUDA is present and mamba-ssm is installed.

Shapes: one S6 scan of d_inner = 256 channels, d_state 16 (Sc-LRB's at ConvNeXt-B's first stage with E = 2)
at 1/4 of 480x640 (L = 120 x 160 = 19200) and at 1/16 (L = 30 x 40 = 1200). Inputs are random (the cost does not depend on them);
times are the median of `iters` passes after one warm-up pass, with CUDA synchronisation on a GPU.
"""
from __future__ import annotations

import statistics
import time

import torch

from rgbd_fusion_seg.models import ssm

# (label, batch, channels (directions x d_inner), length, d_state, groups)
DEFAULT_SIZES = (
    ("1/16 of 480x640", 1, 256, 30 * 40, 16, 1),
    ("1/4 of 480x640", 1, 256, 120 * 160, 16, 1),
)
# The sequential loop runs one Python step per position, torch's scan operator one eager step per position:
# longer sequences than this are not timed with them.
SEQUENTIAL_MAX_LENGTH = 4096


def available_backends(device: torch.device) -> list[str]:
    backends = ["sequential", "mambapy", "torch_scan"]
    if device.type == "cuda" and ssm._mamba_ssm_scan() is not None:
        backends.append("mamba_ssm")
    return backends


def _inputs(batch, channels, length, state, groups, device, generator):
    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=generator)).to(device)

    return {
        "u": rand(batch, channels, length), "delta": rand(batch, channels, length, scale=0.5),
        "A": -torch.exp(rand(channels, state, scale=0.5)), "B": rand(batch, groups, state, length).squeeze(1),
        "C": rand(batch, groups, state, length).squeeze(1), "D": rand(channels), "delta_bias": rand(channels, scale=0.1),
    }


def _time(function, device: torch.device, iters: int) -> float:
    """Median milliseconds of `iters` calls after one warm-up call."""
    times = []
    for index in range(iters + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index:
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def measure_scan_backends(device="cpu", sizes=DEFAULT_SIZES, iters: int = 3, seed: int = 0) -> list[dict]:
    """One dict per (size, backend): label, backend, device, shape, forward_ms, forward_backward_ms
    (None where the backend was not timed at that size, with `skipped` saying why)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    results = []
    for label, batch, channels, length, state, groups in sizes:
        inputs = _inputs(batch, channels, length, state, groups, device, generator)
        for backend in available_backends(device):
            row = {"size": label, "backend": backend, "device": str(device),
                   "shape": {"batch": batch, "channels": channels, "length": length, "d_state": state, "groups": groups}}
            if backend in ("sequential", "torch_scan") and length > SEQUENTIAL_MAX_LENGTH:
                results.append({**row, "forward_ms": None, "forward_backward_ms": None,
                                "skipped": f"L = {length} > {SEQUENTIAL_MAX_LENGTH} steps of a loop"})
                continue
            row["forward_ms"] = _time(lambda: _forward(inputs, backend), device, iters)
            row["forward_backward_ms"] = _time(lambda: _forward_backward(inputs, backend), device, iters)
            results.append(row)
    return results


def _forward(inputs: dict, backend: str) -> None:
    with torch.no_grad():
        ssm.selective_scan(**inputs, backend=backend)


def _forward_backward(inputs: dict, backend: str) -> None:
    leaves = {k: v.detach().requires_grad_(k in ("u", "delta", "B", "C")) for k, v in inputs.items()}
    ssm.selective_scan(**leaves, backend=backend).sum().backward()


def format_scan_table(results: list[dict]) -> list[str]:
    """Markdown lines: one row per size and backend, with the speed-up over the sequential reference."""
    lines = ["| shape | backend | device | forward (ms) | forward + backward (ms) | forward vs sequential |",
             "|---|---|---|---:|---:|---:|"]
    reference = {row["size"]: row["forward_ms"] for row in results if row["backend"] == "sequential"}

    def ms(value):
        return "-" if value is None else f"{value:.1f}"

    for row in results:
        shape = row["shape"]
        label = f"{row['size']} (B {shape['batch']}, D {shape['channels']}, L {shape['length']}, N {shape['d_state']})"
        base = reference.get(row["size"])
        speedup = f"{base / row['forward_ms']:.1f}x" if base and row["forward_ms"] else row.get("skipped", "-")
        lines.append(f"| {label} | {row['backend']} | {row['device']} | {ms(row['forward_ms'])} | "
                     f"{ms(row['forward_backward_ms'])} | {speedup} |")
    return lines
