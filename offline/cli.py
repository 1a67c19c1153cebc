"""`rgbd-fusion-seg`: one command line for the offline tools and the ROS demos.

    rgbd-fusion-seg train      --config config/experiments/mm5/mid/mid_RGB1.yaml [--set train.epochs=2]
    rgbd-fusion-seg evaluate   --checkpoint runs/mm5_mid_RGB1/last.pt [--json result.json]
    rgbd-fusion-seg study      --config config/experiments/mm5_synth_study.yaml
    rgbd-fusion-seg synth | bench | demo | bench-node   (see `rgbd-fusion-seg COMMAND --help`)

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`. Only
the chosen subcommand's module is imported, so the offline commands never import rclpy (and the ROS
ones do not pay for what they do not use); every subcommand is listed in `--help` all the same.

Errors the user caused (a bad config field, a missing file, a checkpoint that does not fit) end with
one line on stderr and exit status 2; `--traceback` (or RGBD_FUSION_SEG_TRACEBACK=1) shows the full
traceback instead. Ctrl-C, also while a subcommand's module imports (torch takes seconds), ends with one
line and status 130; a subcommand with files to clean up turns SIGTERM into an exception
(`terminate_as_exception`), which ends with one line and status 143.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys

PROG = "rgbd-fusion-seg"

# name -> (module, one-line help). Modules are imported only when their subcommand is chosen.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rgbd_fusion_seg.offline.train", "train one experiment from a YAML config (resumes from last.pt)"),
    "evaluate": ("rgbd_fusion_seg.offline.evaluate", "score a checkpoint: mIoU, mAcc, per-class IoU, confusion matrix"),
    "study": ("rgbd_fusion_seg.offline.study", "the MM5 lighting study: methods x lightings -> table and figures"),
    "synth": ("rgbd_fusion_seg.offline.datasets.synth", "generate a synthetic data set in the MM5 on-disk layout"),
    "bench": ("rgbd_fusion_seg.offline.model_benchmark", "measure inference latency and throughput of the methods"),
    "demo": ("rgbd_fusion_seg.offline.demo", "run the node on a generated RGB-D stream over ROS 2 topics"),
    "bench-node": ("rgbd_fusion_seg.offline.node_benchmark", "measure the node's end-to-end latency over ROS 2 topics"),
    "export": ("rgbd_fusion_seg.offline.export", "export a checkpoint's deploy form to ONNX, self-describing, to serve"),
    "bag": ("rgbd_fusion_seg.offline.bags.cli", "rosbag2 bags: play, evaluate the node on a bag, export/import data sets"),
    "gpu-report": ("rgbd_fusion_seg.offline.gpu_report", "measure every GPU figure (serving, node, scans, training) "
                   "in one run: markdown + JSON"),
}

# Exceptions that mean "the input was wrong", reported in one line: ConfigError, CheckpointError,
# DatasetError, UnknownMethodError, PreprocessingError are ValueErrors; missing files are OSErrors.
USER_ERRORS = (ValueError, OSError)


class SubcommandUnavailable(RuntimeError):
    pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was (see `terminate_as_exception`)."""

    signum = signal.SIGTERM  # read by attribute: under `python -m`, this module is loaded twice, two classes


@contextlib.contextmanager
def terminate_as_exception():
    """SIGTERM raises Terminated while inside, so `finally` blocks and context managers clean up as for Ctrl-C
    (its default action ends the process where it stands, leaving temporary files behind)."""
    def raise_terminated(_signum, _frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _chosen_subcommand(argv: list[str]) -> str | None:
    for token in argv:
        if token == "--":
            return None
        if token.startswith("-"):
            continue
        return token if token in SUBCOMMANDS else None
    return None


def _import_subcommand(name: str):
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise SubcommandUnavailable(f"this installation has no {module_name} (the '{name}' command is not available)")
        raise SubcommandUnavailable(
            f"the '{name}' command needs the Python module '{missing}', which is not installed ({error})"
        ) from None
    for attribute in ("add_arguments", "run"):
        if not callable(getattr(module, attribute, None)):
            raise SubcommandUnavailable(f"{module_name} has no {attribute}() (the '{name}' command is incomplete)")
    return module


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only the `chosen` subcommand's module is imported to add its arguments."""
    from rgbd_fusion_seg import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="RGB-X fusion semantic segmentation: offline training, evaluation, study and ROS 2 demos.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true", help="on an error, show the full Python traceback")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = _import_subcommand(name)
            module.add_arguments(subparser)
            subparser.set_defaults(handler=module.run)
    return parser


def _error(command: str | None, message: str) -> int:
    where = f"{PROG} {command}" if command else PROG
    one_line = " ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())
    print(f"{where}: error: {one_line}", file=sys.stderr)
    return 2


def _stopped(command: str | None, interruption: KeyboardInterrupt) -> int:
    """One line and the shell's status for a process ended by the signal: 130 for Ctrl-C, 143 for SIGTERM."""
    signum = getattr(interruption, "signum", signal.SIGINT)
    where = f"{PROG} {command}" if command else PROG
    print(f"{where}: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen_subcommand(argv)
    want_traceback = os.environ.get("RGBD_FUSION_SEG_TRACEBACK", "") not in ("", "0") or (
        "--traceback" in argv[: argv.index(chosen)] if chosen else False
    )
    try:
        parser = build_parser(chosen)
    except SubcommandUnavailable as error:
        if want_traceback:
            raise
        return _error(chosen, str(error))
    except KeyboardInterrupt as interruption:
        return _stopped(chosen, interruption)
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits with status 2
    want_traceback = want_traceback or args.traceback
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt as interruption:
        return _stopped(args.command, interruption)
    except USER_ERRORS as error:
        if want_traceback:
            raise
        message = str(error)
        if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
            message = f"{message}: {error.filename}"
        return _error(args.command, message or repr(error))


if __name__ == "__main__":
    sys.exit(main())
