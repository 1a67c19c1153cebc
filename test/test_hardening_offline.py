"""Hardening of the offline tools (issue 10): what a wrong file, a full disk or a crafted bag now gives."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from test_core import make_checkpoint
from rgbd_fusion_seg.core.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, save_checkpoint
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


# ---- a full disk while saving -------------------------------------------------------------------------


def _torch_zip_writer_failing_on(error_number):
    """torch.save as it fails on a full disk: part of the file is written, the handle's write raises
    OSError, and torch's zip writer turns that into a RuntimeError raised while the OSError is handled."""

    def save(obj, handle):
        handle.write(b"PK\x03\x04 part of a checkpoint")
        try:
            raise OSError(error_number, os.strerror(error_number))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    return save


def _torch_path_writer_failing(obj, handle):
    """torch.save's other form of the same failure: its C++ writer reports it, with no Python error under it."""
    handle.write(b"PK\x03\x04 part of a checkpoint")
    raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")


@pytest.mark.parametrize("failing_save, cause", [
    (_torch_zip_writer_failing_on(errno.ENOSPC), "no space left on the device"),
    (_torch_zip_writer_failing_on(errno.EIO), "the write failed: Input/output error"),
    (_torch_path_writer_failing, "the write failed: PytorchStreamWriter failed writing file data/0: file write failed"),
])
@pytest.mark.parametrize("previous", [True, False])
def test_a_failed_save_names_the_file_and_cause_and_keeps_the_previous_checkpoint(failing_save, cause, previous,
                                                                                   tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    if previous:
        save_checkpoint(make_checkpoint(), path)
    before = path.read_bytes() if previous else None
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointWriteError) as error:
        save_checkpoint(make_checkpoint(), path)
    left = "the previous last.pt is intact" if previous else "there was no last.pt before and none is left"
    assert re.fullmatch(rf"cannot save checkpoint {re.escape(str(path))}: {re.escape(cause)} "
                        rf"\(\d+\.\d MiB free in {re.escape(str(tmp_path))}\); {left}, and no temporary file remains",
                        str(error.value)), str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == (["last.pt"] if previous else [])
    if previous:
        assert path.read_bytes() == before


def test_a_save_that_is_not_a_write_failure_keeps_its_traceback(tmp_path, monkeypatch):
    def unpicklable(obj, handle):
        raise RuntimeError("cannot pickle 'generator' object")

    monkeypatch.setattr(torch, "save", unpicklable)
    with pytest.raises(RuntimeError, match="cannot pickle") as error:
        save_checkpoint(make_checkpoint(), tmp_path / "last.pt")
    assert not isinstance(error.value, CheckpointWriteError)
    assert list(tmp_path.iterdir()) == []


SAVE_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from test_core import make_checkpoint
from rgbd_fusion_seg.core.checkpoint import CheckpointWriteError, save_checkpoint
save_checkpoint(make_checkpoint(), sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_checkpoint(make_checkpoint(num_classes=4), sys.argv[2])
except CheckpointWriteError as error:
    print(error)
"""


@pytest.mark.slow  # a fresh interpreter imports torch
def test_a_real_write_failure_under_a_file_size_limit(tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE gives EFBIG, as a full disk gives ENOSPC) inside torch.save."""
    path = tmp_path / "last.pt"
    result = subprocess.run([sys.executable, "-c", SAVE_UNDER_A_SIZE_LIMIT, str(Path(__file__).parent), str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cannot save checkpoint {path}: the file exceeds the size limit"), result.stdout
    assert result.stdout.rstrip().endswith("the previous last.pt is intact, and no temporary file remains")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path).num_classes == 3  # the first save, whole


@pytest.mark.slow  # two short training runs
def test_train_on_a_full_disk_ends_with_one_line_and_the_previous_last_pt(tiny_raw, tmp_path, capsys, monkeypatch):
    import yaml

    from rgbd_fusion_seg.offline.cli import main

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(train={"max_steps": 1, "epochs": 1, "save_best": False})))
    command = ["train", "--config", str(config), "--device", "cpu"]
    assert main(command) == 0
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(torch, "save", _torch_zip_writer_failing_on(errno.ENOSPC))
    assert main(command + ["--no-resume"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"rgbd-fusion-seg train: error: cannot save checkpoint {last}: no space left on the device")
    assert error.endswith("the previous last.pt is intact, and no temporary file remains\n") and "Traceback" not in error
    assert last.read_bytes() == before
    assert not list(last.parent.glob(".*.tmp"))
