"""Stopping a node process (ros/spinning.py): SIGINT or SIGTERM while it publishes as fast as it can, from a
callback and from a thread of its own, exits 0 without a traceback, every time.

With rclpy's own signal handlers the context was shut down from another thread in the middle of such a
publish (`RCLError: Failed to publish: publisher's context is invalid`), which failed the benchmark test at
random; these nodes publish all the time, so a signal always lands inside a publish.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from ros_helpers import REPO, domain_id_for, start_node

DOMAIN = domain_id_for(47)

BUSY_NODE = """
import sys
import threading

from rclpy.node import Node
from sensor_msgs.msg import Image

from rgbd_fusion_seg.ros.spinning import run_until_stopped


class BusyNode(Node):
    def __init__(self):
        super().__init__("busy_node")
        self.publisher = self.create_publisher(Image, "busy", 10)
        self.create_timer(0.001, self.burst)
        self.flooding = True
        self.flood_thread = threading.Thread(target=self.flood)
        self.flood_thread.start()

    def burst(self):  # a callback that publishes for a while, as the naive node's inference callback does
        for _ in range(200):
            self.publisher.publish(Image())

    def flood(self):  # a thread that publishes, as the segment node's inference worker does
        self.publisher.publish(Image())
        print("publishing", flush=True)
        while self.flooding:
            self.publisher.publish(Image())

    def stop_flooding(self):
        self.flooding = False
        self.flood_thread.join()


run_until_stopped(lambda _stopping: BusyNode(), sys.argv, stop_threads=BusyNode.stop_flooding)
"""


def _env():
    return dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN), PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_publishing_from_a_callback_and_a_thread_stops_cleanly(sig):
    process = subprocess.Popen([sys.executable, "-c", BUSY_NODE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=_env(), cwd=REPO)
    try:
        first = process.stdout.readline()
        assert first == "publishing\n", first + process.communicate(timeout=10)[0]
        time.sleep(0.2)  # both publish now: the timer's bursts and the thread's loop
        process.send_signal(sig)
        out = first + process.communicate(timeout=20)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, out
    for sign in ("Traceback", "RCLError", "context is invalid", "Exception"):
        assert sign not in out, out


@pytest.mark.slow
def test_sigint_during_start_up_exits_cleanly(tmp_path):
    """A signal while torch is imported (the node's longest start-up step): the node is built, then stopped."""
    with start_node(tmp_path / "node.log", DOMAIN) as node:
        node.wait_for_log("pairing: queue_size")  # logged just before torch is imported
        assert node.stop(signal.SIGINT, timeout=60) == 0, node.log()
    text = node.log()
    assert "Traceback" not in text and "[ERROR]" not in text, text
