"""The node's models, without ROS: the one served, the fallback served while the aux camera is missing, their
background loaders, and why nothing is served when nothing is.

Which file a configuration serves is `model_selection.choose_model`; loading it is `model_serving`. This
object asks them, keeps the newest request's result (an older load that finishes late is discarded), swaps a
loaded model in whole (the old one serves until then), and says what happened through `say`.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Mapping

from . import parameters as params
from .model_selection import choose_model, needs_load, runtime_from
from .model_serving import BackgroundLoader, LoadRequest, ServedModel, inspect_checkpoint
from .node_health import ThrottledLog


class RefusedChange(ValueError):
    """A parameter change refused: `subject` is what the log line names as refused, the message the reason."""

    def __init__(self, subject: str, reason: str):
        super().__init__(reason)
        self.subject = subject


class ModelHost:
    """`config()` is the node's current configuration; `served` and `fallback` are read from any thread."""

    def __init__(self, config: Callable[[], Mapping], say: ThrottledLog, idle_reason: str = "no model loaded yet"):
        self._config = config
        self._say = say
        self.served: ServedModel | None = None
        self.fallback: ServedModel | None = None
        self.idle_reason = idle_reason  # why nothing is served ('' while a model is)
        self._lock = threading.Lock()
        self._generation = self._fallback_generation = 0
        self._target: tuple | None = None  # ModelChoice.target last asked for
        self._loader = self._fallback_loader = None
        self._stopped = False  # set by `stop`: late loads are dropped
        self._load_started = 0.0

    def start(self) -> None:
        """Start the loader threads."""
        self._loader = BackgroundLoader(self._on_loaded, self._on_failed)
        self._fallback_loader = BackgroundLoader(self._on_fallback_loaded, self._on_fallback_failed)

    def stop(self) -> None:
        """Drop what is queued and wait for a load in progress (it runs C++ code: torch)."""
        self._stopped = True
        for loader in (self._loader, self._fallback_loader):
            if loader is not None:
                loader.stop(timeout=30.0)

    def go_idle(self, reason: str, level: str = "error") -> None:
        self.idle_reason = reason
        self._say(level, f"{reason}; no model: running idle until the model parameters name one it can serve")

    def start_serving(self, config: Mapping, refused: list[str], stopping: threading.Event | None) -> None:
        """At configure: ask for the start-up model and the fallback; nothing when a stop was asked for while
        torch was imported. `refused`: why model parameters were refused at start (then the node idles)."""
        for reason in refused:
            self.go_idle(reason)
        if not refused:
            try:
                request = self._plan(config, explicit={"checkpoint", "fusion_method"}, startup=True)
            except ValueError as error:  # CheckpointError is a ValueError
                self.go_idle(f"{error}")
            else:
                if stopping is not None and stopping.is_set():
                    return
                self._start_load(request)
        if config["fallback_checkpoint"]:
            try:
                self._request_fallback(config)
            except ValueError as error:
                self._say("error", f"{error}; no fallback while the aux camera is missing")

    def _start_load(self, request: LoadRequest | None) -> None:
        if request is None:
            self.go_idle("no checkpoint given: set the `checkpoint` parameter (or fusion_method with checkpoint_dir) "
                         "to start serving", level="warning")
        else:
            self._request_load(request)

    # ---- parameter changes -----------------------------------------------------------------------------

    def check_change(self, config: Mapping, changes: Mapping) -> LoadRequest | None:
        """Check a change of the parameters (`config` with `changes` applied) for the models: RefusedChange with
        the reason it is refused, else the load it needs (None: none)."""
        request = None
        if changes.keys() & params.MODEL_PARAMETERS:
            try:
                request = self._plan(config, explicit=set(changes))
            except ValueError as error:  # CheckpointError is a ValueError
                raise RefusedChange(", ".join(f"{k}={v!r}" for k, v in changes.items()), str(error)) from None
        if changes.get("fallback_checkpoint"):
            try:
                self._check_fallback(changes["fallback_checkpoint"])
            except ValueError as error:
                raise RefusedChange("fallback_checkpoint", str(error)) from None
        return request

    def apply_change(self, config: Mapping, changes: Mapping, request: LoadRequest | None) -> None:
        """Apply a change `check_change` accepted (the node's configuration is `config` already)."""
        if "fallback_checkpoint" in changes:
            self._request_fallback(config)
        if "aux_range" in changes:
            with self._lock:
                if self.served is not None:
                    self.served = self.served.with_aux_range(config["aux_range"])
        if request is not None:
            self._request_load(request)

    def _plan(self, config: Mapping, explicit: set[str], startup: bool = False) -> LoadRequest | None:
        """Check the model a configuration asks for; a LoadRequest if it must be (re)loaded, else None."""
        choice = choose_model(config, explicit, serving=self.served is not None, startup=startup)
        if choice is None or not needs_load(choice, self._target, explicit):
            return None
        self._generation += 1
        self._target = choice.target
        what = ", ".join(sorted(explicit & params.MODEL_PARAMETERS)) or "start"
        return LoadRequest(self._generation, choice.summary.path, choice.runtime, tuple(config["aux_range"]),
                           reason=what, extras=choice.extras)

    # ---- the served model ------------------------------------------------------------------------------

    def _request_load(self, request: LoadRequest) -> None:
        serving = f"; {self.served.method!r} serves until it is ready" if self.served else ""
        runtime = request.runtime
        backend = runtime.backend_for(request.path) + (" (compiled)" if runtime.compile else "")
        self._say("info", f"loading {request.path} with {backend} on {runtime.device} ({runtime.precision}) in the "
                          f"background [{request.reason}]{serving}")
        self._load_started = time.monotonic()
        if self.served is None:
            self.idle_reason = f"loading {request.path}"
        self._loader.request(request)

    def _on_loaded(self, request: LoadRequest, served: ServedModel) -> None:
        if self._stopped:
            return
        if request.generation != self._generation:
            self._say("info", f"discarding {request.path}: a newer model was asked for while it loaded")
            return
        with self._lock:
            old = self.served
            self.served = served.with_aux_range(self._config()["aux_range"])
            self.idle_reason = ""
        took = time.monotonic() - self._load_started
        replaced = f" (replacing {old.method!r} from {old.path})" if old else ""
        self._say("info", f"serving {self.served.describe()}{replaced}; loaded in {took:.2f} s")
        fallback = self.fallback
        if fallback is not None and fallback.engine.checkpoint.classes != served.engine.checkpoint.classes:
            self._say("error", f"fallback_checkpoint {fallback.path} has other classes than {served.path}: it is not "
                               "used while the aux camera is missing (set a fallback with the same classes)")
        if self._config()["outputs.fused_image"] and "fused" not in served.engine.extras:
            self._say("warning", f"outputs.fused_image is true but method {served.method!r} makes no fused image: "
                                 "~/fused_image stays silent (SC-CoSF, fusion_method sccosf, makes one)")

    def _on_failed(self, request: LoadRequest, error: BaseException) -> None:
        if self._stopped:
            return
        if request.generation == self._generation:
            self._target = None  # allow asking for it again
        keeping = f"keeping {self.served.method!r} from {self.served.path}" if self.served else "staying idle"
        self._say("error", f"could not load {request.path}: {error}; {keeping}")
        if self.served is None:
            self.idle_reason = f"could not load {request.path}: {error}"

    # ---- the fallback ----------------------------------------------------------------------------------

    def _request_fallback(self, config: Mapping) -> None:
        """Check the fallback_checkpoint (ValueError if it cannot serve) and load it in the background."""
        self._fallback_generation += 1
        path = config["fallback_checkpoint"]
        if not path:
            self.fallback = None
            return
        self._check_fallback(path)
        self._say("info", f"loading fallback_checkpoint {path} in the background (served while aux is missing)")
        self._fallback_loader.request(LoadRequest(self._fallback_generation, path, runtime_from(config), (),
                                                  reason="fallback_checkpoint"))

    def _check_fallback(self, path: str) -> None:
        """ValueError with the reason when `path` cannot be the fallback: the node's rules for colour alone, and
        the served model's classes (checked again when either model is loaded)."""
        from ..core.checkpoint import CheckpointError  # imports torch: not at the node's start

        served = self.served
        refusal = inspect_checkpoint(path).fallback_refusal(
            tuple(served.engine.checkpoint.classes) if served is not None else None)
        if refusal:
            raise CheckpointError(refusal)

    def _on_fallback_loaded(self, request: LoadRequest, served: ServedModel) -> None:
        if request.generation != self._fallback_generation or self._stopped:
            return
        main = self.served
        if main is not None and served.engine.checkpoint.classes != main.engine.checkpoint.classes:
            self._say("error", f"fallback_checkpoint {served.path} refused: it has other classes than the served model "
                               f"{main.path}; no fallback while the aux camera is missing")
            return
        self.fallback = served
        self._say("info", f"fallback ready: {served.describe()}")

    def _on_fallback_failed(self, request: LoadRequest, error: BaseException) -> None:
        if request.generation == self._fallback_generation and not self._stopped:
            self._say("error", f"could not load fallback_checkpoint {request.path}: {error}; no fallback")
