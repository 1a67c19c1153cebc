"""The training engine: where a run is (`TrainState`), one optimiser step, and the epoch loop that calls
its hooks.

Built like detectron2's `engine/train_loop.py`: the `Trainer` takes the steps in order and holds
everything a resumed run needs (`state_dict()` / `load_state_dict()`); what happens around the steps
(checkpoints, validation, logs) is done by hooks (train_hooks.py). Which data, model and files a run uses
is decided by train.py, which builds the trainer from a config.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from rgbd_fusion_seg.core.preprocessing import Preprocessing, normalise_aux

from . import distributed
from .config import ExperimentConfig

# ----------------------------------------------------------------------------------------------------
# Data order


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


def loader_options(config: ExperimentConfig, device: torch.device) -> dict:
    """DataLoader arguments shared by the training and validation loaders."""
    return dict(num_workers=config.train.num_workers, pin_memory=device.type == "cuda", worker_init_fn=_seed_worker)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------
# Modality dropout (train.aux_dropout)


def missing_aux_value(spec: Preprocessing) -> float:
    """The network's aux input for "no reading": what prepare_inputs makes of an all-NaN aux image, and
    of aux=None (the node's input when the aux camera is absent)."""
    return float(normalise_aux(np.full((1, 1), np.nan, np.float32), spec.aux)[0, 0])


def aux_dropout_mask(p: float, seed: int, global_step: int, count: int, *, batch_size: int, rank: int = 0,
                     world_size: int = 1) -> torch.Tensor:
    """Which of this rank's `count` samples of step `global_step` lose their aux input (bool, shape [count]).

    A function of (seed, step) only, like the epoch order: a resumed run draws the same samples, and the
    draw is over the global batch (this rank's positions rank, rank + world_size, ...), so it does not
    depend on the number of processes either.
    """
    # [seed, step, 2]: apart from the epoch order's [seed, epoch] (and drawn as 63 bits, not as the workers' 32)
    stream = np.random.SeedSequence([seed, global_step, 2])
    generator = torch.Generator().manual_seed(int(stream.generate_state(1, np.uint64)[0] >> 1))
    draws = torch.rand(max(batch_size, count * world_size), generator=generator)
    return draws[rank::world_size][:count] < p


def drop_aux(aux: torch.Tensor, mask: torch.Tensor, missing: float) -> torch.Tensor:
    """`aux` (N x C x H x W) with the samples where `mask` is set replaced by the missing input."""
    return torch.where(mask.to(aux.device).view(-1, *([1] * (aux.dim() - 1))), torch.full_like(aux, missing), aux)


# ----------------------------------------------------------------------------------------------------
# Schedule and random state


def learning_rate(step: int, total_steps: int, config: ExperimentConfig) -> float:
    """Learning rate for optimiser step `step` (0-based)."""
    train = config.train
    if train.warmup_steps and step < train.warmup_steps:
        start = train.warmup_start_ratio
        return train.lr * (start + (1.0 - start) * (step + 1) / train.warmup_steps)
    if train.lr_schedule == "constant":
        return train.lr
    span = max(1, total_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    floor = train.lr * train.min_lr_ratio
    if train.lr_schedule == "poly":
        return floor + (train.lr - floor) * (1.0 - progress) ** train.poly_power
    return floor + (train.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def rng_state() -> dict:
    """This process's Python, NumPy, torch (and CUDA) random states, in a form torch.load(weights_only) reads."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# State, hooks, trainer


@dataclass
class TrainState:
    """Where a run is and what its validations found: the part of last.pt's train_state that is neither
    model, optimiser nor random state. The plan (steps_per_epoch, total_steps) comes from the current
    config, not from last.pt: train.epochs and train.max_steps may change between a run and its resumption."""

    steps_per_epoch: int
    total_steps: int
    epoch: int = 0
    step_in_epoch: int = 0  # batches of `epoch` done (a resumed run skips them)
    global_step: int = 0
    best_miou: float = float("-inf")
    history: list[dict] = field(default_factory=list)  # one entry per validation
    latest_metrics: dict = field(default_factory=dict)  # kept in the checkpoints' `metrics`, not their train_state

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def finished(self) -> bool:
        return self.global_step >= self.total_steps

    @property
    def epoch_complete(self) -> bool:
        return self.step_in_epoch >= self.steps_per_epoch

    def count_step(self) -> None:
        self.global_step += 1
        self.step_in_epoch += 1

    def close_epoch(self) -> None:
        """Move the position to the next epoch's start once every batch of this one is done."""
        if self.epoch_complete:
            self.epoch += 1
            self.step_in_epoch = 0

    def record_validation(self, miou: float, macc: float, summary: dict) -> bool:
        """Note one validation's result; True when its mIoU is the best so far."""
        self.latest_metrics = {"val": summary}
        self.history.append({"epoch": self.epoch, "global_step": self.global_step, "miou": miou, "macc": macc})
        improved = not math.isnan(miou) and miou > self.best_miou
        if improved:
            self.best_miou = miou
        return improved

    def checkpoint_metrics(self) -> dict:
        return self.latest_metrics | {"epoch": self.epoch, "global_step": self.global_step,
                                      "best_val_miou": self.best_miou}

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "finished": self.finished,
            "best_miou": self.best_miou,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best_miou = float(state.get("best_miou", float("-inf")))
        self.history = list(state.get("history", []))


@dataclass
class StepResult:
    loss: float
    parts: dict  # the method's loss terms, by name
    lr: float


class HookBase:
    """Something done around the steps, as detectron2's hooks are; every rank calls every hook (some take
    part in collectives). Between two epochs the trainer calls after_epoch (the position still inside the
    epoch just run), moves the position on (TrainState.close_epoch), then at_epoch_boundary."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def before_epoch(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, step: StepResult) -> None:
        pass

    def after_epoch(self, trainer: Trainer) -> None:
        pass

    def at_epoch_boundary(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass


class Trainer:
    """Runs the steps of one experiment on one rank: model, optimiser, gradient scaler, loss and TrainState."""

    def __init__(self, config: ExperimentConfig, context: distributed.Distributed, device: torch.device, *,
                 model, optimizer: torch.optim.Optimizer, seg_loss, train_set, state: TrainState,
                 missing_aux: float = 0.0):
        self.config = config
        self.context = context
        self.device = device
        self.model = model
        self.optimizer = optimizer
        self.use_amp = config.train.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.seg_loss = seg_loss
        self.train_set = train_set
        self.state = state
        self.hooks: list[HookBase] = []
        self.forward = model  # DistributedDataParallel's wrapper under torchrun, made in train()
        self.missing_aux = missing_aux  # missing_aux_value(the run's preprocessing)
        self.aux_dropout = config.train.aux_dropout if model.uses_aux else 0.0  # rgb: nothing to drop

    def state_dict(self, rng_states: list[dict]) -> dict:
        """Everything a resumed run needs (last.pt's train_state); `rng_states` has every rank's RNG state."""
        train = self.config.train
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": train.lr_schedule, "global_step": self.state.global_step,
                          "total_steps": self.state.total_steps},
            "scaler": self.scaler.state_dict(),
            **self.state.state_dict(),
            "rng": rng_states[0],
            **({"rng_per_rank": rng_states} if self.context.enabled else {}),
            "world_size": self.context.world_size,
            "sampler": {"scheme": "randperm(SeedSequence([seed, epoch]))", "seed": train.seed, "epoch": self.state.epoch},
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, train_state: dict, weights: dict) -> int:
        """Continue from `train_state` and `weights`; returns how many processes wrote them. With as many
        as now, every rank's random state is restored; with another count only rank 0's (the batches are
        the same, the augmentation of the other ranks is not)."""
        self.model.load_state_dict(weights)
        self.optimizer.load_state_dict(train_state["optimizer"])
        if train_state.get("scaler"):  # empty when written by a run without AMP (e.g. on the CPU)
            self.scaler.load_state_dict(train_state["scaler"])
        per_rank = train_state.get("rng_per_rank") or [train_state["rng"]]
        if len(per_rank) == self.context.world_size:
            set_rng_state(per_rank[self.context.rank])
        elif self.context.is_main:
            set_rng_state(train_state["rng"])
        self.state.load_state_dict(train_state)
        return len(per_rank)

    def train(self) -> None:
        self._wrap_for_ranks()
        self.model.train()
        self._call("before_train")
        while not self.state.finished:
            self.run_epoch()
        self._call("after_train")

    def run_epoch(self) -> None:
        self._call("before_epoch")
        for batch in self._epoch_loader():
            step = self.run_step(batch)
            self._call("after_step", step)
            if self.state.finished:
                break
        self._call("after_epoch")
        self.state.close_epoch()
        self._call("at_epoch_boundary")

    def _epoch_loader(self) -> DataLoader:
        """The rest of the current epoch's batches (this rank's share of each)."""
        train, state, context = self.config.train, self.state, self.context
        sampler = EpochBatchSampler(len(self.train_set), train.batch_size, train.seed, state.epoch, state.step_in_epoch,
                                    rank=context.rank, world_size=context.world_size)
        # Its own generator: creating an iterator draws a worker base seed from it, and drawing that from
        # the global RNG would shift the augmentation sequence of a resumed run.
        worker_seed = int(np.random.SeedSequence([train.seed, state.epoch, 1 + context.rank]).generate_state(1)[0])
        return DataLoader(self.train_set, batch_sampler=sampler, generator=torch.Generator().manual_seed(worker_seed),
                          **loader_options(self.config, self.device))

    def run_step(self, batch: dict) -> StepResult:
        batch = to_device(batch, self.device)
        lr = learning_rate(self.state.global_step, self.state.total_steps, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.before_train_step(self.state.global_step)
        if self.context.enabled and self._wrapped_trainable != self._trainable():
            self._wrap_for_ranks()  # e.g. se released its frozen depth layers: DDP must average them too
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            output = self.forward(batch["rgb"], self.model_aux(batch["aux"]))
            loss, parts = self.model.compute_loss(output, batch, self.seg_loss)
        # Under AMP an inf/NaN step is normal: GradScaler skips it and lowers its scale.
        if not self.use_amp and not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"{self.config.experiment}: the loss became {float(loss)} at step {self.state.global_step}; "
                "lower train.lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.count_step()
        return StepResult(loss=float(loss.detach()), parts=parts, lr=lr)

    def model_aux(self, aux: torch.Tensor) -> torch.Tensor:
        """The aux input of this step's forward pass: `aux` after modality dropout (train.aux_dropout). The
        batch itself keeps the real aux image: a loss that reconstructs it (SC-CoSF's fused image) still
        compares with what the camera saw."""
        if not self.aux_dropout:
            return aux
        mask = aux_dropout_mask(self.aux_dropout, self.config.train.seed, self.state.global_step, len(aux),
                                batch_size=self.config.train.batch_size, rank=self.context.rank,
                                world_size=self.context.world_size)
        return drop_aux(aux, mask, self.missing_aux)

    def _trainable(self) -> tuple[bool, ...]:
        return tuple(p.requires_grad for p in self.model.parameters())

    def _wrap_for_ranks(self) -> None:
        """Under torchrun: DDP, which averages the gradients over the ranks in backward(). It averages only the
        parameters that require a gradient when it wraps, so a model that unfreezes a part is wrapped again."""
        if not self.context.enabled:
            return
        self._wrapped_trainable = self._trainable()
        self.forward = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)
