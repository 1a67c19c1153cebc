"""The ROS-free core: preprocessing, checkpoints and the inference engine."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from rgbd_fusion_seg.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rgbd_fusion_seg.core.engine import SegmentationEngine
from rgbd_fusion_seg.core.palette import colourise, default_palette, overlay
from rgbd_fusion_seg.core.preprocessing import (
    AuxNormalisation,
    Preprocessing,
    PreprocessingError,
    normalise_aux,
    prepare_inputs,
    resize_labels,
)

from ros_helpers import build_checkpoint


SCCOSF_TINY = {"encoder": "micro", "d_state": 4, "blocks_per_stage": 1, "reaw_width": 8}


def test_core_imports_without_ros():
    code = "import sys, rgbd_fusion_seg.core.engine, rgbd_fusion_seg.models; assert 'rclpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_normalise_aux_maps_range_and_no_reading_to_zero():
    spec = AuxNormalisation("depth", "m", 1.0, 3.0)
    values = np.array([[np.nan, 0.5, 1.0], [2.0, 3.0, 9.0]], np.float32)
    np.testing.assert_allclose(normalise_aux(values, spec), [[0, 0, 0], [0.5, 1, 1]])


def test_prepare_inputs_resizes_and_normalises():
    rgb = np.full((40, 60, 3), 255, np.uint8)
    aux = np.full((20, 30), 2.5, np.float32)  # smaller aux: resized to the colour size first
    spec = Preprocessing(input_size=(16, 24), aux=AuxNormalisation("depth", "m", 0.0, 5.0))
    rgb_in, aux_in = prepare_inputs(rgb, aux, spec)
    assert rgb_in.shape == (3, 16, 24) and aux_in.shape == (1, 16, 24)
    expected = (1.0 - np.array(spec.rgb_mean)) / np.array(spec.rgb_std)
    np.testing.assert_allclose(rgb_in[:, 0, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(aux_in, 0.5)


def test_prepare_inputs_native_size_and_missing_aux():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb_in, aux_in = prepare_inputs(rgb, None, Preprocessing(input_size=None))
    assert rgb_in.shape == (3, 10, 12) and not aux_in.any()


@pytest.mark.parametrize(
    "rgb, aux, fragment",
    [
        (np.zeros((4, 4), np.uint8), None, "HxWx3"),
        (np.zeros((4, 4, 3), np.float32), None, "uint8"),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 2), np.float32), "one channel"),
    ],
)
def test_prepare_inputs_rejects_bad_shapes(rgb, aux, fragment):
    with pytest.raises(PreprocessingError, match=fragment):
        prepare_inputs(rgb, aux, Preprocessing())


def test_bad_aux_spec_is_refused():
    with pytest.raises(PreprocessingError, match="unit"):
        AuxNormalisation("depth", "mm", 0, 1)
    with pytest.raises(PreprocessingError, match="empty"):
        AuxNormalisation("depth", "m", 2.0, 1.0)


def test_resize_labels_never_blends_ids():
    labels = np.array([[0, 7], [7, 0]], np.uint8)
    resized = resize_labels(labels, (5, 7))
    assert set(np.unique(resized)) == {0, 7}


def test_preprocessing_round_trips_through_dict():
    spec = Preprocessing(input_size=None, aux=AuxNormalisation("thermal", "celsius", 10.0, 40.0))
    assert Preprocessing.from_dict(spec.to_dict()) == spec


def test_checkpoint_round_trip_rebuilds_identical_model(tmp_path):
    ckpt = build_checkpoint()
    path = save_checkpoint(ckpt, tmp_path / "sub" / "model.pt")
    loaded = load_checkpoint(path)
    assert (loaded.method, loaded.classes, loaded.preprocessing) == (ckpt.method, ckpt.classes, ckpt.preprocessing)
    rgb, aux = torch.randn(1, 3, 32, 48), torch.rand(1, 1, 32, 48)
    original = ckpt.build_model().eval()
    rebuilt = loaded.build_model().eval()
    with torch.no_grad():
        torch.testing.assert_close(original(rgb, aux).logits, rebuilt(rgb, aux).logits)
    assert not list(tmp_path.joinpath("sub").glob("*.tmp")), "temporary file left behind"


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(foreign)


def test_checkpoint_with_weights_of_another_shape_is_refused(tmp_path):
    ckpt = build_checkpoint(num_classes=3)
    ckpt.num_classes = 5  # the weights were made for 3 classes
    with pytest.raises(CheckpointError, match="do not fit"):
        ckpt.build_model()


def test_checkpoint_of_another_architecture_version_is_refused_by_both_readers(tmp_path, monkeypatch):
    from rgbd_fusion_seg.models.methods.rgb_baseline import RGBBaseline
    from rgbd_fusion_seg.serving.model_serving import inspect_checkpoint

    path = save_checkpoint(build_checkpoint(), tmp_path / "model.pt")
    written = RGBBaseline.architecture_version
    assert torch.load(path, weights_only=True)["model"]["architecture"] == written
    monkeypatch.setattr(RGBBaseline, "architecture_version", written + 1)
    for read in (load_checkpoint, inspect_checkpoint):
        with pytest.raises(CheckpointError, match=rf"holds version {written} of method 'rgb'.*builds version "
                                                  rf"{written + 1}.*retrain"):
            read(path)


def test_stored_options_switch_weight_file_reads_off():
    from rgbd_fusion_seg.models.methods.rgb_baseline import RGBBaseline

    assert RGBBaseline.serving_options({"pretrained": True, "width": 3}) == {"pretrained": False, "width": 3}
    assert RGBBaseline.serving_options({"width": 3}) == {"width": 3}  # no option is added


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(build_checkpoint(), tmp_path / "last.pt")
    before = path.read_bytes()

    def exploding_save(obj, handle):
        handle.write(b"partial")
        raise KeyboardInterrupt  # as if the run were killed mid-write

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(build_checkpoint(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_engine_predicts_at_colour_size_from_a_checkpoint_file(tmp_path):
    path = save_checkpoint(build_checkpoint(num_classes=3), tmp_path / "m.pt")
    engine = SegmentationEngine.from_file(path, device="cpu")
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    depth = np.full((25, 35), 1.5, np.float32)
    prediction = engine.predict(rgb, depth, with_confidence=True)
    assert prediction.mask.shape == (50, 70) and prediction.mask.dtype == np.uint8
    assert prediction.mask.max() < 3
    assert prediction.confidence.shape == (50, 70)
    assert np.all(prediction.confidence >= 1 / 3 - 1e-5) and np.all(prediction.confidence <= 1 + 1e-5)


def test_engine_refuses_unknown_precision_and_device(tmp_path):
    ckpt = build_checkpoint()
    with pytest.raises(ValueError, match="precision"):
        SegmentationEngine(ckpt, device="cpu", precision="int3")
    with pytest.raises(ValueError, match="device"):
        SegmentationEngine(ckpt, device="tpu:7")


def test_engine_serves_a_fused_image_only_when_asked_and_only_where_there_is_one(tmp_path):
    checkpoint = build_checkpoint("sccosf", 3, input_size=(32, 48), options=SCCOSF_TINY)
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    aux = np.random.default_rng(1).random((50, 70), dtype=np.float32)
    plain = SegmentationEngine(checkpoint, device="cpu")
    with_fused = SegmentationEngine(checkpoint, device="cpu", extras=("fused",))
    def size(engine):
        return sum(p.numel() for p in engine.model.parameters())

    assert size(plain) < size(with_fused)  # the branch no one asked for is gone from the served network
    first, second = plain.predict(rgb, aux), with_fused.predict(rgb, aux)
    assert first.fused is None
    assert second.fused.shape == (50, 70, 3) and second.fused.dtype == np.uint8  # at the colour image's size
    np.testing.assert_array_equal(first.mask, second.mask)  # the fused branch does not change the masks
    with pytest.raises(ValueError, match="method 'rgb' has no extra output fused"):
        SegmentationEngine(build_checkpoint(), device="cpu", extras=("fused",))


def test_palette_colours_and_overlay():
    palette = default_palette(5)
    assert palette[0] == (0, 0, 0) and len(set(palette)) == 5
    mask = np.array([[0, 1], [4, 255]], np.uint8)
    coloured = colourise(mask, palette)
    assert tuple(coloured[0, 1]) == palette[1] and tuple(coloured[1, 1]) == (255, 255, 255)
    rgb = np.full((2, 2, 3), 100, np.uint8)
    blended = overlay(rgb, mask, palette, alpha=0.5)
    assert tuple(blended[0, 0]) == (100, 100, 100)  # background keeps the camera image
    assert not math.isclose(float(blended[0, 1].sum()), 300.0)
