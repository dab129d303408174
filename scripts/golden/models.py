"""Python reference models mirrored by the TypeScript library.

`ResNet` below is torchvision's ResNet (torchvision/models/resnet.py, v0.14; BSD-3-Clause,
Copyright (c) Soumith Chintala 2016, All rights reserved) -- __init__/_make_layer/_forward_impl
copied, with EXTENSIONS THAT ARE OURS (marked "ours"):

  * in_channels      : conv1 input channels (torchvision: 3)
  * stem_width       : conv1 output channels = initial inplanes (torchvision: 64)
  * widths           : `planes` of the four stages (torchvision: 64, 128, 256, 512)
  * shortcut         : 'B' torchvision (1x1 conv + BN `downsample` only where the shape changes)
                       'C' 1x1 conv + BN `downsample` on EVERY block (stride = the block's stride)
                       'A' parameter-free: where the shape changes, `downsample` is a
                           ZeroPadShortcut (spatial subsample ::stride, zero-pad channels)
  * plain            : "plain" twin without identity paths (PlainBasicBlock/PlainBottleneck,
                       no downsample module at all)

With default options it reproduces torchvision exactly (state_dict keys/shapes and forward
output; asserted by generate.py).  `cifar_resnet` builds the CIFAR-10 ResNet of
He et al. 2016, section 4.2 (depth = 6n + 2).

The blocks themselves (BasicBlock, Bottleneck, conv1x1, conv3x3) are imported from
torchvision unchanged.
"""

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1, conv3x3  # noqa: F401


# ---------------------------------------------------------------------------------------------
# ours: option-A shortcut and plain blocks
# ---------------------------------------------------------------------------------------------
class ZeroPadShortcut(nn.Module):
    """Parameter-free projection (He et al. 2016, option A).

    y = F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, front, back)) with
    front = (out_ch - in_ch) // 2, back = out_ch - in_ch - front.
    Has no parameters and no buffers (state_dict keys are unchanged).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError("ZeroPadShortcut cannot reduce channels")
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        front = (self.out_ch - self.in_ch) // 2
        back = self.out_ch - self.in_ch - front
        if front or back:
            x = F.pad(x, (0, 0, 0, 0, front, back))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_ch}, {self.out_ch}, stride={self.stride}"


class PlainBasicBlock(BasicBlock):
    """BasicBlock without the identity path: relu(bn2(conv2(relu(bn1(conv1(x))))))."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert self.downsample is None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        return out


class PlainBottleneck(Bottleneck):
    """Bottleneck without the identity path."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        assert self.downsample is None

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        out = self.relu(out)
        return out


_PLAIN = {BasicBlock: PlainBasicBlock, Bottleneck: PlainBottleneck}


class _ShortcutMixin:
    """ours: builds the `downsample` module of a block according to `self.shortcut`."""

    def _make_shortcut(self, in_ch: int, out_ch: int, stride: int) -> Optional[nn.Module]:
        if self.plain:
            return None
        changes = stride != 1 or in_ch != out_ch
        if self.shortcut == "B":
            if not changes:
                return None
            return nn.Sequential(conv1x1(in_ch, out_ch, stride), self._norm_layer(out_ch))
        if self.shortcut == "C":
            return nn.Sequential(conv1x1(in_ch, out_ch, stride), self._norm_layer(out_ch))
        if self.shortcut == "A":
            return ZeroPadShortcut(in_ch, out_ch, stride) if changes else None
        raise ValueError(f"unknown shortcut {self.shortcut!r}")

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        # torchvision's _make_layer; only the downsample construction is ours.
        norm_layer = self._norm_layer
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = self._make_shortcut(self.inplanes, planes * block.expansion, stride)

        layers = []
        layers.append(
            block(
                self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation, norm_layer
            )
        )
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    downsample=self._make_shortcut(self.inplanes, self.inplanes, 1),  # ours (C only)
                    groups=self.groups,
                    base_width=self.base_width,
                    dilation=self.dilation,
                    norm_layer=norm_layer,
                )
            )

        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # torchvision's init, verbatim
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        # Zero-initialize the last BN in each residual branch,
        # so that the residual branch starts with zeros, and each residual block behaves like an identity.
        # This improves the model by 0.2~0.3% according to https://arxiv.org/abs/1706.02677
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)  # type: ignore[arg-type]
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)  # type: ignore[arg-type]


class ResNet(_ShortcutMixin, nn.Module):
    def __init__(
        self,
        block,
        layers: List[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Optional[List[bool]] = None,
        norm_layer=None,
        *,
        in_channels: int = 3,  # ours
        widths: Sequence[int] = (64, 128, 256, 512),  # ours
        stem_width: int = 64,  # ours
        shortcut: str = "B",  # ours
        plain: bool = False,  # ours
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        if len(widths) != 4:
            raise ValueError("widths must have 4 entries")
        self.shortcut = shortcut  # ours
        self.plain = plain  # ours
        if plain:
            block = _PLAIN[block]  # ours

        self.inplanes = stem_width  # ours (torchvision: 64)
        self.dilation = 1
        if replace_stride_with_dilation is None:
            # each element in the tuple indicates if we should replace
            # the 2x2 stride with a dilated convolution instead
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                "replace_stride_with_dilation should be None "
                f"or a 3-element tuple, got {replace_stride_with_dilation}"
            )
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)

        self._init_weights(zero_init_residual)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


class CifarResNet(_ShortcutMixin, nn.Module):
    """ours: CIFAR ResNet of He et al. 2016 section 4.2 (depth = 6n + 2).

    conv1 3x3/1 pad 1 (in_channels -> 16, no bias), bn1, relu, layer1..3 of n BasicBlocks with
    16/32/64 planes (first block of layer2/layer3 has stride 2), AdaptiveAvgPool2d(1), flatten,
    fc Linear(64, num_classes).  No maxpool.  torchvision init.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        plain: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (n >= 1), got {depth}")
        n = (depth - 2) // 6
        block = PlainBasicBlock if plain else BasicBlock
        self._norm_layer = nn.BatchNorm2d
        self.shortcut = shortcut
        self.plain = plain
        self.inplanes = 16
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 16, n)
        self.layer2 = self._make_layer(block, 32, n, stride=2)
        self.layer3 = self._make_layer(block, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self._init_weights(zero_init_residual)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", plain: bool = False):
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut, plain=plain)
