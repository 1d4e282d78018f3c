"""The worked example of docs/extending.md, run as a test: a new fusion module registered through the
public route (`lib.fusion.register_fusion`), built into a nano LAVT, trained one step, saved with
`save_checkpoint`, loaded with `load_lavt_checkpoint` and evaluated."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib.checkpoint import CheckpointError, load_lavt_checkpoint, save_checkpoint
from lib.criterion import build_criterion
from lib.fusion import register_fusion
from lib.segmentation import SWIN_CONFIGS, build_lavt


# --- the example, as printed in docs/extending.md -------------------------------------------------
@register_fusion("film")
class FiLMFusion(nn.Module):
    """Feature-wise linear modulation by the sentence: F = GELU(x * (1 + gamma(s)) + beta(s)),
    s = mean of the real words' features."""

    def __init__(self, dim, text_dim, num_heads=1, dropout=0.0):
        super().__init__()
        self.to_gamma_beta = nn.Linear(text_dim, 2 * dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, l_feats, l_mask):
        """x (B, HW, C), l_feats (B, C_t, N_l), l_mask (B, N_l, 1) -> (B, HW, C)."""
        mask = l_mask.to(x.dtype)
        sentence = (l_feats.transpose(1, 2) * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, C_t)
        gamma, beta = self.to_gamma_beta(sentence)[:, None].chunk(2, dim=-1)  # (B, 1, C) each
        return self.dropout(F.gelu(x * (1 + gamma) + beta))
# ---------------------------------------------------------------------------------------------------


def nano(fusion):
    embed_dim, depths, num_heads = SWIN_CONFIGS["nano"]
    return build_lavt(embed_dim, depths, num_heads, window_size=4, text_dim=384, fusion_layer=fusion)


def batch(seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 64, 64, generator=generator)
    words = torch.randn(4, 384, 8, generator=generator)
    l_mask = (torch.arange(8) < torch.tensor([[3], [8], [5], [2]])).long().unsqueeze(-1)  # real words first
    targets = torch.zeros(4, 64, 64, dtype=torch.long)
    targets[:, 16:48, 8:40] = 1
    return images, words, l_mask, targets


@pytest.mark.slow
def test_worked_example_trains_saves_loads_and_evaluates(tmp_path):
    torch.manual_seed(0)
    model = nano("film").train()
    assert all(isinstance(stage.fusion, FiLMFusion) for stage in model.backbone.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = build_criterion("ce")
    images, words, l_mask, targets = batch(0)
    before = model.backbone.layers[2].fusion.to_gamma_beta.weight.detach().clone()

    loss = criterion({"logits": model(images, words, l_mask)}, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(model.backbone.layers[2].fusion.to_gamma_beta.weight, before)

    path = tmp_path / "film_nano.pth"
    args = argparse.Namespace(model="lavt", swin_type="nano", window_size=4, fusion="film", ck_bert="minilm")
    save_checkpoint(path, model=model, optimizer=optimizer, epoch=0, args=args)
    reloaded = nano("film")
    load_lavt_checkpoint(reloaded, str(path))

    model.eval()
    reloaded.eval()
    images, words, l_mask, _ = batch(1)
    with torch.no_grad():
        logits = model(images, words, l_mask)
        assert torch.equal(reloaded(images, words, l_mask), logits)
        # Evaluation reads the words through the new fusion: other sentences, other masks.
        assert (reloaded(images, words.flip(0), l_mask.flip(0)) - logits).abs().max() > 1e-4

    # The checkpoint names its fusion's tensors: the released PWAM model refuses it, naming them.
    with pytest.raises(CheckpointError, match="to_gamma_beta"):
        load_lavt_checkpoint(nano("pwam"), str(path))
