"""The node's health in one object, without ROS: its counters and latency windows, ~/stats, the per-period
judgement /diagnostics publishes, the state reports outside `active`, and the no-pair watchdog's decisions.

`NodeHealth` is fed by the frame pipeline (inputs, pairs, frames out) and read by the node's timers, which only
publish what it says. `ThrottledLog` is the one way serving code talks to the node's log.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from .inference_worker import LatencyWindow

OK, WARN, ERROR = "OK", "WARN", "ERROR"  # /diagnostics levels, mapped to DiagnosticStatus by the node
# ~/stats counters whose growth in one report period /diagnostics judges.
PERIOD_COUNTERS = ("frames_in_rgb", "frames_in_aux", "dropped_unpaired", "frames_out", "points_out", "bad_input",
                   "inference_errors", "dropped_cannot_degrade", "lost_in_transport_rgb", "lost_in_transport_aux")
# What to do about frames lost between the camera and the node (said in the log and on /diagnostics), by
# whether the subscription is reliable.
LOST_CURE = {
    False: (
        "best-effort delivery of large images drops UDP fragments; publish the camera reliably (qos.profile auto "
        "then subscribes reliably), or use Fast DDS's LARGE_DATA transports (FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA "
        "on both ends), or compressed transport (transport.rgb/aux)"),
    True: (
        "the publisher's history replaced frames this node had not taken yet (it reads slower than the camera "
        "sends); give the camera's publisher a deeper history, lower its rate or image size, or use compressed "
        "transport (transport.rgb/aux)"),
}
STATE_MESSAGES = {
    "unconfigured": "unconfigured ({idle}): configure and activate to serve",
    "inactive": "inactive: not subscribed, publishes nothing; activate to serve",
    "finalized": "finalized: shut down through its lifecycle, holds no model and no subscription; restart the node "
                 "to serve",
}


def log_at(logger, level: str, message: str) -> None:
    """Log `message` at `level` ("error", "warning" or "info").

    rclpy binds each call site (file, line and bytecode offset) to the first severity logged through it and
    raises ValueError for any other severity there later, so every severity has its own call below.
    """
    if level == "error":
        logger.error(message)
    elif level == "warning":
        logger.warning(message)
    elif level == "info":
        logger.info(message)
    else:
        raise ValueError(f"unknown log level {level!r}")


def stats_line(values: Mapping[str, str]) -> str:
    """The log line of a ~/stats report."""
    return (f"{values['rate_hz']} Hz, latency p50/p90/p99 {values['latency_p50_ms']}/{values['latency_p90_ms']}/"
            f"{values['latency_p99_ms']} ms (stamp -> publish), processing p50/p90 {values['processing_p50_ms']}/"
            f"{values['processing_p90_ms']} ms (pair -> publish); in {values['frames_in_rgb']}/"
            f"{values['frames_in_aux']}, pairs {values['pairs']}, out {values['frames_out']}, dropped unpaired "
            f"{values['dropped_unpaired']} stale {values['dropped_stale']} no-model {values['dropped_no_model']}, "
            f"bad input {values['bad_input']}; model {values['model']}")


class ThrottledLog:
    """`say(level, message)` logs; with a `key`, at most once per `period` seconds per key (thread-safe)."""

    def __init__(self, logger):
        self._logger = logger
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def __call__(self, level: str, message: str, key: str | None = None, period: float = 5.0) -> None:
        if key is not None:
            now = time.monotonic()
            with self._lock:
                last = self._last.get(key)
                if last is not None and now - last < period:
                    return
                self._last[key] = now
        log_at(self._logger, level, message)


@dataclass
class Inputs:
    """The input topics as subscribed (full names) and how: what log lines and /diagnostics name."""

    rgb: str = "rgb/image"
    aux: str = "aux/image"
    camera_info: str = "aux/camera_info"
    reliable: list[bool] = field(default_factory=lambda: [False, False])  # colour, aux
    qos_text: str = ""

    def subscribed(self, stream: int, topic: str, reliable: bool, qos_text: str) -> None:
        if stream == 0:
            self.rgb = topic
        else:
            self.aux = topic
        self.reliable[stream], self.qos_text = reliable, qos_text

    def lost_cure(self, stream: int) -> str:
        return LOST_CURE[self.reliable[stream]]


class Counters:
    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._values = {name: 0 for name in names}

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)


@dataclass(frozen=True)
class Starvation:
    """What the watchdog found when no pair was made for no_pair_timeout."""

    since_s: float
    problem: str
    received: tuple[int, int]  # frames per stream since the last pair

    def describe(self, inputs: Inputs, publishers: tuple[int, int]) -> str:
        return (f"no colour/aux pair for {self.since_s:.1f} s: {self.problem}: in that time {inputs.rgb} got "
                f"{self.received[0]} frames ({publishers[0]} publishers), {inputs.aux} got {self.received[1]} frames "
                f"({publishers[1]} publishers); subscribed with QoS {inputs.qos_text}. Check the remappings, the "
                "publishers' QoS and the stamps.")


class NodeHealth:
    """Counters, latency windows and the clocks of the last input and pair, and what they say.

    `config()` is the node's current configuration (no_pair_timeout, stats_period, sync.*, outputs.*);
    `unpaired_share`: the share of unpaired frames above which a period is a WARN (the contract's)."""

    def __init__(self, config: Callable[[], Mapping], inputs: Inputs, unpaired_share: float):
        self._config = config
        self._inputs = inputs
        self._unpaired_share = unpaired_share
        self.counters = Counters(
            "bad_input", "frames_out", "dropped_no_model", "inference_errors", "lost_rgb", "lost_aux",
            "points_out", "points_skipped", "bad_camera_info", "frames_colour_only", "dropped_cannot_degrade",
            "aux_invalid",
        )
        self.latency = LatencyWindow()  # colour stamp -> masks published: the camera-to-mask latency
        self.processing = LatencyWindow()  # pair completed -> masks published: this node alone, any clock
        # ... split: waiting for the running inference to finish, then working on this pair (decode -> publish)
        self.waiting, self.working = LatencyWindow(), LatencyWindow()
        self.start = time.monotonic()  # the no-pair watchdog counts from here (reset at activate)
        self.last_pair: float | None = None  # monotonic time of the last pair
        self.last_input_at = 0.0  # monotonic time of the last colour or aux message
        self.other_clock = False  # the newest frame's stamp is far from this node's clock
        self._received_at_pair = (0, 0)  # frames received per stream when the last pair was made
        self._starved_warnings: dict[str, float] = {}  # problem kind -> when it was last warned
        self._at_last_stats: dict[str, int] = {}  # counters at the last report: /diagnostics judges the period

    def pair_made(self, received: tuple[int, int]) -> None:
        self.last_pair = time.monotonic()
        self._starved_warnings.clear()  # a starved spell ends with a pair
        self._received_at_pair = tuple(received)

    def frame_timed(self, latency_s: float, paired_at: float, started: float) -> None:
        """A frame went out: stamp -> publish `latency_s`; paired, worker started on it, now done."""
        self.latency.add(latency_s)
        done = time.monotonic()
        self.processing.add(done - paired_at)
        self.waiting.add(started - paired_at)
        self.working.add(done - started)

    # ---- the watchdog --------------------------------------------------------------------------------

    def starvation(self, pairer, now: float | None = None) -> Starvation | None:
        """A warning is due: no pair for no_pair_timeout, said once per kind of problem per starved spell (and
        again after max(timeout, 60 s))."""
        config = self._config()
        timeout = config["no_pair_timeout"]
        now = time.monotonic() if now is None else now
        since = now - (self.last_pair if self.last_pair is not None else self.start)
        if since < timeout:
            return None
        total_rgb, total_aux = pairer.counts.received
        received = (total_rgb - self._received_at_pair[0], total_aux - self._received_at_pair[1])
        kind, problem = self._starved_how(received, pairer, config)
        last = self._starved_warnings.get(kind)
        if last is not None and now - last < max(timeout, 60.0):
            return None
        self._starved_warnings[kind] = now
        return Starvation(since, problem, received)

    @staticmethod
    def _starved_how(received: tuple[int, int], pairer, config: Mapping) -> tuple[str, str]:
        if all(received):
            oldest_rgb, oldest_aux = pairer.oldest_pending_stamps()
            gap = ""
            if oldest_rgb is not None and oldest_aux is not None:
                gap = f", oldest queued stamps differ by {abs(oldest_rgb - oldest_aux) / 1e9:.3f} s"
            slop = "exact stamps" if config["sync.exact"] else f"slop {config['sync.slop']} s"
            return "never_pair", f"stamps never pair ({slop}{gap})"
        if any(received):
            return ("missing_aux", "missing aux stream") if received[0] else ("missing_rgb", "missing colour stream")
        return "no_input", "no input at all"

    # ---- ~/stats and /diagnostics ---------------------------------------------------------------------

    def stats(self, served, pairing, dropped_stale: int, degraded_how: str | None) -> dict[str, str]:
        """~/stats' values: `served` the model (or None), `pairing` the pairer's counts."""
        p50, p90, p99 = self.latency.percentiles_ms()
        processing = dict(zip(("p50", "p90", "p99"), self.processing.percentiles_ms()))
        count = self.counters
        return {
            "latency_p50_ms": f"{p50:.1f}",
            "latency_p90_ms": f"{p90:.1f}",
            "latency_p99_ms": f"{p99:.1f}",
            **{f"processing_{name}_ms": f"{value:.1f}" for name, value in processing.items()},
            **{f"{part}_{name}_ms": f"{value:.1f}"
               for part, window in (("waiting", self.waiting), ("working", self.working))
               for name, value in zip(("p50", "p90"), window.percentiles_ms())},
            "rate_hz": f"{self.latency.rate_hz(max(self._config()['stats_period'], 1.0)):.2f}",
            "frames_in_rgb": str(pairing.received[0]),
            "frames_in_aux": str(pairing.received[1]),
            "pairs": str(pairing.pairs),
            "dropped_unpaired": str(pairing.dropped_total),
            "dropped_stale": str(dropped_stale),
            "bad_input": str(count["bad_input"]),
            "model": served.method if served else "none",
            "checkpoint": served.path if served else "",
            "frames_out": str(count["frames_out"]),
            "dropped_no_model": str(count["dropped_no_model"]),
            "inference_errors": str(count["inference_errors"]),
            "lost_in_transport_rgb": str(count["lost_rgb"]),
            "lost_in_transport_aux": str(count["lost_aux"]),
            "degraded": degraded_how or "",
            "frames_colour_only": str(count["frames_colour_only"]),
            "dropped_cannot_degrade": str(count["dropped_cannot_degrade"]),
            "aux_invalid": str(count["aux_invalid"]),
            "points_out": str(count["points_out"]),
            "points_skipped": str(count["points_skipped"]),
            "bad_camera_info": str(count["bad_camera_info"]),
            "device": str(served.engine.device) if served else "",
            "backend": served.engine.backend if served else "",
            "precision": served.engine.precision if served else "",
        }

    def _period_counts(self, values: Mapping[str, str]) -> dict[str, int]:
        """How much each counter grew since the last report."""
        now = {key: int(values[key]) for key in PERIOD_COUNTERS}
        grown = {key: value - self._at_last_stats.get(key, 0) for key, value in now.items()}
        self._at_last_stats = now
        return grown

    def judge(self, values: Mapping[str, str], served, idle_reason: str, calibration) -> tuple[str, str]:
        """The level and message of an active node's report: ERROR no model, or no input at all; WARN colour
        alone (degraded), no pairs, frames lost in transport, refused or undecodable, more than the unpaired
        share of the frames unpaired, an enabled output not produced, stamps from another clock; OK otherwise.
        Judged on what happened since the last report, so a WARN clears when it stops. `calibration`: the
        aux/camera_info snapshot (cloud_output.CameraInfoSnapshot)."""
        now, config = time.monotonic(), self._config()
        grown = self._period_counts(values)
        no_input_for = now - max(self.last_input_at, self.start)
        starved = self.last_pair is None or now - self.last_pair > config["no_pair_timeout"]
        if served is None:
            return ERROR, f"idle: {idle_reason}"
        if no_input_for > config["no_pair_timeout"]:
            return ERROR, f"no input on {self._inputs.rgb} nor {self._inputs.aux} for {no_input_for:.1f} s"
        if values["degraded"]:
            return WARN, f"degraded: no aux, masks from colour alone by {values['degraded']}"
        if starved:
            return WARN, "no colour/aux pairs"
        return self._judge_period(grown, values, served, calibration)

    def _judge_period(self, grown: dict[str, int], values, served, calibration) -> tuple[str, str]:
        lost = (grown["lost_in_transport_rgb"], grown["lost_in_transport_aux"])
        if any(lost):
            return WARN, (f"{sum(lost)} frames lost in transport since the last report: "
                          f"{self._inputs.lost_cure(0 if lost[0] else 1)}")
        received = grown["frames_in_rgb"] + grown["frames_in_aux"]
        if received and grown["dropped_unpaired"] > self._unpaired_share * received:
            return WARN, (
                f"{grown['dropped_unpaired']} of {received} frames received since the last report found no partner "
                f"(more than {self._unpaired_share:.0%}): check the stamps against sync.slop and the streams' rates")
        refused = sum(grown[key] for key in ("bad_input", "inference_errors", "dropped_cannot_degrade"))
        if refused:
            return WARN, (f"{refused} frames refused, failed or dropped since the last report "
                          "(see bad_input, inference_errors, dropped_cannot_degrade)")
        silent = self._silent_outputs(grown, served, calibration)
        if silent:
            return WARN, f"serving {values['model']}; not produced: {silent}"
        if self.other_clock:
            return WARN, f"serving {values['model']}; stamps from another clock (latency is no delay)"
        return OK, f"serving {values['model']}"

    def _silent_outputs(self, grown: dict[str, int], served, calibration) -> str:
        """Enabled outputs that produced nothing while masks went out in the last period, and why."""
        if not grown["frames_out"]:
            return ""
        config, silent = self._config(), []
        if config["outputs.points"] and not grown["points_out"]:
            why = ("no camera_info on " + self._inputs.camera_info if calibration.msg is None
                   else f"camera_info refused: {calibration.refusal}" if calibration.camera is None
                   else "no metric depth, or no point passed the points.* filters")
            silent.append(f"~/points ({why})")
        if config["outputs.fused_image"] and served is not None and "fused" not in served.engine.extras:
            silent.append(f"~/fused_image ({served.method!r} makes no fused image)")
        return "; ".join(silent)

    @staticmethod
    def state_report(state: str, idle_reason: str) -> tuple[str, str]:
        """Level and message of /diagnostics outside `active`: why nothing is served."""
        message = STATE_MESSAGES.get(state, "{state}: in a lifecycle transition").format(idle=idle_reason, state=state)
        return (ERROR if state == "finalized" else WARN), message
