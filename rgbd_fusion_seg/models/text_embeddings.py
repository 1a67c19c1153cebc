"""Class-name text embeddings for SARTM's language-aided distillation (eq. 14's T_e), through open_clip.

The teacher is CLIP's text encoder (SARTM: ViT-B/32) on the raw class names (no prompt template; "_" read as
a space). It runs once per (text model, weights file, class names): the K x D table is cached on disk,
`$XDG_CACHE_HOME/rgbd_fusion_seg/text_embeddings/` (default ~/.cache/...), and the model keeps what it needs
as a buffer, so training reads CLIP once and serving never.

Weights come from a local file (nothing is downloaded): OpenAI's TorchScript file (what `clip.load("ViT-B/32")`
stores as ~/.cache/clip/ViT-B-32.pt), read by `open_clip.load_openai_model`, or an open_clip state dict of
`model_name`, read by `open_clip.create_model(model_name, pretrained=file)`.
A seeded random table (`standin_table`) exists for tests and runs without the weights; the method uses it
only when its config says so explicitly (`text_standin: true`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import torch

from .blocks import PretrainedWeightsMissing

STANDIN_DIM = 512  # CLIP ViT-B/32's text embedding width
CACHE_VERSION = 1  # bump when the computation changes


def text_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rgbd_fusion_seg" / "text_embeddings"


def default_text_weights(model_name: str) -> Path:
    """$TORCH_HOME/hub/checkpoints/<model_name>.pt (OpenAI's file for ViT-B-32 is named ViT-B-32.pt)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{model_name}.pt"


def standin_table(class_names, dim: int = STANDIN_DIM, seed: int = 0) -> torch.Tensor:
    """A seeded random K x dim table in place of CLIP's (no meaning: for tests and ablations only)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(len(class_names), dim, generator=generator, device="cpu")


def class_prompts(class_names) -> list[str]:
    return [str(name).replace("_", " ").strip() for name in class_names]


def _cache_file(model_name: str, weights: Path, class_names, cache_dir: Path) -> Path:
    stat = weights.stat()
    identity = [CACHE_VERSION, model_name, str(weights.resolve()), stat.st_size, stat.st_mtime_ns, list(class_names)]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]
    return cache_dir / f"{model_name}-{key}.pt"


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _load_clip(model_name: str, weights: Path) -> torch.nn.Module:
    import open_clip

    if _is_torchscript(weights):
        return open_clip.load_openai_model(str(weights), device="cpu")
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"open_clip has no model config {model_name!r} (model.options.text_encoder); "
                         f"known: {', '.join(open_clip.list_models()[:8])}, ...")
    return open_clip.create_model(model_name, pretrained=str(weights), device="cpu")


def encode_class_names(class_names, model_name: str, weights: Path) -> torch.Tensor:
    """CLIP text embeddings (K x D, float32) of the class names, computed now."""
    import open_clip

    model = _load_clip(model_name, weights).eval()
    tokens = open_clip.get_tokenizer(model_name)(class_prompts(class_names))
    with torch.no_grad():
        return model.encode_text(tokens).float()


def class_text_embeddings(class_names, model_name: str, weights, cache_dir=None) -> tuple[torch.Tensor, bool]:
    """(K x D table, whether it came from the cache). A missing weights file is an error naming it."""
    weights = Path(weights)
    if not weights.is_file():
        raise PretrainedWeightsMissing(
            f"CLIP text weights for SARTM's distillation ({model_name}) were asked for but {weights} does not "
            f"exist. Put OpenAI's {model_name}.pt (what clip.load('ViT-B/32') downloads) or an open_clip "
            f"checkpoint of {model_name} in {weights.parent} (or name it in model.options.text_weights); "
            "without a text teacher set cr_weight and se_weight to 0, or text_standin: true for a random table.")
    cache_file = _cache_file(model_name, weights, class_names, Path(cache_dir) if cache_dir else text_cache_dir())
    if cache_file.is_file():
        cached = torch.load(cache_file, map_location="cpu", weights_only=True)
        if cached.get("class_names") == list(class_names) and cached.get("model") == model_name:
            return cached["embeddings"], True
    table = encode_class_names(class_names, model_name, weights)
    _save_atomically({"model": model_name, "weights": str(weights), "class_names": list(class_names),
                      "embeddings": table}, cache_file)
    return table, False


def _save_atomically(payload: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
