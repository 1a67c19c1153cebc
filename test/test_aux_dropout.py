"""Modality dropout (train.aux_dropout) and evaluation with the aux input missing (evaluate --aux missing)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from rgbd_fusion_seg.core.checkpoint import load_checkpoint, save_checkpoint
from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing, prepare_inputs
from rgbd_fusion_seg.models import build_model
from rgbd_fusion_seg.models.losses import build_seg_loss
from rgbd_fusion_seg.offline import cli, distributed, evaluate
from rgbd_fusion_seg.offline.config import ConfigError, config_from_dict
from rgbd_fusion_seg.offline.evaluate import evaluate_checkpoint
from rgbd_fusion_seg.offline.train import train
from rgbd_fusion_seg.offline.train_loop import Trainer, TrainState, aux_dropout_mask, missing_aux_value

BATCH = 4
SPECS = [Preprocessing(input_size=(16, 20)),  # raw8 [0, 255]
         Preprocessing(input_size=None, aux=AuxNormalisation("depth", "m", 0.5, 2.0)),
         Preprocessing(input_size=(16, 20), aux=AuxNormalisation("thermal", "celsius", -20.0, 60.0))]


def quiet(*_args, **_kwargs):
    pass


@pytest.mark.parametrize("spec", SPECS)
def test_the_missing_value_is_what_preprocessing_makes_of_no_reading_and_of_no_aux(spec):
    rgb = np.zeros((24, 30, 3), np.uint8)
    _, no_reading = prepare_inputs(rgb, np.full((24, 30), np.nan, np.float32), spec)
    _, no_aux = prepare_inputs(rgb, None, spec)  # what the node feeds when the aux camera is absent
    assert np.array_equal(no_reading, np.full_like(no_reading, missing_aux_value(spec)))
    assert np.array_equal(no_aux, no_reading)


def _trainer(p: float, method: str = "early", batch_size: int = BATCH, seed: int = 0) -> Trainer:
    config = config_from_dict({"model": {"method": method, "pretrained": False},
                               "train": {"batch_size": batch_size, "epochs": 1, "amp": False, "num_workers": 0,
                                         "aux_dropout": p, "seed": seed, "lr_schedule": "constant"}})
    model = build_model(method, 3, pretrained=False)
    return Trainer(config, distributed.Distributed(), torch.device("cpu"), model=model,
                   optimizer=torch.optim.SGD(model.parameters(), lr=0.1), seg_loss=build_seg_loss(3),
                   train_set=[], state=TrainState(steps_per_epoch=1, total_steps=100), missing_aux=0.0)


def _aux(count: int = BATCH) -> torch.Tensor:
    return torch.rand(count, 1, 8, 10, generator=torch.Generator().manual_seed(1)) + 0.5  # never 0


def _dropped_at_steps(trainer: Trainer, steps) -> list[list[bool]]:
    dropped = []
    for step in steps:
        trainer.state.global_step = step
        out = trainer.model_aux(_aux())
        dropped.append([bool((sample == 0).all()) for sample in out])
        kept = [i for i, d in enumerate(dropped[-1]) if not d]
        assert torch.equal(out[kept], _aux()[kept])  # the others untouched
    return dropped


def test_p0_leaves_every_batch_unchanged():
    trainer = _trainer(0.0)
    for step in range(20):
        trainer.state.global_step = step
        aux = _aux()
        assert trainer.model_aux(aux) is aux


def test_p1_replaces_every_aux_with_exactly_the_missing_value():
    assert _dropped_at_steps(_trainer(1.0), range(20)) == [[True] * BATCH] * 20


def test_a_fraction_is_dropped_reproducibly_by_seed_and_step():
    steps = range(200)
    dropped = _dropped_at_steps(_trainer(0.3), steps)
    assert dropped == _dropped_at_steps(_trainer(0.3), steps)  # same seed: the same samples
    assert dropped != _dropped_at_steps(_trainer(0.3, seed=1), steps)
    assert len({tuple(d) for d in dropped}) > 4  # not the same samples every step
    share = np.mean(dropped)
    assert 0.25 < share < 0.35, share  # 800 draws: the standard error is 1.6 %
    # a resumed run (a new trainer at a later step) continues the stream: a function of (seed, step) only
    assert _dropped_at_steps(_trainer(0.3), range(150, 200)) == dropped[150:]


def test_the_draw_is_over_the_global_batch_whatever_the_number_of_processes():
    single = aux_dropout_mask(0.5, 0, 7, 6, batch_size=6)
    ranks = [aux_dropout_mask(0.5, 0, 7, 3, batch_size=6, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.stack(ranks, 1).flatten(), single)  # rank r holds items r, r + 2, ...
    # a training set smaller than one batch: the batch holds every item, the draws are the first ones
    assert torch.equal(aux_dropout_mask(0.5, 0, 7, 4, batch_size=6), single[:4])


def test_the_step_feeds_the_dropped_aux_to_the_model_and_keeps_the_batch():
    trainer = _trainer(1.0)
    seen = []
    trainer.forward = lambda rgb, aux: (seen.append(aux.clone()), trainer.model(rgb, aux))[1]
    batch = {"rgb": torch.rand(BATCH, 3, 8, 10), "aux": _aux(), "label": torch.randint(0, 3, (BATCH, 8, 10))}
    trainer.run_step(batch)
    assert torch.equal(seen[0], torch.zeros_like(seen[0]))
    assert torch.equal(batch["aux"], _aux())  # the loss's targets still hold the real aux image


def test_a_method_without_aux_ignores_it():
    trainer = _trainer(1.0, method="rgb")
    aux = _aux()
    assert trainer.aux_dropout == 0.0 and trainer.model_aux(aux) is aux


@pytest.mark.parametrize("bad", [-0.1, 1.5, "often", True])
def test_a_probability_outside_0_1_is_refused_naming_the_field(bad):
    with pytest.raises(ConfigError, match=r"train\.aux_dropout"):
        config_from_dict({"train": {"aux_dropout": bad}}, source="exp.yaml")


def test_the_checkpoint_records_p_and_an_old_one_reads_as_zero(tiny_config, tmp_path):
    last = train(tiny_config(model={"method": "early"}, train={"max_steps": 1, "aux_dropout": 0.5}),
                 device="cpu", log=quiet)
    checkpoint = load_checkpoint(last)
    assert checkpoint.data["aux_dropout"] == 0.5 and checkpoint.aux_dropout == 0.5
    del checkpoint.data["aux_dropout"]  # as written before the field existed
    checkpoint.train_state["config"]["train"].pop("aux_dropout")
    save_checkpoint(checkpoint, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert old.aux_dropout == 0.0
    old.build_model()  # still serves
    # a run started before the field existed resumes when the field is left at its default (0)
    save_checkpoint(checkpoint, last)
    messages = []
    train(tiny_config(model={"method": "early"}, train={"max_steps": 2}), device="cpu", log=messages.append)
    assert any("resuming" in m for m in messages)
    # rgb drops nothing, whatever the config says: the checkpoint records what was applied
    rgb = train(tiny_config(train={"max_steps": 1, "aux_dropout": 0.5}, out_dir=str(tmp_path / "rgb")),
                device="cpu", log=quiet)
    assert load_checkpoint(rgb).aux_dropout == 0.0


@pytest.mark.slow  # four short trainings of early fusion
def test_dropout_changes_training_and_a_resumed_run_equals_an_uninterrupted_one(tiny_config):
    """Early fusion, p = 0.5: stopped after 4 of 6 steps and resumed, bit-identical weights; p = 0 differs."""
    common = {"model": {"method": "early"}, "train": {"epochs": 2, "lr_schedule": "constant", "aux_dropout": 0.5}}
    base = str(tiny_config().out_path)
    reference = train(tiny_config(**common, out_dir=base + "_ref"), device="cpu", log=quiet)
    plain = train(tiny_config(model=common["model"], train={**common["train"], "aux_dropout": 0.0},
                              out_dir=base + "_plain"), device="cpu", log=quiet)
    train(tiny_config(model=common["model"], train={**common["train"], "max_steps": 4}), device="cpu", log=quiet)
    resumed = train(tiny_config(**common), device="cpu", log=quiet)
    a, b, c = (load_checkpoint(path).state_dict for path in (reference, resumed, plain))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)


def _without_readings(mm5_copy):
    """Every D_FocusN image of the copy set to 0: "no reading" at every pixel."""
    for path in (mm5_copy / "D_FocusN").glob("*.png"):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(path), np.zeros_like(image))
    return mm5_copy


def test_evaluating_with_aux_missing_equals_data_with_no_aux_reading(tiny_config, mm5_copy, monkeypatch):
    last = train(tiny_config(model={"method": "early"}, train={"max_steps": 1}), device="cpu", log=quiet)
    fed = []  # the aux input of every pass, as the model received it
    original = evaluate.predicted_logits
    monkeypatch.setattr(evaluate, "predicted_logits", lambda model, rgb, aux, *args: (fed.append(aux.clone()),
                                                                                         original(model, rgb, aux, *args))[1])
    results = {}
    for name, options in {"present": {}, "missing": {"aux": "missing"},
                          "no reading": {"data_root": _without_readings(mm5_copy)}}.items():
        fed.clear()
        results[name] = (evaluate_checkpoint(last, device="cpu", **options), torch.cat(fed))
    (present, present_aux), (missing, missing_aux), (blank, blank_aux) = results.values()
    assert torch.equal(missing_aux, blank_aux) and torch.equal(missing_aux, torch.zeros_like(missing_aux))
    assert not torch.equal(present_aux, missing_aux)  # the real images do reach the model otherwise
    assert missing["confusion_matrix"] == blank["confusion_matrix"]
    assert (present["settings"]["aux"], missing["settings"]["aux"]) == ("present", "missing")
    assert missing["training"]["aux_dropout"] == 0.0
    with pytest.raises(ValueError, match="aux 'absent' is not one of present, missing"):
        evaluate_checkpoint(last, device="cpu", aux="absent")


def test_an_rgb_model_scores_the_same_with_aux_missing_and_the_cli_says_which(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "missing.json"
    assert cli.main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--aux", "missing",
                     "--json", str(out)]) == 0
    assert "aux MISSING" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["settings"]["aux"] == "missing"
    present = evaluate_checkpoint(tiny_checkpoint, device="cpu")
    assert written["confusion_matrix"] == present["confusion_matrix"]
