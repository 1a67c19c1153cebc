"""A checkpoint's deploy form as an ONNX file that alone is enough to serve: `export_onnx`, shared by the
`rgbd-fusion-seg export` command (offline/export.py) and the node's own export into its ONNX cache
(serving/model_serving.py).

The graph takes `rgb` (Nx3xHxW, normalised as the checkpoint's preprocessing does) and `aux` (Nx1xHxW in
[0, 1]), with batch, height and width dynamic, and gives the mask: `mask` (NxHxW class ids at the
input size, uint8, or uint16 beyond 256 classes), the logits upsampled bilinearly and their argmax taken in
the graph (`add_mask_head`), and optionally also `confidence` (NxHxW float32, the softmax probability
of that class). So ONNX Runtime returns a byte a pixel, not C floats, and on CUDA the argmax runs there.
The logits graph ends in `logits` (NxCxHxW) instead. The checkpoint's description
(core/onnx_model.py's docstring lists it) is stored as JSON in the file's metadata, with the graph's kind
(`outputs`). The deploy form has no extra outputs (SC-CoSF's fused image is not exported).

Every export is checked before it is written: ONNX Runtime runs the logits graph at sizes other than the one it
was traced at and its logits must match PyTorch's deploy form within PARITY_TOLERANCE (and a mask graph's masks
must agree with PyTorch's on MASK_AGREEMENT of the pixels), because an exporter
silently freezes any size the model computes in Python (a loop over a sequence length, a branch on a pad
being zero). A method whose graph does not hold at other sizes is refused with that reason; `fixed_size`
exports it at the checkpoint's own input size instead (the engine resizes every image to it anyway).

Before any work, the output path is checked (docs/export.md, "Refusals"): never the checkpoint itself (also
through a link), an existing file only with `force`, a folder that can take a file of the estimated size; and
the opset must be one the exporter writes (`supported_opsets`). The file is written atomically (a temporary
file beside it, renamed), and the graph is built in memory: a failed, interrupted or terminated export leaves
nothing, neither at the output path nor in the temporary folder. The refusals name the command's options
(`--out`, `--opset`, `--fixed-size`): the command is where a person meets them.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import Checkpoint, load_checkpoint, write_failure_cause
from .onnx_model import (CONFIDENCE_OUTPUT, INPUT_NAMES, MASK_OUTPUT, METADATA_KEY, ONNX_FORMAT, OUTPUT_NAME,
                         OUTPUT_SIZE_INPUT, graph_opset, mask_dtype, weights_digest)
from .writable_folder import UnwritableFolderError, check_writable_folder

# torch's dynamo exporter writes opset 18 (its torchlib's) and converts to the opset asked for. Upwards that
# works for every method; downwards onnx's converter has no adapter for Pad 18 -> 17, which every method uses,
# so torch keeps 18 without an error (measured with torch 2.14, onnx 1.23, onnxscript 0.7: 6..17 gave 18,
# 19..28 gave what was asked). The newest is the newest opset the installed onnx knows.
DEFAULT_OPSET = 18
# Odd at every stride-2 level (257, 129, 65, 33, 17, 9, 5, 3) and no multiple of 32: every size-dependent pad
# or crop in the methods (fit_to, pad_to_multiple, SAM2's window padding) is traced in its general form. At a
# "round" size the exporter would keep only the no-pad branch, and other sizes would fail or be wrong. And
# large enough that no traced size is 1 where a camera's is larger (torch.export freezes a 1): SC-CoSF's 1/32
# stage scans 9 x 9 tokens, 3 chunks of the chunked scan (at 129 x 129 it was 25 tokens, one chunk, and the
# graph failed at 480 x 640).
TRACE_SIZE = (257, 257)
# (batch, height, width) checked after export: other sizes than the trace's, odd and even, and batch 2.
CHECK_SHAPES = ((1, 64, 96), (2, 61, 90))
PARITY_TOLERANCE = 1e-4  # max |logit difference|, times max(1, largest |logit|)
# A mask graph's masks against PyTorch's: logits within PARITY_TOLERANCE can still swap the argmax of a pixel
# whose two best classes tie to within it (the tests' bound for every backend).
MASK_AGREEMENT = 0.999
# The exported file's size, estimated before the export: 4 bytes a weight (float32) and room for the graph and the
# metadata (0.25-0.3 MiB beyond the weights for rgb and mid).
ONNX_BYTES_PER_VALUE = 4
ONNX_GRAPH_BYTES = 2**20
# The graphs an export writes, by their outputs: the mask, the mask with its confidence, the logits.
GRAPH_OUTPUTS = ((MASK_OUTPUT,), (MASK_OUTPUT, CONFIDENCE_OUTPUT), (OUTPUT_NAME,))


class ExportError(ValueError):
    """A checkpoint that cannot be exported (the method, and why)."""


@dataclass
class ExportResult:
    path: Path
    parity: dict[str, float]  # "NxHxW" -> max |logit difference| to PyTorch at that shape
    dynamic_size: bool
    opset: int  # the graph's, read from the written model
    outputs: tuple[str, ...]  # the graph's outputs: ("mask",), ("mask", "confidence") or ("logits",)


class _LogitsOnly(nn.Module):
    """The deploy form with a tensor output (exporters take tensors, not SegOutput)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return self.model(rgb, aux).logits


def export_onnx(checkpoint_path: str | os.PathLike, out: str | os.PathLike, opset: int = DEFAULT_OPSET,
                fixed_size: bool = False, force: bool = False,
                outputs: tuple[str, ...] = (MASK_OUTPUT, CONFIDENCE_OUTPUT),
                log: Callable[[str], None] = lambda _line: None) -> ExportResult:
    """Export `checkpoint_path` to `out` (replacing an existing file only with `force`) as the graph giving
    `outputs` (one of GRAPH_OUTPUTS); ExportError (or CheckpointError for the checkpoint) says why not, before
    any work where the reason is known then. `log` gets one line as the trace starts.

    This function's default is the mask graph with the confidence: what the node's own export into its ONNX
    cache needs, since its `outputs.confidence` can be switched on at any time. The command's default is the
    mask alone, the confidence when asked for."""
    outputs = tuple(outputs)
    if outputs not in GRAPH_OUTPUTS:
        raise ExportError(f"outputs {list(outputs)}: a graph gives ['mask'], ['mask', 'confidence'] or ['logits']")
    check_opset(opset)
    path = check_output(checkpoint_path, out, force)
    checkpoint = load_checkpoint(checkpoint_path)
    _check_folder(path, estimated_size(checkpoint))
    size = _trace_size(checkpoint, fixed_size)
    torch.manual_seed(0)  # the example and check inputs
    # without gradients: torch's scan operator (SC-CoSF's scan while exporting) traces no backward graph then
    network = _LogitsOnly(checkpoint.build_model().deploy().eval()).requires_grad_(False)
    log(f"exporting method {checkpoint.method!r} from {checkpoint_path} to {path} (opset {opset}): tracing takes "
        "seconds to minutes")
    graph = _export_graph(network, checkpoint.method, size, opset, fixed_size)
    written = graph_opset(graph)
    if written != opset:  # the converter keeps the exporter's opset when it cannot convert, without an error
        raise ExportError(f"method {checkpoint.method!r} cannot be exported at opset {opset}: the exporter wrote "
                          f"opset {written} (use --opset {written})")
    checks = ((1, *size),) if fixed_size else CHECK_SHAPES
    parity = {"x".join(map(str, shape)): _check_parity(network, graph, shape, checkpoint.method) for shape in checks}
    if outputs != (OUTPUT_NAME,):
        graph = add_mask_head(graph, checkpoint.num_classes, confidence=CONFIDENCE_OUTPUT in outputs)
        for shape in checks:
            _check_masks(network, graph, shape, checkpoint.method)
    description = describe(checkpoint, written, size, dynamic_size=not fixed_size, parity=parity,
                           weights_sha256=weights_digest(graph), outputs=outputs)
    graph.metadata_props.add(key=METADATA_KEY, value=json.dumps(description))
    _write_atomically(graph, path)
    return ExportResult(path, parity, not fixed_size, written, outputs)


def add_mask_head(graph, num_classes: int, confidence: bool = False):
    """A copy of logits graph `graph` whose outputs are `mask` (and with `confidence`, `confidence`): the logits
    upsampled bilinearly to the (height, width) given as the int64 input `output_size` (the camera image's size,
    as the engine's logits path upsamples; Resize, pytorch_half_pixel: F.interpolate's
    align_corners=False), their argmax over the classes as uint8 (uint16 beyond 256 classes), and the softmax
    probability of that class as 1 / sum(exp(logit - max logit)) (ONNX Runtime's Softmax over the channel axis
    of NCHW is 30x slower than these element-wise operators on the CPU). Constants are nodes, not
    initialisers: the weights, and so their digest, are the logits graph's. A graph carrying metadata gets its
    `outputs` updated."""
    import onnx
    from onnx import TensorProto, helper

    mask_type = TensorProto.UINT8 if mask_dtype(num_classes) == np.uint8 else TensorProto.UINT16
    model = onnx.ModelProto()
    model.CopyFrom(graph)
    (logits,) = [output for output in model.graph.output if output.name == OUTPUT_NAME]
    model.graph.value_info.append(logits)  # the class count stays readable (core/onnx_model.py checks it)
    del model.graph.output[:]

    def constant(name: str, values: list[int]):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))

    prefix = "mask_head/"
    nodes = [
        helper.make_node("Shape", [OUTPUT_NAME], [prefix + "batch_classes"], start=0, end=2),
        helper.make_node("Concat", [prefix + "batch_classes", OUTPUT_SIZE_INPUT], [prefix + "sizes"], axis=0),
        helper.make_node("Resize", [OUTPUT_NAME, "", "", prefix + "sizes"], [prefix + "upsampled"], mode="linear",
                         coordinate_transformation_mode="pytorch_half_pixel"),
        helper.make_node("ArgMax", [prefix + "upsampled"], [prefix + "ids"], axis=1, keepdims=0),
        helper.make_node("Cast", [prefix + "ids"], [MASK_OUTPUT], to=mask_type),
    ]
    model.graph.input.append(helper.make_tensor_value_info(OUTPUT_SIZE_INPUT, TensorProto.INT64, [2]))
    batch_height_width = ["N", "OH", "OW"]
    model.graph.output.append(helper.make_tensor_value_info(MASK_OUTPUT, mask_type, batch_height_width))
    if confidence:
        nodes += [
            constant(prefix + "class_axis", [1]),
            helper.make_node("ReduceMax", [prefix + "upsampled", prefix + "class_axis"], [prefix + "best"], keepdims=1),
            helper.make_node("Sub", [prefix + "upsampled", prefix + "best"], [prefix + "shifted"]),
            helper.make_node("Exp", [prefix + "shifted"], [prefix + "exp"]),
            helper.make_node("ReduceSum", [prefix + "exp", prefix + "class_axis"], [prefix + "sum"], keepdims=0),
            helper.make_node("Reciprocal", [prefix + "sum"], [CONFIDENCE_OUTPUT]),
        ]
        model.graph.output.append(helper.make_tensor_value_info(CONFIDENCE_OUTPUT, TensorProto.FLOAT,
                                                                batch_height_width))
    model.graph.node.extend(nodes)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps(json.loads(prop.value) | {"outputs": [o.name for o in model.graph.output]})
    return model


def torch_masks(network: nn.Module, rgb: torch.Tensor, aux: torch.Tensor,
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """What a mask graph computes, by PyTorch: N x size ids and the softmax probability of each."""
    with torch.inference_mode():
        logits = F.interpolate(network(rgb, aux), size=size, mode="bilinear", align_corners=False)
        confidence, mask = torch.softmax(logits, dim=1).max(dim=1)
    return mask.numpy(), confidence.numpy()


def _check_masks(network: nn.Module, graph, shape: tuple[int, int, int], method: str) -> None:
    """ExportError unless the mask graph's masks at `shape` agree with PyTorch's on MASK_AGREEMENT of the pixels."""
    import onnxruntime

    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    batch, height, width = shape
    rgb, aux = torch.randn(batch, 3, height, width), torch.rand(batch, 1, height, width)
    size = (2 * height + 1, 2 * width - 1)  # upsampled to another size, as for a camera image the engine resized
    expected, _ = torch_masks(network, rgb, aux, size)
    mask = session.run([MASK_OUTPUT], {"rgb": rgb.numpy(), "aux": aux.numpy(),
                                       OUTPUT_SIZE_INPUT: np.asarray(size, np.int64)})[0]
    agreement = float(np.mean(mask == expected)) if mask.shape == expected.shape else 0.0
    if agreement < MASK_AGREEMENT:
        raise ExportError(f"method {method!r}: at {height}x{width} the mask graph's masks agree with PyTorch's on "
                          f"{agreement:.2%} of the pixels only (needs {MASK_AGREEMENT:.1%}); export --logits")


def supported_opsets() -> range:
    import onnx

    return range(DEFAULT_OPSET, onnx.defs.onnx_opset_version() + 1)


def check_opset(opset: int) -> None:
    supported = supported_opsets()
    if opset not in supported:
        raise ExportError(f"--opset {opset} is outside {supported[0]}-{supported[-1]}, the opsets the exporter "
                          f"writes here (below {DEFAULT_OPSET} it cannot convert the graphs' Pad operators)")


def check_output(checkpoint_path: str | os.PathLike, out: str | os.PathLike, force: bool) -> Path:
    """`out` as a Path if an export may be written there; else ExportError naming it and why."""
    path = Path(out)
    if path.is_dir():
        raise ExportError(f"--out {path} is a directory: name a file in it, e.g. {path / Path(checkpoint_path).stem}.onnx")
    if path.exists():
        # samefile compares device and inode: the same file also through a symlink or a hard link
        if Path(checkpoint_path).exists() and os.path.samefile(checkpoint_path, path):
            raise ExportError(f"--out {path} is the checkpoint being exported ({checkpoint_path}); writing it would "
                              "destroy the checkpoint: name another file (e.g. one ending in .onnx)")
        if not force:
            raise ExportError(f"--out {path} exists already: pass --force to replace it, or name another file")
    _check_folder(path, 0)
    return path


def estimated_size(checkpoint: Checkpoint) -> int:
    """About the bytes of the exported file: the checkpoint's weights (parameters and buffers) as float32, and
    the graph."""
    values = sum(t.numel() for t in checkpoint.state_dict.values() if isinstance(t, torch.Tensor))
    return ONNX_BYTES_PER_VALUE * values + ONNX_GRAPH_BYTES


def _check_folder(path: Path, need_bytes: int) -> None:
    try:
        check_writable_folder(path.parent, need_bytes)
    except UnwritableFolderError as error:
        raise ExportError(f"cannot write {path}: {error}") from None  # also the node's onnx_cache_dir: no "--out"


def _trace_size(checkpoint: Checkpoint, fixed_size: bool) -> tuple[int, int]:
    if not fixed_size:
        return TRACE_SIZE
    if checkpoint.preprocessing.input_size is None:
        raise ExportError(f"--fixed-size needs a checkpoint with an input size; method {checkpoint.method!r}'s "
                          "checkpoint keeps each image's own size (preprocessing.input_size is null)")
    return tuple(checkpoint.preprocessing.input_size)


def _export_graph(network: nn.Module, method: str, size: tuple[int, int], opset: int, fixed_size: bool):
    """Trace with torch.export (the dynamo exporter): unlike the TorchScript one it keeps nn.MultiheadAttention's
    shapes symbolic (the attention method) and keeps inputs the graph does not read (the rgb method's aux). The
    model is built in memory: no file is written until the checked graph is."""
    dims = {0: torch.export.Dim.DYNAMIC} if fixed_size else {axis: torch.export.Dim.DYNAMIC for axis in (0, 2, 3)}
    example = (torch.randn(2, 3, *size), torch.rand(2, 1, *size))  # batch 2: a traced 1 would be frozen
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
            program = torch.onnx.export(network, example, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                        opset_version=opset, dynamo=True, dynamic_shapes={"rgb": dims, "aux": dims},
                                        verbose=False, report=False)
        return program.model_proto
    except Exception as error:  # torch.export and the converter raise many types
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"method {method!r} cannot be exported to ONNX: {reason}") from error


def _check_parity(network: nn.Module, graph, shape: tuple[int, int, int], method: str) -> float:
    """Max |logit difference| between ONNX Runtime and PyTorch at `shape`; ExportError beyond the tolerance."""
    import onnxruntime

    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    batch, height, width = shape
    rgb, aux = torch.randn(batch, 3, height, width), torch.rand(batch, 1, height, width)
    with torch.inference_mode():
        expected = network(rgb, aux).numpy()
    try:
        (logits,) = session.run([OUTPUT_NAME], {"rgb": rgb.numpy(), "aux": aux.numpy()})
    except Exception as error:  # onnxruntime's own exception types
        reason = str(error).strip().splitlines()[0]
        raise ExportError(f"method {method!r} cannot be exported with dynamic height and width: the graph fails "
                          f"at {height}x{width} ({reason}); try --fixed-size") from None
    difference = float(np.abs(logits - expected).max()) if logits.shape == expected.shape else float("inf")
    if not difference <= PARITY_TOLERANCE * max(1.0, float(np.abs(expected).max())):
        raise ExportError(f"method {method!r} cannot be exported with dynamic height and width: at {height}x{width} "
                          f"its ONNX logits differ from PyTorch's by up to {difference:.2g} (a size computed in "
                          "Python was frozen at trace time); try --fixed-size")
    return difference


def describe(checkpoint: Checkpoint, opset: int, size: tuple[int, int], dynamic_size: bool,
             parity: dict[str, float], weights_sha256: str, outputs: tuple[str, ...]) -> dict:
    """The metadata stored in the file (see core/onnx_model.py): a checkpoint's description, without weights."""
    import onnx

    without_weights = {k: v for k, v in checkpoint.to_dict().items() if k not in ("state_dict", "train_state")}
    return without_weights | {
        "format": ONNX_FORMAT,
        "dynamic_size": dynamic_size,
        "traced_size": list(size),
        "exporter": {"path": "torch.onnx.export(dynamo=True)", "opset": opset, "torch": torch.__version__,
                     "onnx": onnx.__version__},
        "parity": parity,
        "weights_sha256": weights_sha256,
        "outputs": list(outputs),
    }


def _write_atomically(graph, path: Path) -> None:
    """A temporary file beside `path`, flushed to disk, then renamed; on any failure nothing is left, and a
    failed write is an ExportError naming the file and the cause."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(graph.SerializeToString())  # one file: the deploy forms are far below protobuf's 2 GiB
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; the file is an ordinary model file
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise ExportError(f"cannot write {path}: {write_failure_cause(error)}; nothing was written") from error
        raise
