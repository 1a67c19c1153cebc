"""What a training run does around its steps (train_loop.py calls these hooks): write last.pt and
best.pt, score the validation split, and report progress (tqdm, console lines, TensorBoard).

Only rank 0 writes files and lines; every rank runs every hook, because saving (the RNG states), validating
(the confusion matrix) and the epoch's loss line (its mean over ranks) are collectives.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from rgbd_fusion_seg.core.checkpoint import Checkpoint, save_checkpoint

from . import distributed
from .metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_confusion
from .train_loop import HookBase, StepResult, Trainer, rng_state, to_device

LAST = "last.pt"
BEST = "best.pt"


class TrainingLog:
    """Console lines and TensorBoard scalars; on ranks other than 0 (`tensorboard_dir` None) both are dropped."""

    def __init__(self, line, tensorboard_dir: Path | None):
        self.line = line  # print-like
        self._tensorboard_dir = tensorboard_dir
        self._writer = None

    def open_tensorboard(self, first_step: int) -> None:
        """Start the event file; on a resumed run the events after `first_step` (written after last.pt) go."""
        if self._tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self._tensorboard_dir), purge_step=first_step or None)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def clean_stale_temporaries(out_dir: Path) -> None:
    """A kill during save_checkpoint can leave its temporary file; the checkpoint itself is intact."""
    for name in (LAST, BEST):
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


class Checkpointer:
    """Writes a run's last.pt (resumable) and best.pt (weights only) from rank 0. `description` holds the
    Checkpoint fields that do not change during the run: method, classes, palette, preprocessing, options
    and data (core/checkpoint.py)."""

    def __init__(self, out_dir: Path, description: dict, log: TrainingLog):
        self.last_path = out_dir / LAST
        self.best_path = out_dir / BEST
        self.description = description
        self.log = log

    def build(self, trainer: Trainer, train_state: dict | None) -> Checkpoint:
        """The checkpoint now; with a `train_state` (Trainer.state_dict) it can be resumed from."""
        return Checkpoint(
            **self.description,
            state_dict={k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            metrics=trainer.state.checkpoint_metrics(),
            train_state=train_state,
        )

    def save_last(self, trainer: Trainer, reason: str) -> None:
        context, state = trainer.context, trainer.state
        rng_states = context.gather(rng_state())  # every rank takes part
        context.copy_buffers_from_main(trainer.model)
        if context.is_main:
            save_checkpoint(self.build(trainer, trainer.state_dict(rng_states)), self.last_path)
            self.log.flush()
        context.barrier()  # no rank goes on (or ends) before last.pt is complete
        self.log.line(f"checkpoint {self.last_path.name}: epoch={state.epoch} step_in_epoch={state.step_in_epoch} "
                      f"global_step={state.global_step} ({reason})")

    def save_best(self, trainer: Trainer) -> None:
        if trainer.context.is_main:
            save_checkpoint(self.build(trainer, None), self.best_path)


@dataclass
class PeriodicCheckpoint(HookBase):
    """last.pt every `every_steps` steps (inside an epoch), after every `every_epochs`-th epoch, and at the
    finish."""

    checkpointer: Checkpointer
    every_steps: int | None
    every_epochs: int

    def after_step(self, trainer: Trainer, step: StepResult) -> None:
        state = trainer.state
        # the epoch's and the run's last step are saved at the epoch boundary
        if self.every_steps and state.global_step % self.every_steps == 0 and not (state.finished or state.epoch_complete):
            self.checkpointer.save_last(trainer, "periodic")

    def at_epoch_boundary(self, trainer: Trainer) -> None:
        state = trainer.state
        if state.finished or state.epoch % self.every_epochs == 0:
            self.checkpointer.save_last(trainer, "finished" if state.finished else "epoch end")


# ----------------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def run_validation(model, loader, num_classes: int, device: torch.device, amp: bool, ignore_index: int = 255,
                   context: distributed.Distributed = distributed.Distributed()):
    """Metrics over `loader`; under torchrun each rank scores its shard and the matrices are summed."""
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    for batch in loader:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(batch["rgb"], batch["aux"]).logits
        confusion.update(logits.argmax(dim=1), batch["label"])
    model.train()
    return metrics_from_confusion(context.all_reduce_sum(torch.from_numpy(confusion.matrix)).numpy())


def metrics_summary(metrics: SegmentationMetrics, classes: list[str]) -> dict:
    return {
        "miou": metrics.miou,
        "macc": metrics.macc,
        "pixel_accuracy": metrics.pixel_accuracy,
        "per_class_iou": {name: float(v) for name, v in zip(classes, metrics.iou)},
    }


@dataclass
class Validation(HookBase):
    """Scores `loader` (this rank's shard of the validation split) after every `every`-th epoch and at the
    finish; writes best.pt through `checkpointer` when the mIoU improves (None: save_best is off)."""

    loader: DataLoader
    classes: list[str]
    ignore_index: int
    every: int
    log: TrainingLog
    checkpointer: Checkpointer | None

    def after_epoch(self, trainer: Trainer) -> None:
        state = trainer.state
        due = state.finished or (state.epoch_complete and (state.epoch + 1) % self.every == 0)
        if not due or len(self.loader.dataset) == 0:
            return
        trainer.context.copy_buffers_from_main(trainer.model)
        metrics = run_validation(trainer.model, self.loader, len(self.classes), trainer.device, trainer.use_amp,
                                 self.ignore_index, trainer.context)
        improved = state.record_validation(metrics.miou, metrics.macc, metrics_summary(metrics, self.classes))
        for name in ("miou", "macc", "pixel_accuracy"):
            self.log.scalar(f"val/{name}", getattr(metrics, name), state.global_step)
        if improved and self.checkpointer is not None:
            self.checkpointer.save_best(trainer)
        self.log.line(f"epoch {state.epoch + 1}/{state.num_epochs}: val mIoU {100 * metrics.miou:.2f} "
                      f"mAcc {100 * metrics.macc:.2f}{' (best)' if improved else ''}")


# ----------------------------------------------------------------------------------------------------
# Progress


class Progress(HookBase):
    """A tqdm bar per epoch, the per-step TensorBoard scalars, one line per epoch and one at the finish."""

    def __init__(self, log: TrainingLog, show_bar: bool):
        self.log = log
        self.show_bar = show_bar
        self._bar = None
        self._started = 0.0
        self._loss_sum, self._loss_count = 0.0, 0

    def before_train(self, trainer: Trainer) -> None:
        self._started = time.monotonic()

    def before_epoch(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        state = trainer.state
        self._bar = tqdm(
            total=min(state.steps_per_epoch, state.step_in_epoch + state.total_steps - state.global_step),
            initial=state.step_in_epoch,
            desc=f"{trainer.config.experiment} epoch {state.epoch + 1}/{state.num_epochs}",
            disable=not self.show_bar,
            dynamic_ncols=True,
            leave=False,
        )
        self._loss_sum, self._loss_count = 0.0, 0

    def after_step(self, trainer: Trainer, step: StepResult) -> None:
        global_step = trainer.state.global_step
        self._loss_sum += step.loss
        self._loss_count += 1
        self.log.scalar("train/loss", step.loss, global_step)
        for name, value in step.parts.items():
            self.log.scalar(f"train/{name}", value, global_step)
        self.log.scalar("train/lr", step.lr, global_step)
        self._bar.set_postfix(loss=f"{step.loss:.4f}", lr=f"{step.lr:.2e}")
        self._bar.update(1)

    def after_epoch(self, trainer: Trainer) -> None:
        self._bar.close()
        loss_sum, loss_count = self._loss_sum, self._loss_count
        if trainer.context.enabled:  # the epoch's mean over every rank's steps
            sums = trainer.context.all_reduce_sum(torch.tensor([loss_sum, loss_count], dtype=torch.float64))
            loss_sum, loss_count = sums.tolist()
        state = trainer.state
        if loss_count:
            self.log.line(f"epoch {state.epoch + 1}/{state.num_epochs}: step {state.global_step}/{state.total_steps}, "
                          f"mean train loss {loss_sum / loss_count:.4f}")

    def after_train(self, trainer: Trainer) -> None:
        state = trainer.state
        best = f"; best val mIoU {100 * state.best_miou:.2f}" if state.best_miou > float("-inf") else ""
        self.log.line(f"{trainer.config.experiment}: finished {state.global_step} steps in "
                      f"{time.monotonic() - self._started:.1f} s{best}")
