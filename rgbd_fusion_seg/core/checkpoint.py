"""Self-describing checkpoints, written atomically.

A checkpoint is a plain dict saved with torch.save and read back with `weights_only=True` (no pickled
code runs on load). Everything the node needs to serve the model is in it:

    format         "rgbd_fusion_seg/1"
    model          {"method": str, "options": dict, "num_classes": int, "architecture": int}
                   (architecture: the method's architecture_version when it was written; absent = 1)
    classes        [name, ...]            one per class id
    palette        [[r, g, b], ...]       one per class id
    preprocessing  Preprocessing.to_dict() (input size, RGB mean/std, aux modality, unit and range)
    data           what it was trained on (dataset, folders, lightings, split, aux_dropout), free-form
    metrics        latest validation metrics, free-form
    state_dict     model weights
    train_state    optional: optimiser, scheduler, scaler, epoch/step, RNG states, for resuming
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import FusionSegmenter, UnknownMethodError, build_model, method_class
from .preprocessing import Preprocessing

FORMAT = "rgbd_fusion_seg/1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or does not describe a model this package can build."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, size limit, I/O error); the file at the path is as before."""


@dataclass
class Checkpoint:
    method: str
    num_classes: int
    classes: list[str]
    palette: list[list[int]]
    preprocessing: Preprocessing
    state_dict: dict
    options: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    train_state: dict | None = None

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": {"method": self.method, "options": dict(self.options), "num_classes": self.num_classes,
                      "architecture": method_class(self.method).architecture_version},
            "classes": list(self.classes),
            "palette": [list(map(int, c)) for c in self.palette],
            "preprocessing": self.preprocessing.to_dict(),
            "data": self.data,
            "metrics": self.metrics,
            "state_dict": self.state_dict,
            "train_state": self.train_state,
        }

    @property
    def aux_dropout(self) -> float:
        """The modality dropout p it was trained with (train.aux_dropout; 0.0 when not recorded, as in
        checkpoints written before the field existed): p > 0 means the model has learnt to segment with
        the aux input missing (the input prepare_inputs gives for aux=None)."""
        return float(self.data.get("aux_dropout") or 0.0)

    def build_model(self) -> FusionSegmenter:
        """The model with its weights loaded (training form; call .deploy() to serve).

        Weight files (ImageNet, SAM2, CLIP) are not read: the weights come from the checkpoint, so a model
        trained from pretrained weights must not need those files on the machine that serves it.
        """
        options = method_class(self.method).serving_options(self.options)
        model = build_model(self.method, self.num_classes, **options)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as error:
            raise CheckpointError(f"weights do not fit method {self.method!r}: {str(error).splitlines()[0]}") from error
        return model


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Write `checkpoint` to `path` atomically; on a failed write raise CheckpointWriteError saying why and
    what is left at `path` (the previous checkpoint, untouched, or nothing)."""
    path = Path(path)
    try:
        _write_atomically(checkpoint, path)
    except (OSError, RuntimeError) as error:
        cause = write_failure_cause(error)
        if cause is None:  # not a failed write (e.g. an object torch cannot pickle): a bug, keep its traceback
            raise
        left = (f"the previous {path.name} is intact" if path.is_file()
                else f"there was no {path.name} before and none is left")
        raise CheckpointWriteError(f"cannot save checkpoint {path}: {cause} ({_free_space(path.parent)}); {left}, "
                                   "and no temporary file remains") from error
    return path


def _write_atomically(checkpoint: Checkpoint, path: Path) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as handle:
            torch.save(checkpoint.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


_WRITE_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EFBIG: "the file exceeds the size limit for this process or file system"}


def write_failure_cause(error: BaseException) -> str | None:
    """Why a write failed, in words ("no space left on the device"), or None if `error` is no write failure.

    torch.save reports a failed write of the file handle as a RuntimeError from its zip writer
    ("[enforce fail at inline_container.cc:...]", "PytorchStreamWriter failed writing file ...") raised
    while the handle's OSError is being handled, so the OSError is found on the exception's context chain.
    """
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return _WRITE_CAUSES.get(seen.errno) or f"the write failed: {seen.strerror or seen}"
        seen = seen.__cause__ or seen.__context__
    if "PytorchStreamWriter" in str(error) or "inline_container" in str(error):
        return f"the write failed: {str(error).splitlines()[0]}"
    return None


def _free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free in {folder}"
    except OSError:
        return f"free space in {folder} unknown"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


EXPECTED = "expected a .pt file written by `rgbd-fusion-seg train`"


def read_checkpoint_dict(path: str | os.PathLike, *, mmap: bool = False) -> dict:
    """The raw dict stored in checkpoint `path`; CheckpointError says what the file is if it is not one.

    The file's kind is checked before torch reads it, because torch's own errors for a text file, a
    folder or another zip archive ("pop from empty list", "does not exist") do not say what is wrong.
    `mmap=True` maps the weights instead of reading them (a cheap look at a large file).
    """
    path = Path(path)
    _check_is_torch_zip(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types for a damaged file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {first_line}") from error
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} checkpoint (no matching 'format' field)")
    return raw


def _check_is_torch_zip(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    reason = _why_not_torch_zip(path)
    if reason:
        raise CheckpointError(f"checkpoint {path} cannot be read: {reason}, {EXPECTED}")


def _why_not_torch_zip(path: Path) -> str | None:
    """torch.save writes a zip archive holding `<name>/data.pkl`; what `path` is instead, or None."""
    if path.is_dir():
        return "it is a directory"
    if not path.is_file():
        return "it is not a regular file"
    with path.open("rb") as handle:
        head = handle.read(64)
    if not head:
        return "the file is empty"
    if not head.startswith(b"PK"):
        return f"it is not a zip-format PyTorch checkpoint ({_describe_start(head)})"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return "it is a truncated or damaged zip archive (an interrupted copy?)"
    if not any(name.endswith("/data.pkl") for name in names):
        return "it is a zip archive but not a PyTorch checkpoint (no data.pkl inside)"
    return None


def _describe_start(head: bytes) -> str:
    if head.startswith(b"\x80"):  # pickle protocol 2+: torch.save(..., _use_new_zipfile_serialization=False)
        return "it is a pickle stream, as the legacy torch.save format or pickle.dump write"
    text = head.decode("utf-8", errors="ignore")  # the 64-byte cut may split the last character
    if len(text.encode("utf-8")) >= len(head) - 3 and all(c.isprintable() or c.isspace() for c in text):
        first_line = (text.strip().splitlines() or [""])[0]
        return f"it starts with text {first_line[:40]!r}"
    return f"it starts with bytes {head[:8].hex(' ')}"


def check_architecture(raw: dict, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose method is unknown here or was written for another version of the method's
    architecture (its weights would not fit, or would fit with another meaning)."""
    try:
        method = str(raw["model"]["method"])
        written = int(raw["model"].get("architecture", 1))
        current = method_class(method).architecture_version
    except UnknownMethodError as error:
        raise CheckpointError(f"checkpoint {path}: {error}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"checkpoint {path} is missing or has a malformed field: {error}") from None
    if written != current:
        raise CheckpointError(
            f"checkpoint {path} holds version {written} of method {method!r}'s architecture, and this package "
            f"builds version {current} (docs/methods.md says what changed): retrain it, or serve it with the "
            "release that wrote it"
        )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    raw = read_checkpoint_dict(path)
    check_architecture(raw, path)
    try:
        model = raw["model"]
        return Checkpoint(
            method=model["method"],
            num_classes=int(model["num_classes"]),
            options=dict(model.get("options", {})),
            classes=list(raw["classes"]),
            palette=[list(c) for c in raw["palette"]],
            preprocessing=Preprocessing.from_dict(raw["preprocessing"]),
            state_dict=raw["state_dict"],
            data=raw.get("data") or {},
            metrics=raw.get("metrics") or {},
            train_state=raw.get("train_state"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is missing or has a malformed field: {error}") from error
