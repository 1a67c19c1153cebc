"""The MM5 lighting study: every method x every lighting, trained and scored, as one table and four figures.

    rgbd-fusion-seg study --config config/experiments/mm5_synth_study.yaml [--methods rgb mid]
                          [--lightings RGB1 RGB2] [--out runs/study] [--generate 48]

For each (method, lighting) the study config is specialised (model.method, data.lightings = [lighting],
out_dir = <out>/runs/<method>/<lighting>), trained with `train()` and scored with `evaluate_checkpoint()`
on that lighting's validation split; the result goes to `<run>/eval.json`. A run whose eval.json exists is not
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rgbd_fusion_seg.models import available_methods

from .config import MM5_LIGHTINGS, ConfigError, ExperimentConfig, load_config, replace_fields
from .evaluate import add_resolution_argument, evaluate_checkpoint, write_json
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


def chosen_methods_and_lightings(config: ExperimentConfig, methods, lightings) -> tuple[list[str], list[str]]:
    """The methods and lightings asked for (else the config's study section, else all), each checked."""
    methods = list(methods or config.study.methods or default_methods())
    lightings = list(lightings or config.study.lightings or MM5_LIGHTINGS)
    registered = available_methods()
    for method in methods:
        if method not in registered:
            raise ConfigError(f"unknown fusion method {method!r}; available: {', '.join(registered)}")
    if len(set(methods)) != len(methods) or len(set(lightings)) != len(lightings):
        raise ConfigError("a method or lighting is listed twice")
    return methods, lightings


def ensure_lighting_folders(config: ExperimentConfig, lightings: list[str], generate: int | dict | None, log) -> None:
    """Generate the data set if asked and missing; then every lighting must have its folder."""
    if isinstance(generate, int):
        generate = dict(config.study.generate or {}, num_frames=generate)
    elif generate is None:
        generate = config.study.generate
    ensure_data(config, generate, log)
    missing = [k for k in lightings if not (config.data_root / k).is_dir()]
    if missing:
        raise FileNotFoundError(f"lighting folder(s) {', '.join(missing)} missing in {config.data_root}")


def run_configs(config: ExperimentConfig, methods, lightings, out_dir: Path) -> dict[tuple[str, str], ExperimentConfig]:
    """(method, lighting) -> the study config specialised for that run, all built (and checked) up front."""
    return {
        (method, lighting): replace_fields(
            config,
            **{
                "experiment": f"{config.experiment}_{method}_{lighting}",
                "model.method": method,
                "data.lightings": [lighting],
                "out_dir": str(run_dir(out_dir, method, lighting)),
            },
        )
        for method in methods
        for lighting in lightings
    }


@dataclass(frozen=True)
class RunSettings:
    """What every (method, lighting) run of one study shares."""

    checkpoint_choice: str  # study.checkpoint: "last" or "best"
    slim_checkpoints: bool
    device: str
    resolution: str
    force: bool
    report_only: bool
    progress: bool | None
    log: Callable[[str], None]

    def reusable_result(self, eval_path: Path) -> dict | None:
        """The run's eval.json if it answers this study (any result at all with report_only), else None."""
        if self.force or not eval_path.is_file():
            return None
        previous = json.loads(eval_path.read_text())
        if self.report_only or (
            previous.get("settings", {}).get("resolution") == self.resolution
            and previous.get("study", {}).get("checkpoint_choice") == self.checkpoint_choice
        ):
            return previous
        return None


def train_and_evaluate(settings: RunSettings, run_config: ExperimentConfig, record: dict) -> dict:
    """Train one run (resuming from its last.pt), score the chosen checkpoint and write its eval.json;
    the times go into `record`."""
    from .train import slim_checkpoint, train

    directory = Path(record["dir"])
    started = time.monotonic()
    last = train(run_config, resume=not settings.force, device=settings.device, progress=settings.progress,
                 log=settings.log)
    record["train_seconds"] = round(time.monotonic() - started, 2)
    checkpoint = last
    if settings.checkpoint_choice == "best" and (directory / "best.pt").is_file():
        checkpoint = directory / "best.pt"
    started = time.monotonic()
    result = evaluate_checkpoint(
        checkpoint,
        data_root=run_config.data_root,
        lightings=[record["lighting"]],
        split=run_config.data.val_split,
        device=settings.device,
        resolution=settings.resolution,
    )
    record["eval_seconds"] = round(time.monotonic() - started, 2)
    if settings.slim_checkpoints:
        slim_checkpoint(last)
    result["study"] = {"method": record["method"], "lighting": record["lighting"],
                       "checkpoint_choice": settings.checkpoint_choice,
                       **{k: v for k, v in record.items() if k.endswith("_seconds")}}
    write_json(result, record["eval"])
    return result


def study_run(settings: RunSettings, run_config: ExperimentConfig, method: str, lighting: str, directory: Path,
              step: str) -> dict:
    """One run's record (method, lighting, dir, eval, status, times, mIoU in %): its earlier result, or
    trained and scored now, or "missing" (no mIoU) with report_only. `step` prefixes the log lines."""
    eval_path = directory / "eval.json"
    record = {"method": method, "lighting": lighting, "dir": str(directory), "eval": str(eval_path)}
    result = settings.reusable_result(eval_path)
    if result is not None:
        record["status"] = "done before"
    elif settings.report_only:
        settings.log(f"{step}: no result yet")
        record["status"] = "missing"
        return record
    else:
        settings.log(f"{step}: training in {directory}")
        result = train_and_evaluate(settings, run_config, record)
        record["status"] = "trained"
    miou = result.get("miou")
    record["miou"] = math.nan if miou is None else 100.0 * float(miou)
    settings.log(f"{step}: mIoU {_fmt(record['miou'])} ({record['status']})")
    return record


def write_report(config: ExperimentConfig, table, methods, lightings, runs: list[dict], resolution: str,
                 out_dir: Path, log) -> dict[str, Path]:
    """results.md, results.csv, results.json and the figures; returns their paths by kind."""
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
    return {"markdown": md_path, "csv": csv_path, "json": json_path, **figures}


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
    log = log or (lambda message: print(message, flush=True))
    methods, lightings = chosen_methods_and_lightings(config, methods, lightings)
    out_dir = Path(out_dir) if out_dir is not None else config.out_path
    out_dir.mkdir(parents=True, exist_ok=True)
    if not report_only:
        ensure_lighting_folders(config, lightings, generate, log)
    configs = run_configs(config, methods, lightings, out_dir)  # a typo must not surface hours later
    settings = RunSettings(config.study.checkpoint, config.study.slim_checkpoints, device, resolution, force,
                           report_only, progress, log)
    table: dict[str, dict[str, float]] = {m: {} for m in methods}
    runs = []
    for index, ((method, lighting), run_config) in enumerate(configs.items(), start=1):
        step = f"[{index}/{len(configs)}] {method} {lighting}"
        record = study_run(settings, run_config, method, lighting, run_dir(out_dir, method, lighting), step)
        table[method][lighting] = record.get("miou", math.nan)
        runs.append(record)
    files = write_report(config, table, methods, lightings, runs, resolution, out_dir, log)
    return StudyResult(out_dir, methods, lightings, table, runs, files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import add_override_arguments

    parser.add_argument("--config", required=True, help="study YAML (e.g. config/experiments/mm5_synth_study.yaml)")
    parser.add_argument("--methods", nargs="+", help=f"methods to run (default: study.methods or {' '.join(SEED_METHODS)})")
    parser.add_argument("--lightings", nargs="+", help="lightings to run (default: study.lightings or RGB1..RGB8)")
    parser.add_argument("--generate", type=int, metavar="N",
                        help="synthesise an MM5-layout data set of N frames at data.root if it does not exist")
    add_resolution_argument(parser)
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
