"""The optional no-target head: does the expression refer to nothing in the image?

LAVT always paints its best keyword match. For generalized referring segmentation (gRefCOCO),
where an expression may match no object, ReLA and RefSegformer add a small classifier that says
"nothing here"; this is ours. It reads two places and pools each two ways (the average says what
the image holds overall, the maximum whether any location matches the expression):

- the top stage's multi-modal features (fused with the language by PWAM and the gate);
- the decoder's last hidden map at 1/4 resolution, from which the mask is predicted, together with
  the mask's own margin (object minus background logit; its maximum is what the released "empty
  mask" rule thresholds at 0).

The top stage alone is a coarse place to decide from (2 x 2 cells at 64 px): a head on it alone
caught fewer no-target expressions than the empty-mask rule (docs/benchmarks.md). A two-layer MLP
maps the pooled features to one logit; a positive logit means "no target".

`input_grad_scale` scales the gradient the head's loss sends back into the shared model (the
forward is unchanged): 1 trains the features for both tasks; 0 makes the head a probe that reads
features trained for the mask alone.
"""
import torch
from torch import nn

__all__ = ["NoTargetHead"]


class NoTargetHead(nn.Module):
    """`head(top_features, mask_features, mask_logits)` -> no-target logits (B,).

    top_features (B, top_channels, h, w), mask_features (B, mask_channels, H, W) and mask_logits
    (B, 2, H, W) (the decoder's output before upsampling).
    """

    def __init__(self, top_channels: int, mask_channels: int, hidden_channels: int = 256,
                 input_grad_scale: float = 1.0):
        super().__init__()
        self.input_grad_scale = input_grad_scale
        width = 2 * top_channels + 2 * mask_channels + 2
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden_channels), nn.GELU(), nn.Linear(hidden_channels, 1))

    def forward(self, top_features: torch.Tensor, mask_features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        if self.input_grad_scale != 1.0:
            top_features, mask_features, mask_logits = (
                scale_gradient(x, self.input_grad_scale) for x in (top_features, mask_features, mask_logits))
        margin = (mask_logits[:, 1] - mask_logits[:, 0]).flatten(1)
        pooled = torch.cat([top_features.mean(dim=(2, 3)), top_features.amax(dim=(2, 3)),
                            mask_features.mean(dim=(2, 3)), mask_features.amax(dim=(2, 3)),
                            margin.mean(dim=1, keepdim=True), margin.amax(dim=1, keepdim=True)], dim=1)
        return self.mlp(self.norm(pooled)).squeeze(1)


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` in the forward pass; its gradient times `scale` in the backward pass (0: detached)."""
    if scale == 0.0:
        return x.detach()
    return x.detach() + scale * (x - x.detach())
