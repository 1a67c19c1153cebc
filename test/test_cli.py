"""`rgbd-fusion-seg`: subcommands, lazy imports, and one-line errors with exit status 2."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from rgbd_fusion_seg.offline.cli import SUBCOMMANDS, main


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "study", "synth", "bench", "demo", "bench-node"):
        assert name in out and name in SUBCOMMANDS


@pytest.mark.parametrize("name", ["train", "evaluate", "study", "synth"])
def test_offline_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert f"rgbd-fusion-seg {name}" in capsys.readouterr().out


@pytest.mark.slow  # fresh interpreters importing each command
def test_offline_commands_do_not_import_ros():
    code = (
        "import sys\n"
        "from rgbd_fusion_seg.offline.cli import main\n"
        "assert 'torch' not in sys.modules, 'the CLI itself should be light'\n"
        "for name in ('train', 'evaluate', 'study', 'synth'):\n"
        "    try:\n"
        "        main([name, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'rclpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_unavailable_subcommand_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(SUBCOMMANDS, "demo", ("rgbd_fusion_seg.ros.not_written_yet", "test"))
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rgbd-fusion-seg demo: error:") and "not_written_yet" in err and "\n" not in err


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.yaml" in err and "Traceback" not in err
    config = tmp_path / "bad.yaml"
    config.write_text("train: {epochs: 2}\n")
    assert main(["train", "--config", str(config), "--set", "train.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "train.bogus" in err and str(config) in err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse usage errors are status 2 as well
        main(["train"])
    assert info.value.code == 2


def test_traceback_flag_shows_the_exception(tmp_path):
    from rgbd_fusion_seg.offline.config import ConfigError

    with pytest.raises(ConfigError):
        main(["--traceback", "train", "--config", str(tmp_path / "missing.yaml")])


def test_user_error_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rgbd_fusion_seg.offline.cli", "train", "--config", str(tmp_path / "x.yaml")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0


def test_evaluate_command_writes_json(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--json", str(out), "--device", "cpu",
                 "--lightings", "RGB3"]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "RGB3" in printed
    result = json.loads(out.read_text())
    assert result["settings"]["lightings"] == ["RGB3"] and len(result["confusion_matrix"]) == 10


def test_train_command_with_overrides(tiny_raw, tmp_path, capsys):
    import yaml

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_raw()))
    out_dir = tmp_path / "cli_run"
    assert main(["train", "--config", str(config), "--set", "train.max_steps=1", "--set", "train.epochs=1",
                 "--out-dir", str(out_dir), "--device", "cpu"]) == 0
    assert f"final checkpoint: {out_dir / 'last.pt'}" in capsys.readouterr().out
