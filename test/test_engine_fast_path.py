"""The engine's fast path (channels_last network and inputs, upsampling and argmax in channels_last, ids
narrowed on the device, the LUT colour mask) gives exactly the masks of the plain NCHW path."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rgbd_fusion_seg.core.checkpoint import Checkpoint
from rgbd_fusion_seg.core.engine import SegmentationEngine
from rgbd_fusion_seg.core.palette import colourise, default_palette
from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing
from rgbd_fusion_seg.offline.backend_benchmark import plain_masks
from rgbd_fusion_seg.offline.benchmarking import fitted_model

NUM_CLASSES = 9
METHODS = {
    "rgb": {}, "mid": {}, "se": {}, "attention": {},
    "rsfnet": {"encoders": "resnet18-resnet18"},  # its RSF blocks and decoder; the paper's encoders cost 3x here
    "sccosf": {"encoder": "micro", "d_state": 4, "blocks_per_stage": 1, "reaw_width": 8},
    "sartm": {"encoder": "micro", "class_names": [f"c{i}" for i in range(NUM_CLASSES)], "text_standin": True},
}
# (network input size or None for the camera's own, camera size): resized, odd and native
SIZES = [((64, 96), (120, 160)), ((61, 90), (61, 90)), (None, (50, 70))]


@pytest.mark.parametrize("method", METHODS)
def test_fast_path_masks_are_bit_identical_to_the_plain_path(method):
    model = fitted_model(method, NUM_CLASSES, METHODS[method])
    checkpoint = Checkpoint(method, NUM_CLASSES, [f"c{i}" for i in range(NUM_CLASSES)], default_palette(NUM_CLASSES),
                            Preprocessing(), model.state_dict(), options=METHODS[method])
    engine = SegmentationEngine(checkpoint, device="cpu")
    reference_model = model.deploy()
    for input_size, camera in SIZES:
        preprocessing = Preprocessing(input_size=input_size, aux=AuxNormalisation("depth", "m", 0.0, 5.0))
        engine.checkpoint = replace(checkpoint, preprocessing=preprocessing)  # the same network, other sizes
        rng = np.random.default_rng(1)
        rgb = rng.integers(0, 256, (*camera, 3), dtype=np.uint8)
        aux = rng.random(camera, dtype=np.float32) * 5.0
        mask = engine.predict(rgb, aux).mask
        assert mask.dtype == np.uint8 and mask.shape == camera
        reference = plain_masks(reference_model, preprocessing, rgb, aux)
        assert len(np.unique(reference)) > 1, "a constant mask would compare nothing"
        np.testing.assert_array_equal(mask, reference, err_msg=f"{method} at {input_size} for {camera}")


def test_lut_colour_mask_equals_the_table_lookup():
    palette = default_palette(9)
    mask = np.random.default_rng(0).integers(0, 12, (48, 64)).astype(np.uint8)
    mask[0, 0] = 255  # the ignore id: white
    table = np.full((256, 3), 255, np.uint8)
    table[:9] = np.asarray(palette, np.uint8)
    np.testing.assert_array_equal(colourise(mask, palette), table[mask])
    np.testing.assert_array_equal(colourise(mask[:, ::2], palette), table[mask[:, ::2]])  # a strided view
    wide = mask.astype(np.uint16) * 40  # ids beyond 255 take NumPy's path
    assert colourise(wide, default_palette(300)).shape == (48, 64, 3)


def _engine(method="rgb", **options):
    model = fitted_model(method, NUM_CLASSES, METHODS[method])
    preprocessing = Preprocessing(input_size=(32, 48), aux=AuxNormalisation("depth", "m", 0.0, 5.0))
    checkpoint = Checkpoint(method, NUM_CLASSES, [f"c{i}" for i in range(NUM_CLASSES)], default_palette(NUM_CLASSES),
                            preprocessing, model.state_dict(), options=METHODS[method])
    return SegmentationEngine(checkpoint, device="cpu", **options), model, preprocessing


def test_a_network_that_does_not_compile_is_served_eagerly_and_says_why(monkeypatch):
    import torch

    def broken_compile(model, **options):
        def fails(*args):
            raise RuntimeError("inductor: no C++ compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    engine, model, preprocessing = _engine(compile=True)
    assert engine.backend == "torch (compiled)"
    engine.warm_up(32, 48)
    assert engine.backend == "torch" and "torch.compile failed (RuntimeError: inductor: no C++ compiler)" in engine.compile_note
    assert "serving eagerly" in engine.describe_runtime()
    rgb, aux = np.full((40, 56, 3), 90, np.uint8), np.linspace(0, 5, 40 * 56, dtype=np.float32).reshape(40, 56)
    np.testing.assert_array_equal(engine.predict(rgb, aux).mask, plain_masks(model.deploy(), preprocessing, rgb, aux))


def test_precision_runs_as_asked_or_says_why():
    from rgbd_fusion_seg.core.engine import cpu_has_native_bf16

    fp16, _, _ = _engine(precision="fp16")
    assert fp16.precision == "fp32" and "a CPU emulates half precision" in fp16.describe_runtime()
    bf16, _, _ = _engine(precision="bf16")
    assert bf16.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert ("no bf16 instructions" in bf16.precision_note) != cpu_has_native_bf16()


@pytest.mark.slow
def test_compiled_network_gives_the_masks_of_the_plain_path():
    engine, model, preprocessing = _engine(compile=True)
    engine.warm_up(32, 48)
    assert engine.backend == "torch (compiled)" and engine.compile_note == "", engine.compile_note
    rng = np.random.default_rng(3)
    rgb, aux = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.random((40, 56), dtype=np.float32) * 5.0
    reference = plain_masks(model.deploy(), preprocessing, rgb, aux)
    assert len(np.unique(reference)) > 1
    assert np.mean(engine.predict(rgb, aux).mask == reference) >= 0.999  # inductor may reorder float sums


def test_pinned_inputs_keep_one_buffer_per_input_while_its_shape_holds():
    """The CUDA path's host staging (page-locking itself needs CUDA: here the same buffers, unpinned)."""
    import torch

    from rgbd_fusion_seg.core.engine import PinnedInputs

    staging = PinnedInputs(pin_memory=False)
    rng = np.random.default_rng(0)
    first, second, other = (rng.random(shape, dtype=np.float32) for shape in ((3, 8, 10), (3, 8, 10), (3, 6, 10)))
    on_device = staging.to_device("rgb", first, torch.device("cpu"))
    buffer = staging.buffers["rgb"]
    np.testing.assert_array_equal(on_device[0].numpy(), first)
    np.testing.assert_array_equal(staging.to_device("rgb", second, torch.device("cpu"))[0].numpy(), second)
    assert staging.buffers["rgb"] is buffer  # reused: no allocation per frame
    np.testing.assert_array_equal(staging.to_device("rgb", other, torch.device("cpu"))[0].numpy(), other)
    assert staging.buffers["rgb"] is not buffer and staging.buffers["rgb"].shape == (1, 3, 6, 10)


def test_the_cpu_path_stages_nothing():
    engine, _, _ = _engine()
    assert engine._inputs is None  # page-locked staging only where a device copy follows (CUDA)
