"""The optional no-target head: outputs, checkpoints with and without it, and its loss."""
import argparse
import math

import pytest
import torch

from lib.checkpoint import load_lavt_checkpoint
from lib.criterion import build_criterion, no_target_loss
from lib.no_target import NoTargetHead
from lib.referring_model import build_model
from lib.segmentation import build_lavt
from lib.state_dict import CheckpointError

TINY = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], text_dim=12)


def inputs(batch=2, size=64):
    torch.manual_seed(1)
    return torch.randn(batch, 3, size, size), torch.randn(batch, 12, 5), torch.ones(batch, 5, 1, dtype=torch.long)


def test_head_pools_both_maps_and_the_mask_margin():
    torch.manual_seed(0)
    head = NoTargetHead(4, 6, hidden_channels=3)
    top, hidden, logits = torch.randn(2, 4, 3, 5), torch.randn(2, 6, 12, 20), torch.randn(2, 2, 12, 20)
    margin = (logits[:, 1] - logits[:, 0]).flatten(1)
    pooled = torch.cat([top.mean((2, 3)), top.amax((2, 3)), hidden.mean((2, 3)), hidden.amax((2, 3)),
                        margin.mean(1, keepdim=True), margin.amax(1, keepdim=True)], 1)
    expected = head.mlp(torch.nn.functional.layer_norm(pooled, (22,), head.norm.weight, head.norm.bias)).squeeze(1)
    torch.testing.assert_close(head(top, hidden, logits), expected)
    moved_top, moved_hidden, moved_logits = top.clone(), hidden.clone(), logits.clone()
    moved_top[:, :, 0, 0], moved_top[:, :, 2, 4] = top[:, :, 2, 4], top[:, :, 0, 0]
    moved_hidden[..., 0, 0], moved_hidden[..., 11, 19] = hidden[..., 11, 19], hidden[..., 0, 0]
    moved_logits[..., 0, 0], moved_logits[..., 11, 19] = logits[..., 11, 19], logits[..., 0, 0]
    # where a match is does not matter
    torch.testing.assert_close(head(moved_top, moved_hidden, moved_logits), head(top, hidden, logits))
    swapped = logits.flip(1)  # the object and background classes exchanged: another margin, another answer
    assert not torch.allclose(head(top, hidden, swapped), head(top, hidden, logits))


def test_decoder_features_are_what_the_logits_are_predicted_from():
    torch.manual_seed(0)
    classifier = build_lavt(**TINY).classifier.eval()
    maps = [torch.randn(2, 8 * 2 ** i, 16 // 2 ** i, 16 // 2 ** i) for i in range(4)]  # x_c1 .. x_c4
    logits, hidden = classifier.forward_with_features(*maps[::-1])
    assert torch.equal(logits, classifier(*maps[::-1])) and hidden.shape == (2, 32, 16, 16)
    torch.testing.assert_close(classifier.conv1_1(hidden), logits)


def test_forward_keeps_returning_logits():
    torch.manual_seed(0)
    plain, with_head = build_lavt(**TINY).eval(), build_lavt(**TINY, no_target_head=True).eval()
    with_head.load_state_dict({**plain.state_dict(), **{k: v for k, v in with_head.state_dict().items()
                                                        if k.startswith("no_target_head.")}})
    with torch.no_grad():
        logits = plain(*inputs())
        outputs = with_head.forward_outputs(*inputs())
        assert torch.equal(with_head(*inputs()), outputs["logits"])
    assert plain.no_target_head is None and set(plain.forward_outputs(*inputs())) == {"logits"}
    torch.testing.assert_close(outputs["logits"], logits)  # the head does not change the masks
    assert outputs["no_target_logits"].shape == (2,)


def test_head_weights_have_their_own_prefix():
    plain, with_head = build_lavt(**TINY).state_dict(), build_lavt(**TINY, no_target_head=True).state_dict()
    extra = set(with_head) - set(plain)
    assert set(plain) <= set(with_head) and extra and all(k.startswith("no_target_head.") for k in extra)


def test_checkpoints_load_strictly_each_into_its_model():
    torch.manual_seed(0)
    released = {"model": build_lavt(**TINY).state_dict()}
    ours = {"model": build_lavt(**TINY, no_target_head=True).state_dict()}
    load_lavt_checkpoint(build_lavt(**TINY), released)
    target = build_lavt(**TINY, no_target_head=True)
    load_lavt_checkpoint(target, ours)
    assert all(torch.equal(v, ours["model"][k]) for k, v in target.state_dict().items())
    with pytest.raises(CheckpointError, match="no_target_head"):
        load_lavt_checkpoint(build_lavt(**TINY, no_target_head=True), released)
    with pytest.raises(CheckpointError, match="no_target_head"):
        load_lavt_checkpoint(build_lavt(**TINY), ours)


def test_head_gets_gradients():
    model = build_lavt(**TINY, no_target_head=True).train()
    outputs = model.forward_outputs(*inputs())
    targets = torch.zeros(2, 64, 64, dtype=torch.long)
    targets[0, 10:20, 10:20] = 1
    build_criterion("ce")(outputs, targets).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.no_target_head.parameters())


def test_grad_scale_sets_how_much_the_head_trains_the_shared_model():
    targets = torch.zeros(2, 64, 64, dtype=torch.long)
    targets[0, 10:20, 10:20] = 1
    grads = {}
    for scale in (1.0, 0.5, 0.0):
        torch.manual_seed(0)
        model = build_lavt(**TINY, no_target_head=True, no_target_grad_scale=scale).train()
        outputs = model.forward_outputs(*inputs())
        no_target_loss(outputs["no_target_logits"], targets).backward()  # the head's loss alone
        grads[scale] = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    shared = [n for n in grads[1.0] if not n.startswith("no_target_head.")]
    head = [n for n in grads[1.0] if n.startswith("no_target_head.")]
    assert any(grads[1.0][n] is not None and grads[1.0][n].abs().sum() > 0 for n in shared)
    assert all(grads[0.0][n] is None for n in shared)  # a probe: nothing but the head learns from its loss
    for n in shared:
        if grads[1.0][n] is not None:
            torch.testing.assert_close(grads[0.5][n], 0.5 * grads[1.0][n])
    for n in head:  # the head itself learns the same at every scale
        torch.testing.assert_close(grads[0.0][n], grads[1.0][n])
        torch.testing.assert_close(grads[0.5][n], grads[1.0][n])


def test_grad_scale_reaches_the_head_from_training_args():
    args = argparse.Namespace(model="lavt", swin_type="nano", window_size=4, ck_bert="minilm",
                              bert_tokenizer="minilm", img_size=64, no_target_head=True, no_target_grad_scale=0.0,
                              pretrained_swin_weights="")
    assert build_model(args, pretrained=False).model.no_target_head.input_grad_scale == 0.0
    del args.no_target_grad_scale  # the args of a checkpoint that predates the option
    assert build_model(args, pretrained=False).model.no_target_head.input_grad_scale == 1.0


@pytest.mark.parametrize("variant", ["lavt", "lavt_one"])
def test_referring_model_outputs(variant):
    args = argparse.Namespace(model=variant, swin_type="nano", window_size=4, ck_bert="minilm", mha="",
                              fusion_drop=0.0, pretrained_swin_weights="", no_target_head=True)
    model = build_model(args, pretrained=False).eval()
    ids = torch.tensor([[101, 2417, 102, 0], [101, 2300, 2417, 102]])
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 64, 64), ids, (ids != 0).long())
    assert outputs["logits"].shape == (2, 2, 64, 64) and outputs["no_target_logits"].shape == (2,)
    model.model.no_target_head = None  # as built without --no-target-head
    with torch.no_grad():
        assert set(model(torch.randn(2, 3, 64, 64), ids, (ids != 0).long())) == {"logits"}


def bce(logit, label):
    return -(label * math.log(1 / (1 + math.exp(-logit))) + (1 - label) * math.log(1 - 1 / (1 + math.exp(-logit))))


def test_no_target_loss_by_hand():
    targets = torch.zeros(3, 4, 4, dtype=torch.long)
    targets[1, 0, 0] = 1  # one object pixel: a target
    logits = torch.tensor([2.0, -1.0, 0.5])  # empty, target, empty
    expected = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 1)) / 3
    assert no_target_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_criterion_adds_weighted_term_only_with_a_head(weight):
    torch.manual_seed(0)
    mask_logits = torch.randn(2, 2, 4, 4)
    targets = torch.zeros(2, 4, 4, dtype=torch.long)
    targets[0, 1:3, 1:3] = 1
    head_logits = torch.tensor([0.3, 1.2])
    criterion = build_criterion("ce+dice", no_target_weight=weight)
    mask_only = criterion({"logits": mask_logits}, targets)
    assert mask_only.item() == pytest.approx(build_criterion("ce+dice")({"logits": mask_logits}, targets).item())
    combined = criterion({"logits": mask_logits, "no_target_logits": head_logits}, targets)
    # With the head, the mask terms see only sample 0 (sample 1 has no target: the head's business).
    mask_of_targets = build_criterion("ce+dice")({"logits": mask_logits[:1]}, targets[:1]).item()
    assert mask_of_targets != pytest.approx(mask_only.item())
    expected = mask_of_targets + weight * (bce(0.3, 0) + bce(1.2, 1)) / 2
    assert combined.item() == pytest.approx(expected, rel=1e-6)


def test_with_a_head_the_mask_gets_no_gradient_from_no_target_samples():
    torch.manual_seed(0)
    mask_logits = torch.randn(3, 2, 4, 4, requires_grad=True)
    targets = torch.zeros(3, 4, 4, dtype=torch.long)
    targets[2, :2] = 1
    head_logits = torch.zeros(3, requires_grad=True)
    build_criterion("ce+dice")({"logits": mask_logits, "no_target_logits": head_logits}, targets).backward()
    assert mask_logits.grad[:2].abs().max().item() == 0.0 and mask_logits.grad[2].abs().max().item() > 0.0
    assert head_logits.grad.abs().min().item() > 0.0  # the head learns from all three
    only_empty = build_criterion("ce+dice").terms({"logits": mask_logits[:2], "no_target_logits": head_logits[:2]},
                                                  targets[:2])
    assert only_empty["ce"].item() == only_empty["dice"].item() == 0.0 and only_empty["no_target"].item() > 0
    released = build_criterion("ce")({"logits": mask_logits[:2]}, targets[:2])  # no head: the mask learns "empty"
    assert released.item() > 0


class FixedOutputs(torch.nn.Module):
    """Stands in for ReferringModel: an empty mask for every sample, and the given head logits."""

    def __init__(self, head_logits=None):
        super().__init__()
        self.head_logits = head_logits

    def forward(self, images, input_ids, attention_mask):
        logits = torch.zeros(images.shape[0], 2, *images.shape[-2:])
        logits[:, 0] = 1.0  # background wins everywhere
        if self.head_logits is None:
            return {"logits": logits}
        return {"logits": logits, "no_target_logits": torch.tensor(self.head_logits[: images.shape[0]])}


def test_evaluate_records_no_target_flags(tmp_path):
    import engine
    from data.dataset_refer_bert import ReferDataset
    from data.evaluation import build_eval_loader
    from metrics import summarize_generalized
    from tests.grefer_set import make_args, write_set
    from transforms import get_transform

    dataset = ReferDataset(make_args(write_set(tmp_path)), image_transforms=get_transform(32), split="val",
                           eval_mode=True)  # ref 3 (a target, 1 sentence), ref 4 (no target, 3 sentences)
    loader = build_eval_loader(dataset, max_sentences=16)
    records = engine.evaluate(FixedOutputs(), loader, torch.device("cpu"))
    assert [r["no_target_gt"] for r in records] == [False, True, True, True]
    assert [r["no_target_pred"] for r in records] == [True] * 4  # empty masks
    assert records[0]["U"] > 0 and all(r["pred_pixels"] == 0 for r in records)
    records = engine.evaluate(FixedOutputs([-1.0, 1.0, -2.0, 3.0]), loader, torch.device("cpu"))
    assert [r["no_target_pred"] for r in records] == [False, True, False, True]
    summary = summarize_generalized(records)
    assert summary["N-acc"] == pytest.approx(2 / 3) and summary["T-acc"] == 1.0
