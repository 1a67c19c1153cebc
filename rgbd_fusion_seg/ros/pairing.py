"""Pairing two message streams by timestamp (no ROS imports; stamps are integer nanoseconds).

`ApproximateTimePairer` follows the semantics of the Python `message_filters.ApproximateTimeSynchronizer`
for two inputs:

- each stream keeps a queue of at most `queue_size` messages keyed by stamp; a message with a stamp already
  queued on its stream replaces the queued one, and when a queue grows past `queue_size` the message with
  the oldest stamp is evicted (this may be the message that just arrived, if it is older than all others);
- when a message arrives, the other stream's queue is searched for the message whose stamp is closest to
  the new one; if they differ by no more than `slop`, the two are emitted as a pair and both leave their
  queues. Ties go to the message that was queued first. Messages older than a paired one stay queued (they
  may still pair with a late partner) until they are evicted.

Differences from message_filters, on purpose: a pair is accepted at |difference| <= slop (message_filters
uses a strict < for the final check), which makes `exact=True` simply slop = 0 (message_filters'
TimeSynchronizer: equal stamps); and every message that leaves a queue unpaired (evicted or replaced) is
counted, per stream, as dropped.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Pair:
    first: Any
    second: Any
    first_stamp: int
    second_stamp: int


@dataclass
class PairingCounts:
    received: list[int] = field(default_factory=lambda: [0, 0])
    dropped: list[int] = field(default_factory=lambda: [0, 0])  # left a queue unpaired (evicted or replaced)
    pairs: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped)


def seconds_to_ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


class ApproximateTimePairer:
    """Pairs stream 0 (e.g. colour) with stream 1 (e.g. depth) by stamp. Thread-safe."""

    def __init__(self, queue_size: int = 10, slop: float = 0.05, exact: bool = False):
        self._lock = threading.Lock()
        self._queues: tuple[dict[int, Any], dict[int, Any]] = ({}, {})
        self.counts = PairingCounts()
        self.configure(queue_size, slop, exact)

    def configure(self, queue_size: int, slop: float, exact: bool = False) -> None:
        """Change the policy; queued messages that no longer fit are evicted (and counted)."""
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if slop < 0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        with self._lock:
            self.queue_size = int(queue_size)
            self.slop = float(slop)
            self.exact = bool(exact)
            self._slop_ns = 0 if exact else seconds_to_ns(slop)
            for stream in (0, 1):
                self._trim(stream)

    def pending(self) -> tuple[int, int]:
        with self._lock:
            return len(self._queues[0]), len(self._queues[1])

    def oldest_pending_stamps(self) -> tuple[int | None, int | None]:
        with self._lock:
            return tuple(min(q) if q else None for q in self._queues)  # type: ignore[return-value]

    def clear(self) -> None:
        """Forget queued messages (counted as dropped)."""
        with self._lock:
            for stream in (0, 1):
                self.counts.dropped[stream] += len(self._queues[stream])
                self._queues[stream].clear()

    def add(self, stream: int, stamp_ns: int, item: Any) -> Pair | None:
        """Queue `item` on `stream` (0 or 1); return the pair it completes, if any."""
        if stream not in (0, 1):
            raise ValueError(f"stream must be 0 or 1, got {stream}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            self.counts.received[stream] += 1
            queue = self._queues[stream]
            if stamp_ns in queue:
                del queue[stamp_ns]  # replaced: the newer message with the same stamp wins
                self.counts.dropped[stream] += 1
            queue[stamp_ns] = item
            self._trim(stream)
            if stamp_ns not in queue:  # evicted at once: older than everything queued
                return None
            other = self._queues[1 - stream]
            best_stamp, best_difference = None, None
            for candidate in other:  # insertion order: the first of equally close candidates wins
                difference = abs(candidate - stamp_ns)
                if difference <= self._slop_ns and (best_difference is None or difference < best_difference):
                    best_stamp, best_difference = candidate, difference
            if best_stamp is None:
                return None
            mine = queue.pop(stamp_ns)
            partner = other.pop(best_stamp)
            self.counts.pairs += 1
            if stream == 0:
                return Pair(mine, partner, stamp_ns, best_stamp)
            return Pair(partner, mine, best_stamp, stamp_ns)

    def _trim(self, stream: int) -> None:
        queue = self._queues[stream]
        while len(queue) > self.queue_size:
            del queue[min(queue)]
            self.counts.dropped[stream] += 1
