"""Activation checkpointing (`build_lavt(checkpoint_activations=True)`,
`backbone.set_grad_checkpointing`): the Swin blocks and fusion layers really run again in the
backward pass, and outputs and gradients equal those without it, DropPath and dropout included."""
import pytest
import torch

from lib.backbone import SwinBlock
from lib.fusion import PWAM
from lib.segmentation import build_lavt

TINY = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])


def inputs(dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, 40, 56, generator=generator)
    words = torch.randn(2, 12, 6, generator=generator)
    l_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).unsqueeze(-1)
    target = torch.randint(0, 2, (2, 40, 56), generator=generator)
    return image.to(dtype), words.to(dtype), l_mask, target


@pytest.fixture
def calls(monkeypatch):
    """Counts of SwinBlock and PWAM forward runs (module hooks do not fire when checkpoint recomputes)."""
    counts = {"block": 0, "fusion": 0}
    for kind, cls in (("block", SwinBlock), ("fusion", PWAM)):
        def counted(self, *args, kind=kind, forward=cls.forward):
            counts[kind] += 1
            return forward(self, *args)
        monkeypatch.setattr(cls, "forward", counted)
    return counts


def train_step(model, enable, seed=123):
    """Logits and gradients by name."""
    model.backbone.set_grad_checkpointing(enable)
    model.zero_grad(set_to_none=True)
    image, words, l_mask, target = inputs(model.classifier.conv1_1.weight.dtype)
    torch.manual_seed(seed)
    logits = model(image, words, l_mask)
    torch.nn.functional.cross_entropy(logits, target).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_outputs_and_gradients_with_drop_path_and_dropout(dtype, calls):
    torch.manual_seed(0)
    model = build_lavt(**TINY, text_dim=12, drop_path_rate=0.3, fusion_drop=0.2).to(dtype).train()
    with torch.no_grad():
        model.classifier.conv1_1.weight.mul_(100)  # large enough logits for gradients to matter
    plain_logits, plain_grads = train_step(model, enable=False)
    assert calls == {"block": 8, "fusion": 4}
    logits, grads = train_step(model, enable=True)
    assert calls == {"block": 8 + 16, "fusion": 4 + 8}  # each ran again in the backward pass
    other_seed_logits = train_step(model, enable=True, seed=7)[0]
    # The randomness matters (another seed changes the output), yet is replayed exactly.
    assert (other_seed_logits - plain_logits).abs().max() > 1e-3
    tolerance = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(logits, plain_logits, **tolerance)
    assert grads.keys() == plain_grads.keys() and len(grads) > 100
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], **tolerance, msg=name)


def test_builder_option_and_inference_without_recomputation():
    torch.manual_seed(0)
    model = build_lavt(**TINY, text_dim=12, checkpoint_activations=True).eval()
    assert all(stage.grad_checkpointing for stage in model.backbone.layers)
    assert not any(stage.grad_checkpointing for stage in build_lavt(**TINY, text_dim=12).backbone.layers)
    image, words, l_mask, _ = inputs()
    with torch.no_grad():
        checkpointed = model(image, words, l_mask)
        model.backbone.set_grad_checkpointing(False)
        plain = model(image, words, l_mask)
    assert torch.equal(checkpointed, plain)
