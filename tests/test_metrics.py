"""Hand-computed cases for the evaluation metrics (metrics.py), the losses (lib/criterion.py) and
the mixed-precision choice of the command line (cli.py)."""
import pytest
import torch

import cli
import metrics
from errors import UserInputError
from lib.criterion import build_criterion, soft_dice_loss


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


def test_unknown_loss_and_fp16_on_cpu_are_refused():
    with pytest.raises(ValueError, match="--loss"):
        build_criterion("focal")
    with pytest.raises(UserInputError, match="bf16"):
        cli.amp_dtype_for("fp16", torch.device("cpu"))
    assert cli.amp_dtype_for("bf16", torch.device("cpu")) is torch.bfloat16
    assert cli.amp_dtype_for("off", torch.device("cpu")) is None
