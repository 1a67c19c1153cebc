"""What the node does with each frame, without ROS: arrivals -> pairs (or colour alone while the aux camera is
silent) -> the model that serves the frame -> the prediction and every enabled output as arrays.

The node's executor thread calls `arrived` for each colour or aux message and hands the jobs it returns to
the inference worker; the worker decodes the images of a job (the message wrappers are the node's), then calls
`plan`, `process` and, once it has published, `published`. Messages are opaque here: `arrived` takes any
payload and gives it back in a `PairJob`; a `Frame` carries its header unread to the `FrameOutputs`.

Everything is said through `say` (throttled where a stream of bad frames would flood the log) and counted in
the `NodeHealth`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..core.palette import colourise, overlay
from ..core.preprocessing import PreprocessingError
from .cloud_output import CameraInfoState, cloud_options, cloud_points
from .degraded import AuxWatch, ColourOnly, colour_only_server
from .image_codec import DecodedAux
from .model_host import ModelHost
from .model_serving import ServedModel
from .node_health import Inputs, NodeHealth, ThrottledLog
from .pairing import ApproximateTimePairer
from .point_cloud import scaled_calibration

# Beyond this, stamp -> publish is not a processing time: the stamps come from another clock (a bag replayed
# without its clock, a camera without time sync).
CLOCK_GAP_WARNING_S = 60.0


@dataclass(frozen=True)
class PairJob:
    """Work for the inference worker: a colour payload with its aux partner (None: served from colour alone)."""

    colour: Any
    aux: Any | None
    paired_at: float  # monotonic


@dataclass(frozen=True)
class FramePlan:
    """How the worker serves one job, fixed when it takes the job (a model swapped in meanwhile serves the next)."""

    main: ServedModel
    colour_only: bool  # the job has no aux image
    aux_decoding: tuple[str, float] | None  # decode the aux image as (modality, depth_scale); None: leave it
    started: float  # monotonic: the worker took the job


@dataclass(frozen=True)
class Frame:
    """One decoded job: colour HxWx3 uint8 RGB, the aux image as decoded (None when not decoded), the header
    every output carries and the frame of the aux camera (the points are in it)."""

    rgb: np.ndarray
    aux: DecodedAux | None
    header: Any
    aux_frame_id: str


@dataclass(frozen=True)
class Calibration:
    """~/camera_info of a frame: `source` (the aux/camera_info message) at the mask's width x height."""

    source: Any
    width: int
    height: int


@dataclass(frozen=True)
class FrameOutputs:
    """Everything one frame publishes (None: not enabled, or not made for this frame)."""

    header: Any
    served: ServedModel  # the model that made them (the fallback while colour alone)
    colour_only: bool
    mask: np.ndarray
    mask_color: np.ndarray
    overlay: np.ndarray | None = None
    confidence: np.ndarray | None = None
    fused: np.ndarray | None = None
    points: np.ndarray | None = None  # POINT_DTYPE, in `points_frame_id`
    points_frame_id: str = ""
    camera_info: Calibration | None = None


class FramePipeline:
    """Per-frame decisions and outputs. `config()` is the node's current configuration."""

    def __init__(self, config: Callable[[], Mapping], pairer: ApproximateTimePairer, models: ModelHost,
                 health: NodeHealth, inputs: Inputs, say: ThrottledLog):
        self._config = config
        self._pairer = pairer
        self._models = models
        self._health = health
        self._counters = health.counters
        self._inputs = inputs
        self._say = say
        self.aux_watch = AuxWatch()
        self.camera_info = CameraInfoState()
        self.calibration_wanted_since = time.monotonic()  # for camera_info_timeout
        self._frame_id_warned = False
        self._resize_warned: set[tuple[tuple[int, int], tuple[int, int]]] = set()  # (colour, aux) sizes warned of

    # ---- arrivals: pairing, and colour alone while the aux stream is silent ------------------------------

    def arrived(self, stream: int, stamp_ns: int, frame_id: str, payload) -> list[PairJob]:
        """A colour (0) or aux (1) message arrived; the jobs it makes for the worker (none, its pair, or itself
        alone). Colour alone is decided on the aux stream's own silence when the colour frame arrives; a frame
        served alone is not queued, so no late aux frame pairs it for a second mask. One that nothing can serve
        alone is queued: its aux may still come."""
        now = self._health.last_input_at = time.monotonic()
        colour_alone = False
        if stream == 1:
            self.aux_watch.aux_arrived(now)
        else:
            main = self._models.served
            colour_alone = main is not None and self.aux_watch.colour_arrived(now) > self._config()["aux_timeout"]
            if colour_alone and main.uses_aux:
                choice = colour_only_server(main, self._models.fallback)
                if choice.served is None:
                    self._cannot_degrade(choice)
                    colour_alone = False
        pair = self._pairer.add(stream, stamp_ns, (payload, frame_id), pairable=not colour_alone)
        jobs = [PairJob(payload, None, now)] if colour_alone else []
        if pair is not None:
            jobs += self._paired(pair.first, pair.second)
        return jobs

    def _paired(self, colour: tuple[Any, str], aux: tuple[Any, str]) -> list[PairJob]:
        self._health.pair_made(self._pairer.counts.received)
        (colour_payload, colour_frame), (aux_payload, aux_frame) = colour, aux
        if not self._frame_id_warned and colour_frame != aux_frame:
            self._frame_id_warned = True
            self._say("warning", f"frame_ids differ: {self._inputs.rgb} is in {colour_frame!r}, {self._inputs.aux} in "
                                 f"{aux_frame!r}; the images are assumed to be aligned pixel to pixel (outputs carry "
                                 "the colour frame_id). Warned once.")
        if self._models.served is None:
            self._counters.add("dropped_no_model")
            self._say("warning", f"pair dropped: no model is served ({self._models.idle_reason})", "no_model", 10.0)
            return []
        return [PairJob(colour_payload, aux_payload, time.monotonic())]

    def stamps_jumped(self, stream: int, jump_ns: int, dropped: int) -> None:
        """The pairer's `on_stamp_jump`: a stream's stamps went back (its queue was dropped)."""
        topic = (self._inputs.rgb, self._inputs.aux)[stream]
        self._say("warning", f"{topic}: stamps jumped back {jump_ns / 1e9:.3f} s (a driver restart, a bag looping?): "
                             f"dropped the {dropped} frames queued before the jump, which nothing could pair with; "
                             "pairing goes on from the new stamps", f"stamp_jump:{stream}", 10.0)

    def time_jumped_back(self, seconds: float) -> None:
        """ROS time went back (/clock of a bag that loops or restarts): every queued frame is stale."""
        dropped = self._pairer.clear()
        self._say("warning", f"ROS time jumped back {seconds:.3f} s (/clock restarted?): dropped the {dropped} queued "
                             "frames; pairing goes on from the new time")

    def incompatible_qos(self, stream: int, policy: str) -> None:
        """A publisher of an input offers a QoS its subscription cannot take (`policy`: the first that clashes)."""
        topic = (self._inputs.rgb, self._inputs.aux)[stream]
        if self._config()["qos.profile"] == "auto":  # the watchdog subscribes again with what is offered
            self._say("info", f"{topic}: a new publisher's QoS does not fit the subscription: following the "
                              "publishers' QoS (qos.profile auto)")
            return
        self._say("error", f"{topic}: a publisher's QoS is incompatible with ours ({self._inputs.qos_text}); policy "
                           f"{policy}: no messages will arrive from it. qos.profile auto subscribes with what the "
                           "publishers offer.")

    def frames_lost(self, stream: int, total: int, change: int) -> None:
        """The middleware lost `change` more messages of an input (`total` so far)."""
        label = ("rgb", "aux")[stream]
        self._counters.add(f"lost_{label}", int(change))
        self._say("warning", f"{(self._inputs.rgb, self._inputs.aux)[stream]}: {total} messages lost in transport so "
                             f"far: {self._inputs.lost_cure(stream)}", f"lost:{label}", 30.0)

    def camera_info_arrived(self, msg) -> None:
        refusal = self.camera_info.update(msg)
        if refusal:
            self._counters.add("bad_camera_info")
            self._say("error", f"bad camera_info on {self._inputs.camera_info}: {refusal}; no points until a usable "
                               "one arrives (counted in bad_camera_info; masks keep flowing)", "bad_camera_info", 10.0)

    # ---- the worker: one job -------------------------------------------------------------------------

    def plan(self, job: PairJob) -> FramePlan | None:
        """How to serve a job, or None when no model is served (counted)."""
        started = time.monotonic()
        main = self._models.served
        if main is None:
            self._counters.add("dropped_no_model")
            return None
        config = self._config()
        colour_only = job.aux is None
        decode = not colour_only and (main.uses_aux or config["outputs.points"])
        return FramePlan(main, colour_only, (main.modality, config["depth_scale"]) if decode else None, started)

    def bad_input(self, topic: str, reason: str) -> None:
        # logged before counted: whoever has seen the counter move can find the reason in the log
        self._say("error", f"bad input on {topic}: {reason} (frame skipped; counted in bad_input)",
                  f"bad_input:{topic}:{reason.split(':')[0]}")
        self._counters.add("bad_input")

    def process(self, plan: FramePlan, frame: Frame) -> FrameOutputs | None:
        """Serve one frame: its outputs, or None when it is refused or nothing can serve it (said, counted)."""
        main, config, decoded = plan.main, self._config(), frame.aux
        if decoded is not None and main.uses_aux and decoded.unit != main.unit:
            self.bad_input(self._inputs.aux, (
                f"encoding {decoded.encoding!r} decodes to {main.modality} in {decoded.unit!r}, but the checkpoint "
                f"{main.path} expects {main.unit!r}; publish an encoding that decodes to {main.unit!r} or serve a "
                f"checkpoint trained on {decoded.unit!r}"))
            return None
        invalid_aux = decoded is not None and main.uses_aux and not np.isfinite(decoded.image).any()
        if invalid_aux:
            self._counters.add("aux_invalid")
        colour_only = plan.colour_only or invalid_aux
        served = self._server_for_frame(main, colour_only, f"aux on {self._inputs.aux} has no valid reading"
                                        if invalid_aux else "")
        if served is None:
            return None
        aux = decoded.image if decoded is not None and served is main and main.uses_aux and not invalid_aux else None
        try:
            prediction = served.engine.predict(frame.rgb, aux, with_confidence=config["outputs.confidence"])
        except PreprocessingError as error:  # e.g. aux and colour of other aspect ratios: check_aux_size
            self.bad_input(f"{self._inputs.rgb} + {self._inputs.aux}", str(error))
            return None
        if aux is not None and aux.shape != frame.rgb.shape[:2]:
            self._warn_resized_once(frame.rgb.shape[:2], aux.shape)
        depth_m = decoded.image if decoded is not None and decoded.unit == "m" and not invalid_aux else None
        return FrameOutputs(
            frame.header, served, colour_only and main.uses_aux, prediction.mask,
            colourise(prediction.mask, served.palette),
            overlay=(overlay(frame.rgb, prediction.mask, served.palette, config["overlay_alpha"])
                     if config["outputs.overlay"] else None),
            confidence=prediction.confidence if config["outputs.confidence"] else None,
            fused=prediction.fused if config["outputs.fused_image"] else None,
            **self._calibrated(frame, prediction, depth_m, without_depth=colour_only),
        )

    def published(self, outputs: FrameOutputs, latency_s: float, paired_at: float, started: float) -> None:
        """A frame's outputs went out, `latency_s` after its stamp: the windows, the clock check, the counts."""
        self._health.frame_timed(latency_s, paired_at, started)
        other_clock = abs(latency_s) > CLOCK_GAP_WARNING_S
        if other_clock and not self._health.other_clock:
            self._say("warning", f"{self._inputs.rgb} stamps are {latency_s:.0f} s from this node's clock, so the "
                                 "latency in ~/stats is not a processing time; replaying a bag? play it with its "
                                 "clock (`rgbd-fusion-seg bag play --clock`, `ros2 bag play --clock`) and set "
                                 "use_sim_time:=true", "other_clock", 60.0)
        elif self._health.other_clock and not other_clock:
            self._say("info", f"{self._inputs.rgb} stamps agree with this node's clock again")
        self._health.other_clock = other_clock
        self._counters.add("frames_out")
        if outputs.points is not None:
            self._counters.add("points_out")

    def worker_failed(self, error: BaseException) -> None:
        self._counters.add("inference_errors")
        self._say("error", f"inference failed: {type(error).__name__}: {error} (frame skipped)",
                  f"worker:{type(error).__name__}")

    # ---- the degraded-mode policy --------------------------------------------------------------------

    def _server_for_frame(self, main: ServedModel, colour_only: bool, why: str = "") -> ServedModel | None:
        """The model that serves this frame: the main one while fusing (or when it uses no aux at all); while the
        aux camera is missing, what `degraded.colour_only_server` picks, or None (nothing is published; said and
        counted). Flaky aux frames start and end many spells: the lines saying so are throttled and counted."""
        watch = self.aux_watch
        if not colour_only or not main.uses_aux:
            if watch.frame_served(False) == "left":
                self._say("info", f"aux back on {self._inputs.aux}: fusing again with {main.method!r} (colour-only "
                                  f"spells so far: {watch.spells})", "aux_back", 10.0)
            return main
        choice = colour_only_server(main, self._models.fallback)
        if choice.served is None:
            self._cannot_degrade(choice)
            return None
        if watch.frame_served(True, choice.how) == "entered":
            missing = why or f"no aux on {self._inputs.aux} for {watch.silence(time.monotonic()):.1f} s"
            self._say("warning", f"{missing}: degraded, masks from colour alone by {choice.how} until aux returns "
                                 f"(colour-only spells so far: {watch.spells})", f"degraded:{choice.how}", 10.0)
        self._counters.add("frames_colour_only")
        return choice.served

    def _cannot_degrade(self, choice: ColourOnly) -> None:
        self._counters.add("dropped_cannot_degrade")
        self._say("warning", f"no aux on {self._inputs.aux}: {choice.how}; publishing nothing from colour alone until "
                             "aux returns (counted in dropped_cannot_degrade)", "cannot_degrade", 10.0)

    def _warn_resized_once(self, colour_hw: tuple[int, int], aux_hw: tuple[int, int]) -> None:
        if (colour_hw, aux_hw) in self._resize_warned:
            return
        self._resize_warned.add((colour_hw, aux_hw))
        self._say("warning", f"{self._inputs.aux} is {aux_hw[0]}x{aux_hw[1]} and {self._inputs.rgb} {colour_hw[0]}x"
                             f"{colour_hw[1]} (HxW): the aux image is resized (nearest neighbour) to the colour size, "
                             "taken as the same view at another resolution. Warned once for these sizes.")

    # ---- ~/points and ~/camera_info ------------------------------------------------------------------

    def _calibrated(self, frame: Frame, prediction, depth_m: np.ndarray | None, without_depth: bool) -> dict:
        """The points and camera_info fields of a frame's outputs, as far as aux/camera_info allows: a missing
        or refused calibration, or a depth that is not metric, skips them (counted, said) and nothing else.
        `without_depth`: the frame has no aux reading at all (no points, and nothing to say)."""
        config = self._config()
        want_points = config["outputs.points"]
        if want_points and depth_m is None and without_depth:
            self._counters.add("points_skipped")
            want_points = False
        if not (want_points or config["outputs.camera_info"]):
            return {}
        info = self.camera_info.snapshot()
        if info.msg is None or info.camera is None:
            self._no_calibration(info.msg is None, want_points)
            return {}
        try:
            points = self._points(frame, prediction, depth_m, info.camera) if want_points else None
            calibration = None
            if config["outputs.camera_info"]:
                height, width = prediction.mask.shape
                scaled_calibration(info.msg.k, info.msg.p, (info.msg.width, info.msg.height), (width, height))
                calibration = Calibration(info.msg, width, height)
        except ValueError as error:  # a calibration of another aspect than the images
            self._counters.add("bad_camera_info")
            self._say("error", f"camera_info on {self._inputs.camera_info} does not fit the images: {error} (counted "
                               "in bad_camera_info)", "camera_info_size", 10.0)
            return {}
        return {"points": points, "points_frame_id": frame.aux_frame_id, "camera_info": calibration}

    def _no_calibration(self, never_arrived: bool, want_points: bool) -> None:
        waited = time.monotonic() - self.calibration_wanted_since
        if never_arrived and waited >= self._config()["camera_info_timeout"]:
            self._say("warning", f"no camera_info on {self._inputs.camera_info} for {waited:.1f} s: no ~/points or "
                                 "~/camera_info until one arrives (masks keep flowing; remap aux/camera_info to the "
                                 "depth camera's)", "no_camera_info", 30.0)
        self._counters.add("points_skipped", int(want_points))

    def _points(self, frame: Frame, prediction, depth_m: np.ndarray | None, camera) -> np.ndarray | None:
        if depth_m is None:
            self._counters.add("points_skipped")
            self._say("warning", f"outputs.points needs metric depth on {self._inputs.aux}; the served checkpoint's "
                                 f"aux is {self._models.served.modality}: no ~/points", "points_not_depth", 60.0)
            return None
        return cloud_points(depth_m, prediction.mask, frame.rgb, prediction.confidence, camera,
                            cloud_options(self._config()))
