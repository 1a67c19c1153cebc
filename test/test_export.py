"""`rgbd-fusion-seg export --format onnx` and serving the .onnx file. Every method exports (docs/export.md);
for one method of each kind of graph (EXPORTED), ONNX Runtime's logits at two sizes other than the trace's lie within 1e-4 of
PyTorch's deploy form, and the engine's masks from the logits graph and from the mask graph (upsampling and
argmax in the graph) agree with the .pt engine's and with each other, the mask graph's confidence with
PyTorch's softmax; older logits-only files keep serving; fp16, the TensorRT options and I/O binding as far as
a CPU goes; the metadata round-trips and records the graph's own opset, and an opset the exporter cannot
write is refused; bad files get clear errors, and a file whose weights or class count are not those its
metadata records is refused; the CLI works end to end (refusals before any work: test_export_refusals.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbd_fusion_seg.core import onnx_export
from rgbd_fusion_seg.core.checkpoint import Checkpoint, save_checkpoint
from rgbd_fusion_seg.core.engine import SegmentationEngine
from rgbd_fusion_seg.core.onnx_export import TRACE_SIZE, ExportError, add_mask_head, export_onnx
from rgbd_fusion_seg.core.onnx_model import (METADATA_KEY, ONNX_FORMAT, BoundRun, OnnxModelError, OnnxRuntimeModel,
                                             choose_providers, read_onnx_description, session_runner)
from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing
from rgbd_fusion_seg.models import method_class
from rgbd_fusion_seg.offline.benchmarking import fitted_model
from rgbd_fusion_seg.offline.cli import main
from rgbd_fusion_seg.offline.export import graph_kind
from ros_helpers import build_checkpoint

NUM_CLASSES = 5
CLASSES = [f"c{i}" for i in range(NUM_CLASSES)]
METHODS = {
    "rgb": {}, "early": {}, "mid": {}, "late": {}, "se": {}, "attention": {}, "rsfnet": {},
    "sccosf": {"encoder": "micro", "d_state": 4, "blocks_per_stage": 1, "reaw_width": 8},
    "sartm": {"encoder": "micro", "class_names": CLASSES, "text_standin": True},
}
# One of each kind of graph (a dynamo export takes 15-40 s here, SC-CoSF's 2 min, SARTM's 4): the unused aux
# input (rgb), the transposed-conv decoder's size fitting and two encoders (mid), attention over a dynamic
# token count (attention), re-parameterised RSF blocks and a second encoder family (rsfnet), selective scans
# whose length follows the image (sccosf), SAM2's windowed Hiera and padding to multiples of 32 (sartm).
# early, late and se are built from the same parts; `rgbd-fusion-seg export` runs the same parity check on
# every file it writes.
EXPORTED = ["rgb", "mid", "attention", "rsfnet", "sccosf", "sartm"]
SIZES = [(64, 96), (61, 90)]  # camera sizes served at their own size; both differ from the trace size
# Larger than the trace: SC-CoSF's selective scans cut the sequence into chunks, and a graph traced where the
# deepest stage's sequence fits one chunk would keep one chunk at every size (torch.export freezes a size 1).
# At 300 x 356 the 1/32 stage has 120 tokens: 4 chunks of 32, against the trace's 3.
LARGER_SIZES = {"sccosf": [(300, 356)]}
AUX = AuxNormalisation("depth", "m", 0.0, 5.0)


def fitted_checkpoint(method: str, preprocessing: Preprocessing) -> Checkpoint:
    """A checkpoint of `fitted_model` (its masks are not constant, and its logits keep the training scale)."""
    return build_checkpoint(method, NUM_CLASSES, model=fitted_model(method, NUM_CLASSES, METHODS[method]),
                            preprocessing=preprocessing, options=METHODS[method])


def camera_pair(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(size[0])
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8), rng.random(size, dtype=np.float32) * 5.0


def with_mask_head(logits_path: Path, confidence: bool = True) -> Path:
    """The mask graph of an exported logits graph, as `export` writes it (the same `add_mask_head`), without
    tracing the method again."""
    import onnx

    mask_path = logits_path.with_name(f"{logits_path.stem}-mask.onnx")
    onnx.save(add_mask_head(onnx.load(str(logits_path)), NUM_CLASSES, confidence=confidence), str(mask_path))
    return mask_path


def assert_parity(onnx_path: Path, pt_path: Path, sizes, method: str, mask_path: Path | None = None) -> None:
    """Logits within 1e-4 of the deploy form, engine masks agreeing on >= 99.9 % of pixels, at each size; with
    `mask_path` (a mask graph with confidence) also its masks against the .pt's and the logits graph's, and
    its confidence against the .pt engine's."""
    model = OnnxRuntimeModel(onnx_path, device="cpu")
    assert model.provider == "CPUExecutionProvider"
    # denormals as zero: SC-CoSF's decayed scan states made two of its MatMuls 10x slower (onnx_model.py)
    assert model.session.get_session_options().get_session_config_entry("session.set_denormal_as_zero") == "1"
    torch_engine, onnx_engine = SegmentationEngine.from_file(pt_path, device="cpu"), SegmentationEngine.from_file(onnx_path, device="cpu")
    assert onnx_engine.backend == "onnxruntime (CPUExecutionProvider)" and torch_engine.backend == "torch"
    assert "logits graph" in onnx_engine.describe_runtime()
    mask_engine = SegmentationEngine.from_file(mask_path, device="cpu") if mask_path else None
    deploy = torch_engine.checkpoint.build_model().deploy().eval()
    for size in sizes:
        rgb_t, aux_t = torch.randn(1, 3, *size), torch.rand(1, 1, *size)
        with torch.inference_mode():
            expected = deploy(rgb_t, aux_t).logits
        difference = (model(rgb_t, aux_t).logits - expected).abs().max().item()
        assert difference <= 1e-4, f"{method} at {size}: max logit difference {difference}"
        rgb, aux = camera_pair(size)
        reference = torch_engine.predict(rgb, aux, with_confidence=True)
        mask = onnx_engine.predict(rgb, aux).mask
        assert len(np.unique(reference.mask)) > 1, "a constant mask would compare nothing"
        agreement = (mask == reference.mask).mean()
        assert mask.dtype == reference.mask.dtype and agreement >= 0.999, f"{method} at {size}: {agreement:.5f} agree"
        if mask_engine is not None:
            served = mask_engine.predict(rgb, aux, with_confidence=True)
            assert served.mask.dtype == np.uint8 and served.mask.shape == size
            for other, name in ((reference.mask, "the .pt"), (mask, "the logits graph")):
                agreement = (served.mask == other).mean()
                assert agreement >= 0.999, f"{method} at {size}: mask graph and {name} agree on {agreement:.5f}"
            np.testing.assert_allclose(served.confidence, reference.confidence, atol=1e-4)


@pytest.mark.slow  # an ONNX export
@pytest.mark.parametrize("method", EXPORTED)
def test_every_method_exports_and_serves_like_pytorch(method, tmp_path):
    preprocessing = Preprocessing(input_size=None, aux=AUX)  # served at the camera's own sizes
    pt_path = save_checkpoint(fitted_checkpoint(method, preprocessing), tmp_path / f"{method}.pt")
    result = export_onnx(pt_path, tmp_path / f"{method}.onnx", outputs=("logits",))
    assert result.path == tmp_path / f"{method}.onnx" and result.dynamic_size
    assert all(difference <= 1e-4 for difference in result.parity.values())
    assert_parity(result.path, pt_path, SIZES + LARGER_SIZES.get(method, []), method,
                  mask_path=with_mask_head(result.path))


@pytest.mark.slow  # an ONNX export
def test_fixed_size_export_serves_at_the_checkpoint_size(tmp_path):
    """Also the command's default, the mask graph without confidence, checked and written by export_onnx."""
    pt_path = save_checkpoint(fitted_checkpoint("mid", Preprocessing(input_size=(48, 64), aux=AUX)), tmp_path / "m.pt")
    result = export_onnx(pt_path, tmp_path / "m.onnx", fixed_size=True, outputs=graph_kind())
    description = read_onnx_description(result.path)
    assert description["dynamic_size"] is False and description["traced_size"] == [48, 64]
    assert list(description["parity"]) == ["1x48x64"]
    assert result.outputs == ("mask",) and description["outputs"] == ["mask"]
    torch_engine, mask_engine = (SegmentationEngine.from_file(path, device="cpu") for path in (pt_path, result.path))
    rgb, aux = camera_pair((48, 64))
    reference, served = torch_engine.predict(rgb, aux).mask, mask_engine.predict(rgb, aux).mask
    assert len(np.unique(reference)) > 1 and served.dtype == np.uint8 and np.mean(served == reference) >= 0.999
    with pytest.raises(OnnxModelError, match="has no confidence output: export it with .*--confidence"):
        mask_engine.predict(rgb, aux, with_confidence=True)
    unsized = save_checkpoint(fitted_checkpoint("rgb", Preprocessing(input_size=None, aux=AUX)), tmp_path / "u.pt")
    with pytest.raises(ExportError, match="--fixed-size needs a checkpoint with an input size"):
        export_onnx(unsized, tmp_path / "u.onnx", fixed_size=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt", "u.pt"]


@pytest.fixture(scope="module")
def mid_export(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mid")
    checkpoint = fitted_checkpoint("mid", Preprocessing(input_size=(48, 64), aux=AUX))
    pt_path = save_checkpoint(checkpoint, folder / "mid.pt")
    return pt_path, export_onnx(pt_path, folder / "mid.onnx", opset=18, outputs=("logits",)).path


@pytest.mark.slow  # an ONNX export
def test_metadata_round_trips(mid_export):
    pt_path, onnx_path = mid_export
    description = read_onnx_description(onnx_path)
    assert description["model"] == {"method": "mid", "options": {}, "num_classes": NUM_CLASSES,
                                    "architecture": method_class("mid").architecture_version}
    engine = SegmentationEngine.from_file(onnx_path, device="cpu")
    source = SegmentationEngine.from_file(pt_path, device="cpu").checkpoint
    for field in ("method", "num_classes", "classes", "palette", "preprocessing", "options", "data"):
        assert getattr(engine.checkpoint, field) == getattr(source, field), field
    assert description["traced_size"] == list(TRACE_SIZE) and description["dynamic_size"] is True
    assert description["exporter"]["opset"] == 18 and description["exporter"]["torch"] == torch.__version__
    assert description["outputs"] == ["logits"]
    rgb, aux = camera_pair((120, 160))  # resized to the checkpoint's 48x64 by the shared preprocessing
    assert engine.predict(rgb, aux).mask.shape == (120, 160)


@pytest.mark.slow  # an ONNX export
def test_mask_graph_and_older_logits_files_serve_the_same_masks(mid_export, tmp_path):
    """The mid checkpoint (network at 48x64) served from camera frames of 48x64, the graph's own size, and of
    120x160, which the preprocessing resizes: the mask graph upsamples its logits to the camera's size (its
    `output_size` input) before the argmax, as the logits path does, so its masks and confidence are the .pt's
    and the logits graph's at both. A logits file from before the `outputs` field serves as a logits graph."""
    pt_path, logits_path = mid_export
    mask_path = with_mask_head(logits_path)
    assert read_onnx_description(mask_path)["outputs"] == ["mask", "confidence"]
    assert read_onnx_description(mask_path)["weights_sha256"] == read_onnx_description(logits_path)["weights_sha256"]

    def without_outputs_field(model):
        (entry,) = [prop for prop in model.metadata_props if prop.key == METADATA_KEY]
        entry.value = json.dumps({k: v for k, v in json.loads(entry.value).items() if k != "outputs"})

    older = edited(logits_path, tmp_path, "older.onnx", without_outputs_field)
    engines = {path.name: SegmentationEngine.from_file(path, device="cpu") for path in (pt_path, logits_path, older, mask_path)}
    assert "mask graph" in engines[mask_path.name].describe_runtime()
    assert "logits graph" in engines["older.onnx"].describe_runtime()
    for camera in ((48, 64), (120, 160)):
        rgb, aux = camera_pair(camera)
        predictions = {name: engine.predict(rgb, aux, with_confidence=True) for name, engine in engines.items()}
        reference = predictions[pt_path.name]
        assert len(np.unique(reference.mask)) > 1
        np.testing.assert_array_equal(predictions["older.onnx"].mask, predictions[logits_path.name].mask)
        for name, prediction in predictions.items():
            assert prediction.mask.shape == prediction.confidence.shape == camera and prediction.mask.dtype == np.uint8
            assert np.mean(prediction.mask == reference.mask) >= 0.999, (name, camera)
            np.testing.assert_allclose(prediction.confidence, reference.confidence, atol=1e-4, err_msg=name)


def test_mask_head_gives_two_byte_ids_beyond_256_classes(tmp_path):
    """300 classes: the head's ids are uint16 and its argmax and confidence are NumPy's over the upsampled
    logits (a one-operator graph stands in for a network: logits = a learned 1x1 map of rgb, at half size)."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    classes = 300
    weights = np.random.default_rng(0).standard_normal((classes, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["rgb", "w"], ["logits"], strides=[2, 2])], "stand_in",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["N", 3, "H", "W"]),
         helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes, "h", "w"])],
        [numpy_helper.from_array(weights, "w")])
    head = add_mask_head(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), classes, confidence=True)
    session = onnxruntime.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    rgb = np.random.default_rng(1).standard_normal((1, 3, 20, 30)).astype(np.float32)
    mask, confidence = session.run(["mask", "confidence"], {"rgb": rgb, "aux": rgb[:, :1],
                                                            "output_size": np.array([41, 59], np.int64)})
    logits = torch.nn.functional.conv2d(torch.from_numpy(rgb), torch.from_numpy(weights), stride=2)
    upsampled = torch.nn.functional.interpolate(logits, size=(41, 59), mode="bilinear", align_corners=False)
    expected_confidence, expected = torch.softmax(upsampled, dim=1).max(dim=1)
    assert mask.dtype == np.uint16 and mask.shape == (1, 41, 59) and mask.max() > 255
    assert np.mean(mask == expected.numpy()) >= 0.999
    np.testing.assert_allclose(confidence, expected_confidence.numpy(), atol=1e-5)


@pytest.mark.slow  # an ONNX export
def test_bad_files_get_clear_errors(tmp_path, mid_export):
    with pytest.raises(OnnxModelError, match="does not exist"):
        read_onnx_description(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    with pytest.raises(OnnxModelError, match="is not an ONNX model"):
        read_onnx_description(text)
    import onnx

    foreign = onnx.load(str(mid_export[1]))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(OnnxModelError, match=f"no '{METADATA_KEY}' metadata"):
        SegmentationEngine.from_file(tmp_path / "foreign.onnx", device="cpu")
    foreign.metadata_props.add(key=METADATA_KEY, value=json.dumps({"format": ONNX_FORMAT}))
    onnx.save(foreign, str(tmp_path / "broken.onnx"))
    with pytest.raises(OnnxModelError, match="malformed"):
        read_onnx_description(tmp_path / "broken.onnx")
    with pytest.raises(OnnxModelError, match="precision fp16 on the CPU: ONNX Runtime's CPU provider has no fast"):
        SegmentationEngine.from_file(mid_export[1], device="cpu", precision="fp16")
    with pytest.raises(OnnxModelError, match="precision 'bf16': an exported ONNX file runs in fp32, or fp16 as TensorRT"):
        SegmentationEngine.from_file(mid_export[1], device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="serves its mask .or logits. only, uncompiled"):
        SegmentationEngine.from_file(mid_export[1], device="cpu", compile=True)


def test_providers_follow_the_device(tmp_path):
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", cpu_only) == ["CPUExecutionProvider"]
    assert choose_providers("auto", gpu) == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    trt = choose_providers("cuda:1", gpu, tensorrt_cache=tmp_path / "trt")
    assert [p if isinstance(p, str) else p[0] for p in trt] == gpu and trt[0][1]["device_id"] == 1
    assert trt[0][1]["trt_engine_cache_path"] == str(tmp_path / "trt" / "fp32" / "camera-size")
    assert (tmp_path / "trt" / "fp32" / "camera-size").is_dir()
    with pytest.raises(OnnxModelError, match="no CUDA provider"):
        choose_providers("cuda", cpu_only)
    with pytest.raises(OnnxModelError, match="no TensorRT provider"):
        choose_providers("cuda", gpu[1:], tensorrt_cache=tmp_path / "trt")
    with pytest.raises(OnnxModelError, match="is not one of"):
        choose_providers("tpu", gpu)


def test_fp16_runs_as_tensorrt_fp16_engines_cached_per_precision_and_size(tmp_path):
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cache = tmp_path / "trt"
    (name, fp16), cuda, cpu = choose_providers("cuda", gpu, cache, precision="fp16", input_size=(480, 640))
    assert name == "TensorrtExecutionProvider" and cuda == ("CUDAExecutionProvider", {"device_id": 0})
    assert fp16["trt_fp16_enable"] is True and fp16["trt_engine_cache_enable"] is True
    assert fp16["trt_engine_cache_path"] == fp16["trt_timing_cache_path"] == str(cache / "fp16" / "480x640")
    assert fp16["trt_profile_min_shapes"] == fp16["trt_profile_opt_shapes"] == fp16["trt_profile_max_shapes"] \
        == "rgb:1x3x480x640,aux:1x1x480x640"
    (_, fp32), *_ = choose_providers("cuda:1", gpu, cache, precision="fp32", input_size=None)
    assert fp32["trt_fp16_enable"] is False and fp32["device_id"] == 1
    assert fp32["trt_engine_cache_path"] == str(cache / "fp32" / "camera-size") and "trt_profile_min_shapes" not in fp32
    assert sorted(p.relative_to(cache).as_posix() for p in cache.glob("*/*")) == ["fp16/480x640", "fp32/camera-size"]
    with pytest.raises(OnnxModelError, match="fp16 for an exported ONNX file runs as TensorRT fp16 engines: give a "
                                             "TensorRT engine cache"):
        choose_providers("cuda", gpu, None, precision="fp16")
    with pytest.raises(OnnxModelError, match="no TensorRT provider"):
        choose_providers("cuda", gpu[1:], cache, precision="fp16")
    for device in ("cpu", "auto"):
        with pytest.raises(OnnxModelError, match="precision fp16 on the CPU"):
            choose_providers(device, ["CPUExecutionProvider"], precision="fp16")


class _FakeSession:
    """Stands in for an InferenceSession whose provider is `provider` (no GPU needed to choose the path)."""

    def __init__(self):
        self.bindings = 0

    def run(self, names, feeds):
        return ["host run"]

    def io_binding(self):
        self.bindings += 1
        return object()


@pytest.mark.slow  # an ONNX export
def test_io_binding_is_chosen_for_the_cuda_providers_only(mid_export):
    import onnxruntime

    for provider, bound in (("TensorrtExecutionProvider", True), ("CUDAExecutionProvider", True),
                            ("CPUExecutionProvider", False)):
        session = _FakeSession()
        runner = session_runner(session, onnxruntime, provider, device_id=0)
        assert isinstance(runner, BoundRun) == bound and session.bindings == int(bound), provider
        if bound:
            assert (runner.device_type, runner.device_id) == ("cuda", 0)
        else:
            assert runner(["logits"], {}) == ["host run"]


@pytest.mark.slow  # an ONNX export
def test_io_binding_gives_session_runs_outputs_and_keeps_its_input_buffers(mid_export):
    """The binding path's calls on a CPU session (device 'cpu'): the same logits as session.run, the input
    buffers kept while the shape holds and made again when it changes."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(mid_export[1]), providers=["CPUExecutionProvider"])
    bound = BoundRun(session, onnxruntime, "cpu", 0)
    rng = np.random.default_rng(0)
    buffers = None
    for shape in ((1, 48, 64), (1, 48, 64), (1, 40, 56)):
        feeds = {"rgb": rng.standard_normal((shape[0], 3, *shape[1:]), dtype=np.float32),
                 "aux": rng.random((shape[0], 1, *shape[1:]), dtype=np.float32)}
        (logits,) = bound(["logits"], feeds)
        np.testing.assert_array_equal(logits, session.run(["logits"], feeds)[0])
        kept = dict(bound.inputs)
        if buffers is not None:
            same_shape = shape[1:] == (48, 64)
            assert all((kept[name] is buffers[name]) == same_shape for name in ("rgb", "aux")), shape
        buffers = kept


@pytest.mark.slow  # two exports of the mid method
def test_cli_exports_end_to_end(mid_export, tmp_path, capsys):
    out = tmp_path / "deep" / "served.onnx"
    assert main(["export", str(mid_export[0]), "--format", "onnx", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and read_onnx_description(out)["model"]["method"] == "mid"
    assert read_onnx_description(out)["outputs"] == ["mask"]  # the default graph
    assert [p.name for p in out.parent.iterdir()] == ["served.onnx"]  # no temporary file left
    out.write_bytes(b"an older export")
    assert main(["export", str(mid_export[0]), "--out", str(out)]) == 2
    assert "exists already: pass --force" in capsys.readouterr().err and out.read_bytes() == b"an older export"
    assert main(["export", str(mid_export[0]), "--out", str(out), "--force", "--confidence"]) == 0
    assert "outputs mask, confidence" in capsys.readouterr().out
    assert read_onnx_description(out)["outputs"] == ["mask", "confidence"] and [p.name for p in out.parent.iterdir()] == ["served.onnx"]
    with pytest.raises(SystemExit):  # argparse: --confidence is the mask graph's, --logits the other graph
        main(["export", str(mid_export[0]), "--out", str(out), "--force", "--confidence", "--logits"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "none.onnx").exists()


def edited(onnx_path: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of the exported file with `edit(model)` applied, its metadata as exported."""
    import onnx

    model = onnx.load(str(onnx_path))
    edit(model)
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


@pytest.mark.slow  # an ONNX export
def test_a_file_whose_weights_changed_after_export_is_refused(mid_export, tmp_path):
    def flip_a_weight_byte(model):
        weight = max(model.graph.initializer, key=lambda tensor: len(tensor.raw_data))
        data = bytearray(weight.raw_data)
        data[len(data) // 2] ^= 0x40
        weight.raw_data = bytes(data)

    flipped = edited(mid_export[1], tmp_path, "flipped.onnx", flip_a_weight_byte)
    for load in (read_onnx_description, lambda path: SegmentationEngine.from_file(path, device="cpu")):
        with pytest.raises(OnnxModelError, match=f"ONNX file {flipped}: its weights' sha256 is .* recorded at export"):
            load(flipped)
    untouched = edited(mid_export[1], tmp_path, "copy.onnx", lambda model: None)
    assert read_onnx_description(untouched)["weights_sha256"] == read_onnx_description(mid_export[1])["weights_sha256"]


@pytest.mark.slow  # an ONNX export
def test_a_file_exported_before_digests_is_refused_with_re_export(mid_export, tmp_path):
    def drop_the_digest(model):
        (entry,) = [prop for prop in model.metadata_props if prop.key == METADATA_KEY]
        entry.value = json.dumps({k: v for k, v in json.loads(entry.value).items() if k != "weights_sha256"})

    old = edited(mid_export[1], tmp_path, "old.onnx", drop_the_digest)
    with pytest.raises(OnnxModelError, match=f"ONNX file {old} records no weights digest .* re-export it"):
        SegmentationEngine.from_file(old, device="cpu")


@pytest.mark.slow  # an ONNX export
def test_a_graph_with_more_classes_than_its_metadata_is_refused(mid_export, tmp_path):
    """10 output classes under metadata that says 5 (it would publish ids 5-9): the 5-class logits, twice."""
    import onnx

    def ten_classes(model):
        for node in model.graph.node:
            node.output[:] = ["logits5" if name == "logits" else name for name in node.output]
        model.graph.node.append(onnx.helper.make_node("Concat", ["logits5", "logits5"], ["logits"], axis=1))
        model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 10

    wider = edited(mid_export[1], tmp_path, "ten.onnx", ten_classes)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(wider), providers=["CPUExecutionProvider"])
    rgb, aux = np.zeros((1, 3, 48, 64), np.float32), np.zeros((1, 1, 48, 64), np.float32)
    assert session.run(["logits"], {"rgb": rgb, "aux": aux})[0].shape == (1, 10, 48, 64)  # it runs, 10 classes
    with pytest.raises(OnnxModelError, match=f"ONNX file {wider}: its graph gives 10 classes, and its metadata says 5"):
        SegmentationEngine.from_file(wider, device="cpu")


@pytest.mark.slow  # two exports of the rgb method
def test_the_opset_asked_for_is_the_graphs_or_refused(tmp_path, monkeypatch):
    import onnx

    pt_path = save_checkpoint(fitted_checkpoint("rgb", Preprocessing(input_size=None, aux=AUX)), tmp_path / "rgb.pt")
    result = export_onnx(pt_path, tmp_path / "rgb19.onnx", opset=19)
    written = onnx.load(str(result.path))
    assert [(o.domain, o.version) for o in written.opset_import if o.domain == ""] == [("", 19)]
    assert result.opset == 19 and read_onnx_description(result.path)["exporter"]["opset"] == 19
    # Past the range check, an opset the converter cannot reach is refused from the graph's own opset.
    monkeypatch.setattr(onnx_export, "check_opset", lambda opset: None)
    with pytest.raises(ExportError, match="cannot be exported at opset 17: the exporter wrote opset 18"):
        export_onnx(pt_path, tmp_path / "rgb17.onnx", opset=17)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.pt", "rgb19.onnx"]
