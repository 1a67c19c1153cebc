"""The inference thread and its bookkeeping, without ROS imports (the node runs these off its executor thread).

- `Mailbox`: a one-slot mailbox, newest item wins (a replaced item is counted as stale, never queued).
- `InferenceWorker`: a daemon thread taking paired frames from a mailbox and running a `process` callable
  on them; inference latency stays bounded when the model is slower than the cameras.
- `LatencyWindow`: bounded window of stamp-to-publish latencies and publish times -> p50/p90/p99 and rate.

Loading the models it runs is `model_serving.py`.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

_CLOSED = object()


class Mailbox:
    """One slot. `put` replaces what is there (returns True if it did); `get` waits for an item."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False

    def put(self, item) -> bool:
        with self._condition:
            replaced = self._full
            self._item, self._full = item, True
            self._condition.notify()
            return replaced

    def get(self, timeout: float | None = None):
        """The item, or `_CLOSED` once closed, or None on timeout."""
        with self._condition:
            if not self._full and not self._closed:
                self._condition.wait(timeout)
            if self._closed:
                return _CLOSED
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._item, self._full = None, False
            self._condition.notify_all()


class InferenceWorker:
    """A daemon thread that runs `process(item)` on the newest submitted item.

    `process` must handle its own errors; anything it lets escape goes to `on_error(item, exception)` and
    the thread carries on.
    """

    def __init__(self, process: Callable[[Any], None], on_error: Callable[[Any, BaseException], None],
                 name: str = "inference"):
        self._process = process
        self._on_error = on_error
        self._mailbox = Mailbox()
        self.dropped_stale = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "InferenceWorker":
        self._thread.start()
        return self

    def submit(self, item) -> bool:
        """Hand over an item; True if it replaced one that was still waiting (counted in dropped_stale)."""
        replaced = self._mailbox.put(item)
        if replaced:
            self.dropped_stale += 1
        return replaced

    def stop(self, timeout: float = 5.0) -> None:
        self._mailbox.close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._mailbox.get()
            if item is _CLOSED:
                return
            if item is None:
                continue
            try:
                self._process(item)
            except Exception as error:  # noqa: BLE001 - the worker must outlive any one frame
                try:
                    self._on_error(item, error)
                except Exception:  # noqa: BLE001
                    pass


class LatencyWindow:
    """The latest `size` latencies (seconds) with their publish times (monotonic seconds)."""

    def __init__(self, size: int = 512):
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=size)
        self._times: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, latency_s: float, at: float | None = None) -> None:
        with self._lock:
            self._latencies.append(latency_s)
            self._times.append(time.monotonic() if at is None else at)
            self.count += 1

    def percentiles_ms(self) -> tuple[float, float, float]:
        """(p50, p90, p99) in milliseconds; NaN when nothing was published yet."""
        with self._lock:
            values = np.asarray(self._latencies, np.float64)
        if values.size == 0:
            return (float("nan"),) * 3
        p50, p90, p99 = np.percentile(values * 1e3, [50, 90, 99])
        return float(p50), float(p90), float(p99)

    def rate_hz(self, horizon_s: float, now: float | None = None) -> float:
        """Publications per second over the last `horizon_s` seconds (bounded by the window's size)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._times if now - t <= horizon_s]
        if len(recent) < 2:
            return float(len(recent)) / horizon_s if recent else 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0
