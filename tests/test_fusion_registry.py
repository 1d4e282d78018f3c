"""Fusion and gate layers are constructor arguments: a fusion registered by name through
`lib.fusion.register_fusion` is built into every stage, a gate callable replaces `res_gate`, and
the default stays the released PWAM (its outputs are checked against the reference in test_model)."""
import argparse

import pytest
import torch
from torch import nn

from lib.fusion import FUSION_LAYERS, PWAM, get_fusion, language_gate, register_fusion
from lib.segmentation import build_lavt, lavt

TINY = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])


@register_fusion("test_mean_word")
class MeanWordFusion(nn.Module):
    """Scales every pixel by a sigmoid of the projected mean of the real words."""

    def __init__(self, dim, text_dim, num_heads=1, dropout=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.project = nn.Linear(text_dim, dim)

    def forward(self, x, l_feats, l_mask):
        mask = l_mask.to(x.dtype)
        mean = (l_feats.transpose(1, 2) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return x * torch.sigmoid(self.project(mean))[:, None]


def sigmoid_gate(dim):
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())


def test_registered_fusion_is_built_into_every_stage_and_uses_the_words():
    torch.manual_seed(0)
    model = build_lavt(**TINY, text_dim=12, fusion_heads=(1, 2, 2, 4), fusion_layer="test_mean_word").eval()
    stages = model.backbone.layers
    assert all(isinstance(stage.fusion, MeanWordFusion) for stage in stages)
    assert [stage.fusion.num_heads for stage in stages] == [1, 2, 2, 4]
    assert "backbone.layers.2.fusion.project.weight" in model.state_dict()
    assert not any("image_lang_att" in key for key in model.state_dict())
    image, words = torch.randn(2, 3, 64, 64), torch.randn(2, 12, 5)
    l_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).unsqueeze(-1)
    with torch.no_grad():
        logits = model(image, words, l_mask)
        other = words.clone()
        other[:, :, :3] += 1.0
        changed = model(image, other, l_mask)
        padded = words.clone()
        padded[0, :, 3:] = 100.0
        padding_changed = model(image, padded, l_mask)
    assert logits.shape == (2, 2, 64, 64)
    assert (logits - changed).abs().amax(dim=(1, 2, 3)).min() > 1e-5
    torch.testing.assert_close(padding_changed, logits)


def test_factory_reads_the_fusion_option_and_gate_callable_is_used():
    args = argparse.Namespace(swin_type="nano", window12=False, mha="", fusion_drop=0.0, ck_bert="minilm",
                              fusion="test_mean_word")
    assert isinstance(lavt("", args).backbone.layers[1].fusion, MeanWordFusion)
    model = build_lavt(**TINY, text_dim=12, gate_layer=sigmoid_gate)
    assert isinstance(model.backbone.layers[0].fusion, PWAM)
    assert isinstance(model.backbone.layers[0].res_gate[1], nn.Sigmoid)
    # The callable route works without registering anything.
    assert isinstance(build_lavt(**TINY, text_dim=12, fusion_layer=MeanWordFusion).backbone.layers[3].fusion,
                      MeanWordFusion)


def test_default_is_the_released_fusion_and_gate():
    assert FUSION_LAYERS["pwam"] is PWAM and get_fusion("pwam") is PWAM
    model = build_lavt(**TINY, text_dim=12)
    reference_gate = language_gate(16)
    gate = model.backbone.layers[1].res_gate
    assert [type(m) for m in gate] == [type(m) for m in reference_gate]


def test_unknown_or_taken_fusion_names_are_reported():
    with pytest.raises(ValueError, match=r"fusion 'nope' is unknown.*pwam.*test_mean_word"):
        build_lavt(**TINY, text_dim=12, fusion_layer="nope")
    with pytest.raises(ValueError, match="already taken"):
        register_fusion("pwam")(MeanWordFusion)
    assert register_fusion("test_mean_word")(MeanWordFusion) is MeanWordFusion  # re-registering is harmless
