"""Training one experiment: `rgbd-fusion-seg train --config config/experiments/mm5/mid/mid_RGB1.yaml`.

Everything that can be wrong with the inputs is checked before the first step: the configuration, every
file of the training and validation data (`dataset.validate(full=True)`, whose report is cached until a
file under the data root changes: dataset_cache.py), the model and its pretrained
weights, the output folder. Then:

- AdamW (or Adam / SGD) with a per-step learning-rate schedule: cosine decay from `lr` to
  `lr * min_lr_ratio` over the whole run after an optional linear warm-up (`lr_schedule: cosine`, the
  default; the MM5 study does not state its schedule), `poly` (from lr down to lr * min_lr_ratio as
  (1 - progress) ** poly_power, progress = the share of the post-warm-up steps done: RSFNet's recipe with
  SGD momentum 0.9) or `constant`.
- Mixed precision (fp16 autocast + GradScaler) on CUDA when `train.amp`; fp32 on the CPU.
- The loss is the method's `compute_loss(output, batch, seg_loss)`, seg_loss = CE (plain, class-weighted
  or OHEM) + Dice (losses.py).
- Each epoch visits the training frames in a permutation drawn from (seed, epoch) alone, in batches of
  `batch_size`; the last incomplete batch is dropped (BatchNorm and equal step sizes) unless the set is
  smaller than one batch.
- `last.pt` is written every `checkpoint_every_steps` steps, at the end of every
  `checkpoint_every_epochs`-th epoch and at the finish; `best.pt` whenever the validation mIoU improves
  (unless `save_best: false`). Both are self-describing checkpoints
  (core/checkpoint.py), written atomically, so a kill never leaves a half-written file.
- Running the same command again resumes from `last.pt`: model, optimiser, scaler, RNG states, epoch
  and the position inside the epoch (the batches already done are skipped in the same order). A run
  that has finished returns at once.
- Modality dropout (`train.aux_dropout: p`): each training sample's aux input is replaced by the "no
  reading" input with probability p, drawn from (seed, step) alone (train_loop.aux_dropout_mask), so the
  model keeps working when the aux camera drops out; the checkpoint records p (`data.aux_dropout`).
- Progress: a tqdm bar per epoch, one summary line per epoch on stdout, TensorBoard logs in
  `<out_dir>/tensorboard`.
- Several GPUs / machines: start the same command with torchrun (distributed.py). `train.batch_size` is
  the GLOBAL batch (each of the WORLD_SIZE processes takes batch_size / WORLD_SIZE of every batch), so a
  config means the same optimisation on any number of GPUs and resumes on another count. Gradients are
  averaged by DistributedDataParallel; BatchNorm statistics are per process (no SyncBatchNorm), rank 0's
  are kept. Validation is sharded and its confusion matrix summed; only rank 0 writes checkpoints,
  TensorBoard logs (its own per-step loss; the epoch mean is over all ranks) and console lines.

Where each part lives: this file checks the inputs, builds the run from the config (data, model, loss,
optimiser), resumes it from last.pt and starts it; train_loop.py holds the engine (`TrainState`, the
`Trainer` with its step and epoch loop, the data order, the schedule); train_hooks.py what happens
around the steps (`PeriodicCheckpoint`, `Validation`, `Progress`), as detectron2's trainer and hooks do.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from rgbd_fusion_seg.core.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from rgbd_fusion_seg.core.engine import resolve_device
from rgbd_fusion_seg.core.palette import default_palette
from rgbd_fusion_seg.models import build_model, method_class
from rgbd_fusion_seg.models.losses import build_seg_loss

from . import distributed
from .config import CONFIG, RESUMABLE_FIELDS, ConfigError, ExperimentConfig, Field, Section, dump_config, load_config
from .dataset_cache import validated_report
from .datasets.catalog import build_preprocessing, open_dataset
from .pseudo_labels import with_extra_targets
from .train_hooks import (Checkpointer, PeriodicCheckpoint, Progress, TrainingLog, Validation,
                          clean_stale_temporaries)
from .train_loop import (EpochBatchSampler, Trainer, TrainState, epoch_permutation, learning_rate, loader_options,
                         missing_aux_value, seed_everything)

# The data order and the schedule live in train_loop.py; they are part of what training promises.
__all__ = ["EpochBatchSampler", "epoch_permutation", "learning_rate", "slim_checkpoint", "train", "add_arguments",
           "add_override_arguments", "run"]


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("options",):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


_ABSENT = object()


def _declared_default(dotted: str):
    """The schema's default of a field (`train.aux_dropout`), or _ABSENT for a name it does not declare."""
    section, _, key = dotted.partition(".")
    item = CONFIG.get(section)
    item = item.fields.get(key) if isinstance(item, Section) else (None if key else item)
    return item.default if isinstance(item, Field) else _ABSENT


def _config_differences(saved: dict, current: dict) -> list[str]:
    old, new = _flatten(saved), _flatten(current)
    changed = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_FIELDS or key.split(".")[0] in RESUMABLE_FIELDS:  # may change on resumption
            continue
        if key not in old and new[key] == _declared_default(key):  # a field added since: its default changes nothing
            continue
        if old.get(key) != new.get(key):
            changed.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changed


def slim_checkpoint(path: str | Path) -> Path:
    """Rewrite a finished run's checkpoint with its weights and a small record of the run, dropping the
    optimiser, scaler and RNG state (about two thirds of the file). The run can no longer be extended."""
    checkpoint = load_checkpoint(path)
    state = checkpoint.train_state or {}
    keep = ("epoch", "step_in_epoch", "global_step", "total_steps", "steps_per_epoch", "finished",
            "best_miou", "history", "config")
    checkpoint.train_state = {key: state[key] for key in keep if key in state} | {"slimmed": True}
    return save_checkpoint(checkpoint, path)


# ----------------------------------------------------------------------------------------------------
# Training


def train(
    config: ExperimentConfig,
    *,
    resume: bool = True,
    device: str = "auto",
    progress: bool | None = None,
    log=None,
) -> Path:
    """Train `config` to the end (resuming from `<out_dir>/last.pt` when `resume`); returns last.pt's path.

    progress: show tqdm bars (default: when stderr is a terminal). log: a print-like function for the
    summary lines (default: print to stdout, flushed). Started by torchrun, this process is one rank of a
    DistributedDataParallel job (distributed.py); only rank 0 writes files and lines.
    """
    context, torch_device = distributed.setup(resolve_device(device))
    try:
        return _train(config, context, torch_device, resume=resume, progress=progress, log=log)
    finally:
        distributed.teardown(context)


def _train(config: ExperimentConfig, context: distributed.Distributed, torch_device: torch.device, *,
           resume: bool, progress: bool | None, log) -> Path:
    if context.is_main:
        line = log or (lambda message: print(message, flush=True))
        show_bar = sys.stderr.isatty() if progress is None else progress
    else:
        line, show_bar = (lambda message: None), False
    out_dir = config.out_path
    training_log = TrainingLog(line, out_dir / "tensorboard" if context.is_main else None)
    # ---- everything is checked before any training time is spent
    preprocessing = build_preprocessing(config)
    train_set, val_set, trainer = _build_trainer(config, context, torch_device, preprocessing)
    checkpointer = Checkpointer(out_dir, _checkpoint_description(config, preprocessing, train_set, val_set),
                                training_log)
    saved = _last_checkpoint(config, context, checkpointer.last_path, resume)
    if saved is None:
        dropout = f", aux dropout {trainer.aux_dropout:g}" if trainer.aux_dropout else ""
        line(f"{config.experiment}: {config.model.method} on {len(train_set)} train / {len(val_set)} val frames "
             f"({', '.join(train_set.groups)}), {trainer.state.total_steps} steps{dropout} on {torch_device}, "
             f"output in {out_dir}")
    elif int(saved.train_state["global_step"]) >= trainer.state.total_steps:
        line(f"{config.experiment}: already finished ({int(saved.train_state['global_step'])} steps) in {out_dir}")
        return checkpointer.last_path
    else:
        _continue_from(trainer, saved, checkpointer.last_path, line)
    if context.is_main:
        dump_config(config, out_dir / "config.yaml")
    training_log.open_tensorboard(first_step=trainer.state.global_step)
    val_loader = DataLoader(val_set, batch_size=config.train.batch_size,
                            sampler=range(context.rank, len(val_set), context.world_size),  # this rank's shard
                            generator=torch.Generator().manual_seed(config.train.seed),  # see Trainer._epoch_loader
                            **loader_options(config, torch_device))
    trainer.hooks = [  # in this order: an epoch's loss line comes before its validation, last.pt after both
        Progress(training_log, show_bar),
        Validation(val_loader, list(train_set.classes), config.loss.ignore_index, config.train.val_every,
                   training_log, checkpointer if config.train.save_best else None),
        PeriodicCheckpoint(checkpointer, config.train.checkpoint_every_steps, config.train.checkpoint_every_epochs),
    ]
    trainer.train()
    training_log.close()
    return checkpointer.last_path


def _open_datasets(config: ExperimentConfig, context: distributed.Distributed, preprocessing):
    """(train_set, val_set, the training set's validation report), every file checked."""
    data_kwargs = dict(
        dataset=config.data.dataset,
        root=config.data_root,
        lightings=config.data.lightings,
        aux_folder=config.data.aux_folder,
        label_folder=config.data.label_folder,
        preprocessing=preprocessing,
        num_classes=config.data.num_classes,
        fmb_classes=config.data.fmb_classes,
    )
    train_set = open_dataset(split=config.data.train_split, augment=config.train.augment,
                             augmentation=config.data.augmentation, **data_kwargs)
    val_set = open_dataset(split=config.data.val_split, augment=False, **data_kwargs)
    if not context.is_main:
        context.barrier()  # rank 0 validates the data (and caches the report) first, the others read it
    train_report = validated_report(train_set)  # cached: see dataset_cache.py
    validated_report(val_set)
    train_set = with_extra_targets(train_set, config.model.method, config.model.options)  # RSFNet's pseudo-labels, cached like the report
    if context.is_main:
        context.barrier()
    if len(train_set) == 0:
        raise ConfigError(f"{config.source}: the training split {config.data.train_split!r} has no frames")
    num_classes = config.data.num_classes or len(train_set.classes)
    if len(train_set.classes) != num_classes:
        raise ConfigError(f"{config.source}: field 'data.num_classes' is {num_classes} but {config.data_root} "
                          f"lists {len(train_set.classes)} classes")
    return train_set, val_set, train_report


def _model_options(config: ExperimentConfig, classes) -> dict:
    """build_model's options: the config's, plus the class names for a method that embeds them."""
    options = config.model_kwargs()
    if method_class(config.model.method).wants_class_names:
        options["class_names"] = list(classes)
    return options


def _build_optimizer(config: ExperimentConfig, model) -> torch.optim.Optimizer:
    train = config.train
    named = model.trainable_parameters()
    if train.no_decay_1d:  # biases and norm weights: no weight decay (as SARTM's and most transformer recipes)
        parameters = [{"params": [p for _, p in named if p.ndim > 1]},
                      {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0}]
    else:
        parameters = [p for _, p in named]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def _build_trainer(config: ExperimentConfig, context: distributed.Distributed, device: torch.device, preprocessing):
    """(train_set, val_set, a Trainer at step 0); raises on any bad input before the output folder exists."""
    train_cfg = config.train
    train_set, val_set, train_report = _open_datasets(config, context, preprocessing)
    num_classes = len(train_set.classes)
    # Seed before the model is built: its initial weights are part of what the seed reproduces (a resumed
    # run then restores the RNG state saved in last.pt).
    seed_everything(train_cfg.seed)
    model = build_model(config.model.method, num_classes, **_model_options(config, train_set.classes))
    if context.rank:  # every rank its own augmentation stream; rank 0 keeps the single-process one
        seed_everything(int(np.random.SeedSequence([train_cfg.seed, context.rank]).generate_state(1)[0]))
    seg_loss = build_seg_loss(
        num_classes,
        ce=config.loss.ce,
        dice=config.loss.dice,
        class_weights=config.loss.class_weights,
        ignore_index=config.loss.ignore_index,
        pixel_counts=train_report["class_pixels"],
        ohem=config.loss.ohem,
    ).to(device)
    config.out_path.mkdir(parents=True, exist_ok=True)
    if context.is_main:
        clean_stale_temporaries(config.out_path)
    if context.enabled and (train_cfg.batch_size % context.world_size or len(train_set) < train_cfg.batch_size):
        raise ConfigError(
            f"{config.source}: field 'train.batch_size' is the global batch: {train_cfg.batch_size} must be a "
            f"multiple of the {context.world_size} processes and at most the {len(train_set)} training samples"
        )
    steps_per_epoch = EpochBatchSampler.batches_per_epoch(len(train_set), train_cfg.batch_size)
    total_steps = train_cfg.epochs * steps_per_epoch
    if train_cfg.max_steps is not None:
        total_steps = min(total_steps, train_cfg.max_steps)
    model.to(device)
    trainer = Trainer(config, context, device, model=model, optimizer=_build_optimizer(config, model),
                      seg_loss=seg_loss, train_set=train_set, state=TrainState(steps_per_epoch, total_steps),
                      missing_aux=missing_aux_value(preprocessing))
    return train_set, val_set, trainer


def _checkpoint_description(config: ExperimentConfig, preprocessing, train_set, val_set) -> dict:
    """The Checkpoint fields that stay the same for the whole run (see Checkpointer)."""
    num_classes = len(train_set.classes)
    # Rebuilding the model from the checkpoint must not look for weight files again: the state dict holds
    # every weight, so the stored options switch the reads off (the init is recorded apart).
    options = method_class(config.model.method).serving_options(_model_options(config, train_set.classes))
    data = {
        "dataset": config.data.dataset,
        "root": str(config.data_root),
        "lightings": getattr(train_set, "lightings", None),  # MM5 only: what evaluation reopens
        "groups": train_set.groups,
        "aux_folder": config.data.aux_folder,
        "label_folder": config.data.label_folder,
        "train_split": config.data.train_split,
        "val_split": config.data.val_split,
        "num_train": len(train_set),
        "num_val": len(val_set),
        "init": "pretrained" if config.model.pretrained else "scratch",  # ImageNet, or SAM2's for SARTM
        # Modality dropout as applied (a method without aux drops nothing): Checkpoint.aux_dropout reads it.
        "aux_dropout": config.train.aux_dropout if method_class(config.model.method).uses_aux else 0.0,
    }
    return dict(method=config.model.method, num_classes=num_classes, classes=list(train_set.classes),
                palette=[list(c) for c in default_palette(num_classes)], preprocessing=preprocessing,
                options=options, data=data)


def _last_checkpoint(config: ExperimentConfig, context: distributed.Distributed, last_path: Path,
                     resume: bool) -> Checkpoint | None:
    """last.pt to resume from (checked against `config`), or None to start from step 0."""
    context.agree(last_path.is_file(), f"whether {last_path} exists")
    if not (resume and last_path.is_file()):
        return None
    saved = load_checkpoint(last_path)
    if not saved.train_state:
        raise CheckpointError(f"{last_path} has no training state to resume from; pass --no-resume to start over")
    differences = _config_differences(saved.train_state.get("config", {}), config.to_dict())
    if differences:
        raise ConfigError(
            f"{last_path} was written by a different configuration ({'; '.join(differences)}); "
            "use another --out-dir, or --no-resume to start over"
        )
    return saved


def _continue_from(trainer: Trainer, saved: Checkpoint, last_path: Path, line) -> None:
    """Load an unfinished run's last.pt into `trainer`."""
    if "optimizer" not in saved.train_state:
        raise CheckpointError(
            f"{last_path} keeps only the final weights (slimmed after a study scored it), so its training "
            "cannot be extended; pass --no-resume to train again from scratch"
        )
    context, state = trainer.context, trainer.state
    written_by = trainer.load_state_dict(saved.train_state, saved.state_dict)
    if written_by != context.world_size:
        line(f"note: {last_path} was written by {written_by} process(es), this run has {context.world_size}; "
             "the batches are the same but the augmentation of ranks > 0 is not")
    state.latest_metrics = dict(saved.metrics)
    line(f"{trainer.config.experiment}: resuming from {last_path} at epoch {state.epoch + 1}, step "
         f"{state.step_in_epoch} of {state.steps_per_epoch} (global step {state.global_step} of {state.total_steps})")


# ----------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (config/experiments/...)")
    add_override_arguments(parser)
    parser.add_argument("--no-resume", action="store_true", help="start over even if <out_dir>/last.pt exists")


def add_override_arguments(parser: argparse.ArgumentParser, out_flags=("--out-dir",)) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field (repeatable), e.g. --set train.epochs=2",
    )
    parser.add_argument("--data-root", help="dataset folder (overrides data.root)")
    parser.add_argument(*out_flags, dest="out_dir", help="output folder (overrides out_dir)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides, data_root=args.data_root, out_dir=args.out_dir)
    path = train(config, resume=not args.no_resume, device=args.device)
    if distributed.is_main_process():
        print(f"final checkpoint: {path}")
    return 0
