"""Run a node until SIGINT or SIGTERM, then stop it so that nothing can publish after the context is gone.

rclpy's own signal handlers shut the context down at once, from another thread, while the executor may be
inside a callback and worker threads may be publishing: their next publish raises `RCLError: Failed to
publish: publisher's context is invalid` and prints a traceback, at random. Here a signal only sets an
event. The main thread sees it between two callbacks, stops the node's own threads and waits for them,
destroys the node, and only then shuts the context down, so the order is fixed by construction: no
callback is running and no thread is left to publish when the context goes.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, Sequence, TypeVar

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

# How long the executor waits for work before it looks at the stop event again: the stop latency.
STOP_CHECK_PERIOD_S = 0.1

NodeT = TypeVar("NodeT", bound=Node)


def install_stop_handlers() -> threading.Event:
    """SIGINT and SIGTERM set the returned event, nothing else (no KeyboardInterrupt at a random line).

    Installed even where the parent made SIGINT ignored (a shell's `cmd &`), as rclpy's handlers were: a
    node that cannot be stopped with SIGINT hangs whoever stops it that way (launch, test harnesses).
    """
    stop = threading.Event()

    def request_stop(_signum, _frame) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    return stop


def run_until_stopped(make_node: Callable[[threading.Event], NodeT], args: Sequence[str] | None = None,
                      stop_threads: Callable[[NodeT], None] | None = None) -> None:
    """Init rclpy, build the node with `make_node(stop)`, spin it until a signal sets `stop`, then stop it.

    `make_node` may look at `stop` to cut a long start-up short (the node is still built and destroyed).
    `stop_threads(node)` must stop and join every thread of the node that publishes or logs; it runs after
    the last callback and before the node is destroyed.
    """
    stop = install_stop_handlers()
    rclpy.init(args=list(args) if args is not None else None, signal_handler_options=SignalHandlerOptions.NO)
    try:
        if stop.is_set():  # a signal during rclpy.init
            return
        node = make_node(stop)
        executor = SingleThreadedExecutor()
        try:
            executor.add_node(node)
            while not stop.is_set():
                executor.spin_once(timeout_sec=STOP_CHECK_PERIOD_S)
        finally:
            if stop_threads is not None:
                stop_threads(node)
            executor.shutdown()
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
