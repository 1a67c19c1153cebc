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
- Progress: a tqdm bar per epoch, one summary line per epoch on stdout, TensorBoard logs in
  `<out_dir>/tensorboard`.
- Several GPUs / machines: start the same command with torchrun (distributed.py). `train.batch_size` is
  the GLOBAL batch (each of the WORLD_SIZE processes takes batch_size / WORLD_SIZE of every batch), so a
  config means the same optimisation on any number of GPUs and resumes on another count. Gradients are
  averaged by DistributedDataParallel; BatchNorm statistics are per process (no SyncBatchNorm), rank 0's
  are kept. Validation is sharded and its confusion matrix summed; only rank 0 writes checkpoints,
  TensorBoard logs (its own per-step loss; the epoch mean is over all ranks) and console lines.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from rgbd_fusion_seg.core.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from rgbd_fusion_seg.core.engine import resolve_device
from rgbd_fusion_seg.core.palette import default_palette
from rgbd_fusion_seg.models import build_model
from rgbd_fusion_seg.models.losses import build_seg_loss

from . import distributed
from .config import ConfigError, ExperimentConfig, dump_config, load_config
from .datasets.catalog import build_preprocessing, open_dataset
from .metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_confusion
from .dataset_cache import validated_report
from .pseudo_labels import with_extra_targets

LAST = "last.pt"
BEST = "best.pt"
# Fields that may change between a run and its resumption (they do not change what was trained so far).
RESUMABLE_CHANGES = {
    "experiment",
    "out_dir",
    "data.root",
    "train.epochs",
    "train.max_steps",
    "train.num_workers",
    "train.val_every",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_epochs",
    "train.save_best",
    "study",
}


# ----------------------------------------------------------------------------------------------------
# Data


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of an epoch, a function of (seed, epoch) only, so a resumed run replays it exactly."""
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1))
    return torch.randperm(num_items, generator=generator)


class EpochBatchSampler(Sampler):
    """Batches of one epoch's permutation, starting at batch `start_batch` (to resume mid-epoch). Under
    torchrun each batch is a global one and this rank gets its share: items rank, rank + world_size, ..."""

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.rank = rank
        self.world_size = world_size
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch

    @staticmethod
    def batches_per_epoch(num_items: int, batch_size: int) -> int:
        return num_items // batch_size if num_items >= batch_size else 1

    def all_batches(self) -> list[list[int]]:
        order = epoch_permutation(self.num_items, self.seed, self.epoch).tolist()
        count = self.batches_per_epoch(self.num_items, self.batch_size)
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(count)]

    def __iter__(self):
        for batch in self.all_batches()[self.start_batch :]:
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch(self.num_items, self.batch_size) - self.start_batch)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------
# Schedule, RNG, resume checks


def learning_rate(step: int, total_steps: int, config: ExperimentConfig) -> float:
    """Learning rate for optimiser step `step` (0-based)."""
    train = config.train
    if train.warmup_steps and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return train.lr
    span = max(1, total_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    floor = train.lr * train.min_lr_ratio
    if train.lr_schedule == "poly":
        return floor + (train.lr - floor) * (1.0 - progress) ** train.poly_power
    return floor + (train.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("options",):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _config_differences(saved: dict, current: dict) -> list[str]:
    old, new = _flatten(saved), _flatten(current)
    changed = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_CHANGES or key.split(".")[0] in RESUMABLE_CHANGES:
            continue
        if old.get(key) != new.get(key):
            changed.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return changed


def _clean_stale_temporaries(out_dir: Path) -> None:
    """A kill during save_checkpoint can leave its temporary file; the checkpoint itself is intact."""
    for name in (LAST, BEST):
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def run_validation(model, loader, num_classes: int, device: torch.device, amp: bool, ignore_index: int = 255,
                   context: distributed.Distributed = distributed.Distributed()):
    """Metrics over `loader`; under torchrun each rank scores its shard and the matrices are summed."""
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for batch in loader:
        batch = _to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(batch["rgb"], batch["aux"]).logits
        confusion.update(logits.argmax(dim=1), batch["label"])
    model.train()
    return metrics_from_confusion(context.all_reduce_sum(torch.from_numpy(confusion.matrix)).numpy())


class _NoWriter:
    """Takes the TensorBoard writer's place on ranks other than 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    flush = close = add_scalar


def metrics_summary(metrics: SegmentationMetrics, classes: list[str]) -> dict:
    return {
        "miou": metrics.miou,
        "macc": metrics.macc,
        "pixel_accuracy": metrics.pixel_accuracy,
        "per_class_iou": {name: float(v) for name, v in zip(classes, metrics.iou)},
    }


# ----------------------------------------------------------------------------------------------------
# Training


def slim_checkpoint(path: str | Path) -> Path:
    """Rewrite a finished run's checkpoint with its weights and a small record of the run, dropping the
    optimiser, scaler and RNG state (about two thirds of the file). The run can no longer be extended."""
    checkpoint = load_checkpoint(path)
    state = checkpoint.train_state or {}
    keep = ("epoch", "step_in_epoch", "global_step", "total_steps", "steps_per_epoch", "finished",
            "best_miou", "history", "config")
    checkpoint.train_state = {key: state[key] for key in keep if key in state} | {"slimmed": True}
    return save_checkpoint(checkpoint, path)


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
    if not context.is_main:
        log, progress = (lambda message: None), False
    log = log or (lambda message: print(message, flush=True))
    if progress is None:
        progress = sys.stderr.isatty()
    train_cfg = config.train
    out_dir = config.out_path
    root = config.data_root

    # ---- everything is checked before any training time is spent
    preprocessing = build_preprocessing(config)
    data_kwargs = dict(
        dataset=config.data.dataset,
        root=root,
        lightings=config.data.lightings,
        aux_folder=config.data.aux_folder,
        label_folder=config.data.label_folder,
        preprocessing=preprocessing,
        num_classes=config.data.num_classes,
        fmb_classes=config.data.fmb_classes,
    )
    train_set = open_dataset(split=config.data.train_split, augment=train_cfg.augment,
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
    classes = list(train_set.classes)
    num_classes = config.data.num_classes or len(classes)
    if len(classes) != num_classes:
        raise ConfigError(
            f"{config.source}: field 'data.num_classes' is {num_classes} but {root} lists {len(classes)} classes"
        )

    # Seed before the model is built: its initial weights are part of what the seed reproduces (a resumed
    # run then restores the RNG state saved in last.pt).
    _seed_everything(train_cfg.seed)
    model = build_model(config.model.method, num_classes, **config.model_kwargs())
    if context.rank:  # every rank its own augmentation stream; rank 0 keeps the single-process one
        _seed_everything(int(np.random.SeedSequence([train_cfg.seed, context.rank]).generate_state(1)[0]))
    seg_loss = build_seg_loss(
        num_classes,
        ce=config.loss.ce,
        dice=config.loss.dice,
        class_weights=config.loss.class_weights,
        ignore_index=config.loss.ignore_index,
        pixel_counts=train_report["class_pixels"],
        ohem=config.loss.ohem,
    ).to(torch_device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if context.is_main:
        _clean_stale_temporaries(out_dir)
    if context.enabled and (train_cfg.batch_size % context.world_size or len(train_set) < train_cfg.batch_size):
        raise ConfigError(
            f"{config.source}: field 'train.batch_size' is the global batch: {train_cfg.batch_size} must be a "
            f"multiple of the {context.world_size} processes and at most the {len(train_set)} training samples"
        )

    steps_per_epoch = EpochBatchSampler.batches_per_epoch(len(train_set), train_cfg.batch_size)
    total_steps = train_cfg.epochs * steps_per_epoch
    if train_cfg.max_steps is not None:
        total_steps = min(total_steps, train_cfg.max_steps)
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    model.to(torch_device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    elif train_cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(parameters, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(parameters, lr=train_cfg.lr, momentum=train_cfg.momentum,
                                    weight_decay=train_cfg.weight_decay)
    use_amp = train_cfg.amp and torch_device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    data_record = {
        "dataset": config.data.dataset,
        "root": str(root),
        "lightings": getattr(train_set, "lightings", None),  # MM5 only: what evaluation reopens
        "groups": train_set.groups,
        "aux_folder": config.data.aux_folder,
        "label_folder": config.data.label_folder,
        "train_split": config.data.train_split,
        "val_split": config.data.val_split,
        "num_train": len(train_set),
        "num_val": len(val_set),
    }
    # Rebuilding the model from the checkpoint must not look for ImageNet weights again: the state
    # dict holds every weight, so the stored options say pretrained=False (the init is recorded apart).
    stored_options = dict(config.model_kwargs())
    if "pretrained" in stored_options:
        stored_options["pretrained"] = False

    # ---- resume
    epoch, step_in_epoch, global_step = 0, 0, 0
    best_miou = float("-inf")
    history: list[dict] = []
    latest_metrics: dict = {}
    last_path = out_dir / LAST
    context.agree(last_path.is_file(), f"whether {last_path} exists")
    if resume and last_path.is_file():
        saved = load_checkpoint(last_path)
        state = saved.train_state
        if not state:
            raise CheckpointError(f"{last_path} has no training state to resume from; pass --no-resume to start over")
        differences = _config_differences(state.get("config", {}), config.to_dict())
        if differences:
            raise ConfigError(
                f"{last_path} was written by a different configuration ({'; '.join(differences)}); "
                "use another --out-dir, or --no-resume to start over"
            )
        epoch, step_in_epoch, global_step = int(state["epoch"]), int(state["step_in_epoch"]), int(state["global_step"])
        if global_step >= total_steps:
            log(f"{config.experiment}: already finished ({global_step} steps) in {out_dir}")
            return last_path
        if "optimizer" not in state:
            raise CheckpointError(
                f"{last_path} keeps only the final weights (slimmed after a study scored it), so its training "
                "cannot be extended; pass --no-resume to train again from scratch"
            )
        model.load_state_dict(saved.state_dict)
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # empty when written by a run without AMP (e.g. on the CPU)
            scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == context.world_size:
            _set_rng_state(per_rank[context.rank])
        else:  # another process count: rank 0 goes on exactly, the others keep their fresh streams
            if context.is_main:
                _set_rng_state(state["rng"])
            log(f"note: {last_path} was written by {len(per_rank)} process(es), this run has {context.world_size}; "
                "the batches are the same but the augmentation of ranks > 0 is not")
        best_miou = float(state.get("best_miou", float("-inf")))
        history = list(state.get("history", []))
        latest_metrics = dict(saved.metrics)
        log(f"{config.experiment}: resuming from {last_path} at epoch {epoch + 1}, step {step_in_epoch} of "
            f"{steps_per_epoch} (global step {global_step} of {total_steps})")
    else:
        log(f"{config.experiment}: {config.model.method} on {len(train_set)} train / {len(val_set)} val frames "
            f"({', '.join(train_set.groups)}), {total_steps} steps on {torch_device}, output in {out_dir}")
    if context.is_main:
        dump_config(config, out_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=global_step if global_step else None)
    else:
        writer = _NoWriter()

    def make_checkpoint(rng_states: list | None) -> Checkpoint:
        """The checkpoint now; with every rank's RNG state (`rng_states`) it can be resumed from."""
        train_state = None
        if rng_states is not None:
            train_state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": {"kind": train_cfg.lr_schedule, "global_step": global_step, "total_steps": total_steps},
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
                "finished": global_step >= total_steps,
                "best_miou": best_miou,
                "history": history,
                "rng": rng_states[0],
                **({"rng_per_rank": rng_states} if context.enabled else {}),
                "world_size": context.world_size,
                "sampler": {"scheme": "randperm(SeedSequence([seed, epoch]))", "seed": train_cfg.seed, "epoch": epoch},
                "config": config.to_dict(),
            }
        return Checkpoint(
            method=config.model.method,
            num_classes=num_classes,
            classes=classes,
            palette=[list(c) for c in default_palette(num_classes)],
            preprocessing=preprocessing,
            state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            options=stored_options,
            data=data_record | {"init": "imagenet" if config.model.pretrained else "scratch"},
            metrics=latest_metrics | {"epoch": epoch, "global_step": global_step, "best_val_miou": best_miou},
            train_state=train_state,
        )

    def save_last(reason: str) -> None:
        rng_states = context.gather(_rng_state())  # every rank takes part
        context.copy_buffers_from_main(model)
        if context.is_main:
            save_checkpoint(make_checkpoint(rng_states), last_path)
            writer.flush()
        context.barrier()  # no rank goes on (or ends) before last.pt is complete
        log(f"checkpoint {last_path.name}: epoch={epoch} step_in_epoch={step_in_epoch} "
            f"global_step={global_step} ({reason})")

    loader_kwargs = dict(
        num_workers=train_cfg.num_workers,
        pin_memory=torch_device.type == "cuda",
        worker_init_fn=_seed_worker,
    )
    # Every loader gets its own generator: creating an iterator draws a worker base seed from it, and
    # drawing that from the global RNG would shift the augmentation sequence of a resumed run.
    val_loader = DataLoader(val_set, batch_size=train_cfg.batch_size,
                            sampler=range(context.rank, len(val_set), context.world_size),  # this rank's shard
                            generator=torch.Generator().manual_seed(train_cfg.seed), **loader_kwargs)

    def validate_now() -> None:
        nonlocal best_miou, latest_metrics
        if len(val_set) == 0:
            return
        context.copy_buffers_from_main(model)
        metrics = run_validation(model, val_loader, num_classes, torch_device, use_amp, config.loss.ignore_index,
                                 context)
        latest_metrics = {"val": metrics_summary(metrics, classes)}
        history.append({"epoch": epoch, "global_step": global_step, "miou": metrics.miou, "macc": metrics.macc})
        writer.add_scalar("val/miou", metrics.miou, global_step)
        writer.add_scalar("val/macc", metrics.macc, global_step)
        writer.add_scalar("val/pixel_accuracy", metrics.pixel_accuracy, global_step)
        improved = not math.isnan(metrics.miou) and metrics.miou > best_miou
        if improved:
            best_miou = metrics.miou
            if train_cfg.save_best and context.is_main:
                save_checkpoint(make_checkpoint(None), out_dir / BEST)
        log(f"epoch {epoch + 1}/{num_epochs}: val mIoU {100 * metrics.miou:.2f} mAcc {100 * metrics.macc:.2f}"
            f"{' (best)' if improved else ''}")

    from tqdm import tqdm

    forward = model
    if context.enabled:  # averages the gradients over the ranks in backward()
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None
        )
    model.train()
    started = time.monotonic()
    while global_step < total_steps:
        sampler = EpochBatchSampler(len(train_set), train_cfg.batch_size, train_cfg.seed, epoch, step_in_epoch,
                                    rank=context.rank, world_size=context.world_size)
        worker_seed = int(np.random.SeedSequence([train_cfg.seed, epoch, 1 + context.rank]).generate_state(1)[0])
        loader = DataLoader(train_set, batch_sampler=sampler, generator=torch.Generator().manual_seed(worker_seed),
                            **loader_kwargs)
        bar = tqdm(
            total=min(steps_per_epoch, step_in_epoch + total_steps - global_step),
            initial=step_in_epoch,
            desc=f"{config.experiment} epoch {epoch + 1}/{num_epochs}",
            disable=not progress,
            dynamic_ncols=True,
            leave=False,
        )
        loss_sum, loss_count = 0.0, 0
        for batch in loader:
            batch = _to_device(batch, torch_device)
            lr = learning_rate(global_step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(torch_device.type, dtype=torch.float16, enabled=use_amp):
                output = forward(batch["rgb"], batch["aux"])
                loss, parts = model.compute_loss(output, batch, seg_loss)
            # Under AMP an inf/NaN step is normal: GradScaler skips it and lowers its scale.
            if not use_amp and not torch.isfinite(loss.detach()):
                raise FloatingPointError(
                    f"{config.experiment}: the loss became {float(loss)} at step {global_step}; "
                    "lower train.lr or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if train_cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, train_cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            step_in_epoch += 1
            loss_value = float(loss.detach())
            loss_sum += loss_value
            loss_count += 1
            writer.add_scalar("train/loss", loss_value, global_step)
            for name, value in parts.items():
                writer.add_scalar(f"train/{name}", value, global_step)
            writer.add_scalar("train/lr", lr, global_step)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if global_step >= total_steps:
                break
            if (
                train_cfg.checkpoint_every_steps
                and global_step % train_cfg.checkpoint_every_steps == 0
                and step_in_epoch < steps_per_epoch
            ):
                save_last("periodic")
        bar.close()
        epoch_done = step_in_epoch >= steps_per_epoch
        finished = global_step >= total_steps
        if context.enabled:  # the epoch's mean over every rank's steps
            sums = context.all_reduce_sum(torch.tensor([loss_sum, loss_count], dtype=torch.float64))
            loss_sum, loss_count = sums.tolist()
        if loss_count:
            log(f"epoch {epoch + 1}/{num_epochs}: step {global_step}/{total_steps}, "
                f"mean train loss {loss_sum / loss_count:.4f}")
        if finished or (epoch_done and (epoch + 1) % train_cfg.val_every == 0):
            validate_now()
        if epoch_done:
            epoch += 1
            step_in_epoch = 0
        if finished or epoch % train_cfg.checkpoint_every_epochs == 0:
            save_last("finished" if finished else "epoch end")

    writer.close()
    elapsed = time.monotonic() - started
    best = f"; best val mIoU {100 * best_miou:.2f}" if best_miou > float("-inf") else ""
    log(f"{config.experiment}: finished {global_step} steps in {elapsed:.1f} s{best}")
    return last_path


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
