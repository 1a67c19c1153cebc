"""`rgbd-fusion-seg export CHECKPOINT --format onnx`: the deploy form as an ONNX file that alone is enough to serve.

    rgbd-fusion-seg export runs/mm5_mid_RGB1/best.pt --format onnx [--out mid.onnx] [--opset 18] [--fixed-size]
                                                                   [--confidence | --logits]

By default the file is the mask graph (`mask`: NxHxW class ids at the camera's size); `--confidence` adds
`confidence` (the softmax probability of each pixel's class), `--logits` writes the graph ending in `logits`
(NxCxHxW) instead. `--out` defaults to the checkpoint's path with .onnx. The export itself, its parity
check, its refusals before any work (`--out` never the checkpoint, an existing file only with `--force`, a
folder that can take the file, an opset the exporter writes) and the atomic write are
rgbd_fusion_seg/core/onnx_export.py's, shared with the node's export into its ONNX cache; here SIGTERM
becomes an exception, so a terminated export leaves nothing either.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rgbd_fusion_seg.core.onnx_export import DEFAULT_OPSET, ExportError, export_onnx
from rgbd_fusion_seg.core.onnx_model import CONFIDENCE_OUTPUT, MASK_OUTPUT, OUTPUT_NAME
from rgbd_fusion_seg.offline.cli import terminate_as_exception

FORMATS = ("onnx",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by `train` (last.pt / best.pt)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="export format (default: onnx)")
    parser.add_argument("--out", help="output file (default: the checkpoint's path with .onnx); never the checkpoint")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {DEFAULT_OPSET} or newer (default: {DEFAULT_OPSET})")
    parser.add_argument("--fixed-size", action="store_true",
                        help="export at the checkpoint's input size only, for a method whose graph depends on "
                             "the size (the default exports any height and width)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--confidence", action="store_true",
                      help="the mask graph also gives `confidence`, the softmax probability of each pixel's class "
                           "(costs a softmax at the input size every frame)")
    kind.add_argument("--logits", action="store_true",
                      help="write the graph ending in the logits (NxCxHxW), upsampled and argmaxed by the engine, "
                           "instead of the mask graph")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    with terminate_as_exception():  # SIGTERM: the atomic writer's temporary file is removed, as on Ctrl-C
        result = export_onnx(args.checkpoint, out, opset=args.opset, fixed_size=args.fixed_size, force=args.force,
                             outputs=graph_kind(args.logits, args.confidence), log=lambda line: print(line, flush=True))
    sizes = "any height and width" if result.dynamic_size else "the checkpoint's input size only"
    parity = ", ".join(f"{shape}: {diff:.1e}" for shape, diff in result.parity.items())
    print(f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, outputs {', '.join(result.outputs)}, "
          f"{sizes}, opset {result.opset}); max |logit difference| to PyTorch: {parity}")
    return 0


def graph_kind(logits: bool = False, confidence: bool = False) -> tuple[str, ...]:
    """The outputs of the graph the CLI's --logits / --confidence ask for."""
    if logits and confidence:
        raise ExportError("--confidence is an output of the mask graph; --logits writes the logits graph instead")
    if logits:
        return (OUTPUT_NAME,)
    return (MASK_OUTPUT, CONFIDENCE_OUTPUT) if confidence else (MASK_OUTPUT,)
