"""Training under torchrun: global batches split between ranks, rank-0-only output, exact resumption, and
validation metrics that agree with a single-process evaluation. The real thing runs 2 Gloo processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from rgbd_fusion_seg.core.checkpoint import load_checkpoint
from rgbd_fusion_seg.offline import distributed
from rgbd_fusion_seg.offline.evaluate import evaluate_checkpoint
from rgbd_fusion_seg.offline.train import EpochBatchSampler


def test_each_rank_gets_its_share_of_every_global_batch():
    single = list(EpochBatchSampler(10, 4, seed=3, epoch=1, start_batch=1))
    shards = [list(EpochBatchSampler(10, 4, seed=3, epoch=1, start_batch=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 1
    assert sorted(shards[0][0] + shards[1][0]) == sorted(single[0]) and len(shards[0][0]) == 2


def test_single_process_is_untouched_and_partial_torchrun_variables_are_refused(monkeypatch):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    context, device = distributed.setup(torch.device("cpu"))
    assert context == distributed.Distributed() and not context.enabled and context.is_main
    tensor = torch.arange(3)
    assert context.all_reduce_sum(tensor) is tensor and context.gather("x") == ["x"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"):
        distributed.setup(torch.device("cpu"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_torchrun(config_path, cwd) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "rgbd_fusion_seg.offline.cli", "train", "--config", str(config_path), "--device", "cpu"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


def kill_tree(root: int) -> None:
    """SIGKILL a process and all its descendants at once, as a lost machine would (torchrun starts its
    workers in sessions of their own, so killing its process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(job: subprocess.Popen) -> str:
    try:
        out, err = job.communicate(timeout=300)
    finally:
        job.kill()
    assert job.returncode == 0, out + err
    return out


@pytest.mark.slow
def test_two_gloo_processes_train_resume_exactly_and_agree_with_single_process_metrics(tiny_raw, tmp_path):
    # 9 training frames, global batch 4 (2 per rank): 2 steps per epoch, 12 in all (so that 11 steps are left
    # to run when the kill comes); augmentation on.
    train_section = {"epochs": 6, "batch_size": 4, "augment": True, "lr_schedule": "constant"}

    def write(name, **train_changes):
        raw = tiny_raw(train={**train_section, **train_changes}, out_dir=str(tmp_path / name))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    # the uninterrupted run, and beside it one killed (torchrun and both workers, SIGKILL) after its first
    # checkpoint, mid-epoch 1
    reference_job = start_torchrun(write("reference"), tmp_path)
    resumed_config = write("resumed", checkpoint_every_steps=1)
    killed = start_torchrun(resumed_config, tmp_path)
    seen, deadline = [], time.monotonic() + 240
    try:
        for line in killed.stdout:
            seen.append(line)
            if "checkpoint last.pt: epoch=0 step_in_epoch=1 " in line:
                kill_tree(killed.pid)
                break
            assert time.monotonic() < deadline, "".join(seen)
    finally:
        kill_tree(killed.pid)
        killed.wait()
    assert killed.returncode == -signal.SIGKILL, "".join(seen)
    reference_out = finish(reference_job)
    assert reference_out.count("checkpoint last.pt: epoch=6 step_in_epoch=0 global_step=12 (finished)") == 1
    assert reference_out.count("finished 12 steps") == 1 and reference_out.count("final checkpoint") == 1
    assert len(list((tmp_path / "reference" / "tensorboard").glob("events.*"))) == 1  # rank 0 logs only

    stopped = load_checkpoint(tmp_path / "resumed" / "last.pt").train_state  # never half written
    assert stopped["world_size"] == 2 and len(stopped["rng_per_rank"]) == 2
    assert 1 <= stopped["global_step"] < 12, stopped["global_step"]  # the kill came before the end
    print(f"killed at global step {stopped['global_step']} of 12")
    resumed_out = finish(start_torchrun(resumed_config, tmp_path))
    assert f"(global step {stopped['global_step']} of 12)" in resumed_out, resumed_out

    reference = load_checkpoint(tmp_path / "reference" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed.train_state["global_step"] == 12
    for key, value in reference.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key

    # validation ran on two shards of the 3 val frames; one process scoring them all finds the same
    single = evaluate_checkpoint(tmp_path / "reference" / "last.pt", device="cpu", resolution="input")
    assert np.sum(single["confusion_matrix"]) == 3 * 32 * 40
    assert single["miou"] == pytest.approx(reference.metrics["val"]["miou"], abs=1e-12)
    assert single["macc"] == pytest.approx(reference.metrics["val"]["macc"], abs=1e-12)
