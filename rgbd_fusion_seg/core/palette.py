"""Class palettes: colour masks for people, consistent between the node, the plots and the demo."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for `num_classes` classes; class 0 (background/unlabeled) is black.

    Hues are spread with the golden ratio so that neighbouring ids look different even for many classes.
    """
    colours = [(0, 0, 0)]
    for index in range(1, num_classes):
        hue = (index * 0.618033988749895) % 1.0
        value = 0.95 if index % 2 else 0.75
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def colourise(mask: np.ndarray, palette) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 RGB; ids beyond the palette (e.g. ignore 255) are drawn white."""
    if mask.dtype == np.uint8 and len(palette) <= 256:
        # OpenCV's table lookup is ~10x faster than NumPy's fancy indexing at camera sizes (docs/benchmarks.md)
        table = np.full((1, 256, 3), 255, np.uint8)
        table[0, : len(palette)] = np.asarray(palette, np.uint8).reshape(-1, 3)
        return cv2.LUT(cv2.merge((mask, mask, mask)), table)
    table = np.full((max(int(mask.max(initial=0)) + 1, len(palette)), 3), 255, np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    return table[mask]


def overlay(rgb: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over the RGB image; background (id 0) stays as the camera saw it."""
    coloured = colourise(mask, palette)
    blended = (rgb.astype(np.float32) * (1.0 - alpha) + coloured.astype(np.float32) * alpha).astype(np.uint8)
    return np.where((mask == 0)[..., None], rgb, blended)
