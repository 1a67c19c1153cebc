"""`rgbd-fusion-seg gpu-report --out DIR`: every figure a GPU user needs, in one run of at most 8 minutes.

    rgbd-fusion-seg gpu-report --out gpu_report [--quick] [--device cuda:0] [--methods mid sartm ...]
    PYTHONPATH=. python -m offline.gpu_report --out gpu_report        (from a source tree, installed or not)

(`python -m rgbd_fusion_seg.offline.cli` needs the package installed, `pip install --no-deps -e .`: setup.py
maps the top-level `offline/` folder to `rgbd_fusion_seg.offline`, which PYTHONPATH alone does not.)

Sections, each a table in DIR/gpu_report.md and a list in DIR/gpu_report.json:
- environment: Python, torch, the GPU, and which optional packages import (onnxruntime and its providers,
  tensorrt, mambapy, mamba_ssm, rclpy, sam2, open_clip);
- serving: per method (the MM5 six, RSFNet, SARTM B+, SC-CoSF ConvNeXt-B) at 480x640, batch 1, the engine's
  whole predict (`bench --backends`): eager, fast path, torch.compile, AMP fp16 and bf16, ONNX Runtime CUDA
  (the mask graph, through I/O binding; the logits graph beside it) and TensorRT fp16; p50 / p90 / fps, peak
  GPU memory (torch's; ONNX Runtime's arena is not counted), and the share of mask pixels equal to fp32 eager's;
- node: `bench-node` at 640x480 and 30 Hz (the bare model, then the node over ROS 2: drops, latency, node
  work against the bare model), in a subprocess;
- scan: the selective-scan backends (SC-CoSF): chunked, mambapy, mamba_ssm where importable;
- training: one training step per method at batch 8 and the crop its paper trains at (TRAINING_CROPS), its
  time and peak GPU memory.

A row the machine cannot run says why instead of a figure: "n/a: no CUDA" for every GPU row on a machine
without CUDA, "skipped: <reason>" where a package is missing or the time budget is spent. Each optional
package is imported only for its rows, and nothing here needs a torch newer than 2.11. Time: each serving
row's timing stops after ROW_BUDGET_S, a section starts no row once its share of the total budget is spent
(an export or a compile already started runs to its end), and the node run is a subprocess killed at its
budget. `--quick` measures fewer iterations and only the first and last method of each section's list; on a
machine without CUDA it takes well under 2 minutes (only the CPU's scan rows are measured).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NO_CUDA = "n/a: no CUDA"
FRAME = (480, 640)  # height, width: the size a GPU user's camera gives (MM5's and MFNet's frames)
NODE_RATE_HZ = 30.0
# (label, method, options): what a GPU user serves. RSFNet with its MFNet configuration's encoders, SARTM
# with SAM2's B+ encoder (the official code's), SC-CoSF with ConvNeXt-B (the size of its Table 3).
METHODS = (
    ("rgb", "rgb", {}), ("early", "early", {}), ("mid", "mid", {}), ("late", "late", {}), ("se", "se", {}),
    ("attention", "attention", {}), ("rsfnet", "rsfnet", {"encoders": "resnet50-resnet18"}),
    ("sartm B+", "sartm", {"encoder": "base_plus"}), ("sccosf ConvNeXt-B", "sccosf", {"encoder": "base"}),
)
# Training crops (height, width), from the experiment configs: the MM5 study's 224x224 (mm5/base.yaml),
# RSFNet's Table I 256x512, SARTM's official 800x800 (mfnet/sartm.yaml), SC-CoSF's 480x640 (fmb/sccosf.yaml).
TRAINING_CROPS = {"rsfnet": (256, 512), "sartm": (800, 800), "sccosf": (480, 640)}
MM5_CROP = (224, 224)
TRAINING_BATCH = 8
# report row -> `bench --backends` row
SERVING_ROWS = {"eager": "eager", "fast path": "fast", "compile": "compile", "AMP fp16": "fp16", "AMP bf16": "bf16",
                "ONNX Runtime CUDA": "onnxruntime-mask", "ONNX Runtime CUDA, logits graph": "onnxruntime",
                "TensorRT fp16": "tensorrt-fp16"}
OPTIONAL_PACKAGES = ("onnxruntime", "tensorrt", "mambapy", "mamba_ssm", "rclpy", "sam2", "open_clip")
SCAN_BACKENDS = ("chunked", "mambapy", "mamba_ssm")
# Seconds: the whole run's limit and each section's share of it, in the order they run.
TOTAL_BUDGET_S = 480.0
SECTION_SHARES = {"serving": 0.55, "node": 0.12, "scan": 0.08, "training": 0.25}
ROW_BUDGET_S = 4.0  # timing of one serving row (after its warm-up)
NODE_DURATION_S = 8.0
# Set when this process mapped offline/ to rgbd_fusion_seg.offline itself (an uninstalled source tree): the
# processes bench-node starts cannot import it then.
SOURCE_TREE_ONLY = "skipped: bench-node's processes need the package installed (pip install --no-deps " \
                   "--no-build-isolation -e .); this source tree is mapped in this process only"
_mapped_here = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_report.md and gpu_report.json")
    parser.add_argument("--device", default="cuda", help="the GPU to measure: cuda or cuda:N (default: cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer iterations, the first and last method only (on a machine without CUDA: a check "
                             "of the report itself, in well under 2 minutes)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="LABEL",
                        help=f"methods to measure (default: all): {', '.join(label for label, _, _ in METHODS)}")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S,
                        help=f"the whole run's time limit in seconds (default: {TOTAL_BUDGET_S:.0f})")


class Report:
    """Rows per section, printed as they come and written as markdown and JSON."""

    def __init__(self, budget_s: float):
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.sections: dict[str, list[dict]] = {}
        self.section_end = self.start

    def begin(self, section: str) -> None:
        """Start `section`; its rows may start until its share of the budget (and what earlier sections left)
        is spent."""
        self.sections[section] = []
        self.section_end = max(time.monotonic(), self.section_end) + SECTION_SHARES.get(section, 0.0) * self.budget_s
        print(f"[{self.elapsed():5.0f} s] {section}", flush=True)

    @property
    def deadline(self) -> float:
        return min(self.section_end, self.start + self.budget_s)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def add(self, section: str, row: dict) -> None:
        self.sections[section].append(row)
        print(f"[{self.elapsed():5.0f} s]   " + ", ".join(f"{key} {_cell(value)}" for key, value in row.items()),
              flush=True)

    def progress(self, line: str) -> None:
        print(f"[{self.elapsed():5.0f} s]   {line} ...", flush=True)

    def write(self, folder: Path, settings: dict) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        settings = settings | {"elapsed_s": round(self.elapsed(), 1)}
        json_path, markdown_path = folder / "gpu_report.json", folder / "gpu_report.md"
        json_path.write_text(json.dumps({"settings": settings, **self.sections}, indent=2) + "\n")
        lines = ["# GPU report", "", "| setting | value |", "|---|---|"]
        lines += [f"| {key} | {_cell(value)} |" for key, value in settings.items()]
        for section, rows in self.sections.items():
            lines += ["", f"## {section}", ""] + markdown_table(rows)
        markdown_path.write_text("\n".join(lines) + "\n")
        return markdown_path, json_path


def markdown_table(rows: list[dict]) -> list[str]:
    """One markdown table over the union of the rows' keys, in first-seen order; '-' where a row has none."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    if not columns:
        return ["(no rows)"]
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(_cell(row.get(key)) for key in columns) + " |" for row in rows])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def _why_not_importable(package: str) -> str | None:
    """None when `package` imports, else why not (its error, first line)."""
    try:
        importlib.import_module(package)
        return None
    except Exception as error:  # a package may fail with more than ImportError (a missing CUDA library)
        return f"{package} is not importable ({(str(error).splitlines() or [type(error).__name__])[0]})"


def environment_rows(device: torch.device | None) -> list[dict]:
    rows = [{"item": "python", "value": platform.python_version()},
            {"item": "torch", "value": f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})"},
            {"item": "GPU", "value": torch.cuda.get_device_name(device) if device is not None else NO_CUDA}]
    for package in OPTIONAL_PACKAGES:
        reason = _why_not_importable(package)
        value = "importable" if reason is None else f"skipped: {reason}"
        if reason is None and package == "onnxruntime":
            import onnxruntime

            value = f"{onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}"
        rows.append({"item": package, "value": value})
    return rows


def _chosen_methods(labels: list[str] | None, quick: bool) -> list[tuple[str, str, dict]]:
    known = {label: (label, method, options) for label, method, options in METHODS}
    unknown = [label for label in labels or [] if label not in known]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[label] for label in labels] if labels else list(METHODS)
    return [chosen[0], chosen[-1]] if quick and len(chosen) > 2 else chosen


def _method_missing(method: str, options: dict) -> str | None:
    """Why `method` cannot be built here (a package it needs does not import), or None."""
    needs = {"sartm": ("sam2",)}.get(method, ())
    for package in needs:
        reason = _why_not_importable(package)
        if reason:
            return f"skipped: {reason}"
    return None


def serving_rows(report: Report, device: torch.device | None, methods, quick: bool) -> None:
    from . import backend_benchmark

    report.begin("serving")
    for label, method, options in methods:
        row = {"method": label, "size": f"{FRAME[0]}x{FRAME[1]}"}
        missing = NO_CUDA if device is None else _method_missing(method, options)
        if missing:
            for name in SERVING_ROWS:
                report.add("serving", row | {"row": name, "result": missing})
            continue
        try:
            figures = backend_benchmark.run_backends(
                method, list(SERVING_ROWS.values()), FRAME, FRAME, str(device), iters=10 if quick else 50,
                warmup=2 if quick else 5, options=options, row_budget_s=ROW_BUDGET_S / (4 if quick else 1),
                deadline=report.deadline, progress=report.progress)
        except Exception as error:  # a method that fails (out of memory, an exporter error) costs its rows only
            report.add("serving", row | {"row": "all", "result": f"failed: {_first_line(error)}"})
            continue
        names = {bench: name for name, bench in SERVING_ROWS.items()}
        for result in figures["rows"]:
            entry = row | {"row": names[result["row"]]}
            if "not_here" in result:
                entry["result"] = result["not_here"]
            else:
                entry |= {"p50 ms": result["p50_ms"], "p90 ms": result["p90_ms"], "fps": result["images_per_s"],
                          "peak GPU MiB": result["peak_mib"], "= fp32 eager": f"{result['agreement']:.2%}",
                          "backend": result["backend"]}
            report.add("serving", entry)


def node_rows(report: Report, device: torch.device | None, folder: Path) -> None:
    report.begin("node")
    row = {"run": f"bench-node {FRAME[1]}x{FRAME[0]} at {NODE_RATE_HZ:g} Hz"}
    reason = NO_CUDA if device is None else _why_not_importable("rclpy")
    if reason:
        report.add("node", row | {"result": reason if device is None else f"skipped: {reason}"})
        return
    if _mapped_here:
        report.add("node", row | {"result": SOURCE_TREE_ONLY})
        return
    json_path = folder / "bench_node.json"
    command = [sys.executable, "-m", "rgbd_fusion_seg.offline.cli", "bench-node", "--device", str(device),
               "--size", str(FRAME[0]), str(FRAME[1]), "--input-size", str(FRAME[0]), str(FRAME[1]),
               "--rate", str(NODE_RATE_HZ), "--duration", str(NODE_DURATION_S), "--runs", "model", "node",
               "--work-dir", str(folder / "bench_node"), "--json", str(json_path)]
    timeout = max(report.seconds_left(), 1.0)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_child_environment())
    except subprocess.TimeoutExpired:
        report.add("node", row | {"result": f"skipped: the time budget ({timeout:.0f} s) was spent"})
        return
    if done.returncode != 0 or not json_path.exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        report.add("node", row | {"result": f"failed (exit {done.returncode}): {tail}"})
        return
    for name, figures in json.loads(json_path.read_text()).items():
        if isinstance(figures, dict):
            report.add("node", {"run": name} | {key: value for key, value in figures.items()
                                                 if isinstance(value, (int, float, str))})


def _child_environment() -> dict:
    """This process's environment, with the source tree it runs from first on PYTHONPATH (the same code in
    the child)."""
    root = str(Path(__file__).resolve().parents[1])
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def scan_rows(report: Report, device: torch.device | None, quick: bool) -> None:
    """The scan backends on the GPU (on the CPU without one: the chunked scan at SC-CoSF's smaller shape)."""
    from . import scan_benchmark
    from .benchmarking import time_call

    report.begin("scan")
    where = device or torch.device("cpu")
    sizes = scan_benchmark.DEFAULT_SIZES[:1] if quick or device is None else scan_benchmark.DEFAULT_SIZES
    generator = torch.Generator().manual_seed(0)
    for label, batch, channels, length, state, groups in sizes:
        inputs = scan_benchmark.scan_inputs(batch, channels, length, state, groups, where, generator)
        for backend in SCAN_BACKENDS:
            row = {"shape": label, "backend": backend, "device": str(where)}
            reason = _scan_unavailable(backend, device)
            if reason is None and time.monotonic() > report.deadline:
                reason = "skipped: the time budget was spent"
            if reason:
                report.add("scan", row | {"result": reason})
                continue
            iters = 1 if quick else 5
            budget_s = scan_benchmark.ROW_BUDGET_S
            forward_ms, forward_mib = time_call(lambda: scan_benchmark.scan_forward(inputs, backend), where, iters,
                                                budget_s)
            both_ms, both_mib = time_call(lambda: scan_benchmark.scan_forward_backward(inputs, backend), where, iters,
                                          budget_s)
            report.add("scan", row | {"forward ms": forward_ms, "forward peak MiB": forward_mib,
                                      "forward+backward ms": both_ms, "forward+backward peak MiB": both_mib})


def _scan_unavailable(backend: str, device: torch.device | None) -> str | None:
    if backend == "mamba_ssm":
        if device is None:
            return NO_CUDA
        from rgbd_fusion_seg.models import ssm

        return None if ssm.mamba_ssm_scan() is not None else "skipped: mamba-ssm is not importable"
    if backend == "mambapy":
        reason = _why_not_importable("mambapy")
        return f"skipped: {reason}" if reason else None
    return None


def training_rows(report: Report, device: torch.device | None, methods) -> None:
    from . import model_benchmark

    report.begin("training")
    for label, method, options in methods:
        crop = TRAINING_CROPS.get(method, MM5_CROP)
        row = {"method": label, "batch": TRAINING_BATCH, "crop": f"{crop[0]}x{crop[1]}"}
        reason = NO_CUDA if device is None else _method_missing(method, options)
        if reason is None and time.monotonic() > report.deadline:
            reason = "skipped: the time budget was spent"
        if reason:
            report.add("training", row | {"result": reason})
            continue
        report.progress(f"{label}: one training step")
        job = model_benchmark.Job(method, options, FRAME, model_benchmark.MM5_NUM_CLASSES, label)
        settings = argparse.Namespace(precision="fp32", train_batch=TRAINING_BATCH, train_size=crop, train_warmup=1,
                                      train_iters=1)
        try:
            figures = model_benchmark.measure_training(job, settings, device, torch.Generator().manual_seed(0))
        except torch.cuda.OutOfMemoryError:
            report.add("training", row | {"result": "failed: CUDA out of memory"})
        except Exception as error:
            report.add("training", row | {"result": f"failed: {_first_line(error)}"})
        else:
            report.add("training", row | {"step ms": 1000.0 * TRAINING_BATCH / figures["train_images_per_s"],
                                          "peak GPU MiB": figures.get("train_peak_mem_mib")})
        torch.cuda.empty_cache()


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


def _cuda_device(name: str) -> torch.device | None:
    """The GPU `name` names, or None on a machine without CUDA; ValueError for a name that is no CUDA device."""
    device = torch.device(name)
    if device.type != "cuda":
        raise ValueError(f"--device {name!r}: gpu-report measures a GPU (cuda or cuda:N)")
    return device if torch.cuda.is_available() else None


def run(args: argparse.Namespace) -> int:
    device = _cuda_device(args.device)
    methods = _chosen_methods(args.methods, args.quick)
    report = Report(args.budget_s)
    report.begin("environment")
    for row in environment_rows(device):
        report.add("environment", row)
    with tempfile.TemporaryDirectory(prefix="rgbd_fusion_seg_gpu_report_") as work:
        serving_rows(report, device, methods, args.quick)
        node_rows(report, device, Path(work))
        scan_rows(report, device, args.quick)
        training_rows(report, device, methods)
    settings = {"device": str(device) if device else NO_CUDA, "quick": args.quick, "budget_s": args.budget_s,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(),
                "cpu_cores": os.cpu_count()}
    markdown, json_path = report.write(args.out, settings)
    print(f"wrote {markdown} and {json_path} in {report.elapsed():.0f} s", flush=True)
    return 0


def _source_tree_package() -> None:
    """Make `rgbd_fusion_seg.offline` importable from a source tree that was not installed: setup.py maps the
    top-level `offline/` folder to that name (package_dir), which PYTHONPATH alone does not."""
    import importlib.util

    global _mapped_here

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    try:
        importlib.import_module("rgbd_fusion_seg.offline")
    except ModuleNotFoundError:
        spec = importlib.util.spec_from_file_location("rgbd_fusion_seg.offline", root / "offline" / "__init__.py",
                                                      submodule_search_locations=[str(root / "offline")])
        package = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = package
        spec.loader.exec_module(package)
        _mapped_here = True


if __name__ == "__main__":  # `PYTHONPATH=. python -m offline.gpu_report --out DIR`, or `python offline/gpu_report.py ...`
    _source_tree_package()
    from rgbd_fusion_seg.offline import gpu_report
    from rgbd_fusion_seg.offline.cli import main

    gpu_report._mapped_here = _mapped_here  # the module the command runs is that one, not this __main__
    sys.exit(main(["gpu-report", *sys.argv[1:]]))
