"""What `rgbd-fusion-seg export` refuses before it works, and how it stops.

Refused at once, with one line naming the path (exit status 2), the checkpoint untouched: an `--out` that
is the checkpoint (also through a symlink or a hard link, also with --force), an existing file without
--force, a directory, a folder that is a file, read-only or too full for the estimated size, an opset
outside the range the exporter writes. `check_writable_folder` (the node checks onnx_cache_dir with it)
on its own. Ctrl-C while torch imports and SIGTERM while exporting end with one line, no traceback, and
nothing left behind (real processes, real signals)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import pytest

from rgbd_fusion_seg.core import onnx_export
from rgbd_fusion_seg.offline.cli import main
from ros_helpers import make_checkpoint

CLI = [sys.executable, "-m", "rgbd_fusion_seg.offline.cli"]
NOBODY = 65534  # the unprivileged user a read-only folder is checked as when the tests run as root
SIGNAL_WAIT_S = 120  # the most a test waits for its marker (torch imports in ~3 s on an idle 2-core VM)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("refusals")
    return make_checkpoint(folder / "rgb.pt", "rgb")


@pytest.fixture
def no_export_work(monkeypatch):
    """Fails the test if the exporter is reached: every refusal here must come before any work."""
    def reached(*_args, **_kwargs):
        raise AssertionError("the refusal came after the export had started")

    monkeypatch.setattr(onnx_export, "_export_graph", reached)


def refused(args: list[str], capsys) -> str:
    """The one-line error of `export` with `args`, which must exit with status 2."""
    assert main(["export", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rgbd-fusion-seg export: error:") and not captured.out, captured
    return lines[0]


def test_out_that_is_the_checkpoint_is_refused_also_through_links(checkpoint, tmp_path, capsys, no_export_work):
    before = checkpoint.read_bytes()
    symlink, hard_link = tmp_path / "link.onnx", tmp_path / "hard.onnx"
    symlink.symlink_to(checkpoint)
    os.link(checkpoint, hard_link)
    for out in (checkpoint, symlink, hard_link):
        for force in ([], ["--force"]):
            error = refused([str(checkpoint), "--out", str(out), *force], capsys)
            assert f"--out {out} is the checkpoint being exported" in error, error
    assert checkpoint.read_bytes() == before and symlink.resolve() == checkpoint


def test_existing_out_is_refused_without_force(checkpoint, tmp_path, capsys, no_export_work):
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"a model the user keeps")
    error = refused([str(checkpoint), "--out", str(existing)], capsys)
    assert f"--out {existing} exists already" in error and "--force" in error
    assert existing.read_bytes() == b"a model the user keeps"


def test_out_folder_is_checked_before_any_work(checkpoint, tmp_path, capsys, no_export_work, monkeypatch):
    assert f"--out {tmp_path} is a directory" in refused([str(checkpoint), "--out", str(tmp_path)], capsys)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder\n")
    error = refused([str(checkpoint), "--out", str(a_file / "sub" / "m.onnx")], capsys)
    assert f"{a_file} is a file, not a folder" in error, error
    # A full disk: the free space this file system reports, made smaller than the estimate (the checkpoint's
    # parameters at 4 bytes each).
    full = namedtuple("usage", "total used free")(2**30, 2**30 - 2**20, 2**20)
    monkeypatch.setattr("rgbd_fusion_seg.core.writable_folder.shutil.disk_usage", lambda _path: full)
    error = refused([str(checkpoint), "--out", str(tmp_path / "m.onnx")], capsys)
    assert f"folder {tmp_path} has 1.0 MiB free" in error and "MiB are needed" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("opset", [7, 17, 99])
def test_an_opset_the_exporter_cannot_write_is_refused_with_the_range(checkpoint, tmp_path, capsys, no_export_work,
                                                                      opset):
    import onnx

    error = refused([str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--opset", str(opset)], capsys)
    assert f"--opset {opset} is outside 18-{onnx.defs.onnx_opset_version()}" in error, error
    assert not any(tmp_path.iterdir())


def test_check_writable_folder_names_what_is_wrong(tmp_path):
    from rgbd_fusion_seg.core.writable_folder import UnwritableFolderError, check_writable_folder

    assert check_writable_folder(tmp_path / "new" / "cache") == tmp_path / "new" / "cache"  # made when written
    a_file = tmp_path / "cache"
    a_file.write_text("")
    with pytest.raises(UnwritableFolderError, match=f"folder {a_file} is a file, not a folder"):
        check_writable_folder(a_file)
    with pytest.raises(UnwritableFolderError, match=f"cannot be created: {a_file} is a file, not a folder"):
        check_writable_folder(a_file / "onnx")
    with pytest.raises(UnwritableFolderError, match=rf"folder {tmp_path} has [0-9.]+ MiB free, and about "):
        check_writable_folder(tmp_path, need_bytes=2**62)


def test_check_writable_folder_refuses_a_read_only_folder(public_folder):
    """Checked as an unprivileged user: root may write into a folder without write permission."""
    read_only = public_folder / "ro"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    code = ("import os, sys\nfrom rgbd_fusion_seg.core.writable_folder import UnwritableFolderError, check_writable_folder\n"
            f"if os.geteuid() == 0:\n    os.setuid({NOBODY})\n"
            "try:\n    check_writable_folder(sys.argv[1])\nexcept UnwritableFolderError as error:\n"
            "    print(error)\nelse:\n    print('accepted')\n")
    done = subprocess.run([sys.executable, "-c", code, str(read_only / "onnx")], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == f"folder {read_only / 'onnx'} cannot be created: {read_only} is not writable by this user", done


@pytest.fixture
def public_folder():
    """A folder the unprivileged user can reach (pytest's own are private to the user running it)."""
    folder = Path(tempfile.mkdtemp(prefix="rgbd_fusion_seg_test_"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def start_export(checkpoint: Path, out: Path, temp: Path) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(temp), PYTHONUNBUFFERED="1")
    with (temp.parent / "stdout.txt").open("w") as log:  # the child writes to its own copy of the handle
        # SIGINT as a terminal leaves it: a test run started in the background (bash ignores SIGINT in
        # asynchronous jobs) would hand its children the ignored disposition, and Ctrl-C would do nothing
        return subprocess.Popen([*CLI, "export", str(checkpoint), "--out", str(out)], stdout=log,
                                stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + SIGNAL_WAIT_S
    while not condition():
        assert process.poll() is None, f"the export ended (status {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {SIGNAL_WAIT_S} s"
        time.sleep(0.02)  # polling for the marker, not a synchronising sleep


def torch_is_loading(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "torch/_C" in maps


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps (Linux)")
def test_ctrl_c_while_torch_imports_exits_quietly(checkpoint, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    process = start_export(checkpoint, tmp_path / "m.onnx", temp)
    wait_for(lambda: torch_is_loading(process.pid), process, "torch's library loading")
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=SIGNAL_WAIT_S)
    assert process.returncode == 130 and err.strip() == "rgbd-fusion-seg export: interrupted", err
    assert not any(temp.iterdir()) and not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # ~10 s: torch's import and the checkpoint's load before the trace starts
def test_sigterm_while_exporting_leaves_nothing(checkpoint, tmp_path):
    temp, out = tmp_path / "tmp", tmp_path / "out" / "m.onnx"
    temp.mkdir()
    out.parent.mkdir()
    process = start_export(checkpoint, out, temp)
    # The line `export` prints as the trace begins, or a temporary folder (an exporter that writes its graph
    # through one, as `export` once did, leaves it behind when SIGTERM ends the process where it stands).
    started = lambda: "exporting" in (tmp_path / "stdout.txt").read_text() or any(temp.iterdir())  # noqa: E731
    wait_for(started, process, "the export's start")
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=SIGNAL_WAIT_S)
    assert process.returncode == 143 and err.strip() == "rgbd-fusion-seg export: terminated", err
    assert not any(temp.iterdir()) and not any(out.parent.iterdir())
