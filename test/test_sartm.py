"""SARTM on the `micro` SAM2 size: shapes at any input size, LoRA, trainable parts, Meta checkpoint reading,
CLIP class-name embeddings through open_clip, the distillation losses, the deploy form, and training +
evaluation through the real code on the MFNet, PST900 and FMB replicas (and the real PST900 frame)."""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgbd_fusion_seg.models import build_model
from rgbd_fusion_seg.models.blocks import PretrainedWeightsMissing
from rgbd_fusion_seg.models.losses import build_seg_loss
from rgbd_fusion_seg.models import sam2_backbone
from rgbd_fusion_seg.models.sam2_backbone import SAM2_SIZES, SAM2Size, build_image_encoder
from rgbd_fusion_seg.models.sartm_blocks import LoRAQV, PrototypeDistillation, cosine_similarity_matrix
from rgbd_fusion_seg.models.text_embeddings import class_text_embeddings

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5
NAMES = ["background", "hand_drill", "backpack", "fire_extinguisher", "survivor"]
OHEM = {"threshold": 0.7, "min_kept_fraction": 0.0625}
BALANCED_CR, BALANCED_SE = 300.0, 40.0  # the balance rule's weights (docs/sartm.md, "Loss balance")


def micro(**options):
    torch.manual_seed(0)
    options = {"encoder": "micro", "text_standin": True, "class_names": NAMES, **options}
    return build_model("sartm", NUM_CLASSES, **options)


def inputs(n=2, height=64, width=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, height, width, generator=generator), torch.rand(n, 1, height, width, generator=generator)


def randomise_lora(model, adapter=None, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for layer in model.lora:
        with torch.no_grad():
            target = layer.lora_b if adapter is None else layer.lora_b[adapter]
            target.copy_(0.5 * torch.randn(target.shape, generator=generator))


def frozen_encoder(model):
    """SAM2's plain image encoder with the model's (frozen) weights: what LoRA at B = 0 must reproduce."""
    plain = build_image_encoder(SAM2_SIZES["micro"])
    state = {k: v for k, v in model.image_encoder.state_dict().items() if ".lora_" not in k}
    plain.load_state_dict(state)
    return plain.eval()


# --- the network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(64, 96), (61, 90)])
def test_logits_at_the_input_size_and_extras_only_in_training(height, width):
    model = micro()
    rgb, aux = inputs(height=height, width=width)
    with torch.no_grad():
        output = model.eval()(rgb, aux)
        assert output.logits.shape == (2, NUM_CLASSES, height, width) and output.extras == {}
        output = model.train()(rgb, aux)
    assert output.extras["aux_logits"].shape == (2, NUM_CLASSES, height, width)
    assert output.extras["sfm"].shape == (2, 32, 4, 6)  # the fused 1/16 map of the 64x96 padded input


def test_thermal_reaches_the_fusion_and_the_logits():
    """The official code fed RGB twice into FRM/FFM; here the thermal image changes the fused features."""
    model = micro().eval()
    rgb, aux = inputs()
    with torch.no_grad():
        one, other = model(rgb, aux).logits, model(rgb, torch.rand_like(aux)).logits
    assert not torch.allclose(one, other)


def test_lora_at_its_initial_state_reproduces_the_frozen_encoder():
    model = micro().eval()
    plain = frozen_encoder(model)
    image = inputs()[0]
    with torch.no_grad():
        expected = plain(image)["backbone_fpn"]
        for got in model._encode(image, image):  # each modality's adapter
            assert torch.allclose(got[2], expected[2], atol=1e-6)
            assert torch.allclose(got[0], model.sam_mask_decoder.conv_s0(expected[0]), atol=1e-6)
        randomise_lora(model)
        assert not torch.allclose(model._encode(image, image)[0][2], expected[2])


def test_one_encoder_pass_gives_each_modality_its_own_lora():
    """Both modalities go through the encoder as one batch (RGB first), each part with its own adapter: the
    same features as each image alone through the encoder with that adapter merged into SAM2's qkv (a part
    given the other's adapter, or the batch split wrongly, fails)."""
    model = micro().eval()
    randomise_lora(model)
    rgb, aux = inputs(n=2)
    thermal = aux.expand(-1, 3, -1, -1)
    with torch.no_grad():
        together = model._encode(rgb, thermal)
        for adapter, image in enumerate((rgb, thermal)):
            alone = copy.deepcopy(model)
            for block in alone.image_encoder.trunk.blocks:
                layer = block.attn.qkv
                layer.lora_a, layer.lora_b = (torch.nn.Parameter(p[adapter:adapter + 1])
                                              for p in (layer.lora_a, layer.lora_b))
                block.attn.qkv = layer.merged_linear()
            fpn = alone.image_encoder(image)["backbone_fpn"]
            expected = [alone.sam_mask_decoder.conv_s0(fpn[0]), alone.sam_mask_decoder.conv_s1(fpn[1]), fpn[2]]
            for got, want in zip(together[adapter], expected):
                assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(together[0][2], model._encode(thermal, rgb)[1][2], atol=1e-3)


def test_lora_adapts_all_of_q_and_v_at_stage_transitions():
    """At a stage's first block qkv maps d to 3 x 2d: B is sized to the output, so every q and v column moves
    and k does not."""
    model = micro()
    layer = model.image_encoder.trunk.blocks[1].attn.qkv
    assert layer.weight.shape == (48, 8) and layer.lora_b.shape == (2, 2, 16, 16)
    randomise_lora(model)
    x = torch.randn(4, 8)  # two parts of the batch, one per adapter
    with torch.no_grad():
        delta = layer(x) - F.linear(x, layer.weight, layer.bias)
    assert bool((delta[:, :16].abs() > 0).all()) and bool((delta[:, 32:].abs() > 0).all())
    assert torch.equal(delta[:, 16:32], torch.zeros(4, 16))


def test_per_modality_uses_one_adapter_per_modality_and_shared_one_for_both():
    model = micro().eval()
    randomise_lora(model, adapter=1)  # the thermal adapter only
    expected = frozen_encoder(model)(inputs()[0])["backbone_fpn"][2]
    with torch.no_grad():
        as_rgb, as_thermal = model._encode(inputs()[0], inputs()[0])
        assert torch.allclose(as_rgb[2], expected, atol=1e-6)
        assert not torch.allclose(as_thermal[2], expected)
    model.train()
    rgb, aux = inputs()
    model(rgb, aux).logits.sum().backward()
    grads = model.lora[0].lora_b.grad
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])
    shared = micro(lora_mode="shared")
    assert all(layer.lora_a.shape[0] == 1 for layer in shared.lora)
    assert len(shared.lora) == 5  # every trunk block


def test_only_lora_fusion_decoder_heads_and_aux_head_train_and_gradients_reach_lora():
    model = micro().train()
    trainable = {name for name, _ in model.trainable_parameters()}
    allowed = ("rectify.", "fuse.", "aux_head.", "sam_mask_decoder.mask_tokens.", "sam_mask_decoder.iou_token.",
               "sam_mask_decoder.obj_score_token.", "sam_mask_decoder.output_hypernetworks_mlps.",
               "sam_mask_decoder.output_upscaling.", "sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1.")
    assert all(name.startswith(allowed) or ".lora_" in name for name in trainable)
    assert sum(".lora_" in name for name in trainable) == 10 and any(n.startswith("aux_head.") for n in trainable)
    assert not any("transformer" in n or "iou_prediction" in n or "image_encoder" in n and ".lora_" not in n
                   for n in trainable)
    rgb, aux = inputs()
    label = torch.randint(0, NUM_CLASSES, (2, 64, 96))
    output = model(rgb, aux)
    loss, parts = model.compute_loss(output, {"label": label}, build_seg_loss(NUM_CLASSES, dice=0.0, ohem=OHEM))
    loss.backward()
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    assert all(layer.lora_b.grad.abs().sum() > 0 for layer in model.lora)  # (A's are 0 while B = 0)
    # the IoU and object-score tokens (trained, as the official code) reach the class masks through the
    # two-way transformer's self-attention
    decoder = model.sam_mask_decoder
    assert decoder.iou_token.weight.grad.abs().sum() > 0 and decoder.obj_score_token.weight.grad.abs().sum() > 0
    with_transformer = micro(train_decoder_transformer=True)
    assert any("transformer" in n for n, _ in with_transformer.trainable_parameters())


def test_loss_is_eq_15_with_the_balanced_weights_and_the_papers_literal_ones():
    rgb, aux = inputs()
    label = torch.randint(0, NUM_CLASSES, (2, 64, 96))
    label[:, :10] = 255
    seg_loss = build_seg_loss(NUM_CLASSES, dice=0.0, ohem=OHEM)
    for options, weights in (({}, (0.008, BALANCED_CR, BALANCED_SE)),
                             ({"cr_weight": 1e4, "se_weight": 100.0}, (0.008, 1e4, 100.0))):  # Table VII literally
        model = micro(**options).train()
        output = model(rgb, aux)
        loss, parts = model.compute_loss(output, {"label": label}, seg_loss)
        assert set(parts) == {"seg", "aux", "cr", "se"} and all(np.isfinite(v) and v > 0 for v in parts.values())
        assert parts["aux"] == pytest.approx(float(seg_loss(output.extras["aux_logits"], label).detach()), rel=1e-6)
        expected = parts["seg"] + weights[0] * parts["aux"] + weights[1] * parts["cr"] + weights[2] * parts["se"]
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    plain = micro(aux_weight=0.0, cr_weight=0.0, se_weight=0.0, class_names=None).train()  # Table V ablations
    assert plain.aux_head is None and plain.distillation is None
    output = plain(rgb, aux)
    assert output.extras == {}
    loss, parts = plain.compute_loss(output, {"label": label}, seg_loss)
    assert parts["aux"] == parts["cr"] == parts["se"] == 0.0 and float(loss.detach()) == pytest.approx(parts["seg"])


def test_deploy_form_gives_the_training_forms_logits():
    for lora_mode in ("per_modality", "shared"):
        model = micro(lora_mode=lora_mode)
        randomise_lora(model)
        rgb, aux = inputs(height=61, width=90)
        model.train()(rgb, aux)  # move BN statistics and the EMA away from their start
        deployed = model.deploy()
        assert deployed.aux_head is None and deployed.distillation is None and not deployed.training
        assert not any(k.startswith(("aux_head.", "distillation.")) for k in deployed.state_dict())
        assert any(isinstance(m, LoRAQV) for m in deployed.modules()) == (lora_mode == "per_modality")
        model.eval()
        with torch.no_grad():
            expected = model(rgb, aux).logits
            got = deployed(rgb, aux)
        assert got.extras == {} and torch.allclose(got.logits, expected, atol=1e-5), lora_mode
        assert model.aux_head is not None  # the training form is kept


def test_the_meta_device_build_and_the_stored_options_need_no_file():
    """The node builds the model on the meta device with the stored (switched-off) options first."""
    options = {"encoder": "micro", "pretrained": True, "sam2_checkpoint": "/nowhere/sam2.pt",
               "text_weights": "/nowhere/ViT-B-32.pt", "class_names": NAMES}
    cls = type(micro())
    stored = cls.serving_options(options)
    assert stored["sam2_checkpoint"] is None and stored["text_weights"] is None and stored["pretrained"] is False
    with torch.device("meta"):
        meta = build_model("sartm", NUM_CLASSES, **stored)
    assert meta.distillation.text_source.device.type == "meta"
    assert set(meta.state_dict()) == set(micro().state_dict())


# --- weight files ----------------------------------------------------------------------------------------


def meta_layout(model, extra: dict | None = None) -> dict:
    """A model's SAM2 weights as Meta's checkpoint holds them, plus memory-module keys SARTM ignores."""
    state = {k: v.clone() for k, v in model.state_dict().items()
             if k.startswith(("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.")) and ".lora_" not in k}
    state.update({"memory_attention.layers.0.self_attn.q_proj.weight": torch.randn(4, 4),
                  "maskmem_tpos_enc": torch.randn(7, 1, 1, 4), "no_mem_embed": torch.randn(1, 1, 4)})
    return {"model": {**state, **(extra or {})}}


def test_meta_checkpoint_loads_with_the_class_dependent_keys_skipped(tmp_path):
    torch.manual_seed(3)
    sam_with_3_masks = build_model("sartm", 3, encoder="micro", se_weight=0.0, cr_weight=0.0)  # SAM2's 3 tokens
    path = tmp_path / "sam2_micro.pt"
    torch.save(meta_layout(sam_with_3_masks), path)
    model = micro(sam2_checkpoint=str(path))
    report = model.sam2_load_report
    assert report.skipped and all(k.startswith(("sam_mask_decoder.mask_tokens", "sam_mask_decoder.output_hyper",
                                                "sam_mask_decoder.iou_prediction_head")) for k in report.skipped)
    assert report.ignored == 3
    source = sam_with_3_masks.state_dict()
    loaded = model.state_dict()
    for key in ("image_encoder.trunk.blocks.2.attn.qkv.weight", "image_encoder.neck.convs.0.conv.weight",
                "sam_mask_decoder.transformer.layers.0.self_attn.q_proj.weight", "sam_mask_decoder.conv_s0.weight",
                "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"):
        assert torch.equal(loaded[key], source[key]), key
    assert report.loaded == len(source) - len(report.skipped) - sum(".lora_" in k for k in source) - sum(
        k.startswith(("rectify", "fuse", "aux_head", "distillation")) for k in source)
    assert loaded["sam_mask_decoder.mask_tokens.weight"].shape[0] == NUM_CLASSES + 1
    assert torch.equal(loaded["image_encoder.trunk.blocks.0.attn.qkv.lora_b"], torch.zeros(2, 2, 16, 8))


def test_a_file_of_another_size_and_a_missing_file_are_refused(tmp_path, monkeypatch):
    wider = SAM2Size(trunk={**SAM2_SIZES["micro"].trunk, "embed_dim": 16}, d_model=32, decoder_depth=1,
                     decoder_heads=2, decoder_mlp=64)
    monkeypatch.setitem(SAM2_SIZES, "micro_wide", wider)
    torch.manual_seed(0)
    path = tmp_path / "sam2_wide.pt"
    torch.save(meta_layout(build_model("sartm", 3, encoder="micro_wide", se_weight=0.0, cr_weight=0.0)), path)
    expected = (f"{path} does not fit SAM2 encoder 'micro': first mismatching key image_encoder.trunk.pos_embed "
                "(file: (1, 16, 4, 4), micro: (1, 8, 4, 4))")
    with pytest.raises(ValueError, match=re.escape(expected)):
        micro(sam2_checkpoint=str(path))
    absent = tmp_path / "absent.pt"
    with pytest.raises(PretrainedWeightsMissing, match=f"{re.escape(str(absent))} does not exist.*Put the file in "
                                                       f"{re.escape(str(tmp_path))} "):
        micro(sam2_checkpoint=str(absent))
    with pytest.raises(ValueError, match="no Meta SAM2 file for encoder 'micro'"):
        micro(pretrained=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    default = sam2_backbone.default_checkpoint_path("base_plus")
    assert default == tmp_path / "hub" / "checkpoints" / "sam2_hiera_base_plus.pt"
    url = f"{sam2_backbone.SAM2_RELEASE_URL}sam2_hiera_base_plus.pt"
    with pytest.raises(PretrainedWeightsMissing, match=re.escape(f"{default} does not exist. Fetch {url}")):
        sam2_backbone.read_meta_state(default, "base_plus")


def test_the_installed_sam2_must_be_rf_sam_2(monkeypatch):
    sam2_backbone.require_sam2()  # the venv's
    monkeypatch.setattr(sam2_backbone.importlib.metadata, "packages_distributions", lambda: {"sam2": ["sam2"]})
    with pytest.raises(sam2_backbone.SAM2PackageError, match="not rf-sam-2.*pip uninstall -y sam2 && pip install rf-"):
        micro()
    monkeypatch.setattr(sam2_backbone.importlib.metadata, "packages_distributions", lambda: {})
    with pytest.raises(sam2_backbone.SAM2PackageError, match="not installed: pip install rf-sam-2"):
        micro()


# --- class-name text embeddings --------------------------------------------------------------------------

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture
def tiny_clip(tmp_path):
    """(name, weights file) of a tiny open_clip model registered and saved here."""
    import open_clip

    (tmp_path / "clip_configs").mkdir()
    (tmp_path / "clip_configs" / "sartm-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "clip_configs")
    torch.manual_seed(0)
    weights = tmp_path / "sartm-test-clip.pt"
    torch.save(open_clip.create_model("sartm-test-clip").state_dict(), weights)
    return "sartm-test-clip", weights


def test_text_embeddings_run_through_open_clip_and_are_cached(tiny_clip, tmp_path, monkeypatch):
    import open_clip

    name, weights = tiny_clip
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    table, from_cache = class_text_embeddings(NAMES, name, weights)
    assert table.shape == (NUM_CLASSES, 16) and not from_cache
    reference = open_clip.create_model(name, pretrained=str(weights)).eval()
    with torch.no_grad():
        expected = reference.encode_text(open_clip.get_tokenizer(name)([n.replace("_", " ") for n in NAMES]))
    assert torch.allclose(table, expected, atol=1e-6)
    assert len(list((tmp_path / "cache" / "rgbd_fusion_seg" / "text_embeddings").glob("*.pt"))) == 1

    def no_clip(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(open_clip, "create_model", no_clip)
    again, from_cache = class_text_embeddings(NAMES, name, weights)
    assert from_cache and torch.equal(again, table)
    model = micro(text_standin=False, text_encoder=name, text_weights=str(weights))
    assert int(model.distillation.text_source) == 1
    assert torch.allclose(model.distillation.text_similarity, cosine_similarity_matrix(table))
    with pytest.raises(AssertionError, match="cache"):  # other class names: another cache entry
        class_text_embeddings(NAMES[::-1], name, weights)


def test_openai_torchscript_file_is_read_by_load_openai_model(tmp_path, monkeypatch):
    """OpenAI's ViT-B-32.pt is a TorchScript archive: one in that form (a tiny OpenAI-shaped CLIP, widths 64 so
    that load_openai_model infers its heads) is read through open_clip.load_openai_model, not create_model."""
    import open_clip

    (tmp_path / "clip_configs").mkdir()
    config = {"embed_dim": 16, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 64, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}
    (tmp_path / "clip_configs" / "sartm-test-openai.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "clip_configs")
    torch.manual_seed(0)
    clip = open_clip.create_model("sartm-test-openai").eval()
    torch.jit.script(_ParameterHolder(clip)).save(str(tmp_path / "ViT-B-32.pt"))
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("create_model used for a JIT file"))
    table, _ = class_text_embeddings(NAMES, "sartm-test-openai", tmp_path / "ViT-B-32.pt", cache_dir=tmp_path / "c")
    with torch.no_grad():
        expected = clip.encode_text(open_clip.get_tokenizer("sartm-test-openai")([n.replace("_", " ") for n in NAMES]))
    assert torch.allclose(table, expected, atol=1e-2)  # load_openai_model rounds the weights to fp16, as OpenAI's


class _ParameterHolder(torch.nn.Module):
    """A scriptable module with a model's parameters and persistent buffers under their names."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        kept = model.state_dict()
        for name, parameter in model.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, buffer in model.named_buffers(recurse=False):
            if name in kept:
                self.register_buffer(name, buffer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_standin_table_needs_the_explicit_switch(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(PretrainedWeightsMissing, match=r"hub/checkpoints/ViT-B-32\.pt does not exist.*text_standin"):
        micro(text_standin=False)  # text_weights "default", no file: no silent random table
    with pytest.raises(ValueError, match="needs the class names"):
        micro(class_names=None)
    assert int(micro().distillation.text_source) == 2  # the switch, recorded in the state dict
    from_checkpoint = micro(text_standin=False, text_weights=None)  # what serving builds: the table comes later
    assert int(from_checkpoint.distillation.text_source) == 0
    output = from_checkpoint.train()(*inputs())
    with pytest.raises(RuntimeError, match="no class-name text table"):
        from_checkpoint.compute_loss(output, {"label": torch.zeros(2, 64, 96, dtype=torch.long)},
                                     build_seg_loss(NUM_CLASSES))
    assert micro(class_names=None, se_weight=0.0).distillation is not None  # L_cr needs no names


# --- distillation losses ---------------------------------------------------------------------------------


def test_prototypes_ema_and_losses_with_absent_classes():
    torch.manual_seed(0)
    distill = PrototypeDistillation(num_classes=4, dim=8, momentum=0.9)
    distill.set_text_table(torch.randn(4, 12), source=2)
    features = torch.randn(2, 8, 4, 6, requires_grad=True)
    labels = torch.full((2, 64, 96), 255)
    labels[0, :32] = 0  # the top half of image 0 -> the top 2 rows of its 1/16 grid
    labels[1, :, :48] = 2
    cr, se = distill(features, labels)
    assert torch.isfinite(cr) and torch.isfinite(se) and cr > 0 and se > 0
    p0 = features[0, :, :2].reshape(8, -1).mean(dim=1)
    p2 = features[1, :, :, :3].reshape(8, -1).mean(dim=1)
    assert torch.allclose(distill.ema_prototypes[0], 0.1 * p0.detach(), atol=1e-6)
    assert torch.allclose(distill.ema_prototypes[2], 0.1 * p2.detach(), atol=1e-6)
    assert torch.equal(distill.ema_prototypes[[1, 3]], torch.zeros(2, 8))  # absent: untouched
    (cr + se).backward()
    assert features.grad.abs().sum() > 0
    nothing = distill(features, torch.full((2, 64, 96), 255))
    assert all(float(v) == 0.0 for v in nothing) and nothing[0].requires_grad


def test_losses_are_zero_when_prototypes_match_the_ema_and_the_text():
    torch.manual_seed(0)
    features = torch.randn(1, 8, 4, 6)
    labels = torch.zeros(1, 64, 96, dtype=torch.long)
    labels[:, :, 48:] = 3  # classes 0 and 3 present, 1 and 2 absent
    distill = PrototypeDistillation(num_classes=4, dim=8, momentum=0.0)  # EMA = this batch's prototypes
    prototypes, present = distill.prototypes(features, labels)
    text = torch.randn(4, 8)
    text[present] = prototypes  # the present classes' text similarities = their visual ones
    distill.set_text_table(text, source=2)
    cr, se = distill(features, labels)
    assert float(cr) == pytest.approx(0.0, abs=1e-7) and float(se) == pytest.approx(0.0, abs=1e-7)
    distill.set_text_table(torch.randn(4, 8), source=2)
    assert float(distill(features, labels)[1]) > 1e-4


# --- training and evaluation through the real code -------------------------------------------------------

SMOKE = ["model.pretrained=false", "model.options.encoder=micro", "model.options.text_standin=true",
         "train.max_steps=2", "train.batch_size=2", "data.augmentation.crop=[48,64]", "train.num_workers=0",
         "train.checkpoint_every_steps=null", "train.warmup_steps=1"]


def train_and_evaluate(config_name: str, root: Path, run: Path, extra=()):
    from rgbd_fusion_seg.core.checkpoint import load_checkpoint
    from rgbd_fusion_seg.offline.config import load_config
    from rgbd_fusion_seg.offline.evaluate import evaluate_checkpoint
    from rgbd_fusion_seg.offline.train import train

    config = load_config(REPO / "config" / "experiments" / config_name, SMOKE + list(extra), data_root=root,
                         out_dir=run)
    path = train(config, device="cpu", log=lambda message: None)
    checkpoint = load_checkpoint(path)
    assert checkpoint.method == "sartm" and checkpoint.train_state["global_step"] == 2
    options = checkpoint.options
    assert options["sam2_checkpoint"] is None and options["text_weights"] is None and options["text_standin"]
    assert options["class_names"] == list(checkpoint.classes)
    assert int(checkpoint.state_dict["distillation.text_source"]) == 2
    serve_checkpoint(path)
    return evaluate_checkpoint(path, device="cpu")


def serve_checkpoint(path: Path) -> None:
    """The node's path: the cheap fit check (model built on the meta device), then the engine's deploy form."""
    from rgbd_fusion_seg.core.engine import SegmentationEngine
    from rgbd_fusion_seg.serving.model_serving import read_checkpoint_summary

    assert read_checkpoint_summary(path).weights_problem is None
    engine = SegmentationEngine.from_file(path, device="cpu")
    assert engine.model.aux_head is None and engine.model.distillation is None
    generator = np.random.default_rng(0)
    rgb = generator.integers(0, 256, (61, 90, 3), dtype=np.uint8)
    prediction = engine.predict(rgb, generator.uniform(0, 255, (61, 90)).astype(np.float32))
    assert prediction.mask.shape == (61, 90)


@pytest.mark.parametrize(("config_name", "write"), [("mfnet/sartm.yaml", "write_mfnet_replica"),
                                                     ("pst900/sartm.yaml", "write_pst900_replica"),
                                                     ("fmb/sartm.yaml", "write_fmb_replica"),
                                                     ("mfnet/sartm_official.yaml", "write_mfnet_replica")])
def test_trains_and_evaluates_on_the_replicas(config_name, write, tmp_path):
    from rgbd_fusion_seg.offline.datasets import replicas

    root = tmp_path / "data"
    getattr(replicas, write)(root)
    result = train_and_evaluate(config_name, root, tmp_path / "run")
    assert 0.0 <= result["miou"] <= 1.0 and np.sum(result["confusion_matrix"]) > 0


def test_the_real_pst900_frame_goes_through_evaluate(pst900_realdata, tmp_path):
    root = tmp_path / "PST900"
    labels = np.zeros((720, 1280), np.uint8)
    labels[300:500, 600:900] = 4  # a "survivor" box
    for split in ("train", "test"):
        for folder, source in (("rgb", "pst900_rgb.png"), ("thermal", "pst900_thermal_mono8.png")):
            (root / split / folder).mkdir(parents=True)
            shutil.copy(pst900_realdata / source, root / split / folder / "real.png")
        (root / split / "labels").mkdir()
        cv2.imwrite(str(root / split / "labels" / "real.png"), labels)
    result = train_and_evaluate("pst900/sartm.yaml", root, tmp_path / "run", ["train.batch_size=1"])
    assert int(np.sum(result["confusion_matrix"])) == 720 * 1280  # every pixel of the 720x1280 frame scored


def test_shipped_configs_are_the_papers_recipe():
    from rgbd_fusion_seg.offline.config import load_config

    frames = {"mfnet": (784, 800), "pst900": (597, 1280), "fmb": (1220, 800)}  # training frames, official crop
    for name, (train_frames, crop) in frames.items():
        config = load_config(REPO / "config" / "experiments" / name / "sartm.yaml")
        options = config.model.options
        assert config.model.method == "sartm" and options["encoder"] == "base_plus" and options["lora_rank"] == 16
        assert (options["aux_weight"], options["cr_weight"], options["se_weight"]) == (0.008, BALANCED_CR, BALANCED_SE)
        train = config.train
        assert (train.optimizer, train.lr, train.weight_decay, train.no_decay_1d) == ("adamw", 1e-4, 0.01, True), name
        assert (train.batch_size, train.epochs, train.lr_schedule, train.poly_power) == (8, 500, "poly", 0.9), name
        assert train.warmup_steps == 10 * (train_frames // 8) and train.warmup_start_ratio == 0.1, name
        assert config.data.augmentation["crop"] == [crop, crop], name
        assert config.data.rgb_mean == [0.485, 0.456, 0.406] and config.data.rgb_std == [0.229, 0.224, 0.225]
        assert config.loss.ohem == {"threshold": 0.7, "min_kept_fraction": 0.0625} and config.loss.dice == 0


def test_official_configs_are_the_official_codes_path():
    from rgbd_fusion_seg.offline.config import load_config

    for name in ("mfnet", "pst900", "fmb"):
        paper = load_config(REPO / "config" / "experiments" / name / "sartm.yaml")
        official = load_config(REPO / "config" / "experiments" / name / "sartm_official.yaml")
        options = official.model.options
        assert (options["lora_mode"], options["lora_rank"], options["decoder_input"]) == ("shared", 48, "modality_mean")
        assert options["train_decoder_transformer"] is True and official.loss.ohem is None, name
        assert (options["aux_weight"], options["cr_weight"], options["se_weight"]) == (1.0, 1.0, 1.0), name
        changed = {key for key in options if options[key] != paper.model.options[key]}
        assert changed == {"lora_mode", "lora_rank", "decoder_input", "train_decoder_transformer", "aux_weight",
                           "cr_weight", "se_weight"}, name
        assert official.train == paper.train and official.data == paper.data, name  # the same recipe otherwise


# --- the official code's path: what its options change -------------------------------------------------


def official(**options):
    return micro(lora_mode="shared", lora_rank=48, decoder_input="modality_mean", train_decoder_transformer=True,
                 aux_weight=1.0, cr_weight=1.0, se_weight=1.0, **options)


def test_modality_mean_decodes_each_modalitys_unfused_features_and_averages():
    model = official().eval()
    randomise_lora(model)
    rgb, aux = inputs()
    with torch.no_grad():
        logits = model(rgb, aux).logits
        thermal = aux.expand(-1, 3, -1, -1)
        alone = [model._encode(image, image)[0] for image in (rgb, thermal)]  # each modality on its own
        masks = (model._decode(*alone[0]) + model._decode(*alone[1])) / 2
        expected = F.interpolate(masks, size=(64, 96), mode="bilinear", align_corners=False)
        assert torch.allclose(logits, expected, atol=1e-6)
        for block in model.fuse:  # the fusion feeds only the auxiliary head and the distillation there
            block.norm.weight.mul_(3.0)
        assert torch.equal(model(rgb, aux).logits, logits)
        fused = micro().eval()
        before = fused(rgb, aux).logits
        for block in fused.fuse:
            block.norm.weight.mul_(3.0)
        assert not torch.allclose(fused(rgb, aux).logits, before)  # the paper's path decodes the fused maps


@pytest.mark.slow
def test_official_path_shares_one_rank_48_adapter_and_trains_the_decoder_transformer():
    model = official().train()
    assert all(layer.lora_a.shape[0] == 1 and layer.lora_a.shape[-1] == 48 for layer in model.lora)
    assert model.loss_weights() == {"seg": 1.0, "aux": 1.0, "cr": 1.0, "se": 1.0}
    rgb, aux = inputs()
    label = torch.randint(0, NUM_CLASSES, (2, 64, 96))
    loss, _ = model.compute_loss(model(rgb, aux), {"label": label}, build_seg_loss(NUM_CLASSES, dice=0.0))
    loss.backward()
    transformer = [p for p in model.sam_mask_decoder.transformer.parameters()]
    assert all(p.requires_grad for p in transformer)
    assert sum(float(p.grad.abs().sum()) for p in transformer if p.grad is not None) > 0
    assert not any(p.requires_grad for p in micro().sam_mask_decoder.transformer.parameters())  # paper: frozen


# --- initialisation and loss balance -------------------------------------------------------------------


def test_fusion_blocks_start_as_cmx_initialises_them():
    """Linear: truncated normal std 0.02, zero bias; Conv2d: normal std sqrt(2 / fan_out), zero bias; norms 1, 0."""
    from rgbd_fusion_seg.models.sartm_blocks import FeatureFusion, FeatureRectify

    torch.manual_seed(0)
    for block in (FeatureRectify(64), FeatureFusion(64, 2)):
        for layer in block.modules():
            if isinstance(layer, torch.nn.Linear):
                assert float(layer.weight.std()) == pytest.approx(0.02, rel=0.15)  # cut at +-2: 100 std
                assert layer.bias is None or not torch.any(layer.bias)
            elif isinstance(layer, torch.nn.Conv2d):
                fan_out = layer.kernel_size[0] * layer.kernel_size[1] * layer.out_channels // layer.groups
                if layer.weight.numel() >= 500:  # enough values for the sample std
                    assert float(layer.weight.std()) == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.15)
                assert layer.bias is None or not torch.any(layer.bias)
            elif isinstance(layer, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                assert torch.equal(layer.weight, torch.ones_like(layer.weight)) and not torch.any(layer.bias)


@pytest.mark.slow
def test_the_shipped_weights_hold_the_balance_rule_at_initialisation(tmp_path):
    """The rule (docs/sartm.md): at initialisation each weighted distillation term is a tenth of the
    segmentation loss, within the band, in the measurement's setting (MFNet recipe on its replica, tiny
    encoder, 96x128, batch 4); the paper's literal 1e4 breaks it."""
    from rgbd_fusion_seg.offline import sartm_loss_balance as balance
    from rgbd_fusion_seg.offline.config import load_config

    recipe = REPO / "config" / "experiments" / "mfnet" / "sartm.yaml"
    options = load_config(recipe).model.options
    assert (options["cr_weight"], options["se_weight"]) == (BALANCED_CR, BALANCED_SE)
    trainer, train_set, _ = balance.prepare_run(recipe, tmp_path, encoder="tiny", steps=1, frames=32, size=(96, 128),
                                                batch_size=4, weights={})
    batch = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4)))
    model = trainer.model.train()
    with torch.no_grad():
        terms = model.loss_terms(model(batch["rgb"], batch["aux"]), batch, trainer.seg_loss)
    low, high = balance.BALANCE_BAND
    for name, weight in (("cr", BALANCED_CR), ("se", BALANCED_SE)):
        assert low <= float(weight * terms[name] / terms["seg"]) <= high, name
    assert float(1e4 * terms["cr"] / terms["seg"]) > 1.0  # the literal weight: L_cr outweighs segmentation


def test_the_balance_measurement_is_linear_in_the_weights_and_leaves_the_model_alone():
    from rgbd_fusion_seg.offline.sartm_loss_balance import balanced_weights, measure_terms

    model = micro()
    rgb, aux = inputs()
    label = torch.randint(0, NUM_CLASSES, (2, 64, 96))
    batch = {"rgb": rgb, "aux": aux, "label": label}
    seg_loss = build_seg_loss(NUM_CLASSES, dice=0.0, ohem=OHEM)
    once = measure_terms(model, batch, seg_loss)
    assert all(once[name][group] > 0 for name in once for group in ("lora", "fusion"))
    assert torch.equal(model.distillation.ema_prototypes, torch.zeros_like(model.distillation.ema_prototypes))
    model.cr_weight *= 2.0
    twice = measure_terms(model, batch, seg_loss)
    for key in ("loss", "lora", "fusion"):
        assert twice["cr"][key] == pytest.approx(2.0 * once["cr"][key], rel=1e-4), key
        assert twice["seg"][key] == pytest.approx(once["seg"][key], rel=1e-4), key
    # the rule: w = 0.1 x seg / term, one significant digit
    assert balanced_weights({"seg": 2.0, "cr": 7e-4, "se": 4e-3}) == {"cr_weight": 300.0, "se_weight": 50.0}
