"""The MM5 study's six methods: shapes, gradients, aux dependence, the authors' sizes and compute, mid's two
forms, se's warm-up, pretrained initialisation, registry errors, refusal of old-architecture checkpoints."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from rgbd_fusion_seg.models import SegOutput, UnknownMethodError, available_methods, build_model, method_class
from rgbd_fusion_seg.models.blocks import PretrainedWeightsMissing, imagenet_weights_path

NUM_CLASSES = 5
MM5_METHODS = ["rgb", "early", "mid", "late", "se", "attention"]
FUSION_METHODS = [m for m in MM5_METHODS if m != "rgb"]


def make_batch(height=64, width=96, n=2, seed=0):
    """Random images and a blocky random label map (learnable in a few steps, unlike per-pixel noise)."""
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.randn(n, 3, height, width, generator=generator)
    aux = torch.rand(n, 1, height, width, generator=generator)
    coarse = torch.randint(0, NUM_CLASSES, (n, 1, 4, 6), generator=generator).float()
    label = F.interpolate(coarse, size=(height, width), mode="nearest")[:, 0].long()
    return rgb, aux, label


def test_the_mm5_methods_are_registered():
    assert set(MM5_METHODS) <= set(available_methods())


@pytest.mark.parametrize("method", MM5_METHODS)
@pytest.mark.parametrize("size", [(64, 96), (70, 90), (61, 90)])  # 61: odd at every scale
def test_forward_gives_logits_at_input_size(method, size):
    torch.manual_seed(0)
    model = build_model(method, NUM_CLASSES).eval()
    rgb, aux, _ = make_batch(*size)
    with torch.no_grad():
        output = model(rgb, aux)
    assert isinstance(output, SegOutput)
    assert output.logits.shape == (2, NUM_CLASSES, *size)
    assert torch.isfinite(output.logits).all()
    for name, extra in output.extras.items():
        assert extra.shape[0] == 2 and extra.shape[-2:] == size, name


@pytest.mark.slow
@pytest.mark.parametrize("method", MM5_METHODS)
def test_training_steps_fit_a_fixed_batch(method):
    torch.manual_seed(0)
    model = build_model(method, NUM_CLASSES).train()
    rgb, aux, label = make_batch(32, 48)
    batch = {"rgb": rgb, "aux": aux, "label": label}
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        output = model(rgb, aux)
        loss, parts = model.compute_loss(output, batch, F.cross_entropy)
        assert "seg" in parts
        optimiser.zero_grad()
        loss.backward()
        if not losses:  # every parameter that takes part gets a gradient on the first step
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, f"{method}: parameters without gradient: {missing[:5]}"
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], f"{method}: loss did not fall on a fixed batch: {losses}"


def test_rgb_baseline_ignores_aux():
    torch.manual_seed(0)
    model = build_model("rgb", NUM_CLASSES).eval()
    rgb, aux, _ = make_batch()
    with torch.no_grad():
        assert torch.equal(model(rgb, aux).logits, model(rgb, torch.rand_like(aux)).logits)


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_fusion_methods_use_aux(method):
    # At random initialisation the deep fusion paths (mid, attention) move the logits only slightly
    # (the shallow RGB skips dominate an untrained decoder), so check for any change and for a gradient.
    torch.manual_seed(0)
    model = build_model(method, NUM_CLASSES).eval()
    rgb, aux, _ = make_batch(32, 48)
    ramp = torch.linspace(0, 1, aux.shape[-1]).expand_as(aux)
    with torch.no_grad():
        difference = (model(rgb, aux).logits - model(rgb, ramp).logits).abs().max()
    assert difference > 1e-6, f"{method} output does not depend on aux"
    aux = aux.clone().requires_grad_(True)
    model(rgb, aux).logits.square().sum().backward()
    assert float(aux.grad.abs().sum()) > 0, f"{method}: no gradient reaches aux"


def test_late_fusion_averages_its_branches():
    torch.manual_seed(0)
    model = build_model("late", NUM_CLASSES).eval()
    rgb, aux, _ = make_batch(70, 90)
    with torch.no_grad():
        output = model(rgb, aux)
    branch_mean = (output.extras["rgb_logits"] + output.extras["aux_logits"]) / 2
    assert torch.allclose(output.logits, branch_mean, atol=1e-6)
    # The RGB branch alone does not see aux.
    with torch.no_grad():
        other = model(rgb, torch.rand_like(aux))
    assert torch.equal(other.extras["rgb_logits"], output.extras["rgb_logits"])


def test_se_confidence_is_a_probability_map():
    torch.manual_seed(0)
    model = build_model("se", NUM_CLASSES).eval()
    rgb, aux, _ = make_batch()
    with torch.no_grad():
        confidence = model(rgb, aux).extras["aux_confidence"]
    assert confidence.shape == (2, 1, 64, 96)
    assert 0 <= float(confidence.min()) and float(confidence.max()) <= 1


def test_unknown_method_and_option_are_refused_by_name():
    with pytest.raises(UnknownMethodError, match="no_such_fusion"):
        build_model("no_such_fusion", NUM_CLASSES)
    with pytest.raises(UnknownMethodError, match="bogus_option"):
        build_model("mid", NUM_CLASSES, bogus_option=3)
    with pytest.raises(UnknownMethodError, match="num_heads"):
        build_model("late", NUM_CLASSES, num_heads=2)  # only attention has num_heads


def test_attention_options():
    model = build_model("attention", NUM_CLASSES, num_heads=2, positional_encoding=True).eval()
    assert model.fusion.attention.num_heads == 2 and model.fusion.attention.embed_dim == 256
    rgb, aux, _ = make_batch()
    with torch.no_grad():
        assert model(rgb, aux).logits.shape == (2, NUM_CLASSES, 64, 96)
    with pytest.raises(ValueError, match="divisible"):
        build_model("attention", NUM_CLASSES, num_heads=3)


# --- the authors' models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", MM5_METHODS)
def test_size_and_compute_at_480x640_are_the_authors(method):
    """Within 1 % of the study's public code, measured at 480x640 with 32 classes (counted on the meta
    device: count_flops needs only shapes)."""
    from rgbd_fusion_seg.offline.benchmarking import count_flops

    (figures,) = method_class(method).published
    assert figures.size == (480, 640) and figures.num_classes == 32 and "public code" in figures.source
    with torch.device("meta"):
        model = build_model(method, figures.num_classes).eval()
        rgb, aux = torch.zeros(1, 3, *figures.size), torch.zeros(1, 1, *figures.size)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(figures.params_m, rel=0.01)
    assert count_flops(model, rgb, aux) / 2e9 == pytest.approx(figures.gmacs, rel=0.01)


def test_mid_fuses_as_the_code_by_default_and_as_the_text_on_request():
    torch.manual_seed(0)
    code = build_model("mid", NUM_CLASSES)
    text = build_model("mid", NUM_CLASSES, fusion="text").eval()
    assert code.decoder.up_blocks[0].up.in_channels == 1024  # both layer4 maps
    assert len(code.encoders.aux_encoder.stages) == 5 and len(text.encoders.aux_encoder.stages) == 4
    assert text.decoder.up_blocks[0].up.in_channels == 512 and text.fuse.reduce[0].in_channels == 512
    rgb, aux, _ = make_batch(61, 90)
    with torch.no_grad():
        logits = text(rgb, aux).logits
        assert logits.shape == (2, NUM_CLASSES, 61, 90)
        assert not torch.allclose(logits, text(rgb, torch.rand_like(aux)).logits)
    with pytest.raises(ValueError, match="layer3|code, text"):
        build_model("mid", NUM_CLASSES, fusion="layer3")


def test_se_gate_starts_trusting_rgb():
    torch.manual_seed(0)
    model = build_model("se", NUM_CLASSES).eval()
    rgb, aux, _ = make_batch(32, 48)
    r, x = model.encoders(rgb, aux)
    with torch.no_grad():
        _, _, weights = model.fusions[0](r[1], x[1])
    start = torch.softmax(torch.tensor([1.0, 0.0]), dim=0)
    assert torch.allclose(weights, start.expand(2, 2), atol=1e-6)


def test_se_freezes_the_shallow_depth_encoder_until_the_warm_up_ends():
    torch.manual_seed(0)
    model = build_model("se", NUM_CLASSES, aux_freeze_steps=2).train()
    stages = model.encoders.aux_encoder.stages
    shallow = [p for stage in stages[:3] for p in stage.parameters()]
    deep = [p for stage in stages[3:] for p in stage.parameters()]
    assert not any(p.requires_grad for p in shallow) and all(p.requires_grad for p in deep)
    held = {id(p) for _, p in model.trainable_parameters()}
    assert {id(p) for p in model.parameters()} == held  # the optimiser holds the frozen part from the start
    optimiser = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-2, weight_decay=0.1)
    rgb, aux, label = make_batch(32, 48)
    before = [p.detach().clone() for p in shallow]
    changed = []
    for step in range(4):
        model.before_train_step(step)
        optimiser.zero_grad()
        F.cross_entropy(model(rgb, aux).logits, label).backward()
        optimiser.step()
        changed.append(any(not torch.equal(p, b) for p, b in zip(shallow, before)))
    assert changed == [False, False, True, True]  # released at step 2
    assert all(p.requires_grad for p in shallow)
    assert all(p.requires_grad for p in build_model("se", NUM_CLASSES, aux_freeze_steps=0).parameters())
    with pytest.raises(ValueError, match="aux_freeze_steps"):
        build_model("se", NUM_CLASSES, aux_freeze_steps=-1)


def test_checkpoint_of_an_older_architecture_is_refused(tmp_path, monkeypatch):
    from rgbd_fusion_seg.core.checkpoint import CheckpointError, load_checkpoint
    from ros_helpers import make_checkpoint

    cls = method_class("mid")
    assert cls.architecture_version == 2
    current = make_checkpoint(tmp_path / "current.pt", "mid", num_classes=NUM_CLASSES)
    with monkeypatch.context() as patch:  # as the release before the authors' architectures wrote it
        patch.setattr(cls, "architecture_version", 1)
        old = make_checkpoint(tmp_path / "old.pt", "mid", num_classes=NUM_CLASSES)
    assert load_checkpoint(current).build_model() is not None
    with pytest.raises(CheckpointError, match=r"version 1 of method 'mid'.*builds version 2"):
        load_checkpoint(old)


# --- pretrained initialisation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_imagenet_state():
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A private TORCH_HOME; torch.hub reads it whenever no hub dir was set explicitly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch_home"


@pytest.fixture
def fake_weights(torch_home, fake_imagenet_state):
    path, _ = imagenet_weights_path("resnet18")
    assert path.name == "resnet18-f37072fd.pth" and str(path).startswith(str(torch_home))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fake_imagenet_state, path)
    return fake_imagenet_state


def assert_encoder_matches(encoder, state, skip_conv1=False):
    """The encoder's stages hold the file's tensors (stage i <-> torchvision names)."""
    names = {0: ["conv1.", "bn1."], 1: ["layer1."], 2: ["layer2."], 3: ["layer3."], 4: ["layer4."]}
    own = {}
    for index, stage in enumerate(encoder.stages):
        for key, value in stage.state_dict().items():
            if index == 0:  # Sequential(conv1, bn1, relu) -> "0.weight" is conv1, "1.*" is bn1
                prefix, rest = key.split(".", 1)
                own[("conv1." if prefix == "0" else "bn1.") + rest] = value
            elif index == 1:  # Sequential(maxpool, layer1) -> "1.*" is layer1
                own["layer1." + key.split(".", 1)[1]] = value
            else:
                own[names[index][0] + key] = value
    assert own, "encoder has no parameters"
    for key, value in own.items():
        if skip_conv1 and key == "conv1.weight":
            continue
        assert torch.equal(value, state[key]), key


def test_pretrained_rgb_encoders_hold_the_file(fake_weights):
    for method, path in [
        ("rgb", "unet.encoder"),
        ("mid", "encoders.rgb_encoder"),
        ("late", "rgb_branch.encoder"),
        ("se", "encoders.rgb_encoder"),
        ("attention", "encoders.rgb_encoder"),
    ]:
        model = build_model(method, NUM_CLASSES, pretrained=True)
        assert_encoder_matches(model.get_submodule(path), fake_weights)


def test_pretrained_early_fusion_x_filter_is_the_rgb_mean(fake_weights):
    model = build_model("early", NUM_CLASSES, pretrained=True)
    conv1 = model.unet.encoder.stages[0][0].weight
    rgb_filters = fake_weights["conv1.weight"]
    assert conv1.shape == (64, 4, 7, 7)
    assert torch.equal(conv1[:, :3], rgb_filters)
    assert torch.allclose(conv1[:, 3:], rgb_filters.mean(dim=1, keepdim=True))
    assert_encoder_matches(model.unet.encoder, fake_weights, skip_conv1=True)


@pytest.mark.parametrize(
    ("method", "path"),
    [("late", "aux_branch.encoder"), ("mid", "encoders.aux_encoder"), ("se", "encoders.aux_encoder"),
     ("attention", "encoders.aux_encoder")],
)
def test_pretrained_x_encoder_is_grey_level(fake_weights, method, path):
    model = build_model(method, NUM_CLASSES, pretrained=True)
    encoder = model.get_submodule(path)
    conv1 = encoder.stages[0][0].weight
    assert conv1.shape == (64, 1, 7, 7)
    assert torch.allclose(conv1, fake_weights["conv1.weight"].sum(dim=1, keepdim=True))
    assert_encoder_matches(encoder, fake_weights, skip_conv1=True)


def test_missing_pretrained_weights_name_the_path(torch_home):
    path, _ = imagenet_weights_path("resnet18")
    for method in ("early", "late"):
        with pytest.raises(PretrainedWeightsMissing) as error:
            build_model(method, NUM_CLASSES, pretrained=True)
        assert str(path) in str(error.value)
