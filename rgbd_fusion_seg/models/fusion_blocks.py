"""Networks and fusion blocks of the MM5 study's methods (rgb, early, mid, late, se, attention); the encoder and
the U-Net decoder live in blocks.py. Architectures as the study's public code builds them (docs/methods.md).

Every fusion block takes an RGB feature map and an X feature map (X = depth or thermal, one sensor channel at
the input) of the same shape and returns a map of that shape, which the decoder takes at that scale.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import ResNetEncoder, UNetDecoder, unet_inputs

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
    """A complete ResNet-18 U-Net on one input (rgb, early: 4 channels, and each branch of late)."""

    def __init__(self, in_channels: int, num_classes: int, pretrained: bool = False):
        super().__init__()
        self.encoder = ResNetEncoder("resnet18", in_channels=in_channels, pretrained=pretrained)
        c = self.encoder.channels
        self.decoder = UNetDecoder(c[4], (c[3], c[2], c[1]), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(*unet_inputs(self.encoder(x)), x.shape[-2:])


class TwoEncoders(nn.Module):
    """An RGB ResNet-18 and a one-channel X ResNet-18 (grey-level ImageNet filters when pretrained), each run
    on its own input; `aux_stages` < 5 drops the X encoder's deep stages when a method never runs them."""

    def __init__(self, pretrained: bool = False, aux_stages: int = 5):
        super().__init__()
        self.rgb_encoder = ResNetEncoder("resnet18", in_channels=3, pretrained=pretrained)
        self.aux_encoder = ResNetEncoder("resnet18", in_channels=1, pretrained=pretrained, num_stages=aux_stages)
        self.channels = self.rgb_encoder.channels

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.rgb_encoder(rgb), self.aux_encoder(standardise_aux(aux))


class ConcatFusion(nn.Module):
    """Concatenate RGB and X features, 1x1 conv-BN-ReLU back to the RGB width (mid fusion as the study's text
    describes it, at layer3)."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return self.reduce(torch.cat([rgb, aux], dim=1))


class DepthConfidence(nn.Module):
    """Per-pixel X confidence in (0, 1): conv3x3 C -> C/4, BN, ReLU, conv1x1 -> 1, sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = channels // 4
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


class QualityGate(nn.Module):
    """One RGB and one X weight per image (softmax over two) from the pooled concatenation of both maps:
    GAP, Linear 2C -> C/16, ReLU, Dropout 0.3, Linear -> 2. Starts trusting RGB: last weight 0, bias (1, 0)."""

    def __init__(self, channels: int, reduction: int = 16, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * channels, channels // reduction), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(channels // reduction, 2),
        )
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():
            self.net[-1].bias.copy_(torch.tensor([1.0, 0.0]))

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([rgb, aux], dim=1).mean(dim=(2, 3))
        return torch.softmax(self.net(pooled), dim=1)  # N x 2: (RGB weight, X weight)


class ChannelAttention(nn.Module):
    """Squeeze-excitation: x * sigmoid(Linear(ReLU(Linear(GAP(x))))), C -> C/reduction -> C."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.net(x.mean(dim=(2, 3))))[:, :, None, None]


class SpatialAttention(nn.Module):
    """x * sigmoid(conv7x7([channel mean; channel max]))."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class AdaptiveGatedFusion(nn.Module):
    """The study's SE fusion block (AdaptiveGatedFusion in its code) at one encoder scale:

    1. X is weighted per pixel by its confidence c (DepthConfidence): unreliable X (holes) counts less there.
    2. A global quality gate gives per-image weights (w_rgb, w_x), softmax, starting at RGB-trusting values.
    3. fused = w_rgb * RGB + w_x * (c * X), then channel attention (SE) and spatial attention.

    Returns the fused map (a decoder input only: the RGB encoder continues on its own features), c (Nx1xhxw)
    and the gate weights (N x 2).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.confidence = DepthConfidence(channels)
        self.gate = QualityGate(channels, reduction)
        self.channel_attention = ChannelAttention(channels, reduction)
        self.spatial_attention = SpatialAttention()

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        confidence = self.confidence(aux)
        aux = aux * confidence
        weights = self.gate(rgb, aux)
        fused = weights[:, 0, None, None, None] * rgb + weights[:, 1, None, None, None] * aux
        return self.spatial_attention(self.channel_attention(fused)), confidence, weights


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
    """The study's attention fusion: nn.MultiheadAttention at the maps' own width, every spatial position a
    token, RGB tokens the queries and X tokens the keys and values; its output (no residual, no projection
    beyond the attention's own) is the fused map. `positional_encoding` (ours, off by default as in the
    study's code) adds fixed 2-D sine/cosine codes to queries and keys so attention can use where an X feature
    is; it works at any input size (no learned table)."""

    def __init__(self, channels: int, num_heads: int = 4, positional_encoding: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"the attention width ({channels}) must be divisible by num_heads ({num_heads})")
        if positional_encoding and channels % 4:
            raise ValueError(f"the attention width ({channels}) must be divisible by 4 for 2-D position codes")
        self.positional_encoding = positional_encoding
        self.attention = nn.MultiheadAttention(channels, num_heads, batch_first=True)

    def forward(self, rgb: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        n, c, h, w = rgb.shape
        queries = rgb.flatten(2).transpose(1, 2)  # N x hw x C
        values = aux.flatten(2).transpose(1, 2)
        keys = values
        if self.positional_encoding:
            codes = sincos_position_encoding(h, w, c, device=rgb.device, dtype=rgb.dtype)
            queries, keys = queries + codes, keys + codes
        attended, _ = self.attention(queries, keys, values, need_weights=False)
        return attended.transpose(1, 2).reshape(n, c, h, w)
