"""Hardening of the offline tools (issue 10): what a wrong file, a full disk or a crafted bag now gives."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ros_helpers import domain_id_for
from ros_helpers import build_checkpoint
from rgbd_fusion_seg.core.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, save_checkpoint
from rgbd_fusion_seg.offline.bags import export as export_module
from rgbd_fusion_seg.offline.bags.export import export
from rgbd_fusion_seg.offline.bags.import_ import import_dataset, open_source
from rgbd_fusion_seg.offline.bags.reading import BagError, reading
from rgbd_fusion_seg.offline.bags.writing import BagWriter, OutputNotWrittenError, image_message
from rgbd_fusion_seg.serving.model_serving import inspect_checkpoint

EXPECTED = "expected a .pt file written by `rgbd-fusion-seg train`"


# ---- checkpoints that are not checkpoints -------------------------------------------------------------


def _directory(path):
    path.mkdir()
    (path / "last.pt").write_bytes(b"")


def _truncated(path):
    save_checkpoint(build_checkpoint(), path)
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
    path = save_checkpoint(build_checkpoint(), tmp_path / "model.pt")
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
        save_checkpoint(build_checkpoint(), path)
    before = path.read_bytes() if previous else None
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointWriteError) as error:
        save_checkpoint(build_checkpoint(), path)
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
        save_checkpoint(build_checkpoint(), tmp_path / "last.pt")
    assert not isinstance(error.value, CheckpointWriteError)
    assert list(tmp_path.iterdir()) == []


SAVE_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from ros_helpers import build_checkpoint
from rgbd_fusion_seg.core.checkpoint import CheckpointWriteError, save_checkpoint
save_checkpoint(build_checkpoint(), sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_checkpoint(build_checkpoint(num_classes=5), sys.argv[2])
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
    assert load_checkpoint(path).num_classes == 4  # the first save, whole


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
    assert error.endswith("the previous last.pt is intact, and no temporary file remains\n")
    assert "Traceback" not in error
    assert last.read_bytes() == before
    assert not list(last.parent.glob(".*.tmp"))


# ---- bag export / import: a complete result or nothing ------------------------------------------------


def write_depth_bag(path, frames=6, noisy_from=None, storage="mcap"):
    """`frames` colour (rgb8 /c) + depth (16UC1 /d) pairs, 10 Hz; from frame `noisy_from` on, the images are
    noise (files that compress badly: large), before it constant (small)."""
    rng = np.random.default_rng(0)
    with BagWriter(path, storage) as writer:
        for index in range(frames):
            stamp = 1_000_000_000 + index * 100_000_000
            noisy = noisy_from is not None and index >= noisy_from
            rgb = rng.integers(0, 256, (48, 64, 3), np.uint8) if noisy else np.full((48, 64, 3), index, np.uint8)
            depth = rng.integers(0, 65535, (48, 64), np.uint16) if noisy else np.full((48, 64), 1000, np.uint16)
            writer.write_message("/c", stamp, image_message(rgb, "rgb8", stamp, "cam"))
            writer.write_message("/d", stamp, image_message(depth, "16UC1", stamp, "cam"))
    return path


def failing_on_call(number, function, error_number=errno.ENOSPC):
    """`function`, except that its `number`-th call raises OSError(error_number), as a full disk does."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == number:
            raise OSError(error_number, os.strerror(error_number))
        return function(*args, **kwargs)

    return wrapper


def assert_nothing_left(out):
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert not list(out.parent.glob(f".{out.name}.*")), "staging folder left behind"


def test_export_failing_mid_write_leaves_nothing_and_the_rerun_succeeds(tmp_path, monkeypatch):
    bag, out = write_depth_bag(tmp_path / "in"), tmp_path / "sets" / "exported"
    monkeypatch.setattr(export_module, "write_image", failing_on_call(5, export_module.write_image))  # frame 3's rgb
    with pytest.raises(OutputNotWrittenError) as error:
        export(bag, out, "/c", "/d", "depth", log=lambda *a: None)
    assert str(error.value) == (f"writing export folder {out} failed: no space left on the device; nothing was written "
                                f"to {out} (the partial export folder was removed; run the command again)")
    assert_nothing_left(out)
    monkeypatch.undo()
    assert export(bag, out, "/c", "/d", "depth")["source"]["pairs"] == 6
    assert (out / "all.txt").read_text().split() == [f"{i:06d}" for i in range(6)]


def test_export_refused_mid_bag_leaves_nothing(tmp_path):
    """A bad input found part way (the aux encoding changes) no longer leaves the frames written before it."""
    with BagWriter(tmp_path / "in") as writer:
        for index, encoding in enumerate(["16UC1", "16UC1", "32FC1"]):
            stamp = 1_000_000_000 + index * 100_000_000
            writer.write_message("/c", stamp, image_message(np.zeros((4, 6, 3), np.uint8), "rgb8", stamp, "cam"))
            depth = np.ones((4, 6), np.uint16 if encoding == "16UC1" else np.float32)
            writer.write_message("/d", stamp, image_message(depth, encoding, stamp, "cam"))
    out = tmp_path / "exported"
    with pytest.raises(BagError, match=rf"changes encoding mid-bag \(mm -> m at stamp 1200000000\); a folder data set "
                                       rf"has one aux unit; nothing was written to {re.escape(str(out))} "):
        export(tmp_path / "in", out, "/c", "/d", "depth")
    assert_nothing_left(out)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_import_failing_mid_write_leaves_nothing_and_the_rerun_succeeds(storage, tmp_path, monkeypatch):
    export(write_depth_bag(tmp_path / "in"), tmp_path / "set", "/c", "/d", "depth")
    out = tmp_path / "bag"
    monkeypatch.setattr(BagWriter, "write", failing_on_call(7, BagWriter.write))  # in frame 3 of 6
    with pytest.raises(OutputNotWrittenError) as error:
        import_dataset(open_source(tmp_path / "set"), out, storage)
    assert str(error.value) == (f"writing bag {out} failed: no space left on the device; nothing was written to {out} "
                                "(the partial bag was removed; run the command again)")
    assert_nothing_left(out)
    monkeypatch.undo()
    result = import_dataset(open_source(tmp_path / "set"), out, storage)
    assert result["bag"] == str(out) and result["frames"] == 6
    with reading(out) as reader:
        assert sorted((c.topic, c.msgcount) for c in reader.connections) == [
            ("/camera/color/image_raw", 6), ("/camera/depth/image_raw", 6)]


def test_outputs_are_still_never_overwritten(tmp_path):
    bag = write_depth_bag(tmp_path / "in", frames=2)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(BagError, match=r"export folder .*taken exists already and is not an empty folder"):
        export(bag, tmp_path / "taken", "/c", "/d", "depth")
    export(bag, tmp_path / "set", "/c", "/d", "depth")
    with pytest.raises(BagError, match=r"bag .*taken exists already and is not an empty folder"):
        import_dataset(open_source(tmp_path / "set"), tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
    (tmp_path / "empty").mkdir()  # an empty folder made for the output is fine, as before
    assert export(bag, tmp_path / "empty", "/c", "/d", "depth")["source"]["pairs"] == 2


UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from rgbd_fusion_seg.offline.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.exit(main(sys.argv[2:]))
"""


def under_a_file_size_limit(limit_bytes, *command):
    return subprocess.run([sys.executable, "-c", UNDER_A_FILE_SIZE_LIMIT, str(limit_bytes), *map(str, command)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # fresh interpreters
def test_a_real_write_failure_in_bag_export_and_import(tmp_path):
    """The kernel refuses the writes part way (RLIMIT_FSIZE: EFBIG, as a full disk gives ENOSPC)."""
    bag, exported = write_depth_bag(tmp_path / "in", frames=6, noisy_from=3), tmp_path / "set"
    result = under_a_file_size_limit(4096, "bag", "export", bag, "--rgb-topic", "/c", "--aux-topic", "/d",
                                     "--modality", "depth", "--out", exported)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"rgbd-fusion-seg bag: error: writing export folder {exported} failed: the file exceeds "
                             f"the size limit for this process or file system; nothing was written to {exported} "
                             "(the partial export folder was removed; run the command again)\n")
    assert_nothing_left(exported)
    export(bag, exported, "/c", "/d", "depth")
    for storage in ("mcap", "sqlite3"):
        out = tmp_path / f"bag_{storage}"
        result = under_a_file_size_limit(64 * 1024, "bag", "import", exported, "--out", out, "--storage", storage)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"rgbd-fusion-seg bag: error: writing bag {out} failed: "), result.stderr
        assert result.stderr.rstrip().endswith("(the partial bag was removed; run the command again)")
        assert_nothing_left(out)
        assert import_dataset(open_source(exported), out, storage)["frames"] == 6


# ---- bag play never imports a module a bag names ------------------------------------------------------

PROBE = "h2_import_probe"  # a module that records being imported; a crafted bag names it as a message type


@pytest.fixture
def crafted_bag(tmp_path, monkeypatch):
    """A bag with a std_msgs/String topic and topics whose type strings name the probe module."""
    from rosbags.rosbag2 import Writer

    from rgbd_fusion_seg.offline.bags.reading import typestore

    marker = tmp_path / "imported"
    package = tmp_path / "modules" / PROBE
    (package / "msg").mkdir(parents=True)
    record_import = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (package / "__init__.py").write_text(record_import)
    (package / "msg" / "__init__.py").write_text(record_import + "class Probe: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    store = typestore()
    string = store.types["std_msgs/msg/String"]("hello")
    with Writer(tmp_path / "crafted", version=9) as writer:
        plain = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        writer.write(plain, 1, bytes(store.serialize_cdr(string, "std_msgs/msg/String")))
        for topic, msgtype in (("/probe", f"{PROBE}/msg/Probe"), ("/bare", f"{PROBE}/Probe")):
            crafted = writer.add_connection(topic, msgtype, msgdef="string data", rihs01="RIHS01_" + "0" * 64)
            writer.write(crafted, 2, bytes(store.serialize_cdr(string, "std_msgs/msg/String")))
    return tmp_path / "crafted", marker


def test_play_skips_types_outside_the_ros_message_packages_without_importing_them(crafted_bag):
    from rgbd_fusion_seg.offline.bags.play import PlayOptions, Player
    from rgbd_fusion_seg.offline.node_harness import RosSession, ros_environment

    bag, marker = crafted_bag
    lines = []
    session = RosSession("test_play_crafted", ros_environment(domain_id_for(67)))
    try:
        player = Player(session.node, bag, PlayOptions(), log=lines.append)
        assert [c.topic for c in player.connections] == ["/chatter"]
        player.close()
        with pytest.raises(BagError, match=rf"topic '/probe' in bag .*crafted has type {PROBE}/msg/Probe, which "
                                           r"has no Python message package here \(rclpy cannot publish it\): it is "
                                           r"not a type of ROS 2's own message packages"):
            Player(session.node, bag, PlayOptions(topics=["/probe"]))
    finally:
        session.close()
    why = ("no Python message package for it here: it is not a type of ROS 2's own message packages (std_msgs, "
           "sensor_msgs, geometry_msgs, tf2_msgs and 15 more), and bag play never imports a module a bag names")
    assert lines == [f"skipping /probe ({PROBE}/msg/Probe): {why}", f"skipping /bare ({PROBE}/Probe): {why}"]
    assert PROBE not in sys.modules and not marker.exists(), "bag play imported a module the bag named"


def test_every_playable_package_is_one_the_type_store_defines():
    from rgbd_fusion_seg.offline.bags.play import PLAYABLE_PACKAGES, message_class
    from rgbd_fusion_seg.offline.bags.reading import typestore

    assert PLAYABLE_PACKAGES == {t.split("/")[0] for t in typestore().fielddefs} - {"rmw_dds_common"}
    assert message_class("sensor_msgs/msg/Image")[0].__name__ == "Image"
    assert message_class("sensor_msgs/msg/NoSuchType")[0] is None  # in an allowed package, unknown to the store
