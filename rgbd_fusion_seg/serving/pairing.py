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
TimeSynchronizer: equal stamps); every message that leaves a queue unpaired (evicted or replaced) is
counted, per stream, as dropped; and a stream whose stamps jump back recovers at once (below).

Stamps that jump back: message_filters keeps the newest stamps, so after a burst stamped in the future (a
driver restarting with another clock, a bag looping, a glitch) every correctly stamped message is evicted
on arrival as "the oldest" until the clock catches up with the burst: no pair for as long as the jump. One
stream's own stamps never go back in normal operation (DDS delivers each writer's messages in order; late
or jittered messages are late against the *other* stream), so when a message is older than the newest stamp
its stream has seen by more than `STAMP_JUMP_BACK_S`, that stream's queue holds only messages from before
the jump, which nothing will pair with: it is dropped (counted), and `on_stamp_jump` is told. A smaller step
back delays pairing by at most its own size, since the newer queued messages then age out as usual. Stamps
that jump forward need nothing: the older queued messages are evicted first, as usual.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

# Larger than any step back within one stream in normal operation (none), smaller than any clock jump worth
# naming; also the longest a smaller step back can delay pairing.
STAMP_JUMP_BACK_S = 1.0


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

    def __init__(self, queue_size: int = 10, slop: float = 0.05, exact: bool = False,
                 on_stamp_jump: Callable[[int, int, int], None] | None = None):
        """`on_stamp_jump(stream, jump_ns, dropped)` is called (outside the lock) when `stream`'s stamps jumped
        back by `jump_ns` and its `dropped` queued messages were dropped."""
        self._lock = threading.Lock()
        self._queues: tuple[dict[int, Any], dict[int, Any]] = ({}, {})
        self._newest: list[int | None] = [None, None]  # the newest stamp each stream has seen since the last jump
        self._on_stamp_jump = on_stamp_jump
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

    def clear(self) -> int:
        """Forget queued messages (counted as dropped) and the stamps seen; returns how many were dropped."""
        with self._lock:
            dropped = 0
            for stream in (0, 1):
                dropped += len(self._queues[stream])
                self.counts.dropped[stream] += len(self._queues[stream])
                self._queues[stream].clear()
                self._newest[stream] = None
            return dropped

    def add(self, stream: int, stamp_ns: int, item: Any, pairable: bool = True) -> Pair | None:
        """Queue `item` on `stream` (0 or 1); return the pair it completes, if any. `pairable` False: count it
        (and its stamp) as received, but neither queue nor pair it (a frame served on its own)."""
        if stream not in (0, 1):
            raise ValueError(f"stream must be 0 or 1, got {stream}")
        stamp_ns = int(stamp_ns)
        with self._lock:
            self.counts.received[stream] += 1
            jump = self._drop_if_jumped_back(stream, stamp_ns)
            pair = self._queue_and_match(stream, stamp_ns, item) if pairable else None
        if jump is not None and self._on_stamp_jump is not None:
            self._on_stamp_jump(stream, *jump)
        return pair

    def _drop_if_jumped_back(self, stream: int, stamp_ns: int) -> tuple[int, int] | None:
        """(jump_ns, dropped) if `stamp_ns` lies more than STAMP_JUMP_BACK_S before the stream's newest stamp."""
        newest = self._newest[stream]
        if newest is None or newest - stamp_ns <= seconds_to_ns(STAMP_JUMP_BACK_S):
            self._newest[stream] = stamp_ns if newest is None else max(newest, stamp_ns)
            return None
        queue = self._queues[stream]
        dropped = len(queue)
        self.counts.dropped[stream] += dropped
        queue.clear()
        self._newest[stream] = stamp_ns
        return newest - stamp_ns, dropped

    def _queue_and_match(self, stream: int, stamp_ns: int, item: Any) -> Pair | None:
        """Called with the lock held: message_filters' rule."""
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
