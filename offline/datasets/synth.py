"""Generated RGB + depth + thermal data in the exact on-disk layout of MM5 (aligned), for tests and demos.

No public dataset can be downloaded here, so everything that reads MM5 is exercised on frames made by
`generate_mm5`. The scenes are built so that, as in MM5, the auxiliary modality is *necessary*: some
classes differ only in depth or only in temperature, and several lightings destroy or distort colour.

Scene: a wooden table (tilted plane, 0.75 m at the bottom row to 1.30 m at the horizon) in front of a wall
(1.60 m), with 5-9 small objects and maybe a plate and a book, placed without overlap. Classes (`CLASSES`,
id = index):

    0 background   table and wall
    1 apple        red sphere-like fruit                         3-D, slightly cooler than the room
    2 fake_apple   a *printed photo* of an apple: identical RGB  flat (depth = the table behind it),
                   appearance distribution, no height            room temperature
    3 orange       orange dimpled sphere                         3-D, cooler
    4 fake_orange  printed orange                                flat, room temperature
    5 lemon        yellow ellipsoid                              3-D, cooler
    6 mug          ceramic mug (shared colour palette)           10 cm tall, room temperature
    7 hot_mug      the same mug, same look and shape             55-65 deg C (differs ONLY in thermal)
    8 plate        white ellipse                                 1.5 cm
    9 book         coloured rotated rectangle                    3.5 cm

So fake_* vs real needs depth (or, weakly, thermal), hot_mug vs mug needs thermal, and under the warm
and blue/green lightings apple/orange/lemon colours overlap. Depth and thermal do not depend on lighting.

Lightings (`LIGHTINGS`; the same scene radiance, camera noise and 8-bit quantisation applied after):

    RGB1 bright         gain 1.45, highlights clip
    RGB2 normal         gain 1.0
    RGB3 dim            gain 0.40
    RGB4 very dark      gain 0.10: about 25 grey levels left
    RGB5 warm / red     channel gains (1.30, 0.70, 0.35): red/orange/yellow become alike
    RGB6 blue / green   channel gains (0.30, 0.85, 1.25)
    RGB7 uneven         spotlight at a random place (Gaussian, 0.25 x width) over a 0.12 floor
    RGB8 very dark + noise  gain 0.07, read noise 6/255 and row banding

Files written under `root` (frames share one stem across folders, e.g. `RGB3/17.png`, `D16/17.png`):

    RGB1..RGB8/<stem>.png  8-bit colour (written BGR by OpenCV, so RGB when read back as RGB)
    D16/<stem>.png         uint16 depth in millimetres; 0 = no reading (random blobs and depth edges)
    D_FocusN/<stem>.png    uint8 depth; 0 = no reading, else 1 + round(254 (d - 0.5) / (1.7 - 0.5)) clipped to
                           1..255, i.e. linear over DEPTH_FOCUSN_RANGE_M = (0.5, 1.7) m, larger = farther
                           (the real D_FocusN is a per-image non-linear "focus" compression; here it is
                           linear so that tests can check values)
    T16/<stem>.png         uint16 raw thermal: deg C = raw / 64 - 273.15 (as MM5)
    T8/<stem>.png          uint8 thermal, linear over THERMAL_T8_RANGE_C = (10, 70) deg C, clipped
                           (the real T8 uses automatic gain per image)
    ANNO_CLASS/<stem>.png  uint8 class ids, one channel (label_channels=3: the id in all three channels,
                           as some MM5 label files are stored)
    classes.txt            one class name per line, id = line index, background first
    label_mapping.csv      the seed study's class table: header `ID,Label Name`, ids 1.. (no background)
    list_train_f.txt       one stem per line (the public MM5 loader, GF-Net)
    list_eval_f.txt
    train_dataset.csv      the seed study's split form: header `ID`, one stem per row (it reads them with
    eval_dataset.csv       pandas and opens ANNO_CLASS/{row['ID']}.png)
    synth_info.json        the generator's parameters (not part of MM5)

Stems are the frame numbers from 1, unpadded ("1", "2", ...), as MM5 aligned ("sequential filenames
starting from 1"); this is also the only form that survives the seed study's pandas round trip (a padded
"000123" would be read back as the integer 123).

Everything is a deterministic function of (seed, frame number, size): the same arguments give the same
bytes (with the same NumPy/OpenCV builds), and frame k does not depend on how many frames are generated.
Cost at 480x640 on one CPU core: about 40 ms to render a frame with all eight lightings (about 20 ms with
one, `render_frame(..., lightings=("RGB2",))`), plus about 0.2 s of PNG encoding (13 files), which the
`workers` threads share.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .imageio import celsius_to_t16

CLASSES = (
    "background",
    "apple",
    "fake_apple",
    "orange",
    "fake_orange",
    "lemon",
    "mug",
    "hot_mug",
    "plate",
    "book",
)
CLASS_ID = {name: index for index, name in enumerate(CLASSES)}

LIGHTINGS = tuple(f"RGB{k}" for k in range(1, 9))
LIGHTING_NAMES = {
    "RGB1": "bright",
    "RGB2": "normal",
    "RGB3": "dim",
    "RGB4": "very dark",
    "RGB5": "warm / red",
    "RGB6": "blue / green",
    "RGB7": "uneven spotlight",
    "RGB8": "very dark + sensor noise",
}

DEPTH_FOCUSN_RANGE_M = (0.5, 1.7)  # D_FocusN: 1..255 linear over this range, 0 = no reading
THERMAL_T8_RANGE_C = (10.0, 70.0)  # T8: 0..255 linear over this range (clipped)
FOLDERS = (*LIGHTINGS, "D16", "D_FocusN", "T16", "T8", "ANNO_CLASS")


@dataclass(frozen=True)
class SynthSpec:
    """The fixed physical set-up of the generated scenes (documented constants, stored in synth_info.json)."""

    height: int = 480
    width: int = 640
    horizon: float = 0.18  # fraction of the height showing the wall
    table_near_m: float = 0.75  # table depth at the bottom row
    table_far_m: float = 1.30  # table depth at the horizon row
    wall_m: float = 1.60
    room_c: float = 22.0
    depth_focusn_range_m: tuple[float, float] = DEPTH_FOCUSN_RANGE_M
    thermal_t8_range_c: tuple[float, float] = THERMAL_T8_RANGE_C
    depth_noise_m: float = 0.0015  # at 1 m, grows with the square of the distance
    thermal_noise_c: float = 0.08


def table_depth(spec: SynthSpec) -> np.ndarray:
    """HxW float32 metres of the empty scene (wall above the horizon, tilted table below), noise-free."""
    h, w = spec.height, spec.width
    horizon_row = int(round(spec.horizon * h))
    rows = np.arange(h, dtype=np.float32)
    t = np.clip((rows - horizon_row) / max(h - 1 - horizon_row, 1), 0.0, 1.0)
    column = spec.table_far_m + (spec.table_near_m - spec.table_far_m) * t
    column[:horizon_row] = spec.wall_m
    return np.repeat(column[:, None], w, axis=1).astype(np.float32)


def encode_focusn(depth_m: np.ndarray, valid: np.ndarray, depth_range=DEPTH_FOCUSN_RANGE_M) -> np.ndarray:
    near, far = depth_range
    scaled = 1.0 + np.rint(254.0 * (depth_m - near) / (far - near))
    out = np.clip(np.nan_to_num(scaled, nan=0.0), 1, 255).astype(np.uint8)
    out[~valid] = 0
    return out


def encode_t8(celsius: np.ndarray, t_range=THERMAL_T8_RANGE_C) -> np.ndarray:
    low, high = t_range
    return np.clip(np.rint(255.0 * (celsius - low) / (high - low)), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Scene rendering: every object is drawn inside its bounding box with vectorised numpy.

_LIGHT = np.array([-0.45, -0.55, 0.70], np.float32)
_LIGHT /= np.linalg.norm(_LIGHT)

_MUG_COLOURS = np.array(
    [[0.20, 0.40, 0.72], [0.88, 0.88, 0.85], [0.70, 0.15, 0.12], [0.25, 0.55, 0.30], [0.90, 0.75, 0.20]],
    np.float32,
)
_BOOK_COLOURS = np.array(
    [[0.15, 0.25, 0.55], [0.55, 0.10, 0.12], [0.15, 0.45, 0.25], [0.85, 0.55, 0.10], [0.30, 0.30, 0.32]],
    np.float32,
)
_FRUIT = {  # base albedo, half-axes relative to min(H, W), height in metres
    "apple": (np.array([0.72, 0.10, 0.09], np.float32), (0.135, 0.130), 0.075),
    "orange": (np.array([0.95, 0.50, 0.07], np.float32), (0.140, 0.137), 0.075),
    "lemon": (np.array([0.95, 0.84, 0.20], np.float32), (0.150, 0.105), 0.060),
}
_TWIN = {"fake_apple": "apple", "fake_orange": "orange"}


@dataclass
class _Object:
    name: str
    cx: float
    cy: float
    radius: float  # bounding radius in pixels, for placement
    scale: float  # perspective size factor
    params: dict


@dataclass
class _Patch:
    rows: slice
    cols: slice
    mask: np.ndarray  # bool hxw
    height: np.ndarray  # metres above the table, hxw
    radiance: np.ndarray  # hxwx3 albedo x shading
    celsius: np.ndarray  # hxw


def _grid(cx, cy, rx, ry, h, w):
    y0, y1 = max(int(math.floor(cy - ry)) - 1, 0), min(int(math.ceil(cy + ry)) + 2, h)
    x0, x1 = max(int(math.floor(cx - rx)) - 1, 0), min(int(math.ceil(cx + rx)) + 2, w)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    return slice(y0, y1), slice(x0, x1), ys, xs


def _rotate(xs, ys, angle):
    c, s = math.cos(angle), math.sin(angle)
    return xs * c + ys * s, -xs * s + ys * c


def _render_fruit(obj: _Object, fields, spec: SynthSpec) -> _Patch:
    kind = _TWIN.get(obj.name, obj.name)
    fake = obj.name in _TWIN
    p = obj.params
    a, b = p["a"], p["b"]
    rows, cols, ys, xs = _grid(obj.cx, obj.cy, max(a, b), max(a, b), spec.height, spec.width)
    u, v = _rotate(xs, ys, p["angle"])
    u, v = u / a, v / b
    r2 = u * u + v * v
    mask = r2 <= 1.0
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    lambert = np.clip(u * _LIGHT[0] + v * _LIGHT[1] + nz * _LIGHT[2], 0.0, 1.0)
    shade = 0.28 + 0.72 * lambert + 0.45 * lambert**24
    low = fields["low"][rows, cols]
    fine = fields["fine"][rows, cols]
    colour = p["colour"]
    if kind == "apple":
        streak = 0.5 + 0.5 * np.sin(np.arctan2(v, u) * 9.0 + 3.0 * low)
        mix = (0.30 * streak * np.sqrt(np.clip(r2, 0, 1)))[..., None]
        albedo = colour * (1.0 - mix) + np.array([0.85, 0.55, 0.12], np.float32) * mix
        stem = (u - 0.05) ** 2 + (v + 0.62) ** 2 < 0.012
        albedo[stem] = (0.30, 0.20, 0.08)
        albedo *= (1.0 + 0.04 * fine)[..., None]
    elif kind == "orange":
        albedo = colour * (1.0 + 0.10 * fine + 0.05 * low)[..., None]
    else:  # lemon
        albedo = colour * (1.0 + 0.05 * fine + 0.04 * low)[..., None]
    radiance = albedo * shade[..., None]
    height = np.full(mask.shape, 0.0005, np.float32) if fake else (p["height"] * nz).astype(np.float32)
    room = fields["room"][rows, cols]
    celsius = room + 0.3 if fake else room - p["cool"] * (0.4 + 0.6 * nz)
    return _Patch(rows, cols, mask, height, radiance.astype(np.float32), celsius.astype(np.float32))


def _render_mug(obj: _Object, fields, spec: SynthSpec) -> _Patch:
    p = obj.params
    radius, body = p["radius"], p["body"]
    rim_b = 0.42 * radius
    top = obj.cy - body / 2.0
    bottom = obj.cy + body / 2.0
    handle_r = 0.42 * body
    rx = radius + 2.0 * handle_r
    rows, cols, ys, xs = _grid(obj.cx, obj.cy, rx, body / 2.0 + rim_b, spec.height, spec.width)
    yt = ys + obj.cy - top  # relative to the rim centre
    yb = ys + obj.cy - bottom  # relative to the base centre
    xn = xs / radius
    in_rim = xn**2 + (yt / rim_b) ** 2 <= 1.0
    in_base = xn**2 + (yb / rim_b) ** 2 <= 1.0
    in_side = (np.abs(xn) <= 1.0) & (yt >= 0) & (yb <= 0)
    inner = xn**2 + (yt / (0.86 * rim_b)) ** 2 <= 0.86**2
    hx, hy = xs - radius * 0.98, ys
    hr2 = hx**2 + hy**2
    handle = (hr2 <= handle_r**2) & (hr2 >= (0.55 * handle_r) ** 2) & (hx > 0)
    mask = in_rim | in_base | in_side | handle
    side_shade = 0.45 + 0.6 * np.clip(-0.55 * xn + 0.8 * np.sqrt(np.clip(1 - xn * xn, 0, 1)), 0, 1)
    colour = p["colour"]
    fine = fields["fine"][rows, cols]
    radiance = np.empty((*mask.shape, 3), np.float32)
    radiance[:] = colour * (side_shade * (1.0 + 0.02 * fine))[..., None]
    radiance[in_rim & ~inner] = colour * 1.15 + 0.05
    radiance[inner] = colour * 0.35 + np.float32(0.05)  # inside of the mug, in shadow
    radiance[handle & ~in_side] = colour * 0.85
    t = np.clip((yb / max(body, 1.0)) * -1.0, 0.0, 1.0)  # 0 at the base row, 1 at the rim row
    height = (p["height"] * np.where(in_rim | (yt < 0), 1.0, t)).astype(np.float32)
    height[inner] = 0.02
    height[handle & ~in_side] = 0.6 * p["height"]
    room = fields["room"][rows, cols]
    if obj.name == "hot_mug":
        celsius = np.where(inner, p["hot"] + 4.0, p["hot"] - 6.0 * (1.0 - t)).astype(np.float32)
        celsius[handle & ~in_side] = 0.5 * (p["hot"] + spec.room_c)
    else:
        celsius = (room + 0.5).astype(np.float32)
    return _Patch(rows, cols, mask, height, radiance, celsius)


def _render_plate(obj: _Object, fields, spec: SynthSpec) -> _Patch:
    p = obj.params
    a, b = p["a"], p["b"]
    rows, cols, ys, xs = _grid(obj.cx, obj.cy, a, b, spec.height, spec.width)
    r2 = (xs / a) ** 2 + (ys / b) ** 2
    mask = r2 <= 1.0
    rim = r2 > 0.62
    shade = np.where(rim, 0.92 - 0.15 * (ys / b), 1.0).astype(np.float32)
    radiance = (p["colour"] * (shade * (1.0 + 0.01 * fields["fine"][rows, cols]))[..., None]).astype(np.float32)
    height = np.where(rim, 0.02, 0.01).astype(np.float32)
    celsius = (fields["room"][rows, cols] - 0.2).astype(np.float32)
    return _Patch(rows, cols, mask, height, radiance, celsius)


def _render_book(obj: _Object, fields, spec: SynthSpec) -> _Patch:
    p = obj.params
    half_w, half_h = p["w"] / 2.0, p["h"] / 2.0
    reach = math.hypot(half_w, half_h)
    rows, cols, ys, xs = _grid(obj.cx, obj.cy, reach, reach, spec.height, spec.width)
    u, v = _rotate(xs, ys, p["angle"])
    mask = (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
    pages = u > half_w * 0.86
    radiance = np.empty((*mask.shape, 3), np.float32)
    radiance[:] = p["colour"] * (1.0 + 0.03 * fields["fine"][rows, cols] + 0.04 * fields["low"][rows, cols])[..., None]
    radiance[pages] = (0.90, 0.88, 0.80)
    title = (np.abs(v) < half_h * 0.12) & (np.abs(u) < half_w * 0.5)
    radiance[title] = np.clip(p["colour"] * 2.2 + 0.2, 0, 1)
    height = np.full(mask.shape, 0.035, np.float32)
    celsius = (fields["room"][rows, cols] + 0.3).astype(np.float32)
    return _Patch(rows, cols, mask, height, radiance, celsius)


_RENDER = {
    "apple": _render_fruit,
    "fake_apple": _render_fruit,
    "orange": _render_fruit,
    "fake_orange": _render_fruit,
    "lemon": _render_fruit,
    "mug": _render_mug,
    "hot_mug": _render_mug,
    "plate": _render_plate,
    "book": _render_book,
}


def _object_params(name: str, rng: np.random.Generator, size: float) -> tuple[dict, float]:
    """Random appearance/shape parameters and the bounding radius (before perspective scaling).

    A fake twin draws its parameters exactly as its real twin does, so the two have the same appearance
    distribution; only height and temperature differ (in the renderer).
    """
    kind = _TWIN.get(name, name)
    jitter = lambda spread: float(rng.uniform(1.0 - spread, 1.0 + spread))  # noqa: E731
    if kind in _FRUIT:
        colour, (ka, kb), height = _FRUIT[kind]
        scale = jitter(0.15)
        a, b = ka * size * scale, kb * size * scale
        params = {
            "a": a,
            "b": b,
            "angle": float(rng.uniform(-math.pi, math.pi)) if kind == "lemon" else float(rng.uniform(-0.3, 0.3)),
            "colour": np.clip(colour * rng.uniform(0.9, 1.1, 3).astype(np.float32), 0, 1),
            "height": height * scale,
            "cool": float(rng.uniform(2.0, 4.0)),
        }
        return params, max(a, b)
    if kind in ("mug", "hot_mug"):
        scale = jitter(0.12)
        radius, body = 0.115 * size * scale, 0.160 * size * scale
        params = {
            "radius": radius,
            "body": body,
            "colour": _MUG_COLOURS[rng.integers(len(_MUG_COLOURS))] * np.float32(jitter(0.08)),
            "height": 0.10 * scale,
            "hot": float(rng.uniform(55.0, 65.0)),
        }
        return params, math.hypot(radius + 0.84 * body, body / 2 + 0.42 * radius)
    if kind == "plate":
        scale = jitter(0.10)
        a, b = 0.28 * size * scale, 0.19 * size * scale
        return {"a": a, "b": b, "colour": np.array([0.92, 0.92, 0.90], np.float32) * np.float32(jitter(0.04))}, a
    if kind == "book":
        w, h = 0.40 * size * jitter(0.12), 0.27 * size * jitter(0.12)
        params = {
            "w": w,
            "h": h,
            "angle": float(rng.uniform(-0.6, 0.6)),
            "colour": _BOOK_COLOURS[rng.integers(len(_BOOK_COLOURS))] * np.float32(jitter(0.1)),
        }
        return params, math.hypot(w, h) / 2
    raise KeyError(name)


def _scale_params(params: dict, factor: float) -> dict:
    scaled = dict(params)
    for key in ("a", "b", "radius", "body", "w", "h"):
        if key in scaled:
            scaled[key] = scaled[key] * factor
    return scaled


def _layout(rng: np.random.Generator, spec: SynthSpec) -> list[_Object]:
    """Objects on the table, without overlap (rejection sampling; an object that does not fit is left out)."""
    h, w = spec.height, spec.width
    size = float(min(h, w))
    horizon_row = spec.horizon * h
    names: list[str] = []
    if rng.random() < 0.6:
        names.append("plate")
    if rng.random() < 0.6:
        names.append("book")
    small = ("apple", "fake_apple", "orange", "fake_orange", "lemon", "mug", "hot_mug")
    names += [small[i] for i in rng.integers(0, len(small), int(rng.integers(5, 10)))]
    placed: list[_Object] = []
    for name in names:
        params, radius0 = _object_params(name, rng, size)
        for _ in range(40):
            cy = float(rng.uniform(horizon_row + 0.05 * h, h * 0.97))
            # perspective: objects nearer the horizon are farther away and smaller
            depth_here = spec.table_far_m + (spec.table_near_m - spec.table_far_m) * (cy - horizon_row) / (
                h - horizon_row
            )
            factor = spec.table_near_m / depth_here
            radius = radius0 * factor
            if cy - radius < horizon_row + 2 or cy + radius > h - 1:
                continue
            cx = float(rng.uniform(radius + 1, w - radius - 1)) if w > 2 * radius + 2 else -1.0
            if cx < 0:
                continue
            if all(math.hypot(cx - o.cx, cy - o.cy) > radius + o.radius + 2 for o in placed):
                placed.append(_Object(name, cx, cy, radius, factor, _scale_params(params, factor)))
                break
    return placed


# ----------------------------------------------------------------------------------------------------
# Lighting and camera


@dataclass(frozen=True)
class _Lighting:
    gain: float
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: float = 1.0 / 255
    spotlight: bool = False
    banding: float = 0.0


_LIGHTING_PARAMS = {
    "RGB1": _Lighting(1.45),
    "RGB2": _Lighting(1.0),
    "RGB3": _Lighting(0.40, noise=1.5 / 255),
    "RGB4": _Lighting(0.10, noise=1.5 / 255),
    "RGB5": _Lighting(1.0, tint=(1.30, 0.70, 0.35)),
    "RGB6": _Lighting(1.0, tint=(0.30, 0.85, 1.25)),
    "RGB7": _Lighting(1.25, spotlight=True),
    "RGB8": _Lighting(0.07, noise=6.0 / 255, banding=2.0 / 255),
}


@functools.lru_cache(maxsize=8)
def _vignette(h: int, w: int) -> np.ndarray:
    ys = (np.arange(h, dtype=np.float32) - (h - 1) / 2) / max((h - 1) / 2, 1)
    xs = (np.arange(w, dtype=np.float32) - (w - 1) / 2) / max((w - 1) / 2, 1)
    r2 = (ys[:, None] ** 2 + xs[None, :] ** 2) / 2.0
    vignette = (1.0 - 0.22 * r2).astype(np.float32)
    vignette.flags.writeable = False
    return vignette


def _expose(radiance255: np.ndarray, lighting: str, noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scene radiance x 255 (HxWx3, vignetting applied) -> 8-bit RGB under one lighting, with camera noise."""
    params = _LIGHTING_PARAMS[lighting]
    h, w = radiance255.shape[:2]
    gain = np.float32(params.gain) * np.asarray(params.tint, np.float32)
    image = cv2.transform(radiance255, np.diag(gain))  # per-channel gain in one multi-threaded pass
    if params.spotlight:
        cy, cx = rng.uniform(0.25, 0.85) * h, rng.uniform(0.15, 0.85) * w
        sigma = 0.25 * w
        gy = np.exp(-((np.arange(h, dtype=np.float32) - cy) ** 2) / (2 * sigma**2))
        gx = np.exp(-((np.arange(w, dtype=np.float32) - cx) ** 2) / (2 * sigma**2))
        spot = (np.float32(0.12) + np.outer(gy, gx).astype(np.float32))
        image = cv2.multiply(image, cv2.merge([spot, spot, spot]))
    image = cv2.scaleAdd(noise, float(params.noise * 255.0), image)
    if params.banding:
        image += rng.standard_normal((h, 1, 1), dtype=np.float32) * np.float32(params.banding * 255.0)
    # black level at 0, then round and saturate to 8 bits
    return cv2.convertScaleAbs(cv2.max(image, 0.0))


# ----------------------------------------------------------------------------------------------------
# One frame


@dataclass
class SynthFrame:
    """One generated frame, before encoding: the arrays that go to disk."""

    rgb: dict[str, np.ndarray]  # lighting -> HxWx3 uint8 RGB
    depth_mm: np.ndarray  # HxW uint16, 0 = no reading
    depth_focusn: np.ndarray  # HxW uint8, 0 = no reading
    thermal_t16: np.ndarray  # HxW uint16 raw
    thermal_t8: np.ndarray  # HxW uint8
    labels: np.ndarray  # HxW uint8 class ids


def _frame_rng(seed: int, frame: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(frame), int(stream)])


def _unit_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """Zero-mean, unit-variance noise: uniform over 256 levels drawn as random bytes, several times
    faster than Gaussian noise and indistinguishable from it in an image."""
    count = int(np.prod(shape))
    noise = np.frombuffer(rng.bytes(count), np.uint8).astype(np.float32).reshape(shape)
    noise -= np.float32(127.5)
    noise *= np.float32(1.0 / 73.9002)  # standard deviation of the uniform distribution on 0..255
    return noise


@functools.lru_cache(maxsize=8)
def _vignette3(h: int, w: int) -> np.ndarray:
    vignette = _vignette(h, w) * np.float32(255.0)
    merged = cv2.merge([vignette, vignette, vignette])
    merged.flags.writeable = False
    return merged


def _check_lightings(lightings) -> None:
    unknown = [name for name in lightings if name not in LIGHTINGS]
    if unknown:
        raise ValueError(f"unknown lighting(s) {unknown}; choose from {list(LIGHTINGS)}")


def _texture_fields(rng: np.random.Generator, spec: SynthSpec) -> dict[str, np.ndarray]:
    """Low-frequency (blobs of about size/12) and fine noise, both standard-normal-ish, and the room's
    temperature field made from them; the objects draw their textures from these too."""
    h, w = spec.height, spec.width
    low_shape = (max(h // 24, 2) + 2, max(w // 24, 2) + 2)
    low = cv2.resize(rng.standard_normal(low_shape, dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = _unit_noise(rng, (h, w))
    rows = np.arange(h, dtype=np.float32)[:, None]
    room = (spec.room_c + 0.6 * low + 0.8 * (rows / h - 0.5)).astype(np.float32)
    return {"low": low, "fine": fine, "room": room}


@dataclass
class _Scene:
    """The scene as the cameras see it, before any sensor: each object drawn adds to every layer."""

    depth: np.ndarray  # HxW float32 metres
    labels: np.ndarray  # HxW uint8 class ids
    radiance: np.ndarray  # HxWx3 float32 albedo x shading
    celsius: np.ndarray  # HxW float32


def _empty_scene(rng: np.random.Generator, spec: SynthSpec, fields: dict[str, np.ndarray]) -> _Scene:
    """The wall and the wooden table (its grain at a random angle and period), no objects yet."""
    h, w = spec.height, spec.width
    low, fine = fields["low"], fields["fine"]
    horizon_row = int(round(spec.horizon * h))
    size = float(min(h, w))
    angle = rng.uniform(-0.3, 0.3)
    period = size * rng.uniform(0.05, 0.09)
    rows = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    grain = np.sin((xs * math.cos(angle) + rows * math.sin(angle)) * np.float32(2 * math.pi / period) + 1.2 * low)
    wood = np.array([0.55, 0.38, 0.22], np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    brightness = 1.0 + 0.10 * grain + 0.03 * fine
    wall = np.float32(1.0) + np.float32(0.02) * fine[:horizon_row]
    brightness[:horizon_row] = wall
    radiance = cv2.merge([brightness * wood[c] for c in range(3)])
    for c, value in enumerate((0.80, 0.78, 0.72)):
        radiance[:horizon_row, :, c] = wall * np.float32(value)
    celsius = fields["room"].copy()
    celsius[:horizon_row] -= 1.0
    return _Scene(depth=table_depth(spec), labels=np.zeros((h, w), np.uint8), radiance=radiance, celsius=celsius)


def _add_objects(scene: _Scene, objects: list[_Object], fields: dict[str, np.ndarray], spec: SynthSpec) -> None:
    """Composite the objects into `scene` with a z-buffer: the nearer surface wins each pixel."""
    for obj in objects:
        patch = _RENDER[obj.name](obj, fields, spec)
        view = (patch.rows, patch.cols)
        surface = scene.depth[view] - patch.height
        visible = patch.mask & (surface < scene.depth[view])
        scene.depth[view][visible] = surface[visible]
        scene.labels[view][visible] = CLASS_ID[obj.name]
        scene.radiance[view][visible] = patch.radiance[visible]
        scene.celsius[view][visible] = patch.celsius[visible]


def _depth_sensor(rng: np.random.Generator, spec: SynthSpec, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True depth -> (D16 millimetres, D_FocusN): noise growing with distance, holes in random blobs and
    at depth edges (0 = no reading in both)."""
    h, w = depth.shape
    size = float(min(h, w))
    noisy = depth + _unit_noise(rng, (h, w)) * np.float32(spec.depth_noise_m) * depth * depth
    holes = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(2, 7))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (max(int(size * rng.uniform(0.008, 0.03)), 1), max(int(size * rng.uniform(0.008, 0.03)), 1))
        cv2.ellipse(holes, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    edges = cv2.morphologyEx(depth, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0.03
    holes |= (edges & (rng.random((h, w), dtype=np.float32) < 0.6)).astype(np.uint8)
    valid = holes == 0
    depth_mm = np.clip(np.rint(noisy * 1000.0), 1, 65535).astype(np.uint16)
    depth_mm[~valid] = 0
    return depth_mm, encode_focusn(noisy, valid, spec.depth_focusn_range_m)


def _thermal_camera(rng: np.random.Generator, spec: SynthSpec, celsius: np.ndarray) -> np.ndarray:
    """True temperature -> what the thermal camera reads: optical blur (spreads the heat of a hot mug onto
    the table) and noise, in deg C."""
    h, w = celsius.shape
    thermal = cv2.GaussianBlur(celsius, (0, 0), max(0.004 * w, 0.5))
    thermal += _unit_noise(rng, (h, w)) * np.float32(spec.thermal_noise_c)
    return thermal


def _colour_camera(
    rng: np.random.Generator, radiance255: np.ndarray, seed: int, frame: int, lightings
) -> dict[str, np.ndarray]:
    """Colour images under the chosen lightings. One camera-noise field per frame, a different window per
    lighting, and each lighting its own generator, so that a lighting's image does not depend on which
    others are asked for."""
    h, w = radiance255.shape[:2]
    margin = 8
    noise = _unit_noise(rng, (h + margin, w + margin, 3))
    rgb = {}
    for k, lighting in enumerate(LIGHTINGS):
        if lighting in lightings:
            window = noise[k : k + h, margin - k : margin - k + w]
            rgb[lighting] = _expose(radiance255, lighting, window, _frame_rng(seed, frame, 1 + k))
    return rgb


def render_frame(spec: SynthSpec, seed: int, frame: int, lightings=LIGHTINGS) -> SynthFrame:
    """Render frame number `frame` (1-based) of the set generated with `seed`.

    `lightings` limits the colour images made (a live demo needs one); the other outputs and the chosen
    lightings' images are the same whichever subset is asked for. Its pieces draw from one generator in a
    fixed order: reordering them changes every frame's bytes.
    """
    _check_lightings(lightings)
    rng = _frame_rng(seed, frame, 0)
    fields = _texture_fields(rng, spec)
    scene = _empty_scene(rng, spec, fields)
    _add_objects(scene, _layout(rng, spec), fields, spec)
    radiance255 = cv2.multiply(scene.radiance, _vignette3(spec.height, spec.width))  # vignetting, to 0..255
    depth_mm, focusn = _depth_sensor(rng, spec, scene.depth)
    thermal = _thermal_camera(rng, spec, scene.celsius)
    rgb = _colour_camera(rng, radiance255, seed, frame, lightings)
    return SynthFrame(
        rgb=rgb,
        depth_mm=depth_mm,
        depth_focusn=focusn,
        thermal_t16=celsius_to_t16(thermal),
        thermal_t8=encode_t8(thermal, spec.thermal_t8_range_c),
        labels=scene.labels,
    )


# ----------------------------------------------------------------------------------------------------
# Writing the data set

# Fastest settings that still compress: noisy camera images gain nothing from LZ77 matching (Huffman
# only is faster and smaller here), label maps are long runs (RLE).
_PNG_IMAGE = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
_PNG_LABELS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def _write_png(path: Path, image: np.ndarray) -> None:
    flags = _PNG_LABELS if path.parent.name == "ANNO_CLASS" else _PNG_IMAGE
    if not cv2.imwrite(str(path), image, flags):
        raise OSError(f"cannot write {path}")


def _frame_files(frame: SynthFrame, root: Path, stem: str, label_channels: int) -> list[tuple[Path, np.ndarray]]:
    files = [(root / name / f"{stem}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR)) for name, image in frame.rgb.items()]
    labels = frame.labels if label_channels == 1 else np.repeat(frame.labels[..., None], 3, axis=2)
    files += [
        (root / "D16" / f"{stem}.png", frame.depth_mm),
        (root / "D_FocusN" / f"{stem}.png", frame.depth_focusn),
        (root / "T16" / f"{stem}.png", frame.thermal_t16),
        (root / "T8" / f"{stem}.png", frame.thermal_t8),
        (root / "ANNO_CLASS" / f"{stem}.png", labels),
    ]
    return files


def split_stems(stems: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic shuffle-split; at least one frame on each side when there are two or more."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng([int(seed), 0x5EED]).permutation(len(stems))
    n_val = int(round(val_fraction * len(stems)))
    if len(stems) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(stems) - 1)
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(stems) if i not in val_idx]
    val = [s for i, s in enumerate(stems) if i in val_idx]
    return train, val


def generate_mm5(
    root,
    num_frames: int = 64,
    seed: int = 0,
    height: int = 480,
    width: int = 640,
    val_fraction: float = 0.25,
    label_channels: int = 1,
    workers: int = 2,
) -> dict:
    """Write `num_frames` frames in the MM5 aligned layout under `root` (module docstring). Returns a summary.

    `workers` threads encode PNGs in parallel (OpenCV releases the GIL); the bytes do not depend on it.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if height < 16 or width < 16:
        raise ValueError(f"image size must be at least 16x16, got {height}x{width}")
    if label_channels not in (1, 3):
        raise ValueError(f"label_channels must be 1 or 3, got {label_channels}")
    start = time.perf_counter()
    spec = SynthSpec(height=int(height), width=int(width))
    root = Path(root)
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    stems = [str(k) for k in range(1, num_frames + 1)]
    pixel_counts = np.zeros(len(CLASSES), np.int64)
    with ThreadPoolExecutor(max_workers=max(int(workers), 1)) as pool:
        pending = []
        for k, stem in enumerate(stems, start=1):
            frame = render_frame(spec, seed, k)
            pixel_counts += np.bincount(frame.labels.ravel(), minlength=len(CLASSES))[: len(CLASSES)]
            for path, image in _frame_files(frame, root, stem, label_channels):
                pending.append(pool.submit(_write_png, path, image))
            if len(pending) > 64:  # bound the memory held by queued images
                for job in pending:
                    job.result()
                pending = []
        for job in pending:
            job.result()

    train, val = split_stems(stems, val_fraction, seed)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    (root / "label_mapping.csv").write_text(
        "ID,Label Name\n" + "".join(f"{i},{name}\n" for i, name in enumerate(CLASSES) if i > 0)
    )
    (root / "list_train_f.txt").write_text("".join(f"{s}\n" for s in train))
    (root / "list_eval_f.txt").write_text("".join(f"{s}\n" for s in val))
    (root / "train_dataset.csv").write_text("ID\n" + "".join(f"{s}\n" for s in train))
    (root / "eval_dataset.csv").write_text("ID\n" + "".join(f"{s}\n" for s in val))
    info = {
        "generator": "rgbd_fusion_seg.offline.datasets.synth",
        "seed": int(seed),
        "num_frames": int(num_frames),
        "label_channels": int(label_channels),
        "spec": asdict(spec),
        "classes": list(CLASSES),
        "lightings": {name: LIGHTING_NAMES[name] for name in LIGHTINGS},
        "class_pixel_fraction": (pixel_counts / max(pixel_counts.sum(), 1)).round(5).tolist(),
    }
    (root / "synth_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return {
        "root": str(root),
        "num_frames": int(num_frames),
        "seed": int(seed),
        "height": int(height),
        "width": int(width),
        "train": train,
        "eval": val,
        "classes": list(CLASSES),
        "lightings": list(LIGHTINGS),
        "class_pixel_fraction": info["class_pixel_fraction"],
        "seconds": round(time.perf_counter() - start, 3),
    }


# ----------------------------------------------------------------------------------------------------
# CLI hooks: `rgbd-fusion-seg synth --out DIR --frames N --seed S --size H W`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the MM5-layout data set into")
    parser.add_argument("--frames", type=int, default=64, help="number of frames (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="image size (default 480 640)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of frames in the eval split")
    parser.add_argument(
        "--label-channels", type=int, choices=(1, 3), default=1, help="write labels with 1 or 3 channels"
    )
    parser.add_argument("--workers", type=int, default=2, help="PNG-encoding threads (default 2)")


def run(args: argparse.Namespace) -> int:
    summary = generate_mm5(
        args.out,
        num_frames=args.frames,
        seed=args.seed,
        height=args.size[0],
        width=args.size[1],
        val_fraction=args.val_fraction,
        label_channels=args.label_channels,
        workers=args.workers,
    )
    print(
        f"wrote {summary['num_frames']} frames ({summary['height']}x{summary['width']}, seed {summary['seed']}) "
        f"to {summary['root']}: {len(summary['train'])} train / {len(summary['eval'])} eval, "
        f"{len(summary['classes'])} classes, {len(summary['lightings'])} lightings, {summary['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    _parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
