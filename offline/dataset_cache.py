"""Results computed once per dataset and cached: the full validation report and RSFNet's pseudo-labels.

`dataset.validate(full=True)` decodes every image of a split: minutes on MFNet or MM5, and it is what
gives the class pixel counts that `loss.class_weights: log_frequency` needs; the saliency pseudo-labels
(pseudo_labels.py) read every frame too. Each result is kept in a small JSON file keyed by the dataset's
identity (loader, root, split, class count and the list of files it reads: colour, aux, labels and settings
files such as the folder layout's dataset.yaml, plus whatever else the result depends on) and checked
against a fingerprint of those files (size and modification time of each): a rewritten, resized or missing
file makes the cached result stale and it is computed again. Nothing is cached when the computation fails.

Where: `<root>/.rgbd_fusion_seg_cache/`, or `$XDG_CACHE_HOME/rgbd_fusion_seg` (default
`~/.cache/rgbd_fusion_seg`) when the root is read-only.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_FOLDER = ".rgbd_fusion_seg_cache"
# Bump when validate() starts checking more, so that older reports are not trusted.
REPORT_VERSION = 1


def dataset_files(dataset) -> list[Path]:
    """Every file the dataset's samples read (FrameDataset: sample.files) and its settings files (the folder
    layout's dataset.yaml), sorted, each once."""
    files = {Path(path) for sample in dataset.samples for path in sample.files.values()}
    return sorted(files | {Path(path) for path in getattr(dataset, "settings_files", ())})


def dataset_identity(dataset, files: list[Path]) -> dict:
    """What the report depends on besides the files' contents."""
    return {
        "version": REPORT_VERSION,
        "loader": f"{type(dataset).__module__}.{type(dataset).__qualname__}",
        "root": str(Path(dataset.root).resolve()),
        "split": str(dataset.split),
        "num_classes": int(dataset.num_classes),
        "files": hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest(),
    }


def files_fingerprint(files: list[Path]) -> str:
    """sha256 over (path, size, mtime) of every file; no file is read."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rgbd_fusion_seg"


def cache_candidates(root: str | os.PathLike) -> list[Path]:
    """Cache folders in order of preference: inside the data root, then the user's cache."""
    return [Path(root) / CACHE_FOLDER, _user_cache_dir()]


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cached_for_dataset(dataset, kind: str, compute, extra_identity: dict | None = None):
    """(compute()'s JSON-able result, whether it came from the cache) for `dataset`; `kind` names the
    result in the file name, `extra_identity` is what it depends on besides the dataset's files."""
    files = dataset_files(dataset)
    identity = dataset_identity(dataset, files) | (extra_identity or {})
    name = f"{kind}-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20] + ".json"
    fingerprint = files_fingerprint(files)
    for folder in cache_candidates(dataset.root):
        try:
            cached = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if cached.get("identity") == identity and cached.get("fingerprint") == fingerprint:
            return cached["result"], True
    result = compute()
    text = json.dumps({"identity": identity, "fingerprint": fingerprint, "result": result}, indent=1)
    for folder in cache_candidates(dataset.root):
        try:
            write_atomically(folder / name, text)
            break
        except OSError:
            continue  # read-only data root: try the user's cache
    return result, False


def validated_report(dataset) -> dict:
    """`dataset.validate(full=True)`, or its cached result while none of the dataset's files has changed.

    The returned report has "from_cache": True when it came from the cache.
    """
    report, from_cache = cached_for_dataset(dataset, "validation", lambda: dataset.validate(full=True))
    return dict(report, from_cache=from_cache)
