"""Hand-computed cases for the evaluation metrics (metrics.py), the losses (lib/criterion.py) and
the mixed-precision choice of the command line (cli.py)."""
import pytest
import torch

import cli
import lib.criterion
import metrics
from errors import UserInputError
from lib.criterion import build_criterion, no_target_loss, soft_dice_loss, weighted_cross_entropy


def mask(rows):
    return torch.tensor(rows, dtype=torch.int64)


def records(pairs):
    return [{"I": i, "U": u} for i, u in pairs]


def test_intersection_union_partial_overlap():
    pred = mask([[1, 1, 0], [0, 1, 0]])
    target = mask([[0, 1, 1], [0, 1, 0]])
    assert metrics.intersection_union(pred, target) == (2, 4)


def test_empty_prediction_empty_target_and_both_empty():
    empty = torch.zeros(2, 2, dtype=torch.int64)
    full = torch.ones(2, 2, dtype=torch.int64)
    assert metrics.intersection_union(empty, full) == (0, 4)
    assert metrics.intersection_union(full, empty) == (0, 4)
    assert metrics.intersection_union(empty, empty) == (0, 0)


def test_summary_mean_overall_and_precision():
    # IoUs: 2/4 = 0.5, 0/4 = 0, 0/0 -> 0 (released rule), 9/10 = 0.9, 7/10 = 0.7
    summary = metrics.summarize(records([(2, 4), (0, 4), (0, 0), (9, 10), (7, 10)]))
    assert summary["num_samples"] == 5
    assert summary["mean_iou"] == pytest.approx((0.5 + 0 + 0 + 0.9 + 0.7) / 5)
    assert summary["overall_iou"] == pytest.approx(18 / 28)
    assert summary["precision@0.5"] == pytest.approx(3 / 5)
    assert summary["precision@0.6"] == pytest.approx(2 / 5)
    assert summary["precision@0.7"] == pytest.approx(2 / 5)  # 0.7 >= 0.7 counts
    assert summary["precision@0.8"] == pytest.approx(1 / 5)
    assert summary["precision@0.9"] == pytest.approx(1 / 5)


def test_summary_ignores_extra_record_fields():
    with_extras = [{"index": 3, "sentence_index": 1, "I": 1, "U": 2}, {"index": 0, "sentence_index": 0, "I": 3, "U": 3}]
    assert metrics.summarize(with_extras) == metrics.summarize(records([(1, 2), (3, 3)]))


def test_summary_of_nothing_is_zero_not_nan():
    summary = metrics.summarize([])
    assert summary["mean_iou"] == 0.0 and summary["overall_iou"] == 0.0


def test_report_prints_percent_like_released_test_script():
    text = metrics.format_report(metrics.summarize(records([(1, 2), (3, 4)])))
    assert "Mean IoU is 62.50" in text
    assert "precision@0.5 = 100.00" in text
    assert "precision@0.8 = 0.00" in text
    assert "overall IoU = 66.67" in text


def test_weighted_cross_entropy_matches_manual_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 3)
    target = torch.randint(0, 2, (2, 3, 3))
    loss = build_criterion("ce")({"logits": logits}, target)
    logp = logits.log_softmax(1)
    picked = logp.gather(1, target.unsqueeze(1)).squeeze(1)
    weights = torch.tensor([0.9, 1.1])[target]
    assert loss.item() == pytest.approx((-(weights * picked).sum() / weights.sum()).item(), rel=1e-6)


def test_dice_loss_is_zero_for_a_confident_perfect_prediction_and_high_when_wrong():
    target = torch.zeros(1, 4, 4, dtype=torch.int64)
    target[0, :2] = 1
    perfect = torch.stack([(1 - target) * 50.0, target * 50.0], dim=1).float()
    assert soft_dice_loss(perfect, target).item() < 1e-3
    assert soft_dice_loss(-perfect, target).item() > 0.9
    combined = build_criterion("ce+dice")({"logits": perfect}, target)
    assert combined.item() == pytest.approx(soft_dice_loss(perfect, target).item(), abs=1e-3)


def test_dice_loss_leaves_images_without_target_to_the_other_terms():
    """An empty target (a negative or no-target expression) adds nothing to the Dice term and gets no
    gradient from it; the Dice of the others is their own mean. Before, an empty target counted
    1 - 1 / (1 + sum p): near 1 for any realistic mask."""
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, requires_grad=True)
    target = torch.zeros(3, 8, 8, dtype=torch.int64)
    target[0, :3, :3] = 1
    target[2, 4:, 2:6] = 1
    mixed = soft_dice_loss(logits, target)
    kept = [0, 2]
    assert mixed.item() == pytest.approx(soft_dice_loss(logits[kept], target[kept]).item(), rel=1e-6)
    assert 0.0 < mixed.item() < 1.0
    mixed.backward()
    assert logits.grad[1].abs().max().item() == 0.0 and logits.grad[kept].abs().max().item() > 0.0

    nothing = torch.randn(2, 2, 8, 8, requires_grad=True)
    empty = soft_dice_loss(nothing, torch.zeros(2, 8, 8, dtype=torch.int64))
    empty.backward()
    assert empty.item() == 0.0 and nothing.grad is not None and nothing.grad.abs().max().item() == 0.0


def reference_loss(kind, outputs, target, no_target_weight=1.0):
    """The criterion as one expression, as it was written before it had named terms."""
    logits, mask_target = outputs["logits"].float(), target
    if "no_target_logits" in outputs:  # with a head, the mask learns from samples with a target only
        keep = (target == 1).flatten(1).any(dim=1)
        logits, mask_target = logits[keep], target[keep]
    mask_terms = {"ce": [weighted_cross_entropy], "dice": [soft_dice_loss],
                  "ce+dice": [weighted_cross_entropy, soft_dice_loss]}[kind]
    loss = sum(term(logits, mask_target) for term in mask_terms)
    if "no_target_logits" in outputs:
        loss = loss + no_target_weight * no_target_loss(outputs["no_target_logits"], target)
    return loss


@pytest.mark.parametrize("kind", ["ce", "ce+dice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_named_terms_give_the_single_expression_loss_and_gradient_bit_for_bit(kind, dtype):
    torch.manual_seed(0)
    target = torch.randint(0, 2, (3, 8, 8))
    target[1] = 0  # one no-target sample
    losses, grads = [], []
    for compute in (lambda o: build_criterion(kind, no_target_weight=0.3)(o, target),
                    lambda o: reference_loss(kind, o, target, no_target_weight=0.3)):
        torch.manual_seed(1)
        logits = torch.randn(3, 2, 8, 8).to(dtype).requires_grad_()
        head = torch.randn(3, requires_grad=True)
        for outputs in ({"logits": logits}, {"logits": logits, "no_target_logits": head}):
            loss = compute(outputs)
            losses.append(loss.detach())
            grads.append(torch.autograd.grad(loss, logits)[0])
    half = len(losses) // 2
    assert all(torch.equal(a, b) for a, b in zip(losses[:half], losses[half:], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(grads[:half], grads[half:], strict=True))


def test_criterion_names_its_terms_and_weights():
    torch.manual_seed(0)
    logits, target, head = torch.randn(2, 2, 4, 4), torch.randint(0, 2, (2, 4, 4)), torch.randn(2)
    criterion = build_criterion("ce+dice", no_target_weight=0.5)
    assert criterion.weight_dict == {"ce": 1.0, "dice": 1.0, "no_target": 0.5}
    assert list(criterion.terms({"logits": logits}, target)) == ["ce", "dice"]  # no head: no no-target term
    terms = criterion.terms({"logits": logits, "no_target_logits": head}, target)
    assert torch.equal(terms["ce"], weighted_cross_entropy(logits, target))
    assert torch.equal(terms["no_target"], no_target_loss(head, target))


def test_a_new_term_is_one_function_and_one_weight(monkeypatch):
    monkeypatch.setitem(lib.criterion.TERMS, "area", lambda outputs, targets: outputs["logits"].softmax(1)[:, 1].mean())
    logits, target = torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64)
    criterion = lib.criterion.Criterion({"ce": 1.0, "area": 2.0})
    terms = criterion.terms({"logits": logits}, target)
    assert terms["area"].item() == pytest.approx(0.5)
    assert criterion({"logits": logits}, target).item() == pytest.approx(terms["ce"].item() + 1.0)
    with pytest.raises(ValueError, match="unknown loss term"):
        lib.criterion.Criterion({"focal": 1.0})


def test_unknown_loss_and_fp16_on_cpu_are_refused():
    with pytest.raises(ValueError, match="--loss"):
        build_criterion("focal")
    with pytest.raises(UserInputError, match="bf16"):
        cli.amp_dtype_for("fp16", torch.device("cpu"))
    assert cli.amp_dtype_for("bf16", torch.device("cpu")) is torch.bfloat16
    assert cli.amp_dtype_for("off", torch.device("cpu")) is None
