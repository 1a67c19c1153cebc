"""SARTM's loss balance (docs/sartm.md, "Loss balance"): each weighted term of eq. 15 and its share of the
gradient that reaches the LoRA adapters and the fusion blocks (FRM + FFM), at initialisation and after
training steps of a recipe on a replica of its data set; and the distillation weights that the balance rule
picks from the initial terms.

    python -m rgbd_fusion_seg.offline.sartm_loss_balance config/experiments/mfnet/sartm.yaml --encoder tiny

The recipe runs as configured (its loss weights, optimiser, schedule, OHEM loss, augmentation) with what a
CPU without weight files needs: random SAM2 weights, the seeded stand-in text table, the given encoder, a
replica of `--frames` frames of `--size`, crops of that size, batch `--batch`, `--steps` steps, warm-up the
recipe's 10 epochs counted in the replica's epochs. Every measurement runs on a copy of the model (the
prototype EMA and BatchNorm statistics of the run are not touched) and is averaged over `--batches` batches.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from rgbd_fusion_seg.models.methods.sartm import SARTM

from . import distributed
from .config import load_config
from .datasets.catalog import build_preprocessing
from .datasets.registry import replica_writer
from .train import _build_trainer

RECIPE_WARMUP_EPOCHS = 10  # the recipes' warm-up (code: 10 epochs)
# The balance rule (docs/sartm.md): at initialisation each weighted distillation term is this fraction of the
# segmentation loss, so that segmentation leads and each distillation term still moves the features.
DISTILLATION_FRACTION = 0.1
BALANCE_BAND = (0.05, 0.2)  # what the rounded weights must give (one significant digit moves it by < 2x)


def trained_groups(model: SARTM) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters whose gradient shares are reported: the LoRA adapters and the fusion blocks."""
    return {"lora": [p for layer in model.lora for p in (layer.lora_a, layer.lora_b)],
            "fusion": [*model.rectify.parameters(), *model.fuse.parameters()]}


def measure_terms(model: SARTM, batch: dict, seg_loss) -> dict[str, dict[str, float]]:
    """{term: {"loss": weighted value, "<group>": norm of its gradient on that group}} for one batch, on a copy
    of `model` in training mode (one forward pass, as a training step makes)."""
    probe = copy.deepcopy(model).train()
    output = probe(batch["rgb"], batch["aux"])
    terms = probe.loss_terms(output, batch, seg_loss)
    weights = probe.loss_weights()
    groups = trained_groups(probe)
    parameters = [p for group in groups.values() for p in group]
    result = {}
    for name, term in terms.items():
        weighted = weights[name] * term
        row = {"loss": float(weighted.detach())}
        if not weighted.requires_grad:  # a switched-off part (weight 0 or no head): no gradient
            result[name] = {"loss": row["loss"], **{group: 0.0 for group in groups}}
            continue
        grads = iter(torch.autograd.grad(weighted, parameters, retain_graph=True, allow_unused=True))
        for group, members in groups.items():
            group_grads = [next(grads) for _ in members]
            row[group] = math.sqrt(sum(float(g.pow(2).sum()) for g in group_grads if g is not None))
        result[name] = row
    return result


def average_balance(model: SARTM, batches: list[dict], seg_loss) -> dict[str, dict[str, float]]:
    """measure_terms averaged over `batches`, with each group's gradient norms turned into shares (a term's
    norm over the sum of the terms' norms on that group)."""
    measured = [measure_terms(model, batch, seg_loss) for batch in batches]
    table = {name: {key: sum(m[name][key] for m in measured) / len(measured) for key in measured[0][name]}
             for name in measured[0]}
    for group in trained_groups(model):
        total = sum(row[group] for row in table.values()) or 1.0
        for row in table.values():
            row[f"{group}_share"] = row[group] / total
    return table


def balanced_weights(unweighted: dict[str, float], fraction: float = DISTILLATION_FRACTION) -> dict[str, float]:
    """The rule: w = fraction x seg / term for the distillation terms (cr, se) in `unweighted`, to one
    significant digit."""
    chosen = {}
    for name in ("cr", "se"):
        if not unweighted.get(name):
            continue  # switched off: nothing to balance
        exact = fraction * unweighted["seg"] / unweighted[name]
        chosen[f"{name}_weight"] = float(f"{exact:.0e}")
    return chosen


def format_table(title: str, table: dict[str, dict[str, float]]) -> str:
    lines = [title, "| term | weighted loss | / seg | LoRA grad share | fusion grad share |",
             "| --- | --- | --- | --- | --- |"]
    seg = table["seg"]["loss"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['loss']:.4g} | {row['loss'] / seg:.3f} | {row['lora_share']:.1%} | "
                     f"{row['fusion_share']:.1%} |")
    return "\n".join(lines)


def prepare_run(config_path: Path, scratch: Path, *, encoder: str, steps: int, frames: int, size: tuple[int, int],
                batch_size: int, weights: dict[str, float], pretrained: bool = False):
    """(trainer at step 0, its training set, the warm-up) for the recipe at `config_path` on a replica written
    into `scratch`, as the module docstring describes."""
    dataset = load_config(config_path).data.dataset
    root = scratch / "data"
    written = replica_writer(dataset)(root, num_frames=frames, height=size[0], width=size[1])
    warmup = RECIPE_WARMUP_EPOCHS * max(1, len(written["splits"]["train"]) // batch_size)
    weight_files = [] if pretrained else ["model.pretrained=false", "model.options.text_standin=true"]
    overrides = [f"model.options.encoder={encoder}", *weight_files, f"data.augmentation.crop=[{size[0]},{size[1]}]",
                 f"train.batch_size={batch_size}", f"train.max_steps={max(steps, 1)}", f"train.warmup_steps={warmup}",
                 "train.num_workers=0", "train.checkpoint_every_steps=null",
                 *(f"model.options.{name}={value}" for name, value in weights.items())]
    config = load_config(config_path, overrides, data_root=root, out_dir=scratch / "run")
    train_set, _, trainer = _build_trainer(config, distributed.Distributed(), torch.device("cpu"),
                                           build_preprocessing(config))  # one process on the CPU
    return trainer, train_set, warmup


def run(config_path: Path, *, encoder: str, steps: int, frames: int, size: tuple[int, int], batch_size: int,
        batches: int, weights: dict[str, float], pretrained: bool = False, out=sys.stdout) -> dict:
    """Measure at initialisation and after `steps` steps (none: 0); returns {"init": table, "trained": table or
    None, "rule": the weights the rule picks}. `pretrained`: the recipe's SAM2 and CLIP files (where present)."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer, train_set, warmup = prepare_run(config_path, Path(scratch), encoder=encoder, steps=steps,
                                                 frames=frames, size=size, batch_size=batch_size, weights=weights,
                                                 pretrained=pretrained)
        probe_batches = [batch for batch, _ in zip(DataLoader(train_set, batch_size=batch_size), range(batches))]
        model = trainer.model
        print(f"{trainer.config.experiment} on a replica ({len(train_set)} training frames of {size[0]}x{size[1]}), "
              f"encoder {encoder}, batch {batch_size}, {steps} steps, warm-up {warmup}, weights aux "
              f"{model.aux_weight:g} / cr {model.cr_weight:g} / se {model.se_weight:g}", file=out, flush=True)
        init = average_balance(model, probe_batches, trainer.seg_loss)
        print(format_table("at initialisation", init), file=out, flush=True)
        trained = None
        if steps:
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
            trained = average_balance(model, probe_batches, trainer.seg_loss)
            print(format_table(f"after {steps} steps ({seconds:.0f} s)", trained), file=out, flush=True)
    weights_used = model.loss_weights()
    unweighted = {name: row["loss"] / weights_used[name] for name, row in init.items() if weights_used[name]}
    rule = balanced_weights(unweighted)
    print(f"rule (each weighted distillation term {DISTILLATION_FRACTION:g} x seg at initialisation): "
          + ", ".join(f"{name} {value:g}" for name, value in rule.items()), file=out, flush=True)
    return {"init": init, "trained": trained, "rule": rule}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="a SARTM recipe, e.g. config/experiments/mfnet/sartm.yaml")
    parser.add_argument("--encoder", default="tiny", help="SAM2 size (default tiny; micro for a quick look)")
    parser.add_argument("--steps", type=int, default=300, help="training steps after the first measurement (0: none)")
    parser.add_argument("--frames", type=int, default=32, help="replica frames (all splits)")
    parser.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=4, help="batches each measurement averages")
    parser.add_argument("--pretrained", action="store_true",
                        help="use the recipe's SAM2 and CLIP weight files (default: random SAM2, stand-in text table)")
    parser.add_argument("--weight", action="append", default=[], metavar="NAME=VALUE",
                        help="a loss weight instead of the recipe's, e.g. cr_weight=10000 (repeatable)")
    args = parser.parse_args(argv)
    weights = {}
    for item in args.weight:
        name, _, value = item.partition("=")
        if name not in ("aux_weight", "cr_weight", "se_weight") or not value:
            parser.error(f"--weight takes aux_weight=, cr_weight= or se_weight=<number>, got {item!r}")
        weights[name] = float(value)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    run(args.config, encoder=args.encoder, steps=args.steps, frames=args.frames, size=tuple(args.size),
        batch_size=args.batch, batches=args.batches, weights=weights, pretrained=args.pretrained)


if __name__ == "__main__":
    main()
