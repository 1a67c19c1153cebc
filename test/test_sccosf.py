"""SC-CoSF (models/methods/sccosf.py): shapes at even and odd sizes, the default's size against Table 3, the
fusion loss on hand-made images, compute_loss, the deploy form, ConvNeXt weight files, training on the
MFNet / FMB replicas and on MM5 with depth through the real config, train and evaluate paths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_fusion_seg.models import build_model
from rgbd_fusion_seg.models.base import SegOutput
from rgbd_fusion_seg.models.blocks import PretrainedWeightsMissing
from rgbd_fusion_seg.models.methods.sccosf import SCCoSF, ConvNeXtWeightsMismatch, SharedConvNeXt, convnext_weights_path
from rgbd_fusion_seg.models.sccosf_blocks import chroma, fusion_loss, positive_samples, sobel

MICRO = {"encoder": "micro", "d_state": 4, "expand": 1.0, "blocks_per_stage": 1, "reaw_width": 8}
EXPERIMENTS = Path(__file__).resolve().parents[1] / "config" / "experiments"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two contending with the other users of the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def inputs(n=2, height=64, width=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height, width, generator=generator), torch.rand(n, 1, height, width, generator=generator)


def micro_model(seed=0, **options):
    torch.manual_seed(seed)
    return build_model("sccosf", 9, **{**MICRO, **options})


def seg_loss(logits, target):
    return F.cross_entropy(logits, target, ignore_index=255)


# --- the network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 96), (61, 90)])
def test_logits_at_the_input_size_and_a_fused_image_in_0_1(size):
    model = micro_model()
    rgb, aux = inputs(2, *size)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.no_grad():
            output = model(rgb, aux)
        assert output.logits.shape == (2, 9, *size)
        fused = output.extras["fused"]
        assert fused.shape == (2, 3, *size) and fused.min() >= 0 and fused.max() <= 1
        assert torch.isfinite(output.logits).all()


def test_the_paper_scan_order_builds_and_changes_the_result():
    rgb, aux = inputs(1, 32, 32)
    with torch.no_grad():
        a = micro_model(scan_order="vmamba").eval()(rgb, aux).logits
        b = micro_model(scan_order="paper").eval()(rgb, aux).logits
    assert not torch.allclose(a, b)


def test_default_is_convnext_base_at_table_3_size_and_published_options_build():
    from torch.utils.flop_counter import FlopCounterMode

    figures = SCCoSF.published[0]
    with torch.device("meta"):
        model = build_model("sccosf", figures.num_classes)
        published = build_model("sccosf", figures.num_classes, **figures.options)
        served = model.deploy()
        image = torch.zeros(1, 3, *figures.size)
    params = sum(p.numel() for p in model.parameters())
    assert model.encoder.channels == (128, 256, 512, 1024)  # ConvNeXt-B
    assert abs(params / 1e6 - figures.params_m) <= 0.05  # 139.67 M: Table 3's size to 0.05 M
    assert sum(p.numel() for p in published.parameters()) == params
    reaw = sum(p.numel() for p in model.reaw.parameters())
    assert sum(p.numel() for p in served.parameters()) == params - reaw  # the node's form: no ReAW
    # Table 3's "FLOPs" can only be multiply-accumulates: the encoder's two passes (colour and aux) at its
    # size fit under the total as MACs (289.84 G), not as FLOPs (579.7 G).
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.encoder(image)
    encoder_gmacs = 2 * counter.get_total_flops() / 2e9
    assert encoder_gmacs < figures.gmacs < 2 * encoder_gmacs


def test_bad_options_are_refused_with_their_names():
    for options, message in (({"encoder": "huge"}, "unknown encoder 'huge'; available: micro, tiny, small, base"),
                             ({"scan_backend": "cuda"}, "unknown scan_backend 'cuda'"),
                             ({"scan_order": "zigzag"}, "unknown scan_order"),
                             ({"reaw_kernels": (2, 3)}, "reaw_kernels"),
                             ({"con_weight": -1.0}, "con_weight")):
        with pytest.raises(ValueError, match=message):
            micro_model(**options)


def test_the_aux_image_is_seen_by_the_same_encoder_as_three_equal_channels():
    model = micro_model().eval()
    seen = []
    model.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    rgb, aux = inputs(1, 32, 32)
    with torch.no_grad():
        model(rgb, aux)
    batch = seen[0]
    assert batch.shape == (2, 3, 32, 32)  # both modalities in one pass of the shared weights
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    assert torch.allclose(batch[1] * std + mean, aux[0].expand(3, -1, -1), atol=1e-6)
    assert torch.allclose(batch[0] * std + mean, rgb[0], atol=1e-6)


# --- fusion loss -------------------------------------------------------------------------------------------


def test_sobel_matches_a_hand_worked_3x3_example():
    image = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]]).view(1, 1, 3, 3)
    gx, gy = sobel(image)
    # MRFS's signs: x right minus left, y top minus bottom
    # centre: dx = (3 - 1) + 2 (6 - 4) + (10 - 7) = 9, dy = (1 - 7) + 2 (2 - 8) + (3 - 10) = -25
    assert gx[0, 0, 1, 1] == 9 and gy[0, 0, 1, 1] == -25
    # top-left corner with zero padding: dx = 2 (2 - 0) + (5 - 0) = 9, dy = 0 - (2 * 4 + 5) = -13
    assert gx[0, 0, 0, 0] == 9 and gy[0, 0, 0, 0] == -13


def test_positive_samples_are_gamma_08_rgb_and_the_aux_image_thrice():
    rgb, aux = inputs(1, 8, 8)
    j_r, j_i = positive_samples(rgb, aux, gamma=0.8)
    assert torch.allclose(j_r, rgb ** 0.8) and torch.equal(j_i, aux.expand(-1, 3, -1, -1))


def test_content_and_colour_terms_are_zero_at_their_targets():
    rgb, aux = inputs(1, 16, 16)
    j_r, j_i = positive_samples(rgb, aux)
    _, parts = fusion_loss(torch.maximum(j_r, j_i), rgb, aux)
    assert parts["con"] < 1e-7 and parts["color"] > 1e-3
    _, parts = fusion_loss(j_r, rgb, aux)
    assert parts["color"] < 1e-7 and parts["con"] > 1e-3
    grey = torch.full((1, 3, 16, 16), 0.3)
    cb, cr = chroma(grey)
    assert torch.allclose(cb, torch.full_like(cb, 0.5)) and torch.allclose(cr, torch.full_like(cr, 0.5))


def test_gradient_term_against_a_hand_computed_value():
    fused = torch.zeros(1, 3, 3, 3)
    rgb = torch.zeros(1, 3, 3, 3)
    aux = torch.zeros(1, 1, 3, 3)
    aux[0, 0, 1, 1] = 1.0  # one bright pixel: the Sobel maps are the kernels turned by 180 degrees
    gx, gy = sobel(aux)
    assert gx[0, 0].tolist() == [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
    assert gy[0, 0].tolist() == [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
    total, parts = fusion_loss(fused, rgb, aux, con_weight=0.0, color_weight=0.0)
    # max(dx J_R = 0, dx J_I) keeps the positive responses, 1 + 2 + 1 in x and in y; 0.5 |0 - max| per
    # direction, averaged over the 9 pixels (every channel alike): 0.5 (4 + 4) / 9
    assert torch.isclose(parts["grad"], torch.tensor(4 / 9)) and torch.isclose(total, torch.tensor(4 / 9))
    _, parts_abs = fusion_loss(fused, rgb, aux, grad_abs=True)
    assert torch.isclose(parts_abs["grad"], 0.5 * (gx.abs() + gy.abs()).mean())


def _mrfs_fusion_loss(fused, rgb, aux, valid):
    """MRFS's FusionLoss (FMB/utils/loss_utils.py) written out again in numpy, independently of sccosf_blocks:
    Fuse = output * Mask on images zero-padded by the crop, Sobelxy per RGB channel with kernelx
    [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and kernely [[1, 2, 1], [0, 0, 0], [-1, -2, -1]] (F.conv2d, i.e.
    cross-correlation, padding 1), plain L1 means, 0.5 con + (0.5 grad_x + 0.5 grad_y) + (Cb + Cr)."""
    kernel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    kernel_y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float64)

    def correlate(image, kernel):  # image N x C x H x W, zero padding
        padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))
        height, width = image.shape[-2:]
        return sum(kernel[a, b] * padded[..., a : a + height, b : b + width] for a in range(3) for b in range(3))

    def cr_cb(image):
        y = 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
        return (image[:, 0] - y) * 0.713 + 0.5, (image[:, 2] - y) * 0.564 + 0.5

    valid = valid.astype(np.float64)
    vis, ir = rgb * valid, np.repeat(aux * valid, 3, axis=1)  # MRFS's crops pad the images with 0
    fuse = fused * valid
    r_vis = np.clip(vis, 0, 1) ** 0.8  # adjust_gamma(vis, 0.8, gain 1)
    r_ir = ir  # adjust_contrast(ir, 1) is the identity
    con = np.abs(fuse - np.maximum(r_vis, r_ir)).mean()
    grad = sum(0.5 * np.abs(correlate(fuse, k) - np.maximum(correlate(r_vis, k), correlate(r_ir, k))).mean()
               for k in (kernel_x, kernel_y))
    (cr_f, cb_f), (cr_v, cb_v) = cr_cb(fuse), cr_cb(r_vis)
    color = np.abs(cb_f - cb_v).mean() + np.abs(cr_f - cr_v).mean()
    return 0.5 * con + grad + color, grad


@pytest.mark.parametrize("padded", [False, True])
def test_fusion_loss_equals_mrfs_written_out_independently(padded):
    rgb, aux = inputs(2, 20, 24, seed=3)
    fused = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(4))
    valid = torch.ones(2, 1, 20, 24, dtype=torch.bool)
    if padded:  # a zoomed-out crop: image in the middle, padding on three sides
        valid[:, :, :3] = valid[:, :, -5:] = valid[:, :, :, :2] = False
    expected, expected_grad = _mrfs_fusion_loss(fused.double().numpy(), rgb.double().numpy(), aux.double().numpy(),
                                                valid.numpy())
    total, parts = fusion_loss(fused, rgb, aux, valid if padded else None)
    assert np.isclose(float(total), expected, rtol=1e-5) and np.isclose(float(parts["grad"]), expected_grad, rtol=1e-5)
    # the y sign matters (signed maxima): bottom-minus-top kernels give another gradient term
    flipped = torch.flip
    _, parts_upside_down = fusion_loss(flipped(fused, (2,)), flipped(rgb, (2,)), flipped(aux, (2,)),
                                       flipped(valid, (2,)) if padded else None)
    assert not np.isclose(float(parts_upside_down["grad"]), expected_grad, rtol=1e-3)


def test_padding_does_not_count_and_ignore_labelled_pixels_do():
    model = micro_model()
    rgb, aux = inputs(1, 16, 16)
    fused = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    label = torch.randint(0, 9, (1, 16, 16), generator=torch.Generator().manual_seed(2))
    label[:, :, 10:] = 255  # columns 10..15 ignore-labelled (FMB's unlabelled regions; the crop's padding too)
    valid = torch.ones(1, 16, 16, dtype=torch.bool)
    valid[:, :, 13:] = False  # of those, columns 13..15 are crop padding

    def fusion_part(image):
        output = SegOutput(torch.zeros(1, 9, 16, 16), {"fused": image})
        return model.compute_loss(output, {"rgb": rgb, "aux": aux, "label": label, "valid": valid}, seg_loss)[1]["fusion"]

    in_padding, in_ignore = fused.clone(), fused.clone()
    in_padding[..., 15:] = 1.0  # two columns away from the image: outside every 3x3 Sobel window of it
    in_ignore[..., 11:13] = 1.0  # labelled 255 but image content (out of the labelled pixels' Sobel windows)
    assert fusion_part(in_padding) == pytest.approx(fusion_part(fused), rel=1e-6)
    assert abs(fusion_part(in_ignore) - fusion_part(fused)) > 1e-3


def test_augmented_samples_mark_padding_and_not_ignore_labelled_pixels(tmp_path):
    from rgbd_fusion_seg.offline.datasets import replicas
    from rgbd_fusion_seg.offline.datasets.augment import Augmentation
    from rgbd_fusion_seg.offline.datasets.fmb import FMBDataset

    replicas.write_fmb_replica(tmp_path)  # 48x64 frames whose 2-pixel border is FMB's unlabelled (0)
    zoom_out = Augmentation(hflip=False, scale=(0.5, 0.5), crop=(48, 64))  # a window twice the frame's size
    dataset = FMBDataset(tmp_path, split="train", fmb_classes=14, augment=True, augmentation=zoom_out)
    plain = FMBDataset(tmp_path, split="train", fmb_classes=14)
    torch.manual_seed(0)
    sample = dataset[0]
    valid, label = sample["valid"], sample["label"]
    assert valid.dtype == torch.bool and valid.shape == label.shape == (48, 64)
    assert (label[~valid] == 255).all() and 0.6 < float((~valid).float().mean()) < 0.9  # 3/4 of the window
    ignored_image = (label == 255) & valid  # the frame's own unlabelled border, shrunk by half
    assert ignored_image.any() and (label[valid] != 255).any()
    assert "valid" not in plain[0]  # no augmentation, no padding


def test_compute_loss_is_ce_plus_weighted_fusion_and_reports_every_part():
    model = micro_model(fusion_weight=0.25, con_weight=0.5, grad_weight=1.0, color_weight=2.0)
    rgb, aux = inputs(2, 32, 48)
    label = torch.randint(0, 9, (2, 32, 48), generator=torch.Generator().manual_seed(0))
    label[:, :4] = 255
    batch = {"rgb": rgb, "aux": aux, "label": label}
    output = model(rgb, aux)
    loss, parts = model.compute_loss(output, batch, seg_loss)
    assert set(parts) == {"seg", "fusion", "con", "grad", "color"}
    assert np.isclose(parts["fusion"], 0.5 * parts["con"] + parts["grad"] + 2.0 * parts["color"], rtol=1e-5)
    assert np.isclose(float(loss.detach()), parts["seg"] + 0.25 * parts["fusion"], rtol=1e-5)
    loss.backward()
    assert model.reaw.reconstruct[-2].weight.grad.abs().sum() > 0  # the fusion head learns
    assert model.fusions[0].lrb.cross.cross.ssm1.x_proj.grad.abs().sum() > 0


# --- deploy -------------------------------------------------------------------------------------------------


def test_deploy_drops_reaw_unless_fused_is_kept_and_the_logits_do_not_change():
    model = micro_model()
    rgb, aux = inputs(1, 61, 90)
    with torch.no_grad():
        expected = model.eval()(rgb, aux)
    model.train()
    served = model.deploy()
    assert served is not model and not served.training and served.reaw is None
    assert not any(name.startswith("reaw.") for name in served.state_dict())
    assert model.reaw is not None and model.training  # the training model is kept
    with torch.no_grad():
        output = served(rgb, aux)
        kept = model.deploy(keep_extras=("fused",))(rgb, aux)
    assert output.extras == {} and torch.equal(output.logits, expected.logits)
    assert torch.equal(kept.logits, expected.logits) and torch.equal(kept.extras["fused"], expected.extras["fused"])
    with pytest.raises(KeyError, match="fusion loss needs the fused image"):
        served.compute_loss(output, {"rgb": rgb, "aux": aux, "label": torch.zeros(1, 61, 90, dtype=torch.long)}, seg_loss)


# --- ConvNeXt weight files --------------------------------------------------------------------------------


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    path, _ = convnext_weights_path("micro")
    path.parent.mkdir(parents=True)
    return path


def test_missing_weight_file_names_the_file_and_folder(torch_home):
    with pytest.raises(PretrainedWeightsMissing, match=rf"{torch_home.name}.*folder {torch_home.parent}"):
        micro_model(pretrained=True)


def test_a_file_that_does_not_fit_names_the_file_and_the_first_differing_key(torch_home):
    torch.manual_seed(3)
    state = SharedConvNeXt("micro", pretrained=False).net.state_dict()
    renamed = dict(state)
    renamed["stages.0.blocks.0.conv_dw.weightx"] = renamed.pop("stages.0.blocks.0.conv_dw.weight")
    torch.save(renamed, torch_home)
    with pytest.raises(ConvNeXtWeightsMismatch, match=rf"{torch_home}.*'stages.0.blocks.0.conv_dw.weight' \(missing\)"):
        micro_model(pretrained=True)
    resized = dict(state)
    resized["stem.0.weight"] = torch.zeros(8, 3, 4, 4)
    torch.save(resized, torch_home)
    with pytest.raises(ConvNeXtWeightsMismatch, match=r"'stem.0.weight' \(shape \(8, 3, 4, 4\), the encoder has \(16, 3, 4, 4\)\)"):
        micro_model(pretrained=True)


def test_a_fitting_file_loads_also_in_the_official_release_layout(torch_home):
    torch.manual_seed(3)
    state = SharedConvNeXt("micro", pretrained=False).net.state_dict()
    torch.save({**state, "head.norm.weight": torch.ones(128), "head.norm.bias": torch.zeros(128)}, torch_home)
    loaded = micro_model(pretrained=True, seed=9).encoder.net.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    official = {"model": {_official_name(key): value for key, value in state.items()}}
    torch.save(official, torch_home)
    loaded = micro_model(pretrained=True, seed=9).encoder.net.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())


def _official_name(key: str) -> str:
    """timm's ConvNeXt key -> the name in facebookresearch/ConvNeXt's release files."""
    import re

    key = key.replace("stem.", "downsample_layers.0.")
    key = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", key)
    key = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", key)
    return key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")


# --- training through the real paths ---------------------------------------------------------------------


MICRO_OVERRIDES = [f"model.options.{key}={value}" for key, value in MICRO.items()] + [
    "model.pretrained=false", "train.max_steps=2", "train.batch_size=2", "data.augmentation.crop=[32,48]",
    "train.num_workers=0", "train.amp=false", "train.checkpoint_every_steps=null",
]


@pytest.mark.parametrize(("dataset", "write"), [("mfnet", "write_mfnet_replica"), ("fmb", "write_fmb_replica")])
def test_shipped_config_trains_and_evaluates_on_the_replica(dataset, write, tmp_path):
    from rgbd_fusion_seg.core.checkpoint import load_checkpoint
    from rgbd_fusion_seg.offline.config import load_config
    from rgbd_fusion_seg.offline.datasets import replicas
    from rgbd_fusion_seg.offline.evaluate import evaluate_checkpoint
    from rgbd_fusion_seg.offline.train import train

    root = tmp_path / "data"
    getattr(replicas, write)(root)
    config = load_config(EXPERIMENTS / dataset / "sccosf.yaml", MICRO_OVERRIDES, data_root=root, out_dir=tmp_path / "run")
    assert (config.train.optimizer, config.train.lr, config.train.epochs) == ("adamw", 6e-5, 500)
    assert config.data.num_classes == {"mfnet": 9, "fmb": 14}[dataset]
    path = train(config, device="cpu", log=lambda message: None)
    checkpoint = load_checkpoint(path)
    assert checkpoint.method == "sccosf" and checkpoint.train_state["global_step"] == 2
    assert checkpoint.options["encoder"] == "micro" and checkpoint.options["pretrained"] is False
    result = evaluate_checkpoint(path, device="cpu")
    assert 0.0 <= result["miou"] <= 1.0 and np.sum(result["confusion_matrix"]) > 0


def test_trains_on_mm5_with_depth_and_evaluates(tiny_config):
    from rgbd_fusion_seg.core.checkpoint import load_checkpoint
    from rgbd_fusion_seg.offline.evaluate import evaluate_checkpoint
    from rgbd_fusion_seg.offline.train import train

    config = tiny_config(
        model={"method": "sccosf", "options": dict(MICRO)},
        data={"aux_folder": "D_FocusN", "rgb_mean": [0.0, 0.0, 0.0], "rgb_std": [1.0, 1.0, 1.0]},
        train={"epochs": 1, "max_steps": 2, "optimizer": "adamw", "lr": 6e-5},
    )
    path = train(config, device="cpu", log=lambda message: None)
    checkpoint = load_checkpoint(path)
    assert checkpoint.method == "sccosf" and checkpoint.train_state["global_step"] == 2
    assert any(key.startswith("reaw.") for key in checkpoint.state_dict)  # trained with the fusion head
    result = evaluate_checkpoint(path, device="cpu")
    assert 0.0 <= result["miou"] <= 1.0 and np.sum(result["confusion_matrix"]) > 0


def test_a_checkpoint_serves_anywhere_and_a_config_must_feed_rgb_in_0_1(tiny_config):
    from rgbd_fusion_seg.models.methods.sccosf import SCCoSF
    from rgbd_fusion_seg.offline.config import ConfigError

    stored = SCCoSF.serving_options({"encoder": "micro", "scan_backend": "mamba_ssm", "pretrained": True})
    assert stored == {"encoder": "micro", "scan_backend": "auto", "pretrained": False}
    model = {"method": "sccosf", "options": {"encoder": "micro"}}
    with pytest.raises(ConfigError, match=r"data.rgb_mean.*needs RGB in \[0, 1\]"):
        tiny_config(model=model)  # the tiny config normalises with ImageNet's statistics
    assert tiny_config(model=model, data={"rgb_mean": [0.0, 0.0, 0.0], "rgb_std": [1.0, 1.0, 1.0]})
