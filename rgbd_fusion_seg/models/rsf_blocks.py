"""RSFNet's blocks (Li et al., "Residual Spatial Fusion Network for RGB-Thermal Semantic Segmentation"):
channel recalibration, the Residual Spatial Fusion (RSF) module, the confidence heads and the two-stream
decoder. Equation numbers refer to the paper, section III. "aux" is the second modality (thermal in the
paper; depth works the same way: nothing here depends on what the one-channel sensor measures).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .reparam import RepConvKxK


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive 1D kernel size: t = int(|(log2 C + b) / gamma|), made odd by adding 1 if even (as
    ECA-Net's code does; e.g. 3 for 64 channels, 5 for 256, 7 for 2048)."""
    k = int(abs((math.log2(channels) + b) / gamma))
    return k if k % 2 else k + 1


class ChannelRecalibration(nn.Module):
    """Eq. 2-3: W = sigmoid(Conv1D(GAP(F))), F_tilde = Conv2D_1x1(W * F), C_s -> reduced C_tilde_s channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        k = eca_kernel_size(in_channels)
        self.conv1d = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.reduce = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))[:, None, :]  # N x 1 x C: the 1D conv runs across channels
        weight = torch.sigmoid(self.conv1d(pooled)).transpose(1, 2)[..., None]  # eq. 2, N x C x 1 x 1
        return self.reduce(weight * x)  # eq. 3


class ResidualSpatialFusion(nn.Module):
    """The RSF module at one encoder stage (section III-D), for both modalities at once.

    Per modality m: Z_m = ReLU(BN(Conv1x1(F_tilde_m))) (eq. 4, to `hidden` = C_tilde = 64 channels);
    the KxK block (re-parameterisable, eq. 5) followed by a sigmoid turns each modality's Z into a spatial
    weight map for the OTHER modality: Z_tilde_rgb = Z_rgb * sigmoid(KxK_aux(Z_aux)) and vice versa;
    [Z_tilde_m; Z_m] (residual concatenation) -> Conv1x1-BN restores C_tilde_s channels: Z_hat_m.
    Fusion gate: F_hat_m = F_tilde_m + p_hat_m * Z_hat_m, p_hat_m the modality's confidence score (the
    paper writes F_hat = F_tilde + p_hat * Z_hat with the modality superscripts omitted).
    """

    def __init__(self, rgb_channels: int, aux_channels: int, channels: int, hidden: int = 64, kernel_size: int = 5):
        super().__init__()
        self.recalibrate = nn.ModuleList(
            [ChannelRecalibration(rgb_channels, channels), ChannelRecalibration(aux_channels, channels)]
        )
        self.squeeze = nn.ModuleList([conv_bn_relu(channels, hidden, 1) for _ in range(2)])
        self.spatial = nn.ModuleList([RepConvKxK(hidden, hidden, kernel_size) for _ in range(2)])
        self.restore = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(2 * hidden, channels, 1, bias=False), nn.BatchNorm2d(channels)) for _ in range(2)]
        )

    def forward(self, f_rgb, f_aux, p_rgb, p_aux) -> tuple[torch.Tensor, torch.Tensor]:
        reduced = [recal(f) for recal, f in zip(self.recalibrate, (f_rgb, f_aux))]  # F_tilde, eq. 2-3
        z = [squeeze(f) for squeeze, f in zip(self.squeeze, reduced)]  # eq. 4
        weights = [torch.sigmoid(spatial(zm)) for spatial, zm in zip(self.spatial, z)]  # KxK, eq. 5 re-param
        crossed = [z[0] * weights[1], z[1] * weights[0]]  # each weighted by the other modality
        z_hat = [restore(torch.cat([zc, zm], dim=1)) for restore, zc, zm in zip(self.restore, crossed, z)]
        gates = [p.reshape(-1, 1, 1, 1) for p in (p_rgb, p_aux)]
        return tuple(f + g * zh for f, g, zh in zip(reduced, gates, z_hat))  # fusion gate


class ConfidenceHead(nn.Module):
    """p_hat = sigmoid(fc(fc(GAP(F_4)))) (section III-C), one per encoder, N x 1 in (0, 1).

    `hidden` = 128: Table VI puts the pseudo-label supervision at 0.33 M parameters for ResNet50-18, which
    two such heads on 2048 and 512 channels give.
    """

    def __init__(self, in_channels: int, hidden: int = 128):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(features.mean(dim=(2, 3))))


class AggregationBlock(nn.Module):
    """One block of a decoder stream (III-E): three 3x3 convolutions and two bilinear interpolations.

    From the higher-level map `down` and the skip `left`: a 3x3 conv maps `left` to `down`'s width and another
    maps `down` to `left`'s width; the two cross products relu(conv(left) * up(down)) and
    relu(up(conv(down)) * left) are concatenated and a 3x3 conv-BN-ReLU gives `left`'s width. The two cross
    convolutions have no BN or bias (the paper is silent; the authors' sizes and compute are met without).
    """

    def __init__(self, down: int, left: int):
        super().__init__()
        self.left_to_down = nn.Conv2d(left, down, 3, padding=1, bias=False)
        self.down_to_left = nn.Conv2d(down, left, 3, padding=1, bias=False)
        self.fuse = conv_bn_relu(down + left, left)

    def forward(self, down: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        size = left.shape[-2:]
        from_left = F.relu(self.left_to_down(left) * _resize(down, size))
        from_down = F.relu(_resize(self.down_to_left(down), size) * left)
        return self.fuse(torch.cat([from_left, from_down], dim=1))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SegHead(nn.Module):
    """conv3x3 -> 128, BN, ReLU, dropout 0.1, conv1x1 -> classes; the caller upsamples the logits."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            conv_bn_relu(in_channels, hidden), nn.Dropout2d(dropout), nn.Conv2d(hidden, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoStreamDecoder(nn.Module):
    """Section III-E: an RGB stream and an aux stream, three AggregationBlocks each (1/32 -> 1/16 -> 1/8 -> 1/4)
    over that modality's enhanced features F_hat_s, widths `channels` (stage 1..4).

    Returns the two streams' outputs summed at each decoded scale, finest first: [1/4, 1/8, 1/16] (the head
    takes the first; deep supervision the other two).
    """

    def __init__(self, channels):
        super().__init__()
        c1, c2, c3, c4 = channels

        def stream():
            return nn.ModuleList([AggregationBlock(c4, c3), AggregationBlock(c3, c2), AggregationBlock(c2, c1)])

        self.streams = nn.ModuleList([stream(), stream()])

    def forward(self, rgb_features: list[torch.Tensor], aux_features: list[torch.Tensor]) -> list[torch.Tensor]:
        summed = None
        for blocks, features in zip(self.streams, (rgb_features, aux_features)):
            x, outputs = features[3], []
            for block, skip in zip(blocks, (features[2], features[1], features[0])):
                x = block(x, skip)
                outputs.append(x)
            summed = outputs if summed is None else [a + b for a, b in zip(summed, outputs)]
        return summed[::-1]
