"""SARTM's trainable parts (Xing et al., "Segment Any RGB-Thermal Model with Language-aided Distillation",
arXiv 2505.01950; models/methods/sartm.py): q/v LoRA on SAM2's trunk, the cross-modal rectification and
fusion modules, the auxiliary FPN head and the prototype distillation. Written from the paper's equations and
the descriptions in /work/shared/specs (CMX's FRM/FFM design), not from either project's code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRAQV(nn.Module):
    """SAM2's fused qkv Linear with low-rank updates of its q and v outputs (eq. 6-7):
    q' = q + x A_q B_q, v' = v + x A_v B_v, k unchanged; A: d_in x r, B: r x d_out, no alpha/r scaling.

    `adapters` independent (A, B) sets (one per modality, or one shared). With several, the batch holds that
    many equal parts, the modalities stacked by SARTM (all RGB images, then all thermal), and part i gets
    adapter i: the encoder runs once for both modalities (one pass, one traced graph) and each is adapted by
    its own LoRA. B starts at zero, so the wrapped layer starts as SAM2's. `weight`/`bias` are the original Linear's
    (frozen; their state-dict keys stay Meta's `...attn.qkv.weight/bias`). At Hiera's stage transitions
    d_in != d_out: B is sized to d_out so the whole q and v are adapted.
    """

    def __init__(self, qkv: nn.Linear, rank: int, adapters: int = 1):
        super().__init__()
        if rank < 1 or adapters < 1:
            raise ValueError(f"LoRA needs rank >= 1 and at least one adapter, got rank {rank}, {adapters} adapters")
        self.weight, self.bias = qkv.weight, qkv.bias
        d_in, self.d_out = qkv.in_features, qkv.out_features // 3
        bound = 1.0 / math.sqrt(d_in)  # = kaiming_uniform(a=sqrt(5)) of an r x d_in Linear, as LoRA's A
        # [adapter, q|v, ...]
        self.lora_a = nn.Parameter(torch.empty(adapters, 2, d_in, rank).uniform_(-bound, bound))
        self.lora_b = nn.Parameter(torch.zeros(adapters, 2, rank, self.d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.weight, self.bias).split(self.d_out, dim=-1)
        parts = x.reshape(self.lora_a.shape[0], -1, *x.shape[1:])  # part i of the batch: adapter i

        def update(which: int) -> torch.Tensor:
            low = torch.einsum("p...i,pir->p...r", parts, self.lora_a[:, which])
            return torch.einsum("p...r,pro->p...o", low, self.lora_b[:, which]).reshape(q.shape)

        return torch.cat([q + update(0), k, v + update(1)], dim=-1)

    def merged_linear(self) -> nn.Linear:
        """One Linear equal to this layer (for the deploy form of a single, shared adapter)."""
        if self.lora_a.shape[0] != 1:
            raise ValueError(f"only a single adapter merges into one Linear; this layer has {self.lora_a.shape[0]}")
        a, b = self.lora_a[0].detach(), self.lora_b[0].detach()
        merged = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None)
        merged = merged.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.weight)
            merged.weight[: self.d_out] += (a[0] @ b[0]).T
            merged.weight[2 * self.d_out:] += (a[1] @ b[1]).T
            if self.bias is not None:
                merged.bias.copy_(self.bias)
        return merged.requires_grad_(False)


def add_lora(trunk: nn.Module, rank: int, adapters: int) -> list[LoRAQV]:
    """Wrap the qkv Linear of every block of a SAM2 Hiera trunk; returns the wrappers."""
    wrapped = []
    for block in trunk.blocks:
        block.attn.qkv = LoRAQV(block.attn.qkv, rank, adapters)
        wrapped.append(block.attn.qkv)
    return wrapped


def init_like_cmx(module: nn.Module) -> None:
    """CMX's initialisation of its FRM/FFM (and of its whole encoder): Linear weights truncated normal with std
    0.02 (cut at +-2, as timm's default) and zero bias; Conv2d weights normal with std sqrt(2 / fan_out),
    fan_out = k_h k_w out / groups, zero bias; LayerNorm / BatchNorm weight 1, bias 0. (PyTorch's default,
    kaiming-uniform, starts the fusion with other scales.)"""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
        elif isinstance(layer, nn.Conv2d):
            fan_out = layer.kernel_size[0] * layer.kernel_size[1] * layer.out_channels // layer.groups
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(layer, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(layer.weight)
        else:
            continue
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class FeatureRectify(nn.Module):
    """FRM (CMX): each modality is corrected by the other, weighted per channel and per pixel.

    channel weights = sigmoid(MLP 4C -> 4C -> 2C of [avg-pool, max-pool] of [x1, x2]);
    spatial weights = sigmoid(1x1 C -> 2 of ReLU(1x1 2C -> C of [x1, x2]));
    out1 = x1 + l_c cw_2 x2 + l_s sw_2 x2, out2 symmetric, l_c = l_s = 0.5.
    """

    def __init__(self, channels: int, reduction: int = 1, lambda_c: float = 0.5, lambda_s: float = 0.5):
        super().__init__()
        self.channels, self.lambda_c, self.lambda_s = channels, lambda_c, lambda_s
        self.channel_mlp = nn.Sequential(nn.Linear(4 * channels, 4 * channels // reduction), nn.ReLU(inplace=True),
                                         nn.Linear(4 * channels // reduction, 2 * channels))
        self.spatial = nn.Sequential(nn.Conv2d(2 * channels, channels // reduction, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channels // reduction, 2, 1))
        init_like_cmx(self)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([x1, x2], dim=1)
        pooled = torch.cat([F.adaptive_avg_pool2d(both, 1), F.adaptive_max_pool2d(both, 1)], dim=1).flatten(1)
        cw = torch.sigmoid(self.channel_mlp(pooled)).view(-1, 2, self.channels, 1, 1)
        sw = torch.sigmoid(self.spatial(both))
        out1 = x1 + self.lambda_c * cw[:, 1] * x2 + self.lambda_s * sw[:, 1:2] * x2
        out2 = x2 + self.lambda_c * cw[:, 0] * x1 + self.lambda_s * sw[:, 0:1] * x1
        return out1, out2


class _CrossStream(nn.Module):
    """One stream of FFM's first stage: Linear C -> 2C + ReLU split into a kept part y and an attention input u."""

    def __init__(self, channels: int):
        super().__init__()
        self.split = nn.Sequential(nn.Linear(channels, 2 * channels), nn.ReLU(inplace=True))
        self.kv = nn.Linear(channels, 2 * channels, bias=False)
        self.merge = nn.Linear(2 * channels, channels)
        self.norm = nn.LayerNorm(channels)

    def context(self, u: torch.Tensor, heads: int) -> torch.Tensor:
        """Efficient attention context per head: softmax over the first axis of k^T v / sqrt(head_dim)."""
        n, tokens, c = u.shape
        k, v = self.kv(u).reshape(n, tokens, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        return ((k.transpose(-2, -1) @ v) * (c // heads) ** -0.5).softmax(dim=-2)


class FeatureFusion(nn.Module):
    """FFM (CMX): cross attention between the two streams (each stream's u queries the other's context),
    a residual LayerNorm per stream, then a channel embedding of the concatenation (2C -> C)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"FFM: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.streams = nn.ModuleList([_CrossStream(channels), _CrossStream(channels)])
        self.residual = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.embed = nn.Sequential(nn.Conv2d(2 * channels, channels, 1),
                                   nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                                   nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))
        self.norm = nn.BatchNorm2d(channels)
        init_like_cmx(self)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x1.shape
        tokens = [x.flatten(2).transpose(1, 2) for x in (x1, x2)]  # N x HW x C
        y, u = zip(*(stream.split(t).chunk(2, dim=-1) for stream, t in zip(self.streams, tokens)))
        contexts = [stream.context(ui, self.heads) for stream, ui in zip(self.streams, u)]
        outputs = []
        for index, stream in enumerate(self.streams):
            query = u[index].reshape(n, h * w, self.heads, c // self.heads).transpose(1, 2)
            attended = (query @ contexts[1 - index]).transpose(1, 2).reshape(n, h * w, c)
            outputs.append(stream.norm(tokens[index] + stream.merge(torch.cat([y[index], attended], dim=-1))))
        both = torch.cat(outputs, dim=-1).transpose(1, 2).reshape(n, 2 * c, h, w)
        return self.norm(self.residual(both) + self.embed(both))


class AuxFPNHead(nn.Module):
    """Path 2 (eq. 10): S_1 = Conv3x3(Up(F_1 + Up(F_n)) + F_0), the 1/4 and 1/8 maps first aligned to d
    channels by 1x1 convolutions, bilinear upsampling; logits bilinearly resized to the output size."""

    def __init__(self, d_model: int, num_classes: int):
        super().__init__()
        self.lateral0 = nn.Conv2d(d_model // 8, d_model, 1)
        self.lateral1 = nn.Conv2d(d_model // 4, d_model, 1)
        self.classifier = nn.Conv2d(d_model, num_classes, 3, padding=1)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor, fn: torch.Tensor, size) -> torch.Tensor:
        x = self.lateral1(f1) + F.interpolate(fn, size=f1.shape[-2:], mode="bilinear", align_corners=False)
        x = self.lateral0(f0) + F.interpolate(x, size=f0.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.float(), dim=-1)
    return x @ x.T


class PrototypeDistillation(nn.Module):
    """Language-aided distillation (eq. 12-14) on the fused 1/16 map F_n.

    p_k: mean of F_n over the pixels labelled k (labels nearest-downsampled), over the whole batch (eq. 12);
    g_k: EMA of p_k (persistent buffer, zeros at start, updated before the loss);
    L_cr = mean KL(softmax_c g_k || softmax_c p_k) (eq. 13);
    L_se = mean KL(softmax_row cos(T, T^T) || softmax_row cos(P, P^T)) (eq. 14), T the class-name text table.
    Only classes present in the batch enter both (an absent class has no prototype).
    `text_similarity` (K x K, cos(T, T^T)) is a persistent buffer: checkpoints carry it, serving needs no CLIP.
    `text_source`: 0 = not set (a checkpoint fills it), 1 = CLIP text encoder, 2 = seeded stand-in.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float, ignore_index: int = 255):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {momentum}")
        self.num_classes, self.momentum, self.ignore_index = num_classes, momentum, ignore_index
        self.register_buffer("ema_prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("text_similarity", torch.zeros(num_classes, num_classes))
        self.register_buffer("text_source", torch.zeros((), dtype=torch.long))

    def set_text_table(self, table: torch.Tensor, source: int) -> None:
        if table.shape[0] != self.num_classes:
            raise ValueError(f"text table has {table.shape[0]} rows for {self.num_classes} classes")
        self.text_similarity.copy_(cosine_similarity_matrix(table))
        self.text_source.fill_(source)

    def prototypes(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P x D mean features of the P present classes, K-long mask of the present classes)."""
        small = F.interpolate(labels[:, None].float(), size=features.shape[-2:], mode="nearest")[:, 0].long()
        flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float()
        classes = small.reshape(-1)
        valid = (classes >= 0) & (classes < self.num_classes)
        one_hot = F.one_hot(classes[valid], self.num_classes).to(flat.dtype)
        counts = one_hot.sum(dim=0)
        present = counts > 0
        sums = one_hot.T @ flat[valid]
        return sums[present] / counts[present, None], present

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_cr, L_se) for a batch; zeros (still in the graph) when no labelled class is visible."""
        prototypes, present = self.prototypes(features, labels)
        if not bool(present.any()):
            zero = features.sum() * 0.0
            return zero, zero
        with torch.no_grad():
            self.ema_prototypes[present] = (self.momentum * self.ema_prototypes[present]
                                            + (1.0 - self.momentum) * prototypes.detach())
        target = self.ema_prototypes[present]
        cr = F.kl_div(F.log_softmax(prototypes, dim=-1), F.softmax(target, dim=-1), reduction="none").mean()
        visual = F.log_softmax(cosine_similarity_matrix(prototypes), dim=-1)
        text = F.softmax(self.text_similarity[present][:, present], dim=-1)
        se = F.kl_div(visual, text, reduction="none").mean()
        return cr, se
