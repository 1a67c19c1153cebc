"""The training engine on its own (train_loop.py): the run's state, the order in which hooks are called,
and a failed checkpoint write reaching the user of `rgbd-fusion-seg train` as one line."""
from __future__ import annotations

import errno

import torch
import yaml

from rgbd_fusion_seg.core import checkpoint as checkpoint_module
from rgbd_fusion_seg.models import build_model
from rgbd_fusion_seg.models.losses import build_seg_loss
from rgbd_fusion_seg.offline import cli, distributed
from rgbd_fusion_seg.offline.config import config_from_dict
from rgbd_fusion_seg.offline.train_loop import HookBase, Trainer, TrainState


def test_train_state_moves_through_epochs_and_resumes_under_the_current_plan():
    state = TrainState(steps_per_epoch=2, total_steps=5)
    assert state.num_epochs == 3
    for _ in range(2):
        state.count_step()
    assert state.epoch_complete and not state.finished
    assert state.record_validation(0.5, 0.6, {"miou": 0.5}) and not state.record_validation(0.4, 0.6, {"miou": 0.4})
    assert not state.record_validation(float("nan"), 0.0, {"miou": float("nan")})
    assert state.best_miou == 0.5 and [h["miou"] for h in state.history][:2] == [0.5, 0.4]
    state.close_epoch()
    assert (state.epoch, state.step_in_epoch, state.global_step) == (1, 0, 2)
    state.close_epoch()  # an epoch with no step done stays where it is
    assert (state.epoch, state.step_in_epoch) == (1, 0)
    saved = state.state_dict()
    assert saved["finished"] is False and saved["total_steps"] == 5

    longer = TrainState(steps_per_epoch=2, total_steps=8)  # train.epochs raised before resuming
    longer.load_state_dict(saved)
    assert (longer.epoch, longer.step_in_epoch, longer.global_step, longer.best_miou) == (1, 0, 2, 0.5)
    assert longer.total_steps == 8 and longer.history == state.history
    assert longer.checkpoint_metrics() == {"epoch": 1, "global_step": 2, "best_val_miou": 0.5}


class RandomFrames(torch.utils.data.Dataset):
    def __init__(self, count: int, num_classes: int):
        generator = torch.Generator().manual_seed(0)
        self.frames = [{"rgb": torch.rand(3, 8, 8, generator=generator), "aux": torch.rand(1, 8, 8, generator=generator),
                        "label": torch.randint(0, num_classes, (8, 8), generator=generator)} for _ in range(count)]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        return self.frames[index]


class Recorder(HookBase):
    def __init__(self):
        self.events = []

    def _note(self, event, trainer):
        state = trainer.state
        self.events.append((event, state.epoch, state.step_in_epoch, state.global_step))

    def before_train(self, trainer):
        self._note("before_train", trainer)

    def before_epoch(self, trainer):
        self._note("before_epoch", trainer)

    def after_step(self, trainer, step):
        assert step.lr == trainer.config.train.lr and step.loss > 0 and "seg" in step.parts
        self._note("after_step", trainer)

    def after_epoch(self, trainer):
        self._note("after_epoch", trainer)

    def at_epoch_boundary(self, trainer):
        self._note("at_epoch_boundary", trainer)

    def after_train(self, trainer):
        self._note("after_train", trainer)


def test_hooks_see_each_step_and_both_sides_of_every_epoch_boundary():
    # 5 frames, batch 2: 2 steps per epoch (the odd frame dropped); max_steps 3 ends the run mid-epoch 1
    config = config_from_dict({"model": {"method": "rgb", "pretrained": False},
                               "train": {"batch_size": 2, "epochs": 4, "max_steps": 3, "lr_schedule": "constant",
                                         "amp": False, "num_workers": 0}})
    model = build_model("rgb", 3, pretrained=False)
    trainer = Trainer(config, distributed.Distributed(), torch.device("cpu"), model=model,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1), seg_loss=build_seg_loss(3),
                      train_set=RandomFrames(5, 3), state=TrainState(steps_per_epoch=2, total_steps=3))
    recorder = Recorder()
    trainer.hooks = [recorder]
    trainer.train()
    assert recorder.events == [
        ("before_train", 0, 0, 0),
        ("before_epoch", 0, 0, 0),
        ("after_step", 0, 1, 1),
        ("after_step", 0, 2, 2),
        ("after_epoch", 0, 2, 2),  # still inside epoch 0: its validation is epoch 0's
        ("at_epoch_boundary", 1, 0, 2),  # last.pt resumes at the start of epoch 1
        ("before_epoch", 1, 0, 2),
        ("after_step", 1, 1, 3),
        ("after_epoch", 1, 1, 3),
        ("at_epoch_boundary", 1, 1, 3),  # finished mid-epoch: the position stays
        ("after_train", 1, 1, 3),
    ]
    assert trainer.state.finished and trainer.state_dict([{}])["finished"]


def test_a_failed_checkpoint_write_ends_train_with_one_line(tiny_raw, tmp_path, monkeypatch, capsys):
    config_path = tmp_path / "exp.yaml"
    config_path.write_text(yaml.safe_dump(tiny_raw(train={"epochs": 1, "max_steps": 1, "save_best": False})))

    def disk_full(obj, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    assert cli.main(["train", "--config", str(config_path), "--device", "cpu"]) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("rgbd-fusion-seg train: error: "), error_lines
    assert "last.pt" in error_lines[0] and "space" in error_lines[0], error_lines
    assert not (tmp_path / "run" / "last.pt").exists() and not list((tmp_path / "run").glob(".*.tmp"))
