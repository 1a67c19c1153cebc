"""Whether a file can be written into a folder, asked before the work that produces it (an export takes
seconds to minutes): the one check that `rgbd-fusion-seg export --out` and the node's `onnx_cache_dir` share.

Standard library only, so the node can call it when a parameter is set without importing torch.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path


class UnwritableFolderError(ValueError):
    """A folder that cannot take the file meant for it: a file in its place, read-only, or too full."""


def check_writable_folder(folder: str | os.PathLike, need_bytes: int = 0) -> Path:
    """`folder` if a file of about `need_bytes` can be written into it, else UnwritableFolderError naming the
    path and what is wrong. A missing folder is accepted when the nearest folder above it that exists could
    hold it (writers create it: `mkdir(parents=True)`); the free space is that folder's file system's."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = f"folder {folder}" if existing == folder else f"folder {folder} cannot be created: {existing}"
    if not existing.is_dir():
        raise UnwritableFolderError(f"{where} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only_mount = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        raise UnwritableFolderError(f"{where} is " + ("on a read-only file system" if read_only_mount
                                                      else "not writable by this user"))
    free = shutil.disk_usage(existing).free
    if need_bytes > free:
        raise UnwritableFolderError(f"folder {existing} has {free / 2**20:.1f} MiB free, and about {need_bytes / 2**20:.1f} "
                                    "MiB are needed")
    return folder
