"""Shared fixtures: a tiny generated data set in the true MM5 on-disk layout, the test bags, the optional
external frames, and a `slow` marker.

Every test runs from the repository alone, except those that need frames whose licence keeps them out of
it (the PST900 frames, GPL-3.0): they run when RGBD_FUSION_SEG_REALDATA names a folder holding them, and
otherwise the end of the run lists each of them as NOT RUN.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TINY_MM5 = {"num_frames": 12, "seed": 0, "height": 64, "width": 80, "val_fraction": 0.25}
REALDATA_VARIABLE = "RGBD_FUSION_SEG_REALDATA"
PST900_FRAMES = ("pst900_rgb.png", "pst900_thermal_mono8.png")
NOT_RUN = pytest.StashKey[list]()

# Fast DDS's shared-memory transport: a participant killed mid-write (a node subprocess that a test SIGKILLs)
# can leave a segment in /dev/shm inconsistent, and a process still listening on it may then abort inside Fast
# DDS's receive thread (eProsima/Fast-DDS#6501, ros2/launch_ros#562), which kills the whole test run (a CI run
# aborted so). Loopback UDP shares no such state; every node the tests start inherits this environment.
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an ONNX export, a segment_node in a child process, training to a "
                                       "target, or long otherwise; `make test-fast` leaves these out (docs/development.md)")
    config.stash[NOT_RUN] = []


def pytest_terminal_summary(terminalreporter, config):
    not_run = config.stash.get(NOT_RUN, [])
    if not_run:
        terminalreporter.section("tests NOT RUN: external data missing", yellow=True, bold=True)
        for nodeid, reason in not_run:
            terminalreporter.line(f"NOT RUN: {nodeid}: {reason}")


@pytest.fixture(scope="session")
def bags(tmp_path_factory) -> Path:
    """A folder of test bags, by name: talker_{mcap,sqlite3} and cdr_test_{mcap,sqlite3} (recorded by ROS 2),
    rgbd_indoor and rgbt_layout (built from the real frames in test/data; see recorded_bags.py)."""
    from recorded_bags import build_test_bags

    return build_test_bags(tmp_path_factory.mktemp("bags"))


@pytest.fixture
def pst900_realdata(request) -> Path:
    """The external folder with the PST900 frames; without it the test is skipped and listed as NOT RUN."""
    folder = os.environ.get(REALDATA_VARIABLE)
    missing = [name for name in PST900_FRAMES if not folder or not (Path(folder) / name).is_file()]
    if missing:
        where = (f"{REALDATA_VARIABLE}={folder} lacks {', '.join(missing)}" if folder
                 else f"set {REALDATA_VARIABLE} to a folder holding {', '.join(PST900_FRAMES)}")
        reason = f"needs the real PST900 frames (GPL-3.0, kept out of the repository) ({where})"
        request.config.stash[NOT_RUN].append((request.node.nodeid, reason))
        pytest.skip(f"NOT RUN: {reason}")
    return Path(folder)


@pytest.fixture(scope="session")
def mm5_root(tmp_path_factory) -> Path:
    """12 generated frames at 64x80 (9 train / 3 eval) in MM5's layout: RGB1..RGB8, D16, D_FocusN, T16, T8,
    ANNO_CLASS, classes.txt, list_*_f.txt and *_dataset.csv. Shared by the whole session: do not modify it
    (use `mm5_copy` for a private, writable copy)."""
    from rgbd_fusion_seg.offline.datasets.synth import generate_mm5

    root = tmp_path_factory.mktemp("mm5") / "MM5_SEG"
    generate_mm5(root, **TINY_MM5)
    return root


@pytest.fixture
def mm5_copy(mm5_root, tmp_path) -> Path:
    """A writable copy of the tiny MM5 set, for tests that damage or change files."""
    return Path(shutil.copytree(mm5_root, tmp_path / "MM5_SEG"))


def tiny_experiment(root, run_dir, **sections) -> dict:
    """A raw experiment config for fast CPU runs on the tiny set; `sections` deep-override it."""
    from rgbd_fusion_seg.offline.config import deep_merge

    raw = {
        "experiment": "tiny",
        "model": {"method": "rgb", "pretrained": False, "options": {}},
        "data": {
            "dataset": "mm5",
            "root": str(root),
            "lightings": ["RGB2"],
            "aux_folder": "D_FocusN",
            "label_folder": "ANNO_CLASS",
            "train_split": "train_dataset.csv",
            "val_split": "eval_dataset.csv",
            "input_size": [32, 40],
            "num_classes": None,
        },
        "train": {
            "epochs": 2,
            "batch_size": 3,
            "lr": 1.0e-3,
            "amp": False,
            "num_workers": 0,
            "seed": 0,
            "augment": False,
            "checkpoint_every_steps": None,
        },
        "loss": {"ce": 1.0, "dice": 1.0},
        "out_dir": str(run_dir),
    }
    return deep_merge(raw, sections)


@pytest.fixture
def tiny_raw(mm5_root, tmp_path):
    """Factory: tiny_raw(**sections) -> raw config dict (see tiny_experiment) writing under tmp_path/run."""

    def make(**sections):
        return tiny_experiment(mm5_root, tmp_path / "run", **sections)

    return make


@pytest.fixture
def tiny_config(tiny_raw):
    """Factory: tiny_config(**sections) -> validated ExperimentConfig writing under tmp_path/run."""
    from rgbd_fusion_seg.offline.config import config_from_dict

    def make(**sections):
        return config_from_dict(tiny_raw(**sections), source="tiny")

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(mm5_root, tmp_path_factory) -> Path:
    """last.pt of a 1-epoch `rgb` run on the tiny set (RGB2, 32x40 input). Shared: do not modify its folder."""
    from rgbd_fusion_seg.offline.config import config_from_dict
    from rgbd_fusion_seg.offline.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    config = config_from_dict(tiny_experiment(mm5_root, run_dir, train={"epochs": 1}), source="tiny")
    return train(config, device="cpu", log=lambda message: None)
