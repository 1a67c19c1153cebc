"""Start a node, stream to it, collect what comes back, score it: the pieces the demo, `bag evaluate` and
`bench-node` share.

- processes and sessions: `ros_environment` (traffic kept on this machine), `find_params_file`,
  `NodeProcess` (the real segment_node, or another module, in its own process), `RosSession` (an rclpy
  context of our own, spun on a background thread);
- the run: `wait_until`, `warm_up` (send until the node answers: it loads its model in the background),
  `drain` (until every frame is answered or nothing new comes), `node_failure` (a message with the log);
- messages: `image_msg`, `set_stamp`, `stamp_of` (rclpy and rosbags messages alike), `parse_stats`;
- figures: `percentiles_ms`, `percentiles`, `rate_hz`, `format_number`, `json_ready`.

Nothing here imports rclpy at module level, so the offline tools can import it without ROS.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from rgbd_fusion_seg.serving.parameters import ros_arguments

PACKAGE = "rgbd_fusion_seg"


# ---- processes and sessions ----------------------------------------------------------------------------


def ros_environment(domain_id: int | None = None, base: dict | None = None) -> dict:
    """The environment for our processes: traffic kept on this machine, optional domain id."""
    env = dict(os.environ if base is None else base)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(int(domain_id))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def find_params_file() -> Path | None:
    """config/segment.yaml: installed share folder (colcon) first, else the source tree beside the package."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)) / "config" / "segment.yaml"
        if installed.is_file():
            return installed
    except Exception:  # not installed by colcon, AMENT_PREFIX_PATH unset, or no ament_index_python
        pass
    source = Path(__file__).resolve().parents[2] / "config" / "segment.yaml"
    return source if source.is_file() else None


class NodeProcess:
    """The real segment_node (or another `module`) in a child process:
    `python -m rgbd_fusion_seg.ros.segment_node --ros-args ...`, its output in `log_path`.

    The log is written as it happens (unbuffered, no colour codes), so `wait_for_log` can synchronise on
    it. `stop()` sends SIGINT (rclpy's clean shutdown), then SIGTERM, then SIGKILL; leaving a `with` block
    stops it the same way.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None,
        *,
        params_file: str | os.PathLike | None = None,
        parameters: dict | None = None,
        namespace: str = "",
        remappings: dict | None = None,
        env: dict | None = None,
        log_path: str | os.PathLike | None = None,
        module: str = "rgbd_fusion_seg.ros.segment_node",
        arguments: list[str] | None = None,
    ):
        values = dict(parameters or {})
        if checkpoint is not None:
            values["checkpoint"] = str(checkpoint)
        remaps = {"__ns": namespace} if namespace else {}
        remaps.update(remappings or {})
        command = [sys.executable, "-m", module, *(arguments or []), *ros_arguments(params_file, values, remaps)]
        self.command = command
        self.log_path = Path(log_path) if log_path else None
        self._log_file = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        env = dict(os.environ if env is None else env)
        env.update({"PYTHONUNBUFFERED": "1", "RCUTILS_LOGGING_BUFFERED_STREAM": "0", "RCUTILS_COLORIZED_OUTPUT": "0"})
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """The whole log so far ("" without a log file)."""
        if not self.log_path or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> str:
        """Wait until `pattern` (a regex) occurs `count` times in the log; returns the log. AssertionError,
        with the log, when the process exits first or `timeout` s pass."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if not self.alive():
                raise AssertionError(f"node exited ({self.process.returncode}) before logging {pattern!r}:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the node's log after {timeout} s:\n{text}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int | None:
        """Send `sig` and wait up to `timeout` s, then SIGTERM and SIGKILL (5 s each); the exit status."""
        if self.alive():
            for signal_number, wait in ((sig, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    self.process.send_signal(signal_number)
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
        if self._log_file is not subprocess.DEVNULL:
            self._log_file.close()
        return self.process.poll()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RosSession:
    """An rclpy context of our own with one node spun by a background executor thread."""

    def __init__(self, name: str, env: dict | None = None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE"):
            if env is not None and key in env:
                os.environ[key] = env[key]  # read by rcl when the context is initialised
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name=f"{name}-executor", daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # shutdown while spinning
            pass

    def close(self):
        import rclpy

        try:
            self.executor.shutdown(timeout_sec=2.0)
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.context)
            self._thread.join(timeout=2.0)


# ---- the run -------------------------------------------------------------------------------------------


def wait_until(predicate, timeout: float, interval: float = 0.05, abort=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if abort is not None and abort():
            return False
        time.sleep(interval)
    return predicate()


def node_failure(what: str, node: NodeProcess) -> str:
    """`what` happened, with the node's exit status and the last lines of its log."""
    code = node.process.poll()
    status = f"exit status {code}" if code is not None else "still running"
    return f"{what} ({status}); last lines of {node.log_path}:\n{node.log_tail()}"


def warm_up(send, answered, node: NodeProcess, timeout: float, interval: float = 0.5) -> int:
    """Call `send()` every `interval` s until `answered()`: the node loads its model in the background, and
    its first inference initialises it. Returns the number of sends; RuntimeError if the node exits or
    gives no answer within `timeout` s."""
    deadline, sent = time.monotonic() + timeout, 0
    while not answered():
        if not node.alive():
            raise RuntimeError(node_failure("the node exited during start-up", node))
        if time.monotonic() > deadline:
            raise RuntimeError(node_failure(f"no answer to the warm-up frame within {timeout:.0f} s", node))
        send()
        sent += 1
        wait_until(answered, interval)
    return sent


def drain(answered, expected: int, quiet_s: float, timeout: float | None = None) -> int:
    """Wait until `answered()` reaches `expected`, or has not changed for `quiet_s` s, or `timeout` s have
    passed; returns the last count. The node answers the last frames after the stream ends."""
    started = last_change = time.monotonic()
    last = -1
    while timeout is None or time.monotonic() - started < timeout:
        count = answered()
        if count >= expected:
            return count
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            return count
        time.sleep(0.05)
    return answered()


# ---- messages ------------------------------------------------------------------------------------------


def image_msg(image: np.ndarray, stamp_ns: int = 0, frame_id: str = "camera_optical_frame"):
    """numpy -> sensor_msgs/Image (rgb8 / mono8 / 16UC1 / 32FC1 by dtype and shape), through the node's codec."""
    from std_msgs.msg import Header

    from rgbd_fusion_seg.ros.messages import array_to_msg

    header = Header(frame_id=frame_id)
    msg = array_to_msg(image, header)
    set_stamp(msg, stamp_ns)
    return msg


def set_stamp(msg, stamp_ns: int) -> None:
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)


def stamp_of(msg) -> int:
    """The header stamp in ns, of rclpy and rosbags messages alike."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def parse_stats(msg) -> dict:
    """The node's ~/stats (diagnostic_msgs/DiagnosticStatus) as {key: value}."""
    return {kv.key: kv.value for kv in msg.values}


# ---- figures -------------------------------------------------------------------------------------------


def percentiles_ms(values_s) -> tuple[float, float, float]:
    """p50, p90, p99 in milliseconds of latencies in seconds (NaN for none)."""
    if len(values_s) == 0:
        return (float("nan"),) * 3
    p50, p90, p99 = np.percentile(np.asarray(values_s, np.float64) * 1000.0, [50, 90, 99])
    return float(p50), float(p90), float(p99)


def percentiles(values_s) -> dict:
    """{"p50", "p90", "p99"} in milliseconds of latencies in seconds (NaN for none)."""
    return dict(zip(("p50", "p90", "p99"), percentiles_ms(values_s)))


def rate_hz(times_ns) -> float:
    """Events per second over the span of `times_ns` (NaN for fewer than two, or no span)."""
    if len(times_ns) < 2:
        return float("nan")
    span = (max(times_ns) - min(times_ns)) / 1e9
    return (len(times_ns) - 1) / span if span > 0 else float("nan")


def format_number(value, digits=1) -> str:
    """`value` with `digits` decimals, or "n/a" when it is missing or not finite."""
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def json_ready(value):
    """numpy scalars -> Python, NaN/inf -> None (strict JSON), paths -> str, recursively."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
