"""Hardening of the offline tools (issue 10): what a wrong file, a full disk or a crafted bag now gives."""
from __future__ import annotations

import zipfile

import pytest
import torch

from test_core import make_checkpoint
from rgbd_fusion_seg.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rgbd_fusion_seg.ros.inference_worker import inspect_checkpoint

EXPECTED = "expected a .pt file written by `rgbd-fusion-seg train`"


# ---- checkpoints that are not checkpoints -------------------------------------------------------------


def _directory(path):
    path.mkdir()
    (path / "last.pt").write_bytes(b"")


def _truncated(path):
    save_checkpoint(make_checkpoint(), path)
    path.write_bytes(path.read_bytes()[:300])


def _foreign_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")


@pytest.mark.parametrize("make, what", [
    # a YAML config given as checkpoint: torch said "pop from empty list"
    (lambda p: p.write_text("base: ../base.yaml\nexperiment: mid\n"), "it is not a zip-format PyTorch checkpoint "
                                                                    "(it starts with text 'base: ../base.yaml')"),
    (_directory, "it is a directory"),  # torch said "does not exist"
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: p.write_bytes(bytes(range(255, 0, -1))), "it is not a zip-format PyTorch checkpoint "
                                                          "(it starts with bytes ff fe fd fc fb fa f9 f8)"),
    (lambda p: torch.save({"a": 1}, p, _use_new_zipfile_serialization=False),
     "it is not a zip-format PyTorch checkpoint (it is a pickle stream, as the legacy torch.save format or "
     "pickle.dump write)"),
    (_truncated, "it is a truncated or damaged zip archive (an interrupted copy?)"),
    (_foreign_zip, "it is a zip archive but not a PyTorch checkpoint (no data.pkl inside)"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(make, what, tmp_path):
    path = tmp_path / "model.pt"
    make(path)
    for read in (load_checkpoint, inspect_checkpoint):
        with pytest.raises(CheckpointError) as error:
            read(path)
        assert str(error.value) == f"checkpoint {path} cannot be read: {what}, {EXPECTED}", read.__name__


def test_a_real_checkpoint_still_loads_and_inspects(tmp_path):
    path = save_checkpoint(make_checkpoint(), tmp_path / "model.pt")
    assert load_checkpoint(path).method == "rgb"
    assert inspect_checkpoint(path).method == "rgb"
