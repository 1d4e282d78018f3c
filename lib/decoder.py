"""LAVT mask decoder (`classifier`): top-down fusion of the four language-aware feature maps.

Y4 is fused with Y3, the result with Y2, then with Y1 (each step: upsample the coarser map if it is
smaller, concatenate, two 3x3 conv-BN-ReLU), and a 1x1 conv predicts 2 classes at 1/4 resolution.
Layer names (`conv1_4`, `bn1_4`, ..., `conv1_1`) follow the released checkpoints.
"""
import torch
import torch.nn.functional as F
from torch import nn


class SimpleDecoding(nn.Module):
    """Decoder for backbone widths (c1, c2, c3, c4) = (C, 2C, 4C, 8C); `in_channels` is c4 = 8C.

    `hidden_channels` defaults to c4 // 2 = 4C, as in the released model.
    """

    def __init__(self, in_channels, hidden_channels=None, num_classes=2):
        super().__init__()
        if in_channels % 8:
            raise ValueError(f"SimpleDecoding: in_channels={in_channels} must be 8 * embed_dim (the last stage width)")
        hidden = hidden_channels or in_channels // 2
        c3, c2, c1 = in_channels // 2, in_channels // 4, in_channels // 8
        for level, skip_channels, coarse_channels in ((4, c3, in_channels), (3, c2, hidden), (2, c1, hidden)):
            self.add_module(f"conv1_{level}", nn.Conv2d(coarse_channels + skip_channels, hidden, 3, padding=1, bias=False))
            self.add_module(f"bn1_{level}", nn.BatchNorm2d(hidden))
            self.add_module(f"relu1_{level}", nn.ReLU())
            self.add_module(f"conv2_{level}", nn.Conv2d(hidden, hidden, 3, padding=1, bias=False))
            self.add_module(f"bn2_{level}", nn.BatchNorm2d(hidden))
            self.add_module(f"relu2_{level}", nn.ReLU())
        self.conv1_1 = nn.Conv2d(hidden, num_classes, 1)

    def _fuse(self, level, coarse, fine):
        if coarse.shape[-2] < fine.shape[-2] or coarse.shape[-1] < fine.shape[-1]:
            coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=True)
        x = torch.cat([coarse, fine], dim=1)
        for step in (1, 2):
            conv, bn, relu = (getattr(self, f"{name}{step}_{level}") for name in ("conv", "bn", "relu"))
            x = relu(bn(conv(x)))
        return x

    def forward(self, x_c4, x_c3, x_c2, x_c1):
        """Maps from the deepest (1/32) to the finest (1/4) stage -> logits (B, 2, H/4, W/4)."""
        return self.forward_with_features(x_c4, x_c3, x_c2, x_c1)[0]

    def forward_with_features(self, x_c4, x_c3, x_c2, x_c1):
        """(logits (B, 2, H/4, W/4), the last hidden map (B, hidden, H/4, W/4) they are predicted from)."""
        x = self._fuse(4, x_c4, x_c3)
        x = self._fuse(3, x, x_c2)
        x = self._fuse(2, x, x_c1)
        return self.conv1_1(x).contiguous(), x  # channels-last inputs (bf16) give channels-last maps
