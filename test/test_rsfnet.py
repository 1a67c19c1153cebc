"""RSFNet: encoder pairs, RSF gating, re-parameterisation, confidence loss, pseudo-labels, serving, training."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_fusion_seg.models import build_model, method_class
from rgbd_fusion_seg.models.methods.rsfnet import PAPER_ENCODER_PAIRS
from rgbd_fusion_seg.models.reparam import RepConvKxK
from rgbd_fusion_seg.models.rsf_blocks import ResidualSpatialFusion

NUM_CLASSES = 5
SMALL = "resnet18-resnet18"  # the fastest pair, for tests about everything but the encoders


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters far from the identity, so that folding them is tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
            module.bias.data.copy_(0.6 * torch.rand(n, generator=generator) - 0.3)


def inputs(n=2, height=32, width=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height, width, generator=generator), torch.rand(n, 1, height, width, generator=generator)


# --- the network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoders", PAPER_ENCODER_PAIRS)
def test_each_paper_encoder_pair_gives_logits_and_confidences(encoders):
    torch.manual_seed(0)
    model = build_model("rsfnet", NUM_CLASSES, encoders=encoders).eval()
    rgb, aux = inputs(n=1, height=36, width=44)  # not a multiple of 32
    with torch.no_grad():
        output = model(rgb, aux)
    assert output.logits.shape == (1, NUM_CLASSES, 36, 44)
    confidence = output.extras["confidence"]
    assert confidence.shape == (1, 2)
    assert bool(((confidence > 0) & (confidence < 1)).all())


def test_unknown_encoder_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="resnet99"):
        build_model("rsfnet", NUM_CLASSES, encoders="resnet99-resnet18")
    with pytest.raises(ValueError, match="rgbnet-auxnet"):
        build_model("rsfnet", NUM_CLASSES, encoders="resnet50")
    with pytest.raises(ValueError, match="odd"):
        build_model("rsfnet", NUM_CLASSES, encoders=SMALL, kernel_size=4)


def test_rsf_gate_adds_the_fused_part_scaled_by_the_confidence():
    """F_hat = F_tilde + p_hat * Z_hat: with p_hat = 0 each modality keeps its recalibrated, reduced map; the
    fused part of one modality depends on the other modality (cross spatial weighting)."""
    torch.manual_seed(0)
    rsf = ResidualSpatialFusion(rgb_channels=32, aux_channels=16, channels=24, hidden=8, kernel_size=5).eval()
    f_rgb, f_aux = torch.randn(2, 32, 9, 11), torch.randn(2, 16, 9, 11)
    zero, one = torch.zeros(2, 1), torch.ones(2, 1)
    with torch.no_grad():
        gated_off = rsf(f_rgb, f_aux, zero, zero)
        assert torch.equal(gated_off[0], rsf.recalibrate[0](f_rgb))
        assert torch.equal(gated_off[1], rsf.recalibrate[1](f_aux))
        full = rsf(f_rgb, f_aux, one, one)
        half = rsf(f_rgb, f_aux, 0.5 * one, one)
        other_aux = rsf(f_rgb, torch.randn_like(f_aux), one, one)
    assert torch.allclose(half[0] - gated_off[0], 0.5 * (full[0] - gated_off[0]), atol=1e-6)
    assert torch.equal(half[1], full[1])  # the aux gate alone scales the aux output
    assert not torch.allclose(other_aux[0], full[0])  # RGB's fused part is weighted by aux


# --- structural re-parameterisation --------------------------------------------------------------------


@pytest.mark.parametrize(("in_channels", "out_channels", "kernel_size"), [(8, 8, 5), (6, 10, 3), (4, 4, 7)])
def test_merged_block_equals_the_multi_branch_block(in_channels, out_channels, kernel_size):
    torch.manual_seed(0)
    block = RepConvKxK(in_channels, out_channels, kernel_size)
    randomise_batchnorm(block)
    block.eval()
    merged = block.merged_conv()
    assert merged.kernel_size == (kernel_size, kernel_size) and merged.bias is not None
    x = torch.randn(2, in_channels, 13, 17)
    with torch.no_grad():
        assert torch.allclose(merged(x), block(x), atol=1e-4)


def test_deploy_copy_keeps_the_training_model_and_the_weights_dtype():
    from rgbd_fusion_seg.models.reparam import deploy_copy

    torch.manual_seed(0)
    net = torch.nn.Sequential(RepConvKxK(4, 6, 5)).double().train()
    randomise_batchnorm(net)
    deployed = deploy_copy(net)
    assert net.training and isinstance(net[0], RepConvKxK)  # the training model is left as it was
    assert not deployed.training and type(deployed[0]) is torch.nn.Conv2d
    assert deployed[0].weight.dtype == torch.float64
    x = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(deployed(x), net.eval()(x), atol=1e-10)  # exact up to float64 rounding


def test_deploy_form_equals_the_training_form():
    torch.manual_seed(0)
    model = build_model("rsfnet", NUM_CLASSES, encoders="resnet50-resnet18")
    randomise_batchnorm(model)
    model.eval()
    deployed = model.deploy(keep_extras=("confidence",))
    assert sum(isinstance(m, RepConvKxK) for m in model.modules()) == 8  # 4 stages x 2 modalities, kept
    assert not any(isinstance(m, RepConvKxK) for m in deployed.modules())
    assert model.deep_heads is not None and deployed.deep_heads is None  # the training model keeps its heads
    assert sum(p.numel() for p in deployed.parameters()) < sum(p.numel() for p in model.parameters())
    rgb, aux = inputs(n=1, height=61, width=90)  # odd: every decoder scale rounds
    with torch.no_grad():
        expected, served = model(rgb, aux), deployed(rgb, aux)
        plain = model.deploy()(rgb, aux)
    assert served.logits.shape == (1, NUM_CLASSES, 61, 90)
    assert torch.allclose(served.logits, expected.logits, atol=1e-4)
    assert torch.allclose(served.extras["confidence"], expected.extras["confidence"], atol=1e-5)
    assert set(plain.extras) == set() and torch.allclose(plain.logits, expected.logits, atol=1e-4)
    with pytest.raises(ValueError, match="fused"):
        model.deploy(keep_extras=("fused",))


# --- the authors' sizes ----------------------------------------------------------------------------------


def measured_at_published_size(figures, deploy=True):
    """(params M, GMACs) of the deploy form built for `figures`, counted on the meta device (no compute)."""
    from rgbd_fusion_seg.offline.benchmarking import count_flops

    with torch.device("meta"):
        model = build_model("rsfnet", figures.num_classes, **figures.options)
        model = model.deploy() if deploy else model.eval()
        rgb, aux = torch.zeros(1, 3, *figures.size), torch.zeros(1, 1, *figures.size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return params, count_flops(model, rgb, aux) / 2e9


def test_published_figures_are_table_iii_and_the_authors_code():
    published = method_class("rsfnet").published
    table = {f.label: f for f in published if f.source == "RSFNet paper, Table III"}
    assert set(table) == set(PAPER_ENCODER_PAIRS)
    code = [f.label for f in published if f.source.startswith("RSFNet public code")]
    assert code == ["resnet50-resnet18"]
    assert all(f.size == (480, 640) and f.num_classes == 9 and f.options == {"encoders": f.label} for f in published)
    # Table III's figures are the model's: its parameters and multiply-adds (the table's "FLOPs") at 480x640.
    row = table["resnet50-resnet18"]
    assert measured_at_published_size(row) == pytest.approx((row.params_m, row.gmacs), rel=0.02)


@pytest.mark.parametrize("figures", method_class("rsfnet").published, ids=lambda f: f"{f.label}, {f.source[:12]}")
def test_deploy_form_has_the_published_size_and_compute(figures):
    """Within 1 % of the authors' code (measured at 480x640), within 2 % of the paper's Table III."""
    params, gmacs = measured_at_published_size(figures)
    tolerance = 0.02 if "Table III" in figures.source else 0.01
    assert params == pytest.approx(figures.params_m, rel=tolerance)
    assert gmacs == pytest.approx(figures.gmacs, rel=tolerance)


# --- deep supervision ------------------------------------------------------------------------------------


def test_deep_supervision_heads_train_on_the_summed_eighth_and_sixteenth_maps():
    torch.manual_seed(0)
    model = build_model("rsfnet", NUM_CLASSES, encoders=SMALL, reg_weight=0.0, deep_supervision=0.4)
    rgb, aux = inputs(height=36, width=44)
    output = model.train()(rgb, aux)
    assert output.extras["deep_logits_8"].shape == output.extras["deep_logits_16"].shape == (2, NUM_CLASSES, 36, 44)
    with torch.no_grad():
        assert set(model.eval()(rgb, aux).extras) == {"confidence"}  # the deep heads run in training only
    label = torch.zeros(2, 36, 44, dtype=torch.long)
    mean_loss = lambda logits, _: logits.mean()  # noqa: E731 - tells the three terms apart
    loss, parts = model.compute_loss(output, {"label": label}, mean_loss)
    deep = output.extras["deep_logits_8"].mean() + output.extras["deep_logits_16"].mean()
    expected = (output.logits.mean() + 0.4 * deep).detach()
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-6)
    assert parts["deep"] == pytest.approx(float(deep.detach()), abs=1e-6)
    without = build_model("rsfnet", NUM_CLASSES, encoders=SMALL, deep_supervision=0.0).train()
    assert without.deep_heads is None and set(without(rgb, aux).extras) == {"confidence"}
    with pytest.raises(ValueError, match="deep_supervision"):
        build_model("rsfnet", NUM_CLASSES, encoders=SMALL, deep_supervision=-1.0)


def test_pretrained_densenet_loads_the_torchvision_file_with_its_old_key_names(tmp_path, monkeypatch):
    import re

    import torchvision

    from rgbd_fusion_seg.models.blocks import PretrainedWeightsMissing, imagenet_weights_path
    from rgbd_fusion_seg.models.encoders import DenseNetEncoder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    path, _ = imagenet_weights_path("densenet121")
    with pytest.raises(PretrainedWeightsMissing, match=re.escape(str(path))):
        build_model("rsfnet", NUM_CLASSES, encoders="densenet121-densenet121", pretrained=True)
    torch.manual_seed(3)
    state = torchvision.models.densenet121(weights=None).state_dict()
    # the published file spells "norm1" as "norm.1" (torchvision renames on load)
    old_names = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
    assert any(".norm.1." in k for k in old_names)
    path.parent.mkdir(parents=True)
    torch.save(old_names, path)
    encoder = DenseNetEncoder("densenet121", pretrained=True)
    loaded = encoder.stages[1][1].denselayer1.norm1.running_var  # pool0, denseblock1
    assert torch.equal(loaded, state["features.denseblock1.denselayer1.norm1.running_var"])
    assert torch.equal(encoder.stages[0][0].weight, state["features.conv0.weight"])


def test_pretrained_aux_encoder_keeps_the_rgb_filters_and_sees_the_image_thrice(tmp_path, monkeypatch):
    import torchvision

    from rgbd_fusion_seg.models.blocks import imagenet_weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.manual_seed(4)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path, _ = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    model = build_model("rsfnet", NUM_CLASSES, encoders=SMALL, pretrained=True).eval()
    for encoder in (model.rgb_encoder, model.aux_encoder):
        assert torch.equal(encoder.stages[0][0].weight, state["conv1.weight"])  # 3 input channels, as published
    seen = []
    model.aux_encoder.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    rgb, aux = inputs()
    with torch.no_grad():
        model(rgb, aux)
    assert torch.equal(seen[0], aux.repeat(1, 3, 1, 1))  # the one-channel image, repeated, unscaled


# --- loss ------------------------------------------------------------------------------------------------


def test_loss_adds_lambda_times_smooth_l1_of_the_confidences():
    model = build_model("rsfnet", NUM_CLASSES, encoders=SMALL, reg_weight=0.3)
    logits = torch.zeros(2, NUM_CLASSES, 4, 4)
    from rgbd_fusion_seg.models import SegOutput

    predicted = torch.tensor([[0.9, 0.2], [0.5, 0.5]])
    target = torch.tensor([[0.1, 0.2], [0.5, 0.0]])
    output = SegOutput(logits, {"confidence": predicted})
    batch = {"label": torch.zeros(2, 4, 4, dtype=torch.long), "confidence_target": target}
    loss, parts = model.compute_loss(output, batch, lambda logits, label: torch.tensor(1.5))
    # errors 0.8, 0, 0, 0.5 (all < 1): 0.5 e^2, summed over the two modalities, averaged over the images
    regression = (0.5 * 0.8**2 + 0.5 * 0.5**2) / 2
    assert parts["confidence"] == pytest.approx(regression)
    assert float(loss) == pytest.approx(1.5 + 0.3 * regression)
    with pytest.raises(KeyError, match="confidence_target"):
        model.compute_loss(output, {"label": batch["label"]}, lambda logits, label: torch.tensor(1.5))
    without = build_model("rsfnet", NUM_CLASSES, encoders=SMALL, reg_weight=0.0)
    loss, parts = without.compute_loss(output, {"label": batch["label"]}, lambda logits, label: torch.tensor(1.5))
    assert float(loss) == 1.5 and "confidence" not in parts


def test_gradients_reach_both_encoders_and_the_confidence_heads():
    torch.manual_seed(0)
    model = build_model("rsfnet", NUM_CLASSES, encoders=SMALL).train()
    rgb, aux = inputs()
    label = torch.randint(0, NUM_CLASSES, (2, 32, 40))
    batch = {"label": label, "confidence_target": torch.tensor([[0.3, 0.7], [0.6, 0.1]])}
    loss, _ = model.compute_loss(model(rgb, aux), batch, F.cross_entropy)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


# --- pseudo-labels ---------------------------------------------------------------------------------------


def disc_image(height=120, width=160, radius=25, centre=None):
    image = np.full((height, width), 20, np.uint8)
    cv2.circle(image, centre or (width // 2, height // 2), radius, 230, -1)
    return image


def test_saliency_iou_is_high_where_the_labelled_object_is_the_salient_one():
    from rgbd_fusion_seg.offline.pseudo_labels import saliency_iou

    image = disc_image()
    on_object = (image > 100).astype(np.uint8) * 3
    elsewhere = np.zeros_like(on_object)
    elsewhere[:20, :20] = 1
    assert saliency_iou(image, on_object) > 0.35
    assert saliency_iou(np.dstack([image] * 3), on_object) == pytest.approx(saliency_iou(image, on_object))
    assert saliency_iou(image, elsewhere) < 0.05
    # ignored pixels count in neither map: with everything but the disc ignored, only the disc is scored
    only_disc = np.where(on_object > 0, 3, 255).astype(np.uint8)
    assert saliency_iou(image, only_disc) > 0.9


@pytest.fixture
def mm5_set(mm5_copy):
    from rgbd_fusion_seg.offline.datasets.mm5 import MM5Dataset

    return MM5Dataset(mm5_copy, lightings=["RGB2", "RGB7"], split="train_dataset.csv", aux_folder="T8")


def test_pseudo_labels_are_cached_until_a_file_changes(mm5_set, monkeypatch):
    from rgbd_fusion_seg.offline import pseudo_labels

    targets, cached = pseudo_labels.cached_pseudo_labels(mm5_set)
    assert not cached and targets.shape == (len(mm5_set), 2)
    assert ((targets >= 0) & (targets <= 1)).all() and targets.std() > 0
    first = pseudo_labels.frame_pseudo_labels(mm5_set.read_raw(0), mm5_set.preprocessing.aux)
    assert tuple(targets[0]) == pytest.approx(first)

    def no_reading(index):
        raise AssertionError("an image was read although the cache is valid")

    monkeypatch.setattr(mm5_set, "read_raw", no_reading)
    again, cached = pseudo_labels.cached_pseudo_labels(mm5_set)
    assert cached and np.array_equal(again, targets)

    stem = mm5_set.samples[0][0]
    relabelled = np.array([sample[0] == stem for sample in mm5_set.samples])  # the frame under both lightings
    label_path = mm5_set.root / "ANNO_CLASS" / f"{stem}.png"
    labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(label_path), np.zeros_like(labels))  # a relabelled frame: background only
    monkeypatch.undo()
    changed, cached = pseudo_labels.cached_pseudo_labels(mm5_set)
    assert not cached
    assert relabelled.sum() == 2 and np.array_equal(changed[~relabelled], targets[~relabelled])
    assert (changed[relabelled] < targets[relabelled]).all()


def test_training_set_gets_confidence_targets_only_for_methods_that_ask(mm5_set):
    from rgbd_fusion_seg.offline.pseudo_labels import with_extra_targets

    assert with_extra_targets(mm5_set, "se") is mm5_set
    assert with_extra_targets(mm5_set, "rsfnet", {"reg_weight": 0.0}) is mm5_set  # no confidence loss, no labels
    wrapped = with_extra_targets(mm5_set, "rsfnet")
    assert len(wrapped) == len(mm5_set) and wrapped.classes == mm5_set.classes
    sample = wrapped[1]
    assert sample["confidence_target"].shape == (2,) and sample["confidence_target"].dtype == torch.float32
    assert torch.equal(sample["label"], mm5_set[1]["label"])


# --- serving and training --------------------------------------------------------------------------------


def make_rsfnet_checkpoint(path, modality="depth", encoders=SMALL):
    """A random-weight RSFNet (batch-norm statistics randomised too) with an identity colour normalisation."""
    from rgbd_fusion_seg.core.preprocessing import AuxNormalisation, Preprocessing
    from ros_helpers import make_checkpoint

    torch.manual_seed(0)
    model = build_model("rsfnet", 4, encoders=encoders)
    randomise_batchnorm(model)
    aux = AuxNormalisation("depth", "m", 0.0, 5.0) if modality == "depth" else AuxNormalisation("thermal", "raw8", 0.0, 255.0)
    preprocessing = Preprocessing(input_size=(64, 64), rgb_mean=(0.0, 0.0, 0.0), rgb_std=(1.0, 1.0, 1.0), aux=aux)
    path = make_checkpoint(path, "rsfnet", model=model, preprocessing=preprocessing,
                           options={"encoders": encoders, "pretrained": False})
    return path, model


def test_engine_serves_the_merged_form_with_the_training_form_predictions(tmp_path):
    from rgbd_fusion_seg.core.engine import SegmentationEngine
    from rgbd_fusion_seg.core.preprocessing import prepare_inputs

    path, trained = make_rsfnet_checkpoint(tmp_path / "rsfnet.pt")
    engine = SegmentationEngine.from_file(path, device="cpu")
    assert engine.method == "rsfnet"
    assert not any(isinstance(m, RepConvKxK) for m in engine.model.modules())
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 4.0, (48, 72)).astype(np.float32)
    prediction = engine.predict(rgb, depth)
    assert prediction.mask.shape == (48, 72)
    rgb_in, aux_in = prepare_inputs(rgb, depth, engine.preprocessing)
    with torch.no_grad():
        logits = trained.eval()(torch.from_numpy(rgb_in)[None], torch.from_numpy(aux_in)[None]).logits
    logits = F.interpolate(logits, size=(48, 72), mode="bilinear", align_corners=False)
    agreement = (logits[0].argmax(0).numpy() == prediction.mask).mean()
    assert agreement > 0.999


@pytest.mark.slow
def test_trains_on_tiny_mm5_with_pseudo_labels_and_evaluates_from_the_checkpoint(tiny_config):
    from rgbd_fusion_seg.core.checkpoint import load_checkpoint
    from rgbd_fusion_seg.offline.evaluate import evaluate_checkpoint
    from rgbd_fusion_seg.offline.train import train

    config = tiny_config(
        model={"method": "rsfnet", "options": {"encoders": SMALL}},
        data={"aux_folder": "T8", "rgb_mean": [0.0, 0.0, 0.0], "rgb_std": [1.0, 1.0, 1.0]},
        train={"epochs": 1, "optimizer": "sgd", "lr": 0.01, "lr_schedule": "poly", "weight_decay": 5.0e-4},
    )
    path = train(config, device="cpu", log=lambda message: None)
    assert list(config.data_root.glob(".rgbd_fusion_seg_cache/pseudo-labels-*.json"))  # computed and kept
    checkpoint = load_checkpoint(path)
    assert checkpoint.method == "rsfnet" and checkpoint.options["encoders"] == SMALL
    assert checkpoint.preprocessing.rgb_std == (1.0, 1.0, 1.0)
    result = evaluate_checkpoint(path, device="cpu")
    assert 0.0 <= result["miou"] <= 1.0
    assert np.sum(result["confusion_matrix"]) > 0


@pytest.mark.slow
def test_node_switches_to_rsfnet_at_runtime_on_an_rgbd_stream(tmp_path):
    """fusion_method=rsfnet picks <checkpoint_dir>/rsfnet.pt (depth) and the node serves its merged form."""
    from ros_helpers import RosClient, domain_id_for, make_checkpoint, start_node
    from test_segment_node import prime

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    make_checkpoint(folder / "early.pt", "early", modality="depth", unit="m")
    make_rsfnet_checkpoint(folder / "rsfnet.pt", modality="depth")
    domain = domain_id_for(57)
    client = RosClient(domain)
    try:
        parameters = {"checkpoint": str(folder / "early.pt"), "checkpoint_dir": str(folder), "stats_period": 0.5}
        with start_node(tmp_path / "node.log", domain, parameters=parameters) as process:
            client.wait_for_node()
            process.wait_for_log("serving method 'early'")
            [result] = client.set_parameters({"fusion_method": "rsfnet"})
            assert result.successful, result.reason
            process.wait_for_log("serving method 'rsfnet'", timeout=60)
            assert client.fresh_stats(predicate=lambda s: s["model"] == "rsfnet", timeout=30)["model"] == "rsfnet"
            prime(client)  # a 16UC1 depth pair comes back segmented by RSFNet
            assert "Traceback" not in process.log()
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config_name", "write"),
    [("mfnet/rsfnet.yaml", "write_mfnet_replica"), ("pst900/rsfnet.yaml", "write_pst900_replica"),
     ("fmb/base.yaml", "write_fmb_replica"), ("folder/base.yaml", "write_folder_dataset")],
)
def test_trains_and_evaluates_on_every_loader(config_name, write, tmp_path):
    """RSFNet (ResNet50-18) for two steps on each loader's replica: the shipped RSFNet recipes for MFNet and
    PST900, the benchmark configs with `model.method=rsfnet` for FMB and the user's folder layout."""
    from pathlib import Path

    from rgbd_fusion_seg.core.checkpoint import load_checkpoint
    from rgbd_fusion_seg.offline.config import load_config
    from rgbd_fusion_seg.offline.datasets import replicas
    from rgbd_fusion_seg.offline.evaluate import evaluate_checkpoint
    from rgbd_fusion_seg.offline.train import train

    root = tmp_path / "data"
    getattr(replicas, write)(root)
    config_path = Path(__file__).resolve().parents[1] / "config" / "experiments" / config_name
    overrides = ["model.method=rsfnet", "model.pretrained=false", "train.max_steps=2", "train.batch_size=2",
                 "data.augmentation.crop=[32,48]", "train.num_workers=0", "train.amp=false",
                 "train.checkpoint_every_steps=null"]
    config = load_config(config_path, overrides, data_root=root, out_dir=tmp_path / "run")
    path = train(config, device="cpu", log=lambda message: None)
    checkpoint = load_checkpoint(path)
    assert checkpoint.method == "rsfnet" and checkpoint.train_state["global_step"] == 2
    result = evaluate_checkpoint(path, device="cpu")
    assert 0.0 <= result["miou"] <= 1.0 and np.sum(result["confusion_matrix"]) > 0


def test_shipped_configs_are_the_papers_recipe():
    from pathlib import Path

    from rgbd_fusion_seg.offline.config import load_config

    experiments = Path(__file__).resolve().parents[1] / "config" / "experiments"
    for name in ("mfnet/rsfnet.yaml", "pst900/rsfnet.yaml", "mm5/rsfnet_depth.yaml"):
        config = load_config(experiments / name)
        assert config.model.method == "rsfnet" and config.model.options["encoders"] == "resnet50-resnet18", name
        assert (config.train.optimizer, config.train.lr, config.train.momentum) == ("sgd", 0.01, 0.9), name
        assert (config.train.weight_decay, config.train.lr_schedule, config.train.poly_power) == (5e-4, "poly", 0.9), name
        assert config.data.rgb_mean == [0, 0, 0] and config.data.rgb_std == [1, 1, 1], name
        assert config.data.augmentation["rotate"] == 10 and config.data.augmentation["hflip"], name
        assert config.loss.class_weights == "log_frequency" and config.loss.dice == 0, name
    assert load_config(experiments / "mm5/rsfnet_depth.yaml").data.aux_folder == "D16"  # RGB-D
