"""The optional no-target head: does the expression refer to nothing in the image?

LAVT always paints its best keyword match. For generalized referring segmentation (gRefCOCO),
where an expression may match no object, ReLA and RefSegformer add a small classifier that says
"nothing here"; this is ours. It reads the top stage's multi-modal features (already fused with
the language by PWAM and the gate), pools them two ways -- the average says what the image
holds overall, the maximum whether any location matches the expression -- and maps the pair to
one logit through a two-layer MLP. A positive logit means "no target".
"""
import torch
from torch import nn

__all__ = ["NoTargetHead"]


class NoTargetHead(nn.Module):
    """`head(features)`: features (B, C, h, w) -> no-target logits (B,)."""

    def __init__(self, in_channels: int, hidden_channels: int = 256):
        super().__init__()
        self.norm = nn.LayerNorm(2 * in_channels)
        self.mlp = nn.Sequential(nn.Linear(2 * in_channels, hidden_channels), nn.GELU(),
                                 nn.Linear(hidden_channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.mlp(self.norm(pooled)).squeeze(1)
