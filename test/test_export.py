"""`rgbd-fusion-seg export --format onnx` and serving the .onnx file: per method, ONNX Runtime's logits at two
sizes other than the trace's lie within 1e-4 of PyTorch's deploy form and the engine's masks from the .onnx
agree with the .pt engine's; a method that cannot export says why; the metadata round-trips and records the
graph's own opset; bad files get clear errors, and a file whose weights or class count are not those its
metadata records is refused; the CLI works end to end (refusals before any work: test_export_refusals.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rgbd_fusion_seg.core.checkpoint import Checkpoint, save_checkpoint
from rgbd_fusion_seg.core.engine import SegmentationEngine
from rgbd_fusion_seg.core.onnx_model import (METADATA_KEY, ONNX_FORMAT, OnnxModelError, OnnxRuntimeModel,
                                             choose_providers, read_onnx_description)
from rgbd_fusion_seg.core.palette import default_palette
from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing
from rgbd_fusion_seg.models import method_class
from rgbd_fusion_seg.offline.backend_benchmark import fitted_model
from rgbd_fusion_seg.offline.cli import main
from rgbd_fusion_seg.offline import export as export_module
from rgbd_fusion_seg.offline.export import TRACE_SIZE, ExportError, export_onnx

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
AUX = AuxNormalisation("depth", "m", 0.0, 5.0)


def fitted_checkpoint(method: str, preprocessing: Preprocessing) -> Checkpoint:
    """A checkpoint of `fitted_model` (its masks are not constant, and its logits keep the training scale)."""
    model = fitted_model(method, NUM_CLASSES, METHODS[method])
    return Checkpoint(method, NUM_CLASSES, CLASSES, default_palette(NUM_CLASSES), preprocessing,
                      model.state_dict(), options=METHODS[method], data={"dataset": "test"})


def camera_pair(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(size[0])
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8), rng.random(size, dtype=np.float32) * 5.0


def assert_parity(onnx_path: Path, pt_path: Path, sizes, method: str) -> None:
    """Logits within 1e-4 of the deploy form, engine masks agreeing on >= 99.9 % of pixels, at each size."""
    model = OnnxRuntimeModel(onnx_path, device="cpu")
    assert model.provider == "CPUExecutionProvider"
    torch_engine, onnx_engine = SegmentationEngine.from_file(pt_path, device="cpu"), SegmentationEngine.from_file(onnx_path, device="cpu")
    assert onnx_engine.backend == "onnxruntime (CPUExecutionProvider)" and torch_engine.backend == "torch"
    deploy = torch_engine.checkpoint.build_model().deploy().eval()
    for size in sizes:
        rgb_t, aux_t = torch.randn(1, 3, *size), torch.rand(1, 1, *size)
        with torch.inference_mode():
            expected = deploy(rgb_t, aux_t).logits
        difference = (model(rgb_t, aux_t).logits - expected).abs().max().item()
        assert difference <= 1e-4, f"{method} at {size}: max logit difference {difference}"
        rgb, aux = camera_pair(size)
        reference = torch_engine.predict(rgb, aux).mask
        mask = onnx_engine.predict(rgb, aux).mask
        assert len(np.unique(reference)) > 1, "a constant mask would compare nothing"
        agreement = (mask == reference).mean()
        assert mask.dtype == reference.dtype and agreement >= 0.999, f"{method} at {size}: {agreement:.5f} agree"


@pytest.mark.parametrize("method", EXPORTED)
def test_every_method_exports_and_serves_like_pytorch(method, tmp_path):
    preprocessing = Preprocessing(input_size=None, aux=AUX)  # served at the camera's own sizes
    pt_path = save_checkpoint(fitted_checkpoint(method, preprocessing), tmp_path / f"{method}.pt")
    result = export_onnx(pt_path, tmp_path / f"{method}.onnx")
    assert result.path == tmp_path / f"{method}.onnx" and result.dynamic_size
    assert all(difference <= 1e-4 for difference in result.parity.values())
    assert_parity(result.path, pt_path, SIZES, method)


def test_fixed_size_export_serves_at_the_checkpoint_size(tmp_path):
    pt_path = save_checkpoint(fitted_checkpoint("mid", Preprocessing(input_size=(48, 64), aux=AUX)), tmp_path / "m.pt")
    result = export_onnx(pt_path, tmp_path / "m.onnx", fixed_size=True)
    description = read_onnx_description(result.path)
    assert description["dynamic_size"] is False and description["traced_size"] == [48, 64]
    assert list(description["parity"]) == ["1x48x64"]
    assert_parity(result.path, pt_path, [(48, 64)], "mid")
    unsized = save_checkpoint(fitted_checkpoint("rgb", Preprocessing(input_size=None, aux=AUX)), tmp_path / "u.pt")
    with pytest.raises(ExportError, match="--fixed-size needs a checkpoint with an input size"):
        export_onnx(unsized, tmp_path / "u.onnx", fixed_size=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt", "u.pt"]


@pytest.fixture(scope="module")
def mid_export(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mid")
    checkpoint = fitted_checkpoint("mid", Preprocessing(input_size=(48, 64), aux=AUX))
    pt_path = save_checkpoint(checkpoint, folder / "mid.pt")
    return pt_path, export_onnx(pt_path, folder / "mid.onnx", opset=18).path


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
    rgb, aux = camera_pair((120, 160))  # resized to the checkpoint's 48x64 by the shared preprocessing
    assert engine.predict(rgb, aux).mask.shape == (120, 160)


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
    with pytest.raises(ValueError, match="runs in fp32 with logits only"):
        SegmentationEngine.from_file(mid_export[1], device="cpu", precision="fp16")


def test_providers_follow_the_device(tmp_path):
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", cpu_only) == ["CPUExecutionProvider"]
    assert choose_providers("auto", gpu) == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    trt = choose_providers("cuda:1", gpu, tensorrt_cache=tmp_path / "trt")
    assert [p if isinstance(p, str) else p[0] for p in trt] == gpu and trt[0][1]["device_id"] == 1
    assert trt[0][1]["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    with pytest.raises(OnnxModelError, match="no CUDA provider"):
        choose_providers("cuda", cpu_only)
    with pytest.raises(OnnxModelError, match="no TensorRT provider"):
        choose_providers("cuda", gpu[1:], tensorrt_cache=tmp_path / "trt")
    with pytest.raises(OnnxModelError, match="is not one of"):
        choose_providers("tpu", gpu)


@pytest.mark.slow  # two exports of the mid method
def test_cli_exports_end_to_end(mid_export, tmp_path, capsys):
    out = tmp_path / "deep" / "served.onnx"
    assert main(["export", str(mid_export[0]), "--format", "onnx", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and read_onnx_description(out)["model"]["method"] == "mid"
    assert [p.name for p in out.parent.iterdir()] == ["served.onnx"]  # no temporary file left
    out.write_bytes(b"an older export")
    assert main(["export", str(mid_export[0]), "--out", str(out)]) == 2
    assert "exists already: pass --force" in capsys.readouterr().err and out.read_bytes() == b"an older export"
    assert main(["export", str(mid_export[0]), "--out", str(out), "--force"]) == 0
    assert read_onnx_description(out)["model"]["method"] == "mid" and [p.name for p in out.parent.iterdir()] == ["served.onnx"]
    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "none.onnx").exists()


def edited(onnx_path: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of the exported file with `edit(model)` applied, its metadata as exported."""
    import onnx

    model = onnx.load(str(onnx_path))
    edit(model)
    onnx.save(model, str(tmp_path / name))
    return tmp_path / name


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


def test_a_file_exported_before_digests_is_refused_with_re_export(mid_export, tmp_path):
    def drop_the_digest(model):
        (entry,) = [prop for prop in model.metadata_props if prop.key == METADATA_KEY]
        entry.value = json.dumps({k: v for k, v in json.loads(entry.value).items() if k != "weights_sha256"})

    old = edited(mid_export[1], tmp_path, "old.onnx", drop_the_digest)
    with pytest.raises(OnnxModelError, match=f"ONNX file {old} records no weights digest .* re-export it"):
        SegmentationEngine.from_file(old, device="cpu")


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
    monkeypatch.setattr(export_module, "check_opset", lambda opset: None)
    with pytest.raises(ExportError, match="cannot be exported at opset 17: the exporter wrote opset 18"):
        export_onnx(pt_path, tmp_path / "rgb17.onnx", opset=17)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.pt", "rgb19.onnx"]
