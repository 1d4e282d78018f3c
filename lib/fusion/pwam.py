"""Language-vision fusion of LAVT: the Pixel-Word Attention Module (PWAM) and the language gate.

Shapes: visual tokens `x` (B, HW, C), word features `l_feats` (B, C_t, N_l), word mask `l_mask`
(B, N_l, 1) with 1 for real words and 0 for padding. Submodule names and `nn.Sequential`
layouts follow the released checkpoints (`vis_project.0`, `image_lang_att.f_query.0`, ...).

Contracts (see docs/extending.md):
- fusion layer: `fusion_layer(dim, text_dim, num_heads=..., dropout=..., **its own options)` returns
  a module whose `forward(x, l_feats, l_mask)` maps x (B, HW, C) to language-aware features
  F (B, HW, C); it must ignore padded words (l_mask == 0). Register it with
  `@register_fusion("name")` (lib/fusion/registry.py) to make `build_lavt(fusion_layer="name")`
  (and `--fusion name`) build it into every stage.
- gate layer: `gate_layer(dim)` returns a module mapping F (B, HW, C) to per-channel weights
  (B, HW, C); the stage feeds `x + gate(F) * F` to the next stage.
"""
import torch
from torch import nn

from errors import UserInputError

from .registry import register_fusion


class PixelWordAttention(nn.Module):
    """Cross-attention from every pixel (query) to the words (key/value), `image_lang_att`.

    Scores are scaled by the full key width `key_channels ** -0.5` even with several heads, as in
    the released model; padded words are pushed out of the softmax by an additive -1e4.
    """

    def __init__(self, visual_channels, text_channels, key_channels, value_channels, out_channels=None,
                 num_heads=1):
        super().__init__()
        if key_channels % num_heads or value_channels % num_heads:
            raise UserInputError(f"PixelWordAttention: num_heads={num_heads} must divide key_channels={key_channels} "
                             f"and value_channels={value_channels}; choose fusion heads that divide the stage width")
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.num_heads = num_heads
        out_channels = out_channels or visual_channels
        self.f_key = nn.Sequential(nn.Conv1d(text_channels, key_channels, kernel_size=1))
        self.f_query = nn.Sequential(nn.Conv1d(visual_channels, key_channels, kernel_size=1),
                                     nn.InstanceNorm1d(key_channels))
        self.f_value = nn.Sequential(nn.Conv1d(text_channels, value_channels, kernel_size=1))
        self.W = nn.Sequential(nn.Conv1d(value_channels, out_channels, kernel_size=1),
                               nn.InstanceNorm1d(out_channels))

    def forward(self, x, l_feats, l_mask):
        """x (B, HW, C), l_feats (B, C_t, N_l), l_mask (B, N_l, 1) -> (B, HW, out_channels)."""
        batch, num_pixels = x.shape[:2]
        heads = self.num_heads
        word_mask = l_mask.to(x.dtype).transpose(1, 2)  # (B, 1, N_l)
        query = self.f_query(x.transpose(1, 2))  # (B, Ck, HW)
        key = self.f_key(l_feats) * word_mask  # (B, Ck, N_l)
        value = self.f_value(l_feats) * word_mask  # (B, Cv, N_l)
        query = query.reshape(batch, heads, self.key_channels // heads, num_pixels).transpose(2, 3)
        key = key.reshape(batch, heads, self.key_channels // heads, -1)
        value = value.reshape(batch, heads, self.value_channels // heads, -1).transpose(2, 3)
        scores = torch.matmul(query, key) * self.key_channels ** -0.5  # (B, h, HW, N_l)
        scores = scores + (1e4 * word_mask.unsqueeze(1) - 1e4)
        out = torch.matmul(scores.softmax(dim=-1), value)  # (B, h, HW, Cv/h)
        out = out.transpose(2, 3).reshape(batch, self.value_channels, num_pixels)
        return self.W(out).transpose(1, 2)


@register_fusion("pwam")
class PWAM(nn.Module):
    """Pixel-Word Attention Module: F = GELU(conv(GELU(conv(x)) * attend(x, words)))."""

    def __init__(self, dim, text_dim, num_heads=1, dropout=0.0):
        super().__init__()
        self.vis_project = nn.Sequential(nn.Conv1d(dim, dim, kernel_size=1), nn.GELU(), nn.Dropout(dropout))
        self.image_lang_att = PixelWordAttention(dim, text_dim, key_channels=dim, value_channels=dim,
                                                 out_channels=dim, num_heads=num_heads)
        self.project_mm = nn.Sequential(nn.Conv1d(dim, dim, kernel_size=1), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x, l_feats, l_mask):
        """x (B, HW, C), l_feats (B, C_t, N_l), l_mask (B, N_l, 1) -> F (B, HW, C)."""
        vis = self.vis_project(x.transpose(1, 2))  # (B, C, HW)
        lang = self.image_lang_att(x, l_feats, l_mask).transpose(1, 2)  # (B, C, HW)
        return self.project_mm(vis * lang).transpose(1, 2)


def language_gate(dim):
    """`res_gate`: per-channel weights in (-1, 1) for adding the fused features back to x."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False), nn.Tanh())
