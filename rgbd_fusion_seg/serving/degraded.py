"""When the second camera drops out: which colour frames are served without aux, by which model, and the spells
of it (for the log and the diagnostics). No ROS import.

A colour frame is served from colour alone when the aux stream has been silent for more than `aux_timeout`
seconds when it arrives (no aux frame arrived in that time: the aux camera stopped, or never started; the
frame is then not queued for pairing, so it gets one mask, never a second one from a late aux frame), or
when its aux image holds no valid reading at all. Colour alone is served by,
in this order:
  1. the `fallback_checkpoint` (for example the `rgb` baseline), when one is loaded;
  2. the served model itself, fed the "missing" aux input (what an aux image without readings normalises
     to), when it was trained with modality dropout (`train.aux_dropout` > 0) or uses no aux at all;
otherwise the node cannot degrade, and publishes nothing rather than masks of a fusion model that never saw
a missing aux image.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from .model_serving import ServedModel


@dataclass(frozen=True)
class ColourOnly:
    served: ServedModel | None  # None: the node cannot degrade
    how: str  # what serves colour alone, or why nothing can


def colour_only_server(served: ServedModel, fallback: ServedModel | None) -> ColourOnly:
    unusable = ""
    if fallback is not None:
        if fallback.engine.checkpoint.classes == served.engine.checkpoint.classes:
            return ColourOnly(fallback, f"fallback_checkpoint {fallback.path} ({fallback.method!r})")
        unusable = f" (fallback_checkpoint {fallback.path} has other classes than {served.path})"
    dropout = served.engine.checkpoint.aux_dropout
    if not served.uses_aux:
        return ColourOnly(served, f"{served.method!r}, which uses no aux")
    if dropout > 0:
        return ColourOnly(served, f"{served.method!r} itself, trained with aux dropout {dropout:g}")
    return ColourOnly(None, f"cannot serve colour alone: {served.method!r} ({served.path}) was not trained with "
                            f"train.aux_dropout and no usable fallback_checkpoint is set{unusable}")


class AuxWatch:
    """How long the aux stream has been silent, and the spells of colour-only frames (thread-safe: messages
    arrive on the executor thread, frames are served on the worker).

    Silence is the aux stream's own: the time since its last frame arrived, whatever the order of arrival
    within a pair. Before its first frame it counts from the first colour frame (not from the subscription),
    so a camera pair that starts streaming pairs its first frame: its colour frame comes a few milliseconds
    before its aux frame."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last_aux: float | None = None
        self._first_colour: float | None = None
        self._degraded_how: str | None = None
        self.spells = 0  # colour-only spells entered so far

    def aux_arrived(self, now: float) -> None:
        with self._lock:
            self._last_aux = now

    def colour_arrived(self, now: float) -> float:
        """The aux stream's silence when this colour frame arrived (0 for the first colour frame)."""
        with self._lock:
            if self._first_colour is None:
                self._first_colour = now
        return self.silence(now)

    def silence(self, now: float) -> float:
        with self._lock:
            since = self._last_aux if self._last_aux is not None else self._first_colour
            return 0.0 if since is None else now - since

    def frame_served(self, colour_only: bool, how: str = "") -> str | None:
        """Record how a frame was served; 'entered' or 'left' when that starts or ends a colour-only spell."""
        with self._lock:
            was = self._degraded_how is not None
            self._degraded_how = how if colour_only else None
            if colour_only != was:
                self.spells += int(colour_only)
                return "entered" if colour_only else "left"
            return None

    @property
    def degraded_how(self) -> str | None:
        """What serves colour alone in the current spell (None: fusing)."""
        with self._lock:
            return self._degraded_how
