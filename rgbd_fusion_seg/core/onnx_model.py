"""Serving an exported `.onnx` file (`rgbd-fusion-seg export`) through ONNX Runtime.

The file alone is enough: besides the deploy-form graph (inputs `rgb` Nx3xHxW normalised, `aux` Nx1xHxW in
[0, 1]) it holds the checkpoint's description as JSON in its metadata under `METADATA_KEY`. The graph is of
one of two kinds, named by the metadata's `outputs`:

    ["mask"] or ["mask", "confidence"]   a mask graph (export's default), with a third input `output_size`
                                         (int64 [2]: OH, OW): `mask` NxOHxOW class ids (uint8, uint16 beyond
                                         256 classes; the logits upsampled bilinearly to OHxOW and their argmax
                                         taken in the graph) and, exported with --confidence, `confidence`
                                         NxOHxOW float32, the softmax probability of that class
    ["logits"]                           a logits graph (export --logits): `logits` NxCxHxW; the engine upsamples
                                         and takes the argmax. Files without `outputs` (older exports) are these.

The metadata's fields:

    format         ONNX_FORMAT
    model          {"method", "options", "num_classes", "architecture"}   as in a checkpoint
    classes, palette, preprocessing, data, metrics                         as in a checkpoint
    dynamic_size   true: any height and width; false: only `traced_size` (exported with --fixed-size)
    traced_size    [height, width] the graph was traced at
    exporter       {"torch", "onnx", "opset", "path"}                      what wrote the graph
    parity         {"HxW": max |logit difference| to PyTorch's deploy form}  measured at export
    weights_sha256 `weights_digest` of the graph as written
    outputs        the graph's outputs, as above (absent: ["logits"])

A file is served only when its graph is the one described: its logits (the output, or inside a mask graph the
value its mask is taken from) have the metadata's number of classes, its outputs are the described ones, and
its weights' digest is the recorded one (else OnnxModelError with what differs). A file without
a digest (exported before digests were recorded) is refused too: nothing says its weights are intact, and
re-exporting it takes one command.

`OnnxRuntimeModel` serves a logits graph with the torch model's call interface (`model(rgb, aux) -> SegOutput`,
CPU tensors), so the engine applies its own post-processing, and a mask graph through `masks(rgb, aux)`. On
CUDA (the CUDA and TensorRT providers) it runs through ONNX Runtime's I/O binding: the inputs are copied into
device buffers kept from frame to frame and only the outputs come back. Precision: fp32, or fp16 as TensorRT
fp16 engines (`choose_providers` says why anything else is refused). onnx and onnxruntime are imported only
here, and only when a file is read: serving a `.pt` checkpoint never needs them.
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
# A mask graph's third input: the (height, width) its mask and confidence are upsampled to (the camera image's,
# where the preprocessing resized it), so that its masks equal the logits path's at any size.
OUTPUT_SIZE_INPUT = "output_size"
OUTPUT_NAME = "logits"
MASK_OUTPUT = "mask"
CONFIDENCE_OUTPUT = "confidence"
GRAPH_OUTPUTS = ((OUTPUT_NAME,), (MASK_OUTPUT,), (MASK_OUTPUT, CONFIDENCE_OUTPUT))
# Execution providers that run the graph on the GPU: their inputs and outputs go through I/O binding.
DEVICE_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ONNX_PRECISIONS = ("fp32", "fp16")


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
        graph_outputs(description)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise OnnxModelError(f"ONNX file {path} has malformed '{METADATA_KEY}' metadata: {error}") from None
    _check_graph_is_described(model, description, path)
    return description


def graph_outputs(description: dict) -> tuple[str, ...]:
    """The outputs the metadata describes (one of GRAPH_OUTPUTS; a file without the field is a logits graph)."""
    outputs = tuple(description.get("outputs", (OUTPUT_NAME,)))
    if outputs not in GRAPH_OUTPUTS:
        raise ValueError(f"outputs {list(outputs)} is none of {[list(kind) for kind in GRAPH_OUTPUTS]}")
    return outputs


def mask_dtype(num_classes: int) -> np.dtype:
    """The class ids' type: one byte up to 256 classes (ids 0-255), two beyond."""
    return np.dtype(np.uint8 if num_classes <= 256 else np.uint16)


def _check_graph_is_described(model, description: dict, path: Path) -> None:
    """OnnxModelError unless the graph's outputs, class count and weights are those its metadata describes."""
    described = int(description["model"]["num_classes"])
    outputs = graph_outputs(description)
    if [output.name for output in model.graph.output] != list(outputs):
        raise OnnxModelError(f"ONNX file {path}: its graph gives {[o.name for o in model.graph.output]}, and its "
                             f"metadata says {list(outputs)}: the file was changed after export; re-export it "
                             "with `rgbd-fusion-seg export`")
    # a mask graph keeps its logits' shape as a value inside the graph
    values = {value.name: value for value in [*model.graph.output, *model.graph.value_info]}
    dims = values[OUTPUT_NAME].type.tensor_type.shape.dim if OUTPUT_NAME in values else []
    graph_classes = dims[1].dim_value if len(dims) == 4 and dims[1].HasField("dim_value") else None
    if graph_classes != described:
        found = (f"gives {graph_classes} classes" if graph_classes
                 else f"has no N x C x H x W '{OUTPUT_NAME}' with a fixed class count")
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


def choose_providers(device: str, available: list[str], tensorrt_cache: str | os.PathLike | None = None,
                     precision: str = "fp32", input_size: tuple[int, int] | None = None) -> list:
    """ONNX Runtime execution providers for `device` ('auto', 'cpu', 'cuda', 'cuda:N') and `precision` among
    `available`.

    CUDA for 'auto' when ONNX Runtime has it; TensorRT ahead of CUDA only when a `tensorrt_cache` folder is
    given (building its engines takes minutes, so they are kept there and reused); the CPU always last, for
    the operators the others lack. fp16 runs as TensorRT fp16 engines only: the CUDA and CPU providers run the
    exported fp32 graph, so fp16 without TensorRT is refused with that reason rather than served as fp32
    under an fp16 label. The engines are cached per precision and input size (`tensorrt_engine_folder`); with
    the checkpoint's fixed `input_size` TensorRT builds one engine for exactly that shape (batch 1)."""
    if precision not in ONNX_PRECISIONS:
        raise OnnxModelError(f"precision {precision!r}: an exported ONNX file runs in fp32, or fp16 as TensorRT "
                             "fp16 engines; serve the .pt checkpoint with the torch backend for bf16")
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        if precision == "fp16":
            raise OnnxModelError("precision fp16 on the CPU: ONNX Runtime's CPU provider has no fast half-precision "
                                 "kernels (an fp16 graph would run slower than fp32 there); serve fp32 on the CPU, "
                                 "or fp16 on CUDA with a TensorRT engine cache")
        return ["CPUExecutionProvider"]
    if kind != "cuda" or (index and not index.isdigit()):
        raise OnnxModelError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if "CUDAExecutionProvider" not in available:
        raise OnnxModelError(f"device {device!r} was asked for, but this onnxruntime has no CUDA provider "
                             f"(it has {', '.join(available)}): install onnxruntime-gpu, or use device 'cpu'")
    if precision == "fp16" and tensorrt_cache is None:
        raise OnnxModelError("precision fp16 for an exported ONNX file runs as TensorRT fp16 engines: give a "
                             "TensorRT engine cache folder (tensorrt_cache_dir); the CUDA provider alone runs the "
                             "exported fp32 graph (or serve the .pt checkpoint with the torch backend in fp16)")
    device_id = int(index or 0)
    providers: list = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    if tensorrt_cache is not None:
        if "TensorrtExecutionProvider" not in available:
            raise OnnxModelError(f"a TensorRT engine cache ({tensorrt_cache}) was given, but this onnxruntime has "
                                 f"no TensorRT provider (it has {', '.join(available)})")
        providers.insert(0, ("TensorrtExecutionProvider",
                             tensorrt_options(device_id, tensorrt_cache, precision, input_size)))
    return providers


def tensorrt_engine_folder(cache: str | os.PathLike, precision: str, input_size: tuple[int, int] | None) -> Path:
    """The engines' folder in `cache`: one per precision and input size, so that an fp32 engine is never
    loaded for fp16 (nor one built for another size) whatever ONNX Runtime's own cache names include."""
    size = "x".join(map(str, input_size)) if input_size else "camera-size"
    return Path(cache) / precision / size


def tensorrt_options(device_id: int, cache: str | os.PathLike, precision: str,
                     input_size: tuple[int, int] | None) -> dict:
    """ONNX Runtime's TensorRT provider options: engine and timing caches in `tensorrt_engine_folder`, fp16
    engines for fp16 (TensorRT keeps a layer in fp32 where fp16 would lose it), and for a fixed input size one
    optimisation profile at that shape."""
    folder = tensorrt_engine_folder(cache, precision, input_size)
    folder.mkdir(parents=True, exist_ok=True)
    options = {"device_id": device_id, "trt_fp16_enable": precision == "fp16",
               "trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder),
               "trt_timing_cache_enable": True, "trt_timing_cache_path": str(folder)}
    if input_size:
        height, width = input_size
        shapes = f"rgb:1x3x{height}x{width},aux:1x1x{height}x{width}"
        options |= {"trt_profile_min_shapes": shapes, "trt_profile_opt_shapes": shapes,
                    "trt_profile_max_shapes": shapes}
    return options


def _session_options(ort):
    options = ort.SessionOptions()
    # Denormal floats read as zero (FTZ and DAZ on ONNX Runtime's threads): SC-CoSF's scan decays state
    # values into the denormal range, where x86 arithmetic is many times slower (measured: two of its
    # 1/4-scale MatMuls 5.6 ms a step against 0.5 ms for their twins, the whole 480x640 graph 4.5 -> 4.2 s);
    # values below 1.2e-38 change no logit that matters.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


def _provider_name(provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxRuntimeModel:
    """An exported file run by ONNX Runtime: a logits graph called like the torch model (`model(rgb, aux) ->
    SegOutput`), a mask graph through `masks(rgb, aux, with_confidence)`.

    `provider` is the execution provider that runs the graph (ONNX Runtime falls back to the next one
    when a provider cannot start, e.g. missing CUDA libraries: that is warned about, never silent), and
    `precision` what runs: fp16 asked for runs only if TensorRT started (`precision_note` says so if not)."""

    def __init__(self, path: str | os.PathLike, device: str = "auto",
                 tensorrt_cache: str | os.PathLike | None = None, precision: str = "fp32"):
        self.path = Path(path)
        self.description = read_onnx_description(self.path)
        self.checkpoint = checkpoint_from_description(self.description)
        self.outputs = graph_outputs(self.description)
        ort = _require("onnxruntime")
        providers = choose_providers(device, ort.get_available_providers(), tensorrt_cache, precision,
                                     self.checkpoint.preprocessing.input_size)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=_session_options(ort),
                                                providers=providers)
        except Exception as error:  # onnxruntime's own exception types
            raise OnnxModelError(f"ONNX Runtime cannot load {self.path}: {str(error).strip().splitlines()[0]}") from None
        names = tuple(i.name for i in self.session.get_inputs())
        expected = INPUT_NAMES + ((OUTPUT_SIZE_INPUT,) if self.outputs != (OUTPUT_NAME,) else ())
        if sorted(names) != sorted(expected) or [o.name for o in self.session.get_outputs()] != list(self.outputs):
            raise OnnxModelError(f"ONNX file {self.path} has inputs {names}, expected {expected} -> "
                                 f"{list(self.outputs)}: re-export it")
        self.provider = self.session.get_providers()[0]
        wanted = _provider_name(providers[0])
        if self.provider != wanted:
            warnings.warn(f"ONNX Runtime could not start {wanted} for {self.path.name} and runs it on "
                          f"{self.provider} instead (see ONNX Runtime's log above for why)", RuntimeWarning)
        self.precision, self.precision_note = precision, ""
        if precision == "fp16" and self.provider != "TensorrtExecutionProvider":
            self.precision = "fp32"
            self.precision_note = f"fp16 was asked for, but TensorRT did not start: {self.provider} runs fp32"
        self._run = session_runner(self.session, ort, self.provider, _device_id(providers[0]))

    @property
    def backend(self) -> str:
        return f"onnxruntime ({self.provider})"

    @property
    def gives_masks(self) -> bool:
        return self.outputs[0] == MASK_OUTPUT

    @property
    def graph_kind(self) -> str:
        return f"{'mask' if self.gives_masks else 'logits'} graph"

    def __call__(self, rgb: torch.Tensor, aux: torch.Tensor) -> SegOutput:
        """A logits graph's logits (the engine upsamples them and takes the argmax)."""
        if self.gives_masks:
            raise OnnxModelError(f"ONNX file {self.path} is a mask graph: call masks(), it gives no logits")
        (logits,) = self._run([OUTPUT_NAME], _feeds(rgb, aux))
        return SegOutput(torch.from_numpy(logits))

    def masks(self, rgb: torch.Tensor, aux: torch.Tensor, size: tuple[int, int], with_confidence: bool = False):
        """A mask graph's N x size class ids (its logits upsampled to `size`, then the argmax), and with
        `with_confidence` its N x size confidence (else None); both CPU tensors."""
        if not self.gives_masks:
            raise OnnxModelError(f"ONNX file {self.path} is a logits graph: call it, it gives no masks")
        if with_confidence and CONFIDENCE_OUTPUT not in self.outputs:
            raise OnnxModelError(f"ONNX file {self.path} has no confidence output: export it with "
                                 "`rgbd-fusion-seg export --confidence` (or --logits) to serve the confidence")
        names = [MASK_OUTPUT, CONFIDENCE_OUTPUT] if with_confidence else [MASK_OUTPUT]
        feeds = _feeds(rgb, aux) | {OUTPUT_SIZE_INPUT: np.asarray(size, np.int64)}
        values = [torch.from_numpy(value) for value in self._run(names, feeds)]
        return values[0], (values[1] if with_confidence else None)


def _device_id(provider) -> int:
    return 0 if isinstance(provider, str) else int(provider[1].get("device_id", 0))


def session_runner(session, ort, provider: str, device_id: int):
    """How `session` runs, called as `run(output_names, feeds) -> arrays`: through I/O binding where the graph
    runs on CUDA (`provider` one of DEVICE_PROVIDERS), else by `session.run` (the CPU reads the arrays in place)."""
    if provider in DEVICE_PROVIDERS:
        return BoundRun(session, ort, "cuda", device_id)
    return session.run


class BoundRun:
    """ONNX Runtime's I/O binding: each input is copied from the host once per frame into a device buffer kept
    from frame to frame (made again only when its shape changes), the graph runs, and only the outputs asked
    for (a mask: a byte a pixel) are copied back to the host. `device_type` 'cuda' in serving; a CPU session
    takes 'cpu', which runs the same calls (how the tests check them without a GPU)."""

    def __init__(self, session, ort, device_type: str, device_id: int):
        self.session, self.ort, self.device_type, self.device_id = session, ort, device_type, device_id
        self.binding = session.io_binding()
        self.inputs: dict = {}  # name -> OrtValue on the device

    def __call__(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name, array in feeds.items():
            value = self.inputs.get(name)
            if value is None or value.shape() != list(array.shape):
                value = self.ort.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, self.device_type,
                                                                      self.device_id)
                self.inputs[name] = value
                self.binding.bind_ortvalue_input(name, value)
            value.update_inplace(array)  # the one host -> device copy of this input
        self.binding.clear_binding_outputs()
        for name in output_names:
            self.binding.bind_output(name, "cpu")  # ONNX Runtime copies the result to host memory
        self.session.run_with_iobinding(self.binding)
        return self.binding.copy_outputs_to_cpu()


def _feeds(rgb: torch.Tensor, aux: torch.Tensor) -> dict[str, np.ndarray]:
    return {"rgb": _nchw_array(rgb), "aux": _nchw_array(aux)}


def _nchw_array(tensor: torch.Tensor) -> np.ndarray:
    """ONNX Runtime reads contiguous NCHW float32 (the engine hands channels_last tensors to torch models)."""
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).contiguous().numpy())
