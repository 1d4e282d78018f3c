"""Model tests: checkpoint layout, exact agreement with the reference outputs, and the pieces of
the math that a re-implementation most easily gets wrong (shift mask, fusion heads, word mask)."""
import argparse
import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from lib.backbone import SwinBlock, relative_position_index, shifted_window_mask
from lib.fusion import PixelWordAttention
from lib.segmentation import LAVT, LAVTOne, build_lavt, lavt, lavt_one, parse_fusion_heads

FIXTURES = Path(__file__).parent / "fixtures"
SWIN_B = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12)
TINY = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])


def layout(state_dict):
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def manifest():
    return json.loads((FIXTURES / "official_state_dict_keys.json").read_text())


@pytest.fixture(scope="module")
def nano_reference():
    return torch.load(FIXTURES / "nano_lavt_eval.pt", weights_only=True)


@pytest.fixture(scope="module")
def nano_model(nano_reference):
    config = nano_reference["config"]
    model = build_lavt(config["embed_dim"], config["depths"], config["num_heads"], config["window_size"],
                       fusion_heads=config["num_heads_fusion"], drop_path_rate=config["drop_path_rate"],
                       text_dim=config["text_dim"])
    model.load_state_dict(nano_reference["state_dict"], strict=True)
    return model.eval()


def test_swin_b_state_dict_matches_released_lavt(manifest):
    # Meta tensors keep names, shapes and dtypes without allocating Swin-B.
    with torch.device("meta"):
        model = build_lavt(**SWIN_B)
    assert isinstance(model, LAVT)
    assert layout(model.state_dict()) == manifest["lavt/model"]
    assert list(model.state_dict()) == list(manifest["lavt/model"])
    assert sorted(model.backbone.no_weight_decay_parameters()) == sorted(manifest["no_weight_decay_backbone_params"])


def test_swin_b_with_bert_matches_released_lavt_one(manifest):
    with torch.device("meta"):
        model = build_lavt(**SWIN_B, text_encoder=BertModel(BertConfig(), add_pooling_layer=False))
    assert isinstance(model, LAVTOne)
    assert layout(model.state_dict()) == manifest["lavt_one/model"]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_nano_reproduces_reference_outputs(nano_model, nano_reference, dtype, tolerance):
    expected = nano_reference["outputs_float64" if dtype == torch.float64 else "outputs"]
    inputs = nano_reference["inputs"]
    image, l_feats, l_mask = inputs["image"].to(dtype), inputs["l_feats"].to(dtype), inputs["l_mask"]
    model = nano_model.to(dtype)
    try:
        with torch.no_grad():
            features = model.backbone(image, l_feats, l_mask)
            logits = model(image, l_feats, l_mask)
    finally:
        nano_model.float()
    assert len(features) == 4
    for ours, theirs in zip(features, expected["backbone_features"]):
        assert ours.shape == theirs.shape
        assert (ours - theirs.to(dtype)).abs().max() < tolerance
    assert logits.shape == expected["logits"].shape
    assert (logits - expected["logits"].to(dtype)).abs().max() < tolerance


def test_bf16_autocast_stays_close_to_fp32_with_channels_last_maps(nano_model, nano_reference):
    inputs = nano_reference["inputs"]
    args = inputs["image"], inputs["l_feats"], inputs["l_mask"]
    with torch.no_grad():
        fp32_features, fp32_logits = nano_model.backbone(*args), nano_model(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features, logits = nano_model.backbone(*args), nano_model(*args)
    assert all(f.is_contiguous() for f in fp32_features)
    # Reduced precision hands the decoder channels-last maps (its fast layout); logits come back contiguous.
    assert all(f.dtype == torch.bfloat16 and f.is_contiguous(memory_format=torch.channels_last) for f in features)
    assert not features[0].is_contiguous() and logits.is_contiguous()
    torch.testing.assert_close(logits.float(), fp32_logits, atol=0.05, rtol=0)  # logits span about +-1.5
    assert (logits.argmax(1) == fp32_logits.argmax(1)).float().mean() > 0.98


def test_relative_position_index_values(nano_model, nano_reference):
    window = 3
    index = relative_position_index(window)
    coords = [(y, x) for y in range(window) for x in range(window)]
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            assert index[i, j] == (yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1)
    key = "backbone.layers.2.blocks.1.attn.relative_position_index"
    assert torch.equal(nano_model.state_dict()[key], nano_reference["state_dict"][key])
    fresh = build_lavt(**TINY, window_size=7, text_dim=4)
    assert torch.equal(fresh.state_dict()["backbone.layers.0.blocks.0.attn.relative_position_index"],
                       relative_position_index(7))


@pytest.mark.parametrize("padded_height, padded_width, window", [(7, 7, 7), (14, 21, 7), (24, 36, 12), (8, 8, 4)])
def test_shift_mask_separates_wrapped_tokens(padded_height, padded_width, window):
    shift = window // 2
    mask = shifted_window_mask(padded_height, padded_width, window, shift)
    windows_per_row = padded_width // window
    assert mask.shape == ((padded_height // window) * windows_per_row, window * window, window * window)
    # A token of the shifted map may see another one in its window only if both or neither came
    # around the border by the cyclic roll, separately along each axis.
    for w_index in range(mask.shape[0]):
        top, left = (w_index // windows_per_row) * window, (w_index % windows_per_row) * window
        pos = [(top + r, left + c) for r in range(window) for c in range(window)]
        for a, (ra, ca) in enumerate(pos):
            for b, (rb, cb) in enumerate(pos):
                same = ((ra >= padded_height - shift) == (rb >= padded_height - shift)
                        and (ca >= padded_width - shift) == (cb >= padded_width - shift))
                assert mask[w_index, a, b] == (0.0 if same else -100.0)


def test_shifted_block_does_not_mix_across_the_border():
    torch.manual_seed(0)
    block = SwinBlock(dim=4, num_heads=1, window_size=4, shift_size=2).double().eval()
    size, shift = 8, 2
    mask = shifted_window_mask(size, size, 4, shift, dtype=torch.float64)
    x = torch.randn(1, size * size, 4, dtype=torch.float64)

    def change_at_66_when_perturbing(row, col, mask=mask):
        y = x.clone().view(1, size, size, 4)
        y[0, row, col, 0] += 1.0  # one channel: a constant shift would vanish in LayerNorm
        with torch.no_grad():
            diff = block(y.view(1, -1, 4), size, size, mask) - block(x, size, size, mask)
        return diff.view(1, size, size, 4)[0, 6, 6].abs().max()

    # (0, 0) is rolled into the same window as (6, 6) but from the opposite border: masked out.
    assert change_at_66_when_perturbing(0, 0) < 1e-12
    assert change_at_66_when_perturbing(0, 0, mask=torch.zeros_like(mask)) > 1e-3
    assert change_at_66_when_perturbing(7, 7) > 1e-3


def reference_pixel_word_attention(module, x, l_feats, l_mask):
    query = module.f_query(x.transpose(1, 2))
    mask = l_mask.to(x.dtype).transpose(1, 2)
    key, value = module.f_key(l_feats) * mask, module.f_value(l_feats) * mask
    width = query.shape[1] // module.num_heads
    outs = []
    for h in range(module.num_heads):
        part = slice(h * width, (h + 1) * width)
        scores = query[:, part].transpose(1, 2) @ key[:, part] / module.key_channels ** 0.5
        scores = scores + (mask - 1) * 1e4
        outs.append(scores.softmax(-1) @ value[:, part].transpose(1, 2))
    return module.W(torch.cat(outs, dim=-1).transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_pixel_word_attention_heads_and_word_mask(heads):
    torch.manual_seed(0)
    module = PixelWordAttention(8, 6, 8, 8, 8, num_heads=heads).double()
    x, l_feats = torch.randn(2, 10, 8, dtype=torch.float64), torch.randn(2, 6, 5, dtype=torch.float64)
    l_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).unsqueeze(-1)
    out = module(x, l_feats, l_mask)
    torch.testing.assert_close(out, reference_pixel_word_attention(module, x, l_feats, l_mask))
    l_changed = l_feats.clone()
    l_changed[0, :, 3:] = 100.0
    torch.testing.assert_close(module(x, l_changed, l_mask), out)


@pytest.mark.parametrize("window_size", [7, 12])
def test_odd_input_sizes_and_multi_head_fusion(window_size):
    torch.manual_seed(0)
    model = build_lavt(**TINY, window_size=window_size, fusion_heads=(2, 2, 2, 2), text_dim=12).eval()
    l_mask = torch.ones(1, 5, 1, dtype=torch.long)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 70, 90), torch.randn(1, 12, 5), l_mask)
        features = model.backbone(torch.randn(1, 3, 70, 90), torch.randn(1, 12, 5), l_mask)
    assert logits.shape == (1, 2, 70, 90)
    assert [tuple(f.shape[1:]) for f in features] == [(8, 18, 23), (16, 9, 12), (32, 5, 6), (64, 3, 3)]
    assert torch.isfinite(logits).all()


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_lavt(**TINY, text_dim=12, fusion_drop=0.1).train()
    logits = model(torch.randn(2, 3, 64, 64), torch.randn(2, 12, 5), torch.ones(2, 5, 1, dtype=torch.long))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 2, (2, 64, 64))).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # As in the released model, the last stage's gate feeds nothing (its gated sum is not used).
    assert missing == ["backbone.layers.3.res_gate.0.weight", "backbone.layers.3.res_gate.2.weight"]


def test_lavt_one_uses_the_words():
    torch.manual_seed(0)
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                vocab_size=100), add_pooling_layer=False)
    model = build_lavt(**TINY, text_encoder=bert).eval()
    assert isinstance(model, LAVTOne) and model.backbone.text_dim == 32
    image = torch.randn(1, 3, 64, 64)
    ids = torch.tensor([[1, 5, 9, 2, 0, 0]])
    attention = (ids != 0).long()
    with torch.no_grad():
        logits = model(image, ids, l_mask=attention)
        other_words = model(image, torch.tensor([[1, 7, 3, 2, 0, 0]]), l_mask=attention)
        other_padding = model(image, torch.tensor([[1, 5, 9, 2, 42, 17]]), l_mask=attention)
    assert logits.shape == (1, 2, 64, 64)
    assert (logits - other_words).abs().max() > 1e-4
    torch.testing.assert_close(other_padding, logits)


def test_factories(tmp_path, capsys):
    args = argparse.Namespace(swin_type="nano", window12=False, mha="", fusion_drop=0.0, ck_bert="minilm")
    model = lavt("", args)
    assert isinstance(model, LAVT) and model.backbone.text_dim == 384
    assert model.backbone.layers[0].blocks[0].window_size == 7
    assert model.backbone.layers[0].fusion.image_lang_att.num_heads == 1
    one = lavt_one("", args)
    assert isinstance(one, LAVTOne) and one.backbone.text_dim == 384

    # A window-12 Swin file name selects window 12; its weights load (tables resized from
    # window 7) and the loader's report is printed.
    swin = {k: v for k, v in model.backbone.state_dict().items() if "fusion" not in k and "res_gate" not in k}
    path = tmp_path / "swin_nano_patch4_window12_fake.pth"
    torch.save({"model": swin}, path)
    args = argparse.Namespace(swin_type="nano", window12=False, mha="2-2-2-2", fusion_drop=0.0, ck_bert="minilm")
    model12 = lavt(str(path), args)
    assert model12.backbone.layers[3].blocks[1].window_size == 12
    assert model12.backbone.layers[3].fusion.image_lang_att.num_heads == 2
    assert model12.backbone.layers[0].blocks[0].attn.relative_position_bias_table.shape[0] == 23 ** 2
    torch.testing.assert_close(model12.backbone.layers[1].blocks[0].mlp.fc1.weight,
                               model.backbone.layers[1].blocks[0].mlp.fc1.weight)
    assert "loaded" in capsys.readouterr().out.lower()


def test_bad_arguments_are_reported():
    assert parse_fusion_heads("4-4-4-4") == [4, 4, 4, 4]
    with pytest.raises(ValueError, match="mha"):
        parse_fusion_heads("4-4")
    with pytest.raises(ValueError, match="swin_type"):
        lavt("", argparse.Namespace(swin_type="huge", window12=False, mha="", fusion_drop=0.0, ck_bert="minilm"))
    model = build_lavt(**TINY, text_dim=12)
    with pytest.raises(ValueError, match="l_feats"):
        model(torch.randn(1, 3, 32, 32), torch.randn(1, 5, 12), torch.ones(1, 5, 1))
