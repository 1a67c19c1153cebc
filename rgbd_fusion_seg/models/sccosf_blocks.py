"""The parts of SC-CoSF (Yang, Qiao, Shu, Sensors 2025, 25(12), 3575; models/methods/sccosf.py, docs/sccosf.md):
the Sc-CFM fusion module (Sc-LRB, Sc-FGB, DCR, §3.2.1), the ICRM segmentation decoder (§3.2.2), the ReAW
fusion decoder (§3.2.3) and the fusion loss (§3.3, after MRFS). Feature maps are batch x C x H x W."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ssm import S6, CrossS6, ICRVSSBlock, scan_side_by_side


def _channels_last_linear(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ScanInput(nn.Module):
    """Linear C -> E*C and a depthwise 3x3 + SiLU (the formulas' DWConv(Linear(.))): the sequence to scan."""

    def __init__(self, channels: int, inner: int):
        super().__init__()
        self.linear = nn.Linear(channels, inner)
        self.dwconv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.dwconv(_channels_last_linear(self.linear, x))).flatten(2)


class _ScanOutput(nn.Module):
    """LN and Linear E*C -> C on a scanned sequence, added to the input map (the formulas' residual)."""

    def __init__(self, channels: int, inner: int):
        super().__init__()
        self.norm = nn.LayerNorm(inner)
        self.linear = nn.Linear(inner, channels)

    def forward(self, residual: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.linear(self.norm(y.transpose(1, 2)))  # batch x L x C
        return residual + out.transpose(1, 2).view_as(residual)


class SelfCorrection(nn.Module):
    """O = F + Linear(LN(S6(DWConv(Linear(F))))) over the row-major flattened map (Sc-LRB, first stage)."""

    def __init__(self, channels: int, inner: int, d_state: int, backend: str):
        super().__init__()
        self.inp = _ScanInput(channels, inner)
        self.s6 = S6(inner, d_state, backend)
        self.out = _ScanOutput(channels, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.side_by_side([(self, x)])[0]

    @staticmethod
    def side_by_side(pairs) -> list[torch.Tensor]:
        """[module(x) for module, x in pairs] with their S6 scans run as one (ssm.scan_side_by_side)."""
        ys = scan_side_by_side([(module.s6, module.inp(x)) for module, x in pairs])
        return [module.out(x, y) for (module, x), y in zip(pairs, ys)]


class CrossCorrection(nn.Module):
    """W^{r,i} = O^{r,i} + Linear(LN(crossS6(DWConv(Linear(O^r, O^i))))): two streams, C exchanged."""

    def __init__(self, channels: int, inner: int, d_state: int, backend: str):
        super().__init__()
        self.inp_r, self.inp_i = _ScanInput(channels, inner), _ScanInput(channels, inner)
        self.cross = CrossS6(inner, d_state, backend)
        self.out_r, self.out_i = _ScanOutput(channels, inner), _ScanOutput(channels, inner)

    def forward(self, o_r: torch.Tensor, o_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_r, y_i = self.cross(self.inp_r(o_r), self.inp_i(o_i))
        return self.out_r(o_r, y_r), self.out_i(o_i, y_i)


class ScLRB(nn.Module):
    """Self-correction Long-Range Relationship Branch: self-modal correction per modality, cross-modal
    complementarity, concatenation, channel attention F * sigmoid(Conv1x1(GAP(F))) + F, and a 1x1 conv
    2C -> C (choice: so that F^S + F^V in DCR have equal widths)."""

    def __init__(self, channels: int, expand: float = 2.0, d_state: int = 16, backend: str = "auto"):
        super().__init__()
        inner = int(expand * channels)
        self.self_r = SelfCorrection(channels, inner, d_state, backend)
        self.self_i = SelfCorrection(channels, inner, d_state, backend)
        self.cross = CrossCorrection(channels, inner, d_state, backend)
        self.attention = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.reduce = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, f_r: torch.Tensor, f_i: torch.Tensor) -> torch.Tensor:
        # the two modalities' self-corrections scan side by side: one scan call instead of two
        w_r, w_i = self.cross(*SelfCorrection.side_by_side([(self.self_r, f_r), (self.self_i, f_i)]))
        fused = torch.cat([w_r, w_i], dim=1)
        fused = fused * torch.sigmoid(self.attention(F.adaptive_avg_pool2d(fused, 1))) + fused
        return self.reduce(fused)


class MultiKernel(nn.Module):
    """H~ = sum_k DWConv_kxk(Conv1x1(F)), k = 3, 5, 7 (depthwise, as SegNeXt's), then A = sigmoid(DWConv(GAP(H~)))
    (a per-channel scale and bias on the pooled vector) and H^ = A * H~."""

    def __init__(self, channels: int, kernels=(3, 5, 7)):
        super().__init__()
        self.pointwise = nn.Conv2d(channels, channels, 1)
        self.branches = nn.ModuleList(nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels) for k in kernels)
        self.attention = nn.Conv2d(channels, channels, 1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pointwise(x)
        h = sum(branch(x) for branch in self.branches)
        return h * torch.sigmoid(self.attention(F.adaptive_avg_pool2d(h, 1)))


class ScFGB(nn.Module):
    """Self-correction Fine-Grained Branch: multi-kernel correction per modality, concatenation, a depthwise
    separable conv 2C -> 4C split into F_alpha, F_beta, and F^V = Conv1x1(F_alpha * sigmoid(F_beta)) -> C."""

    def __init__(self, channels: int):
        super().__init__()
        self.rgb, self.aux = MultiKernel(channels), MultiKernel(channels)
        self.depthwise = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels)
        self.expand = nn.Conv2d(2 * channels, 4 * channels, 1)
        self.project = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, f_r: torch.Tensor, f_i: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.rgb(f_r), self.aux(f_i)], dim=1)
        f_alpha, f_beta = self.expand(self.depthwise(fused)).chunk(2, dim=1)
        return self.project(f_alpha * torch.sigmoid(f_beta))


class DCR(nn.Module):
    """Dual-branch Collaborative Recalibration: coordinate attention (Hou et al.) on F = F^S + F^V:
    pooled along W and H, a shared 1x1 conv into max(8, C/32) channels + BN + h-swish, split, a 1x1 conv and
    sigmoid each, out = F * a_h * a_w (CoordAtt's settings; no residual, as CoordAtt)."""

    def __init__(self, channels: int):
        super().__init__()
        mid = max(8, channels // 32)
        self.shared = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.Hardswish(inplace=True))
        self.conv_h = nn.Conv2d(mid, channels, 1)
        self.conv_w = nn.Conv2d(mid, channels, 1)

    def forward(self, f_s: torch.Tensor, f_v: torch.Tensor) -> torch.Tensor:
        f = f_s + f_v
        height, width = f.shape[-2:]
        pooled_h = f.mean(dim=3, keepdim=True)  # N x C x H x 1
        pooled_w = f.mean(dim=2, keepdim=True).transpose(2, 3)  # N x C x W x 1
        shared = self.shared(torch.cat([pooled_h, pooled_w], dim=2))
        a_h, a_w = shared[:, :, :height], shared[:, :, height:]  # slices: a split at a traced size would not export
        return f * torch.sigmoid(self.conv_h(a_h)) * torch.sigmoid(self.conv_w(a_w.transpose(2, 3)))


class ScCFM(nn.Module):
    """Self-correction and Collaboration Fusion Module at one encoder stage: F = DCR(Sc-LRB, Sc-FGB)."""

    def __init__(self, channels: int, expand: float = 2.0, d_state: int = 16, backend: str = "auto"):
        super().__init__()
        self.lrb = ScLRB(channels, expand, d_state, backend)
        self.fgb = ScFGB(channels)
        self.dcr = DCR(channels)

    def forward(self, f_r: torch.Tensor, f_i: torch.Tensor) -> torch.Tensor:
        return self.dcr(self.lrb(f_r, f_i), self.fgb(f_r, f_i))


class ICRMDecoder(nn.Module):
    """Interactive Context Restoration Mamba decoder: ICRVSS blocks on F_4, then for i = 3, 2, 1: bilinear
    upsampling to F_i's size, Linear to C_i, + F_i, ICRVSS blocks; at 1/4 an MLP C_1 -> C_1 -> classes."""

    def __init__(self, channels, num_classes: int, blocks: int = 2, d_state: int = 16, expand: float = 2.0,
                 scan_order: str = "vmamba", backend: str = "auto"):
        super().__init__()

        def stage(width):
            return nn.Sequential(*(ICRVSSBlock(width, d_state, expand, scan_order, backend) for _ in range(blocks)))

        self.stages = nn.ModuleList(stage(width) for width in channels)
        self.lateral = nn.ModuleList(nn.Linear(deep, shallow) for deep, shallow in zip(channels[1:], channels[:-1]))
        self.classifier = nn.Sequential(nn.Linear(channels[0], channels[0]), nn.GELU(), nn.Linear(channels[0], num_classes))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.stages[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            skip = features[i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.stages[i](_channels_last_linear(self.lateral[i], x) + skip)
        return _channels_last_linear(self.classifier, x)


class RegionWeighting(nn.Module):
    """ReAW at one stage: e_j = ReLU(BN(Conv_kj(F))) for the l kernels; lambda = softmax(FC2(ReLU(FC1(GAP(F)))));
    B = sum_j lambda_j e_j."""

    def __init__(self, channels: int, width: int, kernels=(1, 3, 5)):
        super().__init__()
        self.regions = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, width, k, padding=k // 2, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for k in kernels
        )
        hidden = max(16, channels // 4)
        self.weights = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, len(kernels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = torch.softmax(self.weights(x.mean(dim=(2, 3))), dim=1)  # N x l
        return sum(lam[:, j, None, None, None] * region(x) for j, region in enumerate(self.regions))


class ReAWDecoder(nn.Module):
    """Region-adaptive Weighted reconstruction decoder: each stage's weighted regions upsampled to the image
    size, concatenated with features of the source images (Conv3x3 on RGB + aux, 4 -> width, ReLU), and a
    reconstruction layer Conv3x3 + LeakyReLU, Conv3x3 -> 3 + sigmoid: an RGB fused image in [0, 1]."""

    def __init__(self, channels, width: int = 32, kernels=(1, 3, 5)):
        super().__init__()
        self.stages = nn.ModuleList(RegionWeighting(c, width, kernels) for c in channels)
        self.source = nn.Sequential(nn.Conv2d(4, width, 3, padding=1), nn.ReLU(inplace=True))
        self.reconstruct = nn.Sequential(
            nn.Conv2d((len(channels) + 1) * width, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, features: list[torch.Tensor], rgb01: torch.Tensor, aux01: torch.Tensor) -> torch.Tensor:
        size = rgb01.shape[-2:]
        parts = [F.interpolate(stage(f), size=size, mode="bilinear", align_corners=False) for stage, f in zip(self.stages, features)]
        parts.append(self.source(torch.cat([rgb01, aux01], dim=1)))
        return self.reconstruct(torch.cat(parts, dim=1))


# --- fusion loss (§3.3, "following [42]" = MRFS) -------------------------------------------------------------

# Cross-correlation kernels (F.conv2d) as MRFS's Sobelxy: x = right minus left, y = top minus bottom. The sign
# matters: the gradient target is the signed maximum of the two positive samples' responses.
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def sobel(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal (right - left) and vertical (top - bottom) Sobel responses per channel, zero padding: MRFS's."""
    channels = image.shape[1]
    kx = _SOBEL_X.to(image).expand(channels, 1, 3, 3)
    ky = _SOBEL_Y.to(image).expand(channels, 1, 3, 3)
    return F.conv2d(image, kx, padding=1, groups=channels), F.conv2d(image, ky, padding=1, groups=channels)


def chroma(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cb, Cr of an RGB image in [0, 1] (Y = 0.299 R + 0.587 G + 0.114 B; offsets 0.5)."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return 0.564 * (b - y) + 0.5, 0.713 * (r - y) + 0.5


def positive_samples(rgb01: torch.Tensor, aux01: torch.Tensor, gamma: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """J_R = rgb ** gamma (gamma transformation), J_I = the aux image (contrast stretching by 1, MRFS's
    setting, is the identity) repeated to 3 channels."""
    return rgb01.clamp(min=0.0) ** gamma, aux01.expand_as(rgb01)


def fusion_loss(fused, rgb01, aux01, valid=None, *, con_weight=0.5, grad_weight=1.0, color_weight=1.0,
                gamma=0.8, grad_abs=False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = con_w |F - max(J_R, J_I)| + grad_w (0.5|dx F - max dx J| + 0.5|dy F - max dy J|)
    + color_w (|Cr_F - Cr_J_R| + |Cb_F - Cb_J_R|), each a mean over every pixel of the crop. The gradient
    maximum is of the signed Sobel responses (MRFS), or of their magnitudes (grad_abs).

    `valid` (N x 1 x H x W, bool; None = all) is False on crop padding only, never on ignore-labelled pixels.
    As MRFS (FusionLoss: Fuse = output * Mask, plain L1 means; its crops pad the images with 0), the fused
    image and both inputs are zeroed there and the means still run over the whole crop: a padded pixel adds
    nothing, and the Sobel responses along the padding's edge are those of MRFS's zero-padded images."""
    if valid is not None:
        valid = valid.to(fused)
        fused, rgb01, aux01 = fused * valid, rgb01 * valid, aux01 * valid
    j_r, j_i = positive_samples(rgb01, aux01, gamma)
    con = (fused - torch.maximum(j_r, j_i)).abs().mean()
    grads = [sobel(image) for image in (fused, j_r, j_i)]
    if grad_abs:
        grads = [(gx.abs(), gy.abs()) for gx, gy in grads]
    (fx, fy), (rx, ry), (ix, iy) = grads
    grad = 0.5 * (fx - torch.maximum(rx, ix)).abs().mean() + 0.5 * (fy - torch.maximum(ry, iy)).abs().mean()
    (cb_f, cr_f), (cb_j, cr_j) = chroma(fused), chroma(j_r)
    color = (cr_f - cr_j).abs().mean() + (cb_f - cb_j).abs().mean()
    total = con_weight * con + grad_weight * grad + color_weight * color
    return total, {"con": con, "grad": grad, "color": color}
