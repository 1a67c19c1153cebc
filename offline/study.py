"""The MM5 lighting study: every method x every lighting, trained and scored, as one table and four figures.

    rgbd-fusion-seg study --config config/experiments/mm5_synth_study.yaml [--methods rgb mid]
                          [--lightings RGB1 RGB2] [--out runs/study] [--generate 48]

For each (method, lighting) the study config is specialised (model.method, data.lightings = [lighting],
out_dir = <out>/runs/<method>/<lighting>), trained with `train()` and evaluated with `evaluate()` on that
lighting's validation split; the result goes to `<run>/eval.json`. A run whose eval.json exists is not
redone, and an interrupted run resumes from its last.pt, so rerunning the command continues the study.

Outputs in <out>: `results.md` and `results.csv` (rows RGB1..RGB8 + Max + Mean, one column per method,
mIoU in % with 2 decimals, as in the MM5 study's README), `results.json` (all numbers, per-run paths and
times) and the figures of plots.py.

Which checkpoint is scored: `study.checkpoint: last` (default) scores the final weights, with no choice
made on the validation frames; `best` scores best.pt (highest validation mIoU during training), which is
the common practice of such studies but optimistic, since the validation frames are also the test frames.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rgbd_fusion_seg.models import available_methods

from .config import MM5_LIGHTINGS, ConfigError, ExperimentConfig, load_config, replace_fields
from .evaluate import RESOLUTIONS, evaluate, write_json
from .plots import plot_all

# The MM5 study's six methods in the order of its table, with its column titles.
SEED_METHODS = ("rgb", "early", "mid", "late", "se", "attention")
DISPLAY_NAMES = {
    "rgb": "RGB baseline",
    "early": "Early Fusion",
    "mid": "Mid Fusion",
    "late": "Late Fusion",
    "se": "SE Fusion",
    "attention": "Attention Fusion",
}


@dataclass
class StudyResult:
    out_dir: Path
    methods: list[str]
    lightings: list[str]
    table: dict[str, dict[str, float]]  # method -> lighting -> mIoU in %
    runs: list[dict] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def default_methods() -> list[str]:
    registered = available_methods()
    return [m for m in SEED_METHODS if m in registered]


def run_dir(out_dir: Path, method: str, lighting: str) -> Path:
    return out_dir / "runs" / method / lighting


def ensure_data(config: ExperimentConfig, generate: dict | None, log) -> None:
    """Synthesise the MM5-layout data set at data.root if it is missing and generation was asked for."""
    root = config.data_root
    if root.exists():
        return
    if generate is None:
        raise FileNotFoundError(
            f"data root {root} does not exist; point data.root / --data-root at an MM5 folder, "
            "or pass --generate N (or set study.generate) to synthesise one"
        )
    from .datasets import synth

    log(f"generating a synthetic MM5-layout data set in {root}: {generate}")
    synth.generate_mm5(root, **generate)


def _column_stats(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return max(finite), float(np.mean(finite))


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def table_rows(table, methods, lightings) -> list[tuple[str, list[float]]]:
    """[(row name, [value per method])] for RGB1..RGBk then Max and Mean (NaN-aware)."""
    rows = [(lighting, [table[m].get(lighting, math.nan) for m in methods]) for lighting in lightings]
    stats = [_column_stats([table[m].get(k, math.nan) for k in lightings]) for m in methods]
    rows.append(("Max", [s[0] for s in stats]))
    rows.append(("Mean", [s[1] for s in stats]))
    return rows


def write_tables(table, methods, lightings, out_dir: Path) -> tuple[Path, Path]:
    rows = table_rows(table, methods, lightings)
    titles = [DISPLAY_NAMES.get(m, m) for m in methods]
    lines = [
        "|      | " + " | ".join(titles) + " |",
        "|:----:|" + "|".join(":" + "-" * max(3, len(t)) + ":" for t in titles) + "|",
    ]
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in values) + " |")
    md_path = out_dir / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lighting", *methods])
        for name, values in rows:
            writer.writerow([name, *(_fmt(v) if not math.isnan(v) else "" for v in values)])
    return md_path, csv_path


def run_study(
    config: ExperimentConfig,
    *,
    methods=None,
    lightings=None,
    out_dir=None,
    generate: int | dict | None = None,
    device: str = "auto",
    force: bool = False,
    report_only: bool = False,
    resolution: str = "native",
    progress: bool | None = None,
    log=None,
) -> StudyResult:
    """Train and evaluate every (method, lighting) pair not done yet, then write the table and figures."""
    from .train import slim_checkpoint, train

    log = log or (lambda message: print(message, flush=True))
    methods = list(methods or config.study.methods or default_methods())
    lightings = list(lightings or config.study.lightings or MM5_LIGHTINGS)
    registered = available_methods()
    for method in methods:
        if method not in registered:
            raise ConfigError(f"unknown fusion method {method!r}; available: {', '.join(registered)}")
    if len(set(methods)) != len(methods) or len(set(lightings)) != len(lightings):
        raise ConfigError("a method or lighting is listed twice")
    out_dir = Path(out_dir) if out_dir is not None else config.out_path
    out_dir.mkdir(parents=True, exist_ok=True)

    if isinstance(generate, int):
        generate = dict(config.study.generate or {}, num_frames=generate)
    elif generate is None:
        generate = config.study.generate
    if not report_only:
        ensure_data(config, generate, log)
        missing = [k for k in lightings if not (config.data_root / k).is_dir()]
        if missing:
            raise FileNotFoundError(f"lighting folder(s) {', '.join(missing)} missing in {config.data_root}")

    # Check every run's configuration before the first one trains (a typo must not surface hours later).
    run_configs = {}
    for method in methods:
        for lighting in lightings:
            run_configs[method, lighting] = replace_fields(
                config,
                **{
                    "experiment": f"{config.experiment}_{method}_{lighting}",
                    "model.method": method,
                    "data.lightings": [lighting],
                    "out_dir": str(run_dir(out_dir, method, lighting)),
                },
            )

    table: dict[str, dict[str, float]] = {m: {} for m in methods}
    runs = []
    total = len(run_configs)
    for index, ((method, lighting), run_config) in enumerate(run_configs.items(), start=1):
        directory = run_dir(out_dir, method, lighting)
        eval_path = directory / "eval.json"
        record = {"method": method, "lighting": lighting, "dir": str(directory), "eval": str(eval_path)}
        previous = json.loads(eval_path.read_text()) if eval_path.is_file() and not force else None
        if previous is not None and (
            report_only
            or (
                previous.get("settings", {}).get("resolution") == resolution
                and previous.get("study", {}).get("checkpoint_choice") == config.study.checkpoint
            )
        ):
            result = previous
            record["status"] = "done before"
        elif report_only:
            log(f"[{index}/{total}] {method} {lighting}: no result yet")
            table[method][lighting] = math.nan
            record["status"] = "missing"
            runs.append(record)
            continue
        else:
            log(f"[{index}/{total}] {method} {lighting}: training in {directory}")
            started = time.monotonic()
            last = train(run_config, resume=not force, device=device, progress=progress, log=log)
            record["train_seconds"] = round(time.monotonic() - started, 2)
            checkpoint = last
            if config.study.checkpoint == "best" and (directory / "best.pt").is_file():
                checkpoint = directory / "best.pt"
            started = time.monotonic()
            result = evaluate(
                checkpoint,
                data_root=run_config.data_root,
                lightings=[lighting],
                split=run_config.data.val_split,
                device=device,
                resolution=resolution,
            )
            record["eval_seconds"] = round(time.monotonic() - started, 2)
            if config.study.slim_checkpoints:
                slim_checkpoint(last)
            result["study"] = {"method": method, "lighting": lighting, "checkpoint_choice": config.study.checkpoint,
                               **{k: v for k, v in record.items() if k.endswith("_seconds")}}
            write_json(result, eval_path)
            record["status"] = "trained"
        miou = result.get("miou")
        table[method][lighting] = math.nan if miou is None else 100.0 * float(miou)
        record["miou"] = table[method][lighting]
        log(f"[{index}/{total}] {method} {lighting}: mIoU {_fmt(table[method][lighting])} ({record['status']})")
        runs.append(record)

    md_path, csv_path = write_tables(table, methods, lightings, out_dir)
    figures = plot_all(table, methods, lightings, out_dir, DISPLAY_NAMES)
    summary = {
        "config": config.source,
        "experiment": config.experiment,
        "methods": methods,
        "lightings": lightings,
        "resolution": resolution,
        "checkpoint_choice": config.study.checkpoint,
        "miou_percent": table,
        "rows": [{"row": name, **dict(zip(methods, values))} for name, values in table_rows(table, methods, lightings)],
        "runs": runs,
    }
    json_path = write_json(summary, out_dir / "results.json")
    log(md_path.read_text())
    log(f"study written to {out_dir}: {md_path.name}, {csv_path.name}, {json_path.name}, "
        + ", ".join(p.name for p in figures.values()))
    files = {"markdown": md_path, "csv": csv_path, "json": json_path, **figures}
    return StudyResult(out_dir, methods, lightings, table, runs, files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import add_override_arguments

    parser.add_argument("--config", required=True, help="study YAML (e.g. config/experiments/mm5_synth_study.yaml)")
    parser.add_argument("--methods", nargs="+", help=f"methods to run (default: study.methods or {' '.join(SEED_METHODS)})")
    parser.add_argument("--lightings", nargs="+", help="lightings to run (default: study.lightings or RGB1..RGB8)")
    parser.add_argument("--generate", type=int, metavar="N",
                        help="synthesise an MM5-layout data set of N frames at data.root if it does not exist")
    parser.add_argument("--resolution", choices=RESOLUTIONS, default="native",
                        help="score at the labels' native size (default) or at the model input size")
    parser.add_argument("--force", action="store_true", help="retrain and re-evaluate runs that are already done")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild the table and figures from the finished runs")
    add_override_arguments(parser, out_flags=("--out", "--out-dir"))


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides, data_root=args.data_root, out_dir=args.out_dir)
    result = run_study(
        config,
        methods=args.methods,
        lightings=args.lightings,
        generate=args.generate,
        device=args.device,
        force=args.force,
        report_only=args.report_only,
        resolution=args.resolution,
    )
    missing = [f"{r['method']}/{r['lighting']}" for r in result.runs if r.get("status") == "missing"]
    if missing:
        print(f"runs without a result yet: {', '.join(missing)}")
    return 0
