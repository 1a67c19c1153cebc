"""`rgbd-fusion-seg bag play|evaluate|export|import`: rosbag2 bags, without the ros2 CLI.

    rgbd-fusion-seg bag play     BAG [--rate 2] [--loop] [--clock] [--decompress] ...
    rgbd-fusion-seg bag evaluate BAG --rgb-topic T --aux-topic T [--label-topic T] [--checkpoint M] --out DIR
    rgbd-fusion-seg bag export   BAG --rgb-topic T --aux-topic T --modality depth|thermal --out DIR
    rgbd-fusion-seg bag import   DATASET --out BAG [--dataset folder|mm5|...] [--split val] [--rate 10]

Each action's module has `add_arguments(parser)` and `run(args)`; they import rclpy and torch only when run.
"""
from __future__ import annotations

import importlib

ACTIONS = {
    "play": ("play", "publish a bag's topics with their recorded timing (rate, offset, loop, /clock, decompress)"),
    "evaluate": ("evaluate", "replay a bag into segment_node; record its outputs; latency, rate, drops, mIoU"),
    "export": ("export", "synchronised colour/aux pairs of a bag -> the generic folder data set layout"),
    "import": ("import_", "a data set split (folder, MM5, MFNet, PST900, FMB) -> a bag with colour, aux and label topics"),
}


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, (module_name, help_text) in ACTIONS.items():
        sub = actions.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"{__package__}.{module_name}")
        module.add_arguments(sub)
        sub.set_defaults(bag_handler=module.run)


def run(args) -> int:
    return int(args.bag_handler(args) or 0)
