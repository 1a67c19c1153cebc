"""Serving an exported `.onnx` file (`rgbd-fusion-seg export`) through ONNX Runtime.

The file alone is enough: besides the deploy-form graph (inputs `rgb` Nx3xHxW normalised, `aux` Nx1xHxW in
[0, 1], output `logits` NxCxHxW) it holds the checkpoint's description as JSON in its metadata under
`METADATA_KEY`:

    format         ONNX_FORMAT
    model          {"method", "options", "num_classes", "architecture"}   as in a checkpoint
    classes, palette, preprocessing, data, metrics                         as in a checkpoint
    dynamic_size   true: any height and width; false: only `traced_size` (exported with --fixed-size)
    traced_size    [height, width] the graph was traced at
    exporter       {"torch", "onnx", "opset", "path"}                      what wrote the graph
    parity         {"HxW": max |logit difference| to PyTorch's deploy form}  measured at export
    weights_sha256 `weights_digest` of the graph as written

A file is served only when its graph is the one described: its `logits` output has the metadata's number of
classes, and its weights' digest is the recorded one (else OnnxModelError with what differs). A file without
a digest (exported before digests were recorded) is refused too: nothing says its weights are intact, and
re-exporting it takes one command.

`OnnxRuntimeModel` has the torch model's call interface (`model(rgb, aux) -> SegOutput`, CPU tensors), so
the engine serves it with its own pre- and post-processing. onnx and onnxruntime are imported only here,
and only when a file is read: serving a `.pt` checkpoint never needs them.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ..models.base import SegOutput
from .checkpoint import Checkpoint, CheckpointError
from .preprocessing import Preprocessing

METADATA_KEY = "rgbd_fusion_seg"
ONNX_FORMAT = "rgbd_fusion_seg/onnx/1"
INPUT_NAMES = ("rgb", "aux")
OUTPUT_NAME = "logits"


class OnnxModelError(CheckpointError):
    """An .onnx file that is missing, not ONNX, not written by `rgbd-fusion-seg export`, or cannot run here (a
    CheckpointError, so whoever handles a bad checkpoint handles a bad exported file alike)."""


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise OnnxModelError(f"serving or exporting ONNX needs the Python package '{module}', which is not "
                             f"installed ({error}); install it (requirements.txt lists it)") from None


def read_onnx_description(path: str | os.PathLike) -> dict:
    """The description stored in exported file `path` (see the module docstring), checked for its fields."""
    path = Path(path)
    if not path.exists():
        raise OnnxModelError(f"ONNX file {path} does not exist")
    if not path.is_file():
        raise OnnxModelError(f"ONNX file {path} is not a regular file")
    onnx = _require("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and onnx's own errors
        raise OnnxModelError(f"{path} is not an ONNX model ({str(error).strip().splitlines()[0][:120]})") from None
    if not model.graph.node:  # protobuf parses many non-ONNX byte strings as an empty model
        raise OnnxModelError(f"{path} is not an ONNX model (no graph inside)")
    stored = {prop.key: prop.value for prop in model.metadata_props}
    if METADATA_KEY not in stored:
        raise OnnxModelError(f"ONNX file {path} has no '{METADATA_KEY}' metadata: it was not written by "
                             "`rgbd-fusion-seg export`, so its classes, palette and preprocessing are unknown")
    try:
        description = json.loads(stored[METADATA_KEY])
        if description.get("format") != ONNX_FORMAT:
            raise ValueError(f"format {description.get('format')!r}, expected {ONNX_FORMAT!r}")
        checkpoint_from_description(description)  # every field the engine reads is there and well-formed
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise OnnxModelError(f"ONNX file {path} has malformed '{METADATA_KEY}' metadata: {error}") from None
    _check_graph_is_described(model, description, path)
    return description


def _check_graph_is_described(model, description: dict, path: Path) -> None:
    """OnnxModelError unless the graph's class count and weights are those its metadata describes."""
    described = int(description["model"]["num_classes"])
    outputs = {output.name: output for output in model.graph.output}
    dims = outputs[OUTPUT_NAME].type.tensor_type.shape.dim if OUTPUT_NAME in outputs else []
    graph_classes = dims[1].dim_value if len(dims) == 4 and dims[1].HasField("dim_value") else None
    if graph_classes != described:
        found = (f"gives {graph_classes} classes" if graph_classes
                 else f"has no N x C x H x W '{OUTPUT_NAME}' output with a fixed class count")
        raise OnnxModelError(f"ONNX file {path}: its graph {found}, and its metadata says {described}: the file was "
                             "changed after export; re-export it with `rgbd-fusion-seg export`")
    recorded = description.get("weights_sha256")
    if not recorded:
        raise OnnxModelError(f"ONNX file {path} records no weights digest (exported before digests were recorded, "
                             "or its metadata was edited): re-export it with `rgbd-fusion-seg export`")
    actual = weights_digest(model)
    if actual != recorded:
        raise OnnxModelError(f"ONNX file {path}: its weights' sha256 is {actual[:16]}..., not the {recorded[:16]}... "
                             "recorded at export: the weights were changed or damaged (a bad copy?); copy or "
                             "re-export it")


def weights_digest(model) -> str:
    """sha256 over every initializer (name, type, shape, values) of the graph and its subgraphs, in order. The
    values are hashed as arrays, so it does not depend on how the file stores them (raw bytes or typed lists)."""
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            values = numpy_helper.to_array(tensor)
            digest.update(f"{tensor.name}:{values.dtype}:{values.shape};".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()


def _graphs(graph):
    """`graph` and every subgraph in it (the bodies of Scan, Loop and If nodes)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graphs(subgraph)


def graph_opset(model) -> int:
    """The opset of the default ONNX domain the graph uses (what an exporter wrote, whatever was asked)."""
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def checkpoint_from_description(description: dict) -> Checkpoint:
    """The Checkpoint fields the engine reads (method, classes, palette, preprocessing); no state_dict: the
    weights are in the ONNX graph."""
    model = description["model"]
    return Checkpoint(method=str(model["method"]), num_classes=int(model["num_classes"]),
                      classes=list(description["classes"]), palette=[list(c) for c in description["palette"]],
                      preprocessing=Preprocessing.from_dict(description["preprocessing"]), state_dict={},
                      options=dict(model.get("options", {})), data=description.get("data") or {},
                      metrics=description.get("metrics") or {})


def choose_providers(device: str, available: list[str], tensorrt_cache: str | os.PathLike | None = None) -> list:
    """ONNX Runtime execution providers for `device` ('auto', 'cpu', 'cuda', 'cuda:N') among `available`.

    CUDA for 'auto' when ONNX Runtime has it; TensorRT ahead of CUDA only when a `tensorrt_cache` folder is
    given (building its engines takes minutes, so they are kept there and reused); the CPU always last, for
    the operators the others lack."""
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return ["CPUExecutionProvider"]
    if kind != "cuda" or (index and not index.isdigit()):
        raise OnnxModelError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if "CUDAExecutionProvider" not in available:
        raise OnnxModelError(f"device {device!r} was asked for, but this onnxruntime has no CUDA provider "
                             f"(it has {', '.join(available)}): install onnxruntime-gpu, or use device 'cpu'")
    device_id = int(index or 0)
    providers: list = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    if tensorrt_cache is not None:
        if "TensorrtExecutionProvider" not in available:
            raise OnnxModelError(f"a TensorRT engine cache ({tensorrt_cache}) was given, but this onnxruntime has "
                                 f"no TensorRT provider (it has {', '.join(available)})")
        Path(tensorrt_cache).mkdir(parents=True, exist_ok=True)
        providers.insert(0, ("TensorrtExecutionProvider", {
            "device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tensorrt_cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tensorrt_cache)}))
    return providers


def _provider_name(provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxRuntimeModel:
    """An exported file run by ONNX Runtime, called like the torch model: `model(rgb, aux) -> SegOutput`.

    `provider` is the execution provider that runs the graph (ONNX Runtime falls back to the next one
    when a provider cannot start, e.g. missing CUDA libraries: that is warned about, never silent)."""

    def __init__(self, path: str | os.PathLike, device: str = "auto",
                 tensorrt_cache: str | os.PathLike | None = None):
        self.path = Path(path)
        self.description = read_onnx_description(self.path)
        self.checkpoint = checkpoint_from_description(self.description)
        ort = _require("onnxruntime")
        providers = choose_providers(device, ort.get_available_providers(), tensorrt_cache)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as error:  # onnxruntime's own exception types
            raise OnnxModelError(f"ONNX Runtime cannot load {self.path}: {str(error).strip().splitlines()[0]}") from None
        names = tuple(i.name for i in self.session.get_inputs())
        if sorted(names) != sorted(INPUT_NAMES) or OUTPUT_NAME not in [o.name for o in self.session.get_outputs()]:
            raise OnnxModelError(f"ONNX file {self.path} has inputs {names}, expected {INPUT_NAMES} -> {OUTPUT_NAME}")
        self.provider = self.session.get_providers()[0]
        wanted = _provider_name(providers[0])
        if self.provider != wanted:
            warnings.warn(f"ONNX Runtime could not start {wanted} for {self.path.name} and runs it on "
                          f"{self.provider} instead (see ONNX Runtime's log above for why)", RuntimeWarning)

    @property
    def backend(self) -> str:
        return f"onnxruntime ({self.provider})"

    def __call__(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        feeds = {"rgb": _nchw_array(rgb), "aux": _nchw_array(aux)}
        (logits,) = self.session.run([OUTPUT_NAME], feeds)
        return SegOutput(torch.from_numpy(logits))


def _nchw_array(tensor: torch.Tensor) -> np.ndarray:
    """ONNX Runtime reads contiguous NCHW float32 (the engine hands channels_last tensors to torch models)."""
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
