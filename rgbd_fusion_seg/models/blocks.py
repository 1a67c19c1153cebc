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
    """An encoder as a list of stages (`self.stages`); forward returns every stage's output, shallow first
    (only the first `stop` stages' when `stop` is given)."""

    def forward(self, x: torch.Tensor, stop: int | None = None) -> list[torch.Tensor]:
        features = []
        for stage in self.stages[:stop]:
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


def fit_to(x: torch.Tensor, size) -> torch.Tensor:
    """Crop (or zero-pad) x at the bottom and right to `size`: a 2x transposed convolution of a map whose
    input had an odd size is one pixel too large. Bottom/right, because a stride-2 layer's output pixel i
    sits over input pixel 2i: the top-left corners of the two maps are aligned."""
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return x if dh == dw == 0 else F.pad(x, (0, dw, 0, dh))


def conv3x3_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class UpBlock(nn.Module):
    """The MM5 study's decoder block: 2x2 transposed convolution, stride 2 (in -> out), then two 3x3
    conv-BN-ReLU at `out`. The caller concatenates the next encoder skip to its output."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = nn.Sequential(*conv3x3_bn_relu(out_channels, out_channels),
                                   *conv3x3_bn_relu(out_channels, out_channels))

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        return self.convs(fit_to(self.up(x), size))


class UNetDecoder(nn.Module):
    """The MM5 study's U-Net decoder (all six methods; read from its public code).

    Input: the 1/32 bottom map and the 1/16, 1/8, 1/4 skips (deepest first), with their widths. Four UpBlocks
    (-> 256, 128, 64, 64 channels), the skip concatenated after each of the first three; the fourth reaches
    1/2, and a final 2x2 transposed convolution 64 -> 32 with BN-ReLU reaches the input size, where a 1x1
    convolution classifies (no logits upsampling). The stem's map is not a skip.
    """

    def __init__(self, bottom_channels: int, skip_channels, num_classes: int, widths=(256, 128, 64, 64),
                 head: int = 32):
        super().__init__()
        if len(skip_channels) != 3:
            raise ValueError(f"the decoder takes three skips (1/16, 1/8, 1/4), got widths {list(skip_channels)}")
        inputs = [bottom_channels] + [w + s for w, s in zip(widths, skip_channels)]
        self.up_blocks = nn.ModuleList(UpBlock(c_in, c_out) for c_in, c_out in zip(inputs, widths))
        self.final_up = nn.Sequential(
            nn.ConvTranspose2d(widths[-1], head, kernel_size=2, stride=2), nn.BatchNorm2d(head), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Conv2d(head, num_classes, kernel_size=1)

    def forward(self, bottom: torch.Tensor, skips: list[torch.Tensor], output_size) -> torch.Tensor:
        """skips: the 1/16, 1/8 and 1/4 maps; the fourth block's size is half the output size, rounded up."""
        half = tuple((s + 1) // 2 for s in output_size)
        x = bottom
        for block, skip in zip(self.up_blocks, skips):
            x = torch.cat([block(x, skip.shape[-2:]), skip], dim=1)
        x = self.up_blocks[-1](x, half)
        return self.classifier(fit_to(self.final_up(x), output_size))


def unet_inputs(features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The five ResNet stage outputs (stem first) -> (1/32 bottom, [1/16, 1/8, 1/4 skips]) for UNetDecoder."""
    return features[4], [features[3], features[2], features[1]]
