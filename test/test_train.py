"""Training: self-describing checkpoints, exact resumption (in process and after SIGKILL), atomic writes,
and bad input stopping before any training time is spent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from rgbd_fusion_seg.core import checkpoint as checkpoint_module
from rgbd_fusion_seg.core.checkpoint import CheckpointError, load_checkpoint
from rgbd_fusion_seg.models.blocks import PretrainedWeightsMissing
from rgbd_fusion_seg.offline.config import ConfigError, config_from_dict
from rgbd_fusion_seg.offline.datasets.imageio import DatasetError
from rgbd_fusion_seg.offline.datasets.mm5 import default_aux_normalisation
from rgbd_fusion_seg.offline.datasets.replicas import write_folder_dataset
from rgbd_fusion_seg.offline.datasets.synth import CLASSES
from rgbd_fusion_seg.offline.train import EpochBatchSampler, epoch_permutation, learning_rate, train

# The tiny set has 9 training frames: batch 3 -> 3 steps per epoch.
STEPS_PER_EPOCH = 3


def quiet(*_args, **_kwargs):
    pass


def test_epoch_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch():
    assert torch.equal(epoch_permutation(10, 0, 3), epoch_permutation(10, 0, 3))
    assert not torch.equal(epoch_permutation(10, 0, 3), epoch_permutation(10, 0, 4))
    assert not torch.equal(epoch_permutation(10, 0, 3), epoch_permutation(10, 1, 3))
    full = list(EpochBatchSampler(10, 3, seed=5, epoch=2))
    assert len(full) == 3 and all(len(b) == 3 for b in full)  # last incomplete batch dropped
    assert list(EpochBatchSampler(10, 3, seed=5, epoch=2, start_batch=2)) == full[2:]
    assert len(EpochBatchSampler(10, 3, seed=5, epoch=2, start_batch=2)) == 1
    assert list(EpochBatchSampler(2, 4, seed=0, epoch=0)) == [epoch_permutation(2, 0, 0).tolist()]


def test_learning_rate_schedules():
    config = config_from_dict({"train": {"lr": 1.0, "warmup_steps": 2, "lr_schedule": "cosine", "min_lr_ratio": 0.1}})
    assert learning_rate(0, 12, config) == pytest.approx(0.5)
    assert learning_rate(1, 12, config) == pytest.approx(1.0)
    assert learning_rate(2, 12, config) == pytest.approx(1.0)
    assert learning_rate(7, 12, config) == pytest.approx(0.1 + 0.9 * 0.5)
    assert learning_rate(12, 12, config) == pytest.approx(0.1)
    constant = config_from_dict({"train": {"lr": 0.3, "lr_schedule": "constant"}})
    assert learning_rate(100, 12, constant) == pytest.approx(0.3)
    poly = config_from_dict({"train": {"lr": 0.01, "lr_schedule": "poly", "poly_power": 0.9}})
    assert learning_rate(0, 10, poly) == pytest.approx(0.01)
    assert learning_rate(4, 10, poly) == pytest.approx(0.01 * 0.6**0.9)
    assert learning_rate(10, 10, poly) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="train.momentum"):
        config_from_dict({"train": {"optimizer": "sgd", "momentum": 1.0}})
    from_a_tenth = config_from_dict({"train": {"lr": 1.0, "warmup_steps": 4, "warmup_start_ratio": 0.1}})
    assert [learning_rate(s, 12, from_a_tenth) for s in range(4)] == pytest.approx([0.325, 0.55, 0.775, 1.0])


def test_no_weight_decay_on_one_dimensional_parameters(tiny_config):
    config = tiny_config(train={"weight_decay": 0.05, "no_decay_1d": True, "max_steps": 1})
    state = load_checkpoint(train(config, device="cpu", log=quiet)).train_state
    decayed, exempt = state["optimizer"]["param_groups"]
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.05, 0.0)
    assert decayed["params"] and exempt["params"]


def test_sgd_takes_the_configured_momentum(tiny_config):
    config = tiny_config(train={"optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "weight_decay": 5e-4,
                                "lr_schedule": "poly", "max_steps": 1})
    state = load_checkpoint(train(config, device="cpu", log=quiet)).train_state
    group = state["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.5 and group["weight_decay"] == 5e-4


def test_training_writes_self_describing_checkpoints(tiny_config, mm5_root):
    config = tiny_config(train={"epochs": 2, "augment": True})
    last = train(config, device="cpu", log=quiet)
    assert last == config.out_path / "last.pt"
    checkpoint = load_checkpoint(last)
    assert checkpoint.method == "rgb" and checkpoint.options == {"pretrained": False}
    assert checkpoint.classes == list(CLASSES) and checkpoint.num_classes == len(CLASSES)
    assert len(checkpoint.palette) == len(CLASSES)
    assert checkpoint.preprocessing.input_size == (32, 40)
    assert checkpoint.preprocessing.aux == default_aux_normalisation("D_FocusN")
    assert checkpoint.data["num_train"] == 9 and checkpoint.data["num_val"] == 3
    assert checkpoint.data["lightings"] == ["RGB2"] and checkpoint.data["root"] == str(mm5_root)
    assert checkpoint.data["val_split"] == "eval_dataset.csv"
    assert 0.0 <= checkpoint.metrics["val"]["miou"] <= 1.0
    state = checkpoint.train_state
    assert state["global_step"] == 2 * STEPS_PER_EPOCH and state["finished"]
    assert state["epoch"] == 2 and state["step_in_epoch"] == 0
    assert {"optimizer", "scaler", "rng", "sampler", "scheduler"} <= set(state)
    assert len(state["history"]) == 2
    best = load_checkpoint(config.out_path / "best.pt")
    assert best.train_state is None and best.metrics["best_val_miou"] == pytest.approx(
        max(h["miou"] for h in state["history"])
    )
    assert any((config.out_path / "tensorboard").iterdir())
    assert (config.out_path / "config.yaml").is_file()
    # the served form rebuilds from the file alone
    model = checkpoint.build_model().eval()
    logits = model(torch.zeros(1, 3, 32, 40), torch.zeros(1, 1, 32, 40)).logits
    assert logits.shape == (1, len(CLASSES), 32, 40)
    # running the same command again does nothing
    messages = []
    assert train(config, device="cpu", log=messages.append) == last
    assert any("already finished" in m for m in messages)


@pytest.mark.slow  # three training runs, one stopped and resumed
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tiny_config):
    """Stopping after 4 of 6 steps (mid-epoch) and resuming gives bit-identical weights."""
    common = {"train": {"epochs": 2, "lr_schedule": "constant", "augment": True}}
    reference = train(tiny_config(**common, out_dir=str(tiny_config().out_path) + "_ref"), device="cpu", log=quiet)
    stopped = tiny_config(train={**common["train"], "max_steps": 4})
    train(stopped, device="cpu", log=quiet)
    state = load_checkpoint(stopped.out_path / "last.pt").train_state
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)
    messages = []
    resumed = train(tiny_config(**common), device="cpu", log=messages.append)
    assert any("resuming" in m and "step 1 of 3" in m for m in messages)
    a, b = load_checkpoint(reference), load_checkpoint(resumed)
    assert b.train_state["global_step"] == a.train_state["global_step"] == 6
    for key, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[key]), key


def test_resume_refuses_a_different_configuration(tiny_config):
    train(tiny_config(train={"max_steps": 1}), device="cpu", log=quiet)
    with pytest.raises(ConfigError, match="different configuration.*train.batch_size"):
        train(tiny_config(train={"batch_size": 2}), device="cpu", log=quiet)
    train(tiny_config(train={"batch_size": 2, "max_steps": 1}), resume=False, device="cpu", log=quiet)


def test_an_interrupted_write_leaves_the_previous_checkpoint(tiny_config, monkeypatch):
    config = tiny_config(train={"epochs": 1, "max_steps": 1})
    train(config, device="cpu", log=quiet)
    last = config.out_path / "last.pt"
    before = last.read_bytes()

    def crash_mid_write(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(train={"epochs": 1, "max_steps": 2}), device="cpu", log=quiet)
    assert last.read_bytes() == before
    assert not list(config.out_path.glob(".*.tmp"))
    assert load_checkpoint(last).train_state["global_step"] == 1


def test_bad_input_stops_before_training(tiny_config, tiny_raw, mm5_copy, tmp_path):
    # a corrupt image in the training split: named, and nothing is written
    (mm5_copy / "RGB2" / "1.png").write_bytes(b"not a png")
    config = config_from_dict(tiny_raw(data={"root": str(mm5_copy)}, out_dir=str(tmp_path / "out1")))
    with pytest.raises(DatasetError, match=r"RGB2.1\.png"):
        train(config, device="cpu", log=quiet)
    assert not (tmp_path / "out1").exists()
    # a missing data root
    config = config_from_dict(tiny_raw(data={"root": str(tmp_path / "nowhere")}, out_dir=str(tmp_path / "out2")))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(config, device="cpu", log=quiet)
    # a split file that does not exist
    with pytest.raises(DatasetError, match="missing.csv"):
        train(tiny_config(data={"train_split": "missing.csv"}), device="cpu", log=quiet)
    # more classes in the labels than data.num_classes allows
    with pytest.raises(DatasetError, match="num_classes"):
        train(tiny_config(data={"num_classes": 4}), device="cpu", log=quiet)


def test_missing_pretrained_weights_say_where_to_put_them(tiny_config, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(PretrainedWeightsMissing, match="torch_home"):
        train(tiny_config(model={"pretrained": True}), device="cpu", log=quiet)
    assert not tiny_config().out_path.exists()


def test_log_frequency_class_weights_and_ohem_train(tiny_config):
    config = tiny_config(train={"epochs": 1, "max_steps": 1},
                         loss={"class_weights": "log_frequency", "ohem": {"threshold": 0.7}})
    assert load_checkpoint(train(config, device="cpu", log=quiet)).train_state["global_step"] == 1


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_finishes(tiny_raw, tmp_path):
    """The real thing: `rgbd-fusion-seg train` killed with SIGKILL after a mid-epoch checkpoint, rerun with
    the same command, finishes with the full step count; last.pt stays loadable throughout."""
    raw = tiny_raw(train={"epochs": 2, "checkpoint_every_steps": 1, "augment": True})
    config_path = tmp_path / "exp.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "rgbd_fusion_seg.offline.cli", "train", "--config", str(config_path),
               "--device", "cpu"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    seen = []
    try:
        deadline = time.monotonic() + 120
        for line in child.stdout:
            seen.append(line)
            if "checkpoint last.pt: epoch=0 step_in_epoch=1 " in line:
                child.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(seen)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, "".join(seen)
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last).train_state  # never a half-written file
    assert state["epoch"] == 0 and 1 <= state["step_in_epoch"] < STEPS_PER_EPOCH
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming from {last} at epoch 1, step {state['step_in_epoch']} of 3" in rerun.stdout
    final = load_checkpoint(last).train_state
    assert final["finished"] and final["global_step"] == 2 * STEPS_PER_EPOCH
    assert not [p for p in os.listdir(last.parent) if p.endswith(".tmp")]


def test_slimmed_checkpoint_serves_but_cannot_be_extended(tiny_config):
    from rgbd_fusion_seg.offline.train import slim_checkpoint

    config = tiny_config(train={"epochs": 1, "max_steps": 1})
    last = train(config, device="cpu", log=quiet)
    full_size = last.stat().st_size
    slim_checkpoint(last)
    assert last.stat().st_size < full_size / 2
    slim = load_checkpoint(last)
    assert slim.train_state["slimmed"] and slim.train_state["global_step"] == 1
    slim.build_model()
    assert train(config, device="cpu", log=quiet) == last  # finished: nothing to do
    with pytest.raises(CheckpointError, match="--no-resume"):
        train(tiny_config(train={"epochs": 1, "max_steps": 2}), device="cpu", log=quiet)


def test_folder_layout_with_auto_aux_records_what_the_node_needs(tiny_config, tmp_path):
    # dataset.yaml alone says "thermal, raw16": the checkpoint must carry modality, unit and range
    root = tmp_path / "own_data"
    write_folder_dataset(root, modality="thermal", aux_unit="raw16", num_frames=4, height=16, width=20)
    config = tiny_config(data={"dataset": "folder", "root": str(root), "aux_folder": "auto", "label_folder": None,
                               "train_split": "train", "val_split": "val", "input_size": [16, 20],
                               "aux_range": [100.0, 40000.0]},
                         train={"epochs": 1})
    checkpoint = load_checkpoint(train(config, device="cpu", log=quiet))
    aux = checkpoint.preprocessing.aux
    assert (aux.modality, aux.unit, aux.low, aux.high) == ("thermal", "raw16", 100.0, 40000.0)
    assert checkpoint.data["dataset"] == "folder" and checkpoint.data["aux_folder"] == "auto"
    assert checkpoint.classes == list(CLASSES)
