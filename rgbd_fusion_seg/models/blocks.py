"""Building blocks shared by the methods: the torchvision ResNet encoder and the U-Net decoder."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class PretrainedWeightsMissing(FileNotFoundError):
    """ImageNet weights were asked for but are not on disk (nothing is downloaded at run time)."""


def imagenet_weights_path(arch: str) -> tuple[Path, str]:
    """Where torchvision keeps the ImageNet weights of `arch`, and the address they come from."""
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url), weights.url


def load_imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    path, url = imagenet_weights_path(arch)
    if not path.is_file():
        raise PretrainedWeightsMissing(
            f"ImageNet weights for {arch} were asked for (pretrained: true) but {path} does not exist. "
            f"Fetch {url} on a connected machine and put the file there (TORCH_HOME moves the folder), "
            f"or train from scratch with pretrained: false."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Pretrained RGB filters (Ox3xkxk) -> filters for `in_channels` inputs.

    1 channel: the RGB filters summed, so a grey image gives the response the RGB net gives to it
    replicated over three channels (the MM5 study's "grayscale weights derived from the RGB weights").
    4 channels: RGB filters copied, the extra channel initialised as their mean (the study's early fusion).
    """
    if in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if in_channels == 4:
        return torch.cat([weight, weight.mean(dim=1, keepdim=True)], dim=1)
    raise ValueError(f"no rule to adapt 3-channel pretrained filters to {in_channels} input channels")


class StagedEncoder(nn.Module):
    """An encoder as a list of stages (`self.stages`); forward returns every stage's output, shallow first."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class ResNetEncoder(StagedEncoder):
    """A torchvision ResNet cut into five stages: stem (/2), layer1 (/4), layer2 (/8), layer3 (/16), layer4 (/32).

    `stages[i](x)` runs stage i, so a fusion method can interleave two encoders stage by stage.
    `num_stages` < 5 keeps only the first stages (a branch whose deep stages a fusion method never runs).
    """

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, pretrained: bool = False, num_stages: int = 5):
        super().__init__()
        if not 1 <= num_stages <= 5:
            raise ValueError(f"num_stages must be between 1 and 5, got {num_stages}")
        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained:
            state = load_imagenet_state(arch)
            state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], in_channels)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if pretrained:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            net.load_state_dict(state, strict=False)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(net.conv1, net.bn1, net.relu),
                nn.Sequential(net.maxpool, net.layer1),
                net.layer2,
                net.layer3,
                net.layer4,
            ][:num_stages]
        )
        block_expansion = 4 if arch in ("resnet50", "resnet101", "resnet152") else 1
        channels = (64, 64 * block_expansion, 128 * block_expansion, 256 * block_expansion, 512 * block_expansion)
        self.channels = channels[:num_stages]



class UpBlock(nn.Module):
    """Upsample x2, concatenate the skip feature, then two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Decodes the five encoder stages (deepest last) into logits at the input resolution."""

    def __init__(self, encoder_channels, num_classes: int, decoder_channels=(256, 128, 64, 64)):
        super().__init__()
        stem, c1, c2, c3, c4 = encoder_channels
        d3, d2, d1, d0 = decoder_channels
        self.up_blocks = nn.ModuleList(
            [UpBlock(c4, c3, d3), UpBlock(d3, c2, d2), UpBlock(d2, c1, d1), UpBlock(d1, stem, d0)]
        )
        self.classifier = nn.Conv2d(d0, num_classes, kernel_size=1)

    def forward(self, features: list[torch.Tensor], output_size) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.up_blocks, reversed(features[:-1])):
            x = block(x, skip)
        logits = self.classifier(x)
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
