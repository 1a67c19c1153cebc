"""Structural re-parameterisation (RepVGG / Diverse Branch Block) of RSFNet's KxK convolution.

Training form (`RepConvKxK`): four parallel branches whose outputs are summed,
    KxK conv -> BN
    1x1 conv -> BN
    1x1 conv -> 1xK conv -> BN        (factorised, RSFNet eq. 5: O = Z * K1 * K2)
    1x1 conv -> Kx1 conv -> BN
Every branch is linear in its input once BN uses its running statistics (eval mode), so the sum equals one
KxK convolution with a bias (`merged_conv`): BN folds into its conv's weight and bias, a 1x1 conv followed
by a 1xK conv is the 1xK conv K' = K2 * K1^T (channel mixing commutes with the spatial sum), and 1x1, 1xK
and Kx1 kernels are zero-padded to KxK around the centre. The 1x1 of a factorised branch has no bias and no
BN of its own: a constant between the two convolutions would meet the zero padding of the second one at
the image border and the merge would no longer be exact there.

`deploy_copy(module)` returns a copy of any network with every RepConvKxK replaced by its merged conv.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def fold_batchnorm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of conv(weight, no bias) followed by `bn` with its running statistics."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


def pad_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """An O x I x kh x kw kernel zero-padded to O x I x size x size, centred."""
    kh, kw = kernel.shape[-2:]
    top, left = (size - kh) // 2, (size - kw) // 2
    return F.pad(kernel, (left, size - kw - left, top, size - kh - top))


def compose_pointwise(spatial: torch.Tensor, pointwise: torch.Tensor) -> torch.Tensor:
    """The kernel of `pointwise` (M x I x 1 x 1) followed by `spatial` (O x M x kh x kw): O x I x kh x kw."""
    return torch.einsum("omhw,mi->oihw", spatial, pointwise[:, :, 0, 0])


class RepConvKxK(nn.Module):
    """The multi-branch KxK convolution of the RSF module (training form); `merged_conv()` is its deploy form."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and at least 3, got {kernel_size}")
        k, half = kernel_size, kernel_size // 2
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.square = nn.Conv2d(in_channels, out_channels, k, padding=half, bias=False)
        self.square_bn = nn.BatchNorm2d(out_channels)
        self.point = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.point_bn = nn.BatchNorm2d(out_channels)
        self.row_in = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.row = nn.Conv2d(out_channels, out_channels, (1, k), padding=(0, half), bias=False)
        self.row_bn = nn.BatchNorm2d(out_channels)
        self.col_in = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.col = nn.Conv2d(out_channels, out_channels, (k, 1), padding=(half, 0), bias=False)
        self.col_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (
            self.square_bn(self.square(x))
            + self.point_bn(self.point(x))
            + self.row_bn(self.row(self.row_in(x)))
            + self.col_bn(self.col(self.col_in(x)))
        )

    @torch.no_grad()
    def merged_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(KxK kernel, bias) of the single convolution equal to this block in eval mode."""
        k = self.kernel_size
        branches = [
            fold_batchnorm(self.square.weight, self.square_bn),
            fold_batchnorm(self.point.weight, self.point_bn),
            fold_batchnorm(compose_pointwise(self.row.weight, self.row_in.weight), self.row_bn),
            fold_batchnorm(compose_pointwise(self.col.weight, self.col_in.weight), self.col_bn),
        ]
        kernel = sum(pad_to(weight, k) for weight, _ in branches)
        bias = sum(bias for _, bias in branches)
        return kernel, bias

    def merged_conv(self) -> nn.Conv2d:
        """The deploy form: one KxK conv with bias, on the device and in the dtype of this block's weights."""
        weight = self.square.weight
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, padding=self.kernel_size // 2,
                         device=weight.device, dtype=weight.dtype)
        kernel, bias = self.merged_kernel()
        conv.weight.data.copy_(kernel)
        conv.bias.data.copy_(bias)
        return conv


def deploy_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` in eval mode with every RepConvKxK merged into one KxK conv (the original is kept)."""
    deployed = copy.deepcopy(module).eval()
    for parent in list(deployed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, RepConvKxK):
                setattr(parent, name, child.merged_conv())
    return deployed
