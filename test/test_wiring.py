"""Wiring of every method (the MM5 six, RSFNet, SC-CoSF, SARTM) on the test sizes the method files use:

(a) one training step through the method's compute_loss gives every trainable parameter a non-zero gradient;
(b) every fusion block's output changes when only the aux image changes, and when only the RGB image does;
(c) removing any gate, attention or skip (its weights zeroed, or its input zeroed by a hook) changes the output;
    SARTM's FFM reads the other stream's attention context and its FRM corrects each modality by the other;
(d) in eval mode, sample 0's outputs do not change when sample 1 changes.

Each model's parameters are perturbed at random and its BatchNorm statistics measured before the checks, so
nothing depends on an initialisation (zero-initialised LoRA B and gate weights become testable; SARTM's FFM
initialisation may change freely) and eval mode keeps the signal above float noise.
"""
from __future__ import annotations

import copy
import functools
from contextlib import contextmanager
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from test_models import MM5_METHODS, NUM_CLASSES, make_batch
from test_rsfnet import SMALL
from test_sartm import micro as sartm_micro
from test_sccosf import micro_model as sccosf_micro
from test_sccosf import one_thread  # noqa: F401  (autouse: one thread beats two contending on this CPU)

from rgbd_fusion_seg.models import build_model

METHODS = [*MM5_METHODS, "mid_text", "rsfnet", "sccosf", "sartm"]  # mid_text: mid's layer3 concatenation form
SIZE = (32, 48)
SIZES = {"sccosf": (64, 96)}  # at 32x48 the 1/32 map is one pixel: a scan of one step never applies its decay A


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter moved by noise of a tenth of its spread (0.05 where it is constant, e.g. zeros)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            spread = parameter.std() if parameter.numel() > 1 else parameter.new_zeros(())
            scale = 0.1 * spread if spread > 0 else 0.05
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def calibrate_batchnorm(model: torch.nn.Module, size, batches: int = 2) -> None:
    """Running statistics measured on random batches (their initial 0 / 1 shrink a deep network's signal to
    float noise in eval mode, which would hide a cross-sample leak or a cut branch)."""
    norms = {m: m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for seed in range(batches):
            model(*make_batch(*size, seed=100 + seed)[:2])
    for norm, momentum in norms.items():
        norm.momentum = momentum


@functools.cache
def _built(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if method == "sccosf":
        model = sccosf_micro()
    elif method == "sartm":
        model = sartm_micro()
    elif method == "rsfnet":
        model = build_model("rsfnet", NUM_CLASSES, encoders=SMALL)
    elif method == "mid_text":
        model = build_model("mid", NUM_CLASSES, fusion="text")
    else:  # se without its warm-up freeze: the whole aux encoder trains from the first step
        model = build_model(method, NUM_CLASSES, **({"aux_freeze_steps": 0} if method == "se" else {}))
    perturb(model)
    if method == "sartm":  # FFM's attention at CMX's initialisation is nearly uniform (keys and values of std
        with torch.no_grad():  # 0.02): unit-scale keys and values make its wiring visible
            for stream in (stream for fuse in model.fuse for stream in fuse.streams):
                stream.kv.weight.normal_(0.0, 1.0)
    calibrate_batchnorm(model, SIZES.get(method, SIZE))
    return model


def built(method: str) -> torch.nn.Module:
    """A fresh copy of the method's perturbed test-size model (built once per session)."""
    return copy.deepcopy(_built(method))


def seg_loss(logits, target):
    return F.cross_entropy(logits, target, ignore_index=255)


def outputs(model, rgb, aux) -> dict[str, torch.Tensor]:
    """Logits and extras of one forward pass, with the random generator reset (dropout in training mode)."""
    torch.manual_seed(1)
    with torch.no_grad():
        output = model(rgb, aux)
    return {"logits": output.logits, **output.extras}


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """b differs from a by more than float noise: 1e-5 of a's largest value is over 100 rounding steps. (A cut
    branch leaves the output bitwise equal; the smallest real effect seen here is 1e-4 of it.)"""
    return bool((a - b).abs().max() > 1e-5 * a.abs().max())


# --- (a) gradients ------------------------------------------------------------------------------------------

# Trainable parameters that legitimately get no gradient, with the reason. (Frozen parts, requires_grad False,
# are not trainable: SAM2's encoder and prompt encoder in SARTM.)
NO_GRADIENT = {
    # SAM2's mask token 0 is its single-mask output, which SARTM drops (one mask per class token 1..C): the
    # hypernetwork MLP of token 0 only makes that dropped mask.
    "sartm": ("sam_mask_decoder.output_hypernetworks_mlps.0.",),
}


@pytest.mark.parametrize("method", METHODS)
def test_a_training_step_gives_every_trainable_parameter_a_gradient(method):
    model = built(method).train()
    rgb, aux, label = make_batch(*SIZES.get(method, SIZE))
    # RGB in [0, 1] as SC-CoSF's fusion loss reads it; RSFNet's saliency pseudo-labels as its loss needs
    batch = {"rgb": rgb.sigmoid(), "aux": aux, "label": label, "confidence_target": torch.rand(2, 2)}
    loss, _ = model.compute_loss(model(batch["rgb"], aux), batch, seg_loss)
    loss.backward()
    exempt = NO_GRADIENT.get(method, ())
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    without = [name for name, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not [name for name in without if not name.startswith(exempt)], f"{method}: no gradient"
    assert all(any(name.startswith(prefix) for name in without) for prefix in exempt)  # the exemptions hold


# --- (b) fusion blocks see both modalities ----------------------------------------------------------------

# Per method: the fusion blocks and which of their outputs must depend on both modalities (None = every
# tensor they return). SE's block also returns the aux confidence, which sees the aux features alone.
FUSION_BLOCKS = {
    "rgb": {}, "early": {}, "mid": {}, "late": {},  # no block: the model-level check covers them
    "mid_text": {"fuse": None},
    "se": {f"fusions.{k}": 0 for k in range(4)},
    "attention": {"fusion": None},
    "rsfnet": {f"fusions.{k}": None for k in range(4)},
    "sccosf": {name: None for k in range(4)
               for name in (f"fusions.{k}", f"fusions.{k}.lrb", f"fusions.{k}.lrb.cross", f"fusions.{k}.fgb")},
    "sartm": {name: None for k in range(3) for name in (f"rectify.{k}", f"fuse.{k}")},
}


@contextmanager
def captured(model, names):
    """The outputs of the named submodules during the forward passes run inside the block, by name."""
    seen, handles = {}, []
    for name in names:
        def keep(module, args, output, name=name):
            seen[name] = output
        handles.append(model.get_submodule(name).register_forward_hook(keep))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _selected(output, which):
    tensors = output if isinstance(output, tuple) else (output,)
    return tensors if which is None else (tensors[which],)


@pytest.mark.parametrize("method", METHODS)
def test_each_fusion_block_sees_both_modalities(method):
    model = built(method).eval()
    rgb, aux, _ = make_batch(*SIZES.get(method, SIZE))
    other_rgb, other_aux, _ = make_batch(*SIZES.get(method, SIZE), seed=1)
    blocks = FUSION_BLOCKS[method]
    runs = {}
    for key, inputs in (("base", (rgb, aux)), ("aux", (rgb, other_aux)), ("rgb", (other_rgb, aux))):
        with captured(model, blocks) as seen:
            runs[key] = (outputs(model, *inputs)["logits"], dict(seen))
    for changed in ("aux", "rgb"):
        logits_change = differs(runs["base"][0], runs[changed][0])
        assert logits_change != (method == "rgb" and changed == "aux"), f"{method}: logits vs {changed}"
        for name, which in blocks.items():
            pairs = zip(_selected(runs["base"][1][name], which), _selected(runs[changed][1][name], which))
            assert all(differs(a, b) for a, b in pairs), f"{method}: {name} ignores a change of {changed} alone"


# --- (c) every gate, attention and skip reaches the output ---------------------------------------------


class Removal(NamedTuple):
    """Cut one part: zero the parameters of `module` (those whose name contains `only`), or, with `arg` set,
    zero that positional input of `module` (element `item` of a list input) by a pre-hook. Then the model's
    `observe` output (or the named submodule's output) must change. In training mode: batch statistics keep
    the signal's scale through the deep decoders (running statistics at their initial values shrink it to
    float noise), and the outputs that exist only in training (aux_logits) can be observed."""

    module: str
    observe: str = "logits"
    arg: int | None = None
    item: int | None = None
    only: str = ""


def _weights(*modules, **options):
    return [Removal(m, **options) for m in modules]


def _skips(decoder, arg, items, **options):
    return [Removal(decoder, arg=arg, item=i, **options) for i in items]


UNET_SKIPS = (0, 1, 2)  # UNetDecoder's 1/16, 1/8, 1/4 skips
REMOVALS = {
    "rgb": _skips("unet.decoder", 1, UNET_SKIPS),
    "early": _skips("unet.decoder", 1, UNET_SKIPS),
    "mid": _skips("decoder", 1, UNET_SKIPS),
    "mid_text": _skips("decoder", 1, UNET_SKIPS) + _weights("fuse"),
    "late": _skips("rgb_branch.decoder", 1, UNET_SKIPS) + _skips("aux_branch.decoder", 1, UNET_SKIPS),
    "se": _skips("decoder", 1, UNET_SKIPS) + _weights(*(f"fusions.{k}.{part}" for k in range(4) for part in
                                                      ("confidence", "gate", "channel_attention", "spatial_attention"))),
    "attention": _skips("decoder", 1, UNET_SKIPS) + _weights("fusion.attention"),
    "rsfnet": _weights("rgb_confidence", "aux_confidence",
                       *(f"fusions.{k}.{part}.{m}" for k in range(4) for m in (0, 1)
                         for part in ("recalibrate", "spatial")))
    + [Removal(f"decoder.streams.{s}.{b}", arg=1) for s in (0, 1) for b in range(3)],  # AggregationBlock's skip
    "sccosf": _weights(*(f"fusions.{k}.{part}" for k in range(4) for part in
                         ("lrb.attention", "lrb.self_r", "lrb.self_i", "fgb.rgb.attention", "fgb.aux.attention",
                          "dcr.conv_h", "dcr.conv_w")),
                       *(f"decoder.stages.{i}.0.{gate}" for i in range(4) for gate in ("spatial", "channel")))
    + _weights(*(f"reaw.stages.{k}.weights" for k in range(4)), observe="fused")
    + _skips("decoder", 0, (0, 1, 2))  # ICRM's skips: the fused maps of stages 1..3
    + _skips("reaw", 0, (0, 1, 2, 3), observe="fused"),
    "sartm": _weights(*(f"rectify.{k}.{part}" for k in range(3) for part in ("channel_mlp", "spatial")),
                      *(f"fuse.{k}.residual" for k in range(3)), "sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1")
    + _weights("image_encoder", only="lora_b")
    + _weights("aux_head.lateral0", "aux_head.lateral1", observe="aux_logits"),  # FFM's attention: its own test
}
CASES = [pytest.param(method, removal, id=f"{method}-{removal.module}-{removal.arg}-{removal.item}-{removal.only}")
         for method in METHODS for removal in REMOVALS[method]]


def _zero_input(arg, item):
    def hook(module, args):
        args = list(args)
        if item is None:
            args[arg] = torch.zeros_like(args[arg])
        else:
            args[arg] = [torch.zeros_like(x) if i == item else x for i, x in enumerate(args[arg])]
        return tuple(args)
    return hook


def _observed(model, removal, rgb, aux):
    if removal.observe in ("logits", "fused", "aux_logits"):
        return outputs(model, rgb, aux)[removal.observe]
    with captured(model, [removal.observe]) as seen:
        outputs(model, rgb, aux)
    return seen[removal.observe]


@functools.cache
def _intact(method: str, observe: str) -> torch.Tensor:
    """The uncut model's observed output (shared by every cut of the same method and output)."""
    return _observed(built(method).train(), Removal("", observe), *make_batch(*SIZES.get(method, SIZE))[:2])


@pytest.mark.parametrize(("method", "removal"), CASES)
def test_removing_a_gate_attention_or_skip_changes_the_output(method, removal):
    model = built(method).train()
    rgb, aux, _ = make_batch(*SIZES.get(method, SIZE))
    before = _intact(method, removal.observe)
    module = model.get_submodule(removal.module)
    if removal.arg is None:
        zeroed = [p for name, p in module.named_parameters() if removal.only in name]
        assert zeroed, f"{removal.module} has no parameter named like {removal.only!r}"
        with torch.no_grad():
            for parameter in zeroed:
                parameter.zero_()
    else:
        module.register_forward_pre_hook(_zero_input(removal.arg, removal.item))
    assert differs(before, _observed(model, removal, rgb, aux)), f"{method}: cutting {removal} changes nothing"


def test_ffm_cross_attention_reads_the_other_modality():
    """SARTM's FFM (CMX): each stream's queries read the OTHER stream's context, so zeroing stream m's keys and
    values changes the other stream's result and not its own."""
    rgb, aux, _ = make_batch(*SIZE)
    for level in range(3):
        for m in (0, 1):
            model = built("sartm").train()
            streams = [f"fuse.{level}.streams.{i}.merge" for i in (0, 1)]
            with captured(model, streams) as before:
                outputs(model, rgb, aux)
            with torch.no_grad():
                model.fuse[level].streams[m].kv.weight.zero_()
            with captured(model, streams) as after:
                outputs(model, rgb, aux)
            own, other = streams[m], streams[1 - m]
            assert differs(before[other], after[other]), f"level {level}: stream {1 - m} ignores stream {m}'s context"
            assert torch.equal(before[own], after[own]), f"level {level}: stream {m} reads its own context"


def test_frm_corrects_each_modality_by_the_other():
    """SARTM's FRM (CMX): out_m = x_m + terms proportional to the other modality's features (weighted from
    both), so a zero second modality leaves the first unchanged, and each output does change with the other."""
    model = built("sartm")
    generator = torch.Generator().manual_seed(0)
    for rectify in model.rectify:
        x1, x2 = torch.randn(2, 2, rectify.channels, 8, 12, generator=generator)
        zero = torch.zeros_like(x1)
        with torch.no_grad():
            out1, _ = rectify(x1, zero)
            _, out2 = rectify(zero, x2)
            both = rectify(x1, x2)
        assert torch.equal(out1, x1) and torch.equal(out2, x2)
        assert differs(x1, both[0]) and differs(x2, both[1])


# --- (d) batch independence ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_sample_0_does_not_depend_on_sample_1(method):
    model = built(method).eval()
    rgb, aux, _ = make_batch(*SIZES.get(method, SIZE))
    other_rgb, other_aux, _ = make_batch(*SIZES.get(method, SIZE), seed=1)
    rgb2, aux2 = torch.cat([rgb[:1], other_rgb[1:]]), torch.cat([aux[:1], other_aux[1:]])
    first, second = outputs(model, rgb, aux), outputs(model, rgb2, aux2)
    assert first.keys() == second.keys()
    for name in first:
        assert not differs(first[name][0], second[name][0]), f"{method}: sample 0's {name} follows sample 1"
        assert differs(first[name][1], second[name][1]), f"{method}: {name} ignores sample 1"
