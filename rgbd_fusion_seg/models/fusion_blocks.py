"""Fusion blocks shared by the MM5 fusion methods (mid, late, SE, attention); encoder/decoder live in blocks.py.

Every block takes an RGB feature map and an X feature map (X = depth or thermal, one sensor channel at the
input) of the same shape and returns a map shaped like the RGB one, so it can sit between two stages of
the RGB encoder and feed the decoder's skip connection at that scale.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import ResNetEncoder, UNetDecoder

# X arrives in [0, 1] (see base.py). Encoders initialised from ImageNet weights expect inputs of roughly zero
# mean and unit spread, so X is shifted and scaled with the ImageNet grey-level statistics (the mean of the
# RGB means and stds) before its first convolution. An affine map only: a network trained from scratch
# absorbs it, and with pretrained weights the X branch starts on the input statistics its filters saw.
AUX_MEAN = 0.449
AUX_STD = 0.226


def standardise_aux(aux: torch.Tensor) -> torch.Tensor:
    """Nx1xHxW X in [0, 1] -> the same map with ImageNet grey-level mean/std removed."""
    return (aux - AUX_MEAN) / AUX_STD


class ResNetUNet(nn.Module):
    """A complete ResNet U-Net on one input (the RGB baseline's network, for any number of input channels)."""

    def __init__(self, in_channels: int, num_classes: int, pretrained: bool = False, arch: str = "resnet18"):
        super().__init__()
        self.encoder = ResNetEncoder(arch, in_channels=in_channels, pretrained=pretrained)
        self.decoder = UNetDecoder(self.encoder.channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x), x.shape[-2:])


class ConcatFusion(nn.Module):
    """Concatenate RGB and X features, 1x1 conv-BN-ReLU back to the RGB width (the study's mid fusion)."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return self.reduce(torch.cat([rgb, aux], dim=1))


class AdaptiveGatedFusion(nn.Module):
    """The study's SE fusion block: X confidence gate, channel (squeeze-excitation) and spatial attention.

    1. A per-pixel X confidence map c = sigmoid(conv(X)) in [0, 1] scales the X features, so that
       unreliable X (depth holes, saturated thermal) contributes less where it is unreliable.
    2. Squeeze-excitation on the concatenation [RGB, c * X] reweights the channels of both modalities.
    3. A 1x1 conv reduces to the RGB width; a spatial attention map (7x7 conv on the channel mean and max,
       sigmoid) weights it per pixel.
    4. The result is added to the RGB features (residual), so the block refines RGB rather than replacing it.

    Returns the fused map (fed to the next RGB stage and to the decoder skip at this scale) and c (Nx1xhxw).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // 4, 8)
        self.confidence = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )
        squeezed = max(2 * channels // reduction, 8)
        self.channel_attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(2 * channels, squeezed, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeezed, 2 * channels, kernel_size=1),
            nn.Sigmoid(),
        )
        self.reduce = nn.Sequential(
            nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.spatial_attention = nn.Conv2d(2, 1, kernel_size=7, padding=3)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        confidence = torch.sigmoid(self.confidence(aux))
        stacked = torch.cat([rgb, aux * confidence], dim=1)
        stacked = stacked * self.channel_attention(stacked)
        fused = self.reduce(stacked)
        pooled = torch.cat([fused.mean(dim=1, keepdim=True), fused.amax(dim=1, keepdim=True)], dim=1)
        fused = fused * torch.sigmoid(self.spatial_attention(pooled))
        return rgb + fused, confidence


def sincos_position_encoding(height: int, width: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """(height*width) x dim fixed 2-D sine/cosine position codes (dim/2 for rows, dim/2 for columns)."""
    if dim % 4:
        raise ValueError(f"2-D sine/cosine position codes need a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * frequencies  # H x dim/4
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * frequencies  # W x dim/4
    row_code = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    col_code = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([row_code, col_code], dim=2).reshape(height * width, dim).to(dtype or torch.float32)


class CrossModalAttention(nn.Module):
    """The study's attention fusion: RGB features attend to X features with multi-head cross-attention.

    Both maps are projected (1x1 conv) to `attn_dim`; every spatial position is a token. RGB tokens are the
    queries, X tokens the keys and values (torch.nn.MultiheadAttention), followed by a residual connection
    and LayerNorm on the query tokens; a 1x1 conv-BN projects back to the RGB width and the result is added
    to the RGB features. Optional fixed 2-D sine/cosine position codes on queries and keys let attention
    use where an X feature is, not only what it is (works at any input size; no learned table).
    """

    def __init__(
        self,
        channels: int,
        attn_dim: int = 128,
        num_heads: int = 4,
        dropout: float = 0.0,
        positional_encoding: bool = True,
    ):
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by num_heads ({num_heads})")
        if positional_encoding and attn_dim % 4:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by 4 for 2-D position codes")
        self.positional_encoding = positional_encoding
        self.query = nn.Conv2d(channels, attn_dim, kernel_size=1)
        self.key_value = nn.Conv2d(channels, attn_dim, kernel_size=1)
        self.attention = nn.MultiheadAttention(attn_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(attn_dim)
        self.project = nn.Sequential(nn.Conv2d(attn_dim, channels, kernel_size=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        n, _, h, w = rgb.shape
        queries = self.query(rgb).flatten(2).transpose(1, 2)  # N x hw x d
        values = self.key_value(aux).flatten(2).transpose(1, 2)
        keys = values
        if self.positional_encoding:
            codes = sincos_position_encoding(h, w, queries.shape[-1], device=queries.device, dtype=queries.dtype)
            queries_in, keys = queries + codes, keys + codes
        else:
            queries_in = queries
        attended, _ = self.attention(queries_in, keys, values, need_weights=False)
        tokens = self.norm(queries + attended)
        fused = tokens.transpose(1, 2).reshape(n, -1, h, w)
        return rgb + self.project(fused)


def run_stages(encoder: ResNetEncoder, x: torch.Tensor, start: int = 0, stop: int | None = None) -> list[torch.Tensor]:
    """Run encoder stages [start, stop) on x and return each stage's output."""
    features = []
    for stage in encoder.stages[start:stop]:
        x = stage(x)
        features.append(x)
    return features


class SingleStageFusionEncoder(nn.Module):
    """RGB and X ResNet encoders fused once, after stage `stage` (3 = layer3), by `make_fusion(channels)`.

    The X encoder (one input channel, grey-level ImageNet filters when pretrained) stops at `stage`; the
    fused map replaces the RGB features there and the RGB encoder's deeper stages continue on it. Returns
    the five decoder inputs: RGB features before the fusion, the fused map, and the stages after it.
    """

    def __init__(self, make_fusion, stage: int = 3, pretrained: bool = False, arch: str = "resnet18"):
        super().__init__()
        self.stage = stage
        self.rgb_encoder = ResNetEncoder(arch, in_channels=3, pretrained=pretrained)
        self.aux_encoder = ResNetEncoder(arch, in_channels=1, pretrained=pretrained, num_stages=stage + 1)
        self.fusion = make_fusion(self.rgb_encoder.channels[stage])
        self.channels = self.rgb_encoder.channels

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> list[torch.Tensor]:
        features = run_stages(self.rgb_encoder, rgb, 0, self.stage + 1)
        aux_features = run_stages(self.aux_encoder, standardise_aux(aux))[-1]
        features[self.stage] = self.fusion(features[self.stage], aux_features)
        return features + run_stages(self.rgb_encoder, features[self.stage], self.stage + 1)
