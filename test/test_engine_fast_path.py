"""The engine's fast path (channels_last network and inputs, upsampling and argmax in channels_last, ids
narrowed on the device, the LUT colour mask) gives exactly the masks of the plain NCHW path."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_fusion_seg.core.checkpoint import Checkpoint
from rgbd_fusion_seg.core.engine import SegmentationEngine
from rgbd_fusion_seg.core.palette import colourise, default_palette
from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing, prepare_inputs
from rgbd_fusion_seg.models import build_model

NUM_CLASSES = 9
METHODS = {
    "rgb": {}, "mid": {}, "se": {}, "attention": {}, "rsfnet": {},
    "sccosf": {"encoder": "micro", "d_state": 4, "blocks_per_stage": 1, "reaw_width": 8},
    "sartm": {"encoder": "micro", "class_names": [f"c{i}" for i in range(NUM_CLASSES)], "text_standin": True},
}
# (network input size or None for the camera's own, camera size): resized, odd and native
SIZES = [((64, 96), (120, 160)), ((61, 90), (61, 90)), (None, (50, 70))]


def plain_masks(model, preprocessing: Preprocessing, rgb: np.ndarray, aux: np.ndarray) -> np.ndarray:
    """The straightforward path: NCHW throughout, int64 ids."""
    rgb_in, aux_in = prepare_inputs(rgb, aux, preprocessing)
    with torch.inference_mode():
        logits = model(torch.from_numpy(rgb_in)[None], torch.from_numpy(aux_in)[None]).logits
        logits = F.interpolate(logits.float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].argmax(dim=0).numpy()


def fitted_model(method: str):
    """A model fitted for a few steps to labels that follow the aux image: an untrained network mostly gives
    one class everywhere, and a constant mask would compare nothing."""
    torch.manual_seed(0)
    model = build_model(method, NUM_CLASSES, **METHODS[method]).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    rgb, aux = torch.randn(2, 3, 32, 48), torch.rand(2, 1, 32, 48)
    label = (aux[:, 0] * NUM_CLASSES).long().clamp(max=NUM_CLASSES - 1)
    for _ in range(6):
        loss = F.cross_entropy(model(rgb, aux).logits, label)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_fast_path_masks_are_bit_identical_to_the_plain_path(method):
    model = fitted_model(method)
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
