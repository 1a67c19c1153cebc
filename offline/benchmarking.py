"""What the benchmarks share: `bench` (model_benchmark.py), `bench --scan` (scan_benchmark.py), `bench --backends`
(backend_benchmark.py) and `gpu-report` (gpu_report.py) import it; it imports none of them.

- the models they measure: `--option KEY=VALUE` parsing, build options that need no files (`bench_options`),
  weights fitted so that masks are not constant (`fitted_model`);
- compute: `count_flops` (torch's FlopCounterMode, attention on the CPU included);
- time: `time_call` (median of synchronised calls, within a budget), `sync`;
- memory: the process's peak resident set (`peak_rss_reset`, `peak_rss_mib`) and what one call holds at most
  on a CPU (`cpu_peak_mib`);
- the machine: `device_name`.
"""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from rgbd_fusion_seg.models import build_model, method_options
from rgbd_fusion_seg.models.registry import method_class

MIB = 1024 * 1024
# glibc's mallopt parameter, and the largest value its dynamic threshold reaches on 64-bit (restored after)
M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX = -3, 32 * MIB


def parse_options(pairs: list[str]) -> dict:
    """`--option KEY=VALUE` arguments as build options (each value read as YAML)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE, e.g. encoder=tiny")
        options[key] = yaml.safe_load(value)
    return options


def class_names(num_classes: int) -> list[str]:
    return [f"class {index}" for index in range(num_classes)]


def bench_options(method: str, num_classes: int, options: dict) -> dict:
    """`options` completed so that `method` builds without files: class names for a method that wants them,
    no pretrained weights."""
    options = dict(options)
    if method_class(method).wants_class_names and "class_names" not in options:
        options["class_names"] = class_names(num_classes)
        # SARTM's text teacher: a seeded table costs what CLIP's would (no CLIP file is needed to measure)
        if "text_standin" in method_options(method):
            options.setdefault("text_standin", True)
    if "pretrained" in method_class(method).weight_file_options:
        options.setdefault("pretrained", False)
    return options


def fitted_model(method: str, num_classes: int, options: dict | None = None, steps: int = 5):
    """`method` fitted for `steps` Adam steps on two random 32x48 pairs to labels that follow the aux image,
    in eval mode. Its batch-norm statistics are re-estimated as exact averages over those inputs: running
    averages of five steps make eval-mode logits huge, where float32 rounding alone separates backends."""
    torch.manual_seed(0)
    model = build_model(method, num_classes, **(options or {})).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    rgb, aux = torch.randn(2, 3, 32, 48), torch.rand(2, 1, 32, 48)
    label = (aux[:, 0] * num_classes).long().clamp(max=num_classes - 1)
    for _ in range(steps):
        loss = F.cross_entropy(model(rgb, aux).logits, label)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    with torch.no_grad():
        model(rgb, aux)
    return model.eval()


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


def device_name(device: torch.device) -> str:
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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(function, device: torch.device, iters: int, budget_s: float) -> tuple[float, float | None]:
    """Median milliseconds of up to `iters` calls after one warm-up call, fewer once the calls so far took
    `budget_s` (at least one), and the peak memory (MiB) of the warm-up call: torch's on CUDA, `cpu_peak_mib`'s
    on a CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        function()
        peak = torch.cuda.max_memory_allocated(device) / MIB
    else:
        peak = cpu_peak_mib(function)
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        function()
        sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
        if sum(times) > budget_s * 1000.0:
            break
    return statistics.median(times), peak


def cpu_peak_mib(function) -> float | None:
    """What one call of `function` held at most above what the process held before it (Linux, glibc): the
    peak resident set above the resident set at the call's start, with glibc's malloc told to map every block
    of 64 KiB or more on its own and the heap's free pages returned first, so that the peak counts what the
    call held, not what earlier calls left."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    except (OSError, AttributeError):  # not glibc: the call still warms up
        function()
        return None
    try:
        libc.malloc_trim(0)  # what earlier calls freed into the heap goes back, so a reuse counts again
        start = _resident_mib()
        peak_rss_reset()
        function()
        peak = peak_rss_mib()
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
    return None if peak is None or start is None else peak - start


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux: /proc/self/clear_refs, value 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float | None:
    """The process's peak resident set since the last `peak_rss_reset` (Linux: VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def _resident_mib() -> float | None:
    """The process's resident set now (Linux: /proc/self/statm, in pages)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError):
        return None
