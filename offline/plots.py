"""Figures of the lighting study (PNG, matplotlib's Agg canvas; pyplot and a display are never needed).

Every function takes `table[method][lighting]` = mIoU in percent (NaN for a missing run), the method and
lighting order, and display names for the methods:

- `plot_heatmap`        lighting x method grid of mIoU, values written in the cells
- `plot_per_lighting`   one line per method across the lightings
- `plot_summary`        mean mIoU per method with the standard deviation over lightings as error bars
- `plot_radar`          one polygon per method on a radar with one axis per lighting
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

FIGURE_NAMES = {
    "heatmap": "fusion_heatmap.png",
    "per_lighting": "fusion_performance.png",
    "summary": "fusion_summary.png",
    "radar": "fusion_radar.png",
}


def _matrix(table, methods, lightings) -> np.ndarray:
    """lighting x method array of percentages (NaN where missing)."""
    return np.array(
        [[float(table.get(m, {}).get(k, math.nan)) for m in methods] for k in lightings], dtype=np.float64
    )


def _labels(methods, names) -> list[str]:
    names = names or {}
    return [names.get(m, m) for m in methods]


def _colours(count: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(count)]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_heatmap(table, methods, lightings, path, names=None, title="mIoU (%) per lighting and method") -> Path:
    values = _matrix(table, methods, lightings)
    fig = Figure(figsize=(1.6 + 1.3 * len(methods), 1.2 + 0.5 * len(lightings)))
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    if high - low < 1e-6:
        low, high = low - 1.0, high + 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=high, aspect="auto")
    ax.set_xticks(range(len(methods)), _labels(methods, names), rotation=30, ha="right")
    ax.set_yticks(range(len(lightings)), list(lightings))
    middle = (low + high) / 2
    for row in range(values.shape[0]):
        for col in range(values.shape[1]):
            value = values[row, col]
            text = "-" if not np.isfinite(value) else f"{value:.2f}"
            colour = "black" if np.isfinite(value) and value > middle else "white"
            ax.text(col, row, text, ha="center", va="center", color=colour, fontsize=8)
    fig.colorbar(image, ax=ax, label="mIoU (%)")
    ax.set_title(title)
    return _save(fig, Path(path))


def plot_per_lighting(table, methods, lightings, path, names=None, title="mIoU across lightings") -> Path:
    values = _matrix(table, methods, lightings)
    fig = Figure(figsize=(2.0 + 0.8 * len(lightings), 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(lightings))
    for col, (label, colour) in enumerate(zip(_labels(methods, names), _colours(len(methods)))):
        ax.plot(x, values[:, col], marker="o", label=label, color=colour)
    ax.set_xticks(x, list(lightings))
    ax.set_xlabel("lighting")
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    return _save(fig, Path(path))


def plot_summary(table, methods, lightings, path, names=None, title="Mean mIoU over lightings (± std)") -> Path:
    values = _matrix(table, methods, lightings)
    with np.errstate(all="ignore"):
        means = np.array([np.nanmean(values[:, c]) if np.isfinite(values[:, c]).any() else np.nan
                          for c in range(len(methods))])
        stds = np.array([np.nanstd(values[:, c]) if np.isfinite(values[:, c]).any() else np.nan
                         for c in range(len(methods))])
    fig = Figure(figsize=(1.6 + 1.2 * len(methods), 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(methods))
    bars = ax.bar(x, np.nan_to_num(means), yerr=np.nan_to_num(stds), capsize=4, color=_colours(len(methods)))
    for bar, mean in zip(bars, means):
        if np.isfinite(mean):
            ax.annotate(f"{mean:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, _labels(methods, names), rotation=30, ha="right")
    ax.set_ylabel("mIoU (%)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title)
    return _save(fig, Path(path))


def plot_radar(table, methods, lightings, path, names=None, title="mIoU per lighting (radar)") -> Path:
    values = _matrix(table, methods, lightings)
    angles = np.linspace(0, 2 * np.pi, len(lightings), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="polar")
    for col, (label, colour) in enumerate(zip(_labels(methods, names), _colours(len(methods)))):
        series = np.nan_to_num(values[:, col])
        series = np.concatenate([series, series[:1]])
        ax.plot(closed, series, color=colour, label=label, linewidth=1.5)
        ax.fill(closed, series, color=colour, alpha=0.08)
    ax.set_xticks(angles, list(lightings))
    finite = values[np.isfinite(values)]
    ax.set_ylim(0, max(100.0, float(finite.max()) if finite.size else 100.0))
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.35, 1.1))
    ax.set_title(title, pad=20)
    return _save(fig, Path(path))


def plot_all(table, methods, lightings, out_dir, names=None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "heatmap": plot_heatmap(table, methods, lightings, out_dir / FIGURE_NAMES["heatmap"], names),
        "per_lighting": plot_per_lighting(table, methods, lightings, out_dir / FIGURE_NAMES["per_lighting"], names),
        "summary": plot_summary(table, methods, lightings, out_dir / FIGURE_NAMES["summary"], names),
        "radar": plot_radar(table, methods, lightings, out_dir / FIGURE_NAMES["radar"], names),
    }
