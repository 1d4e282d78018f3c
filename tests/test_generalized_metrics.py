"""Hand-computed cases for the generalized (gRefCOCO / ReLA) metrics of metrics.py."""
import pytest
import torch

from metrics import (
    format_generalized_report,
    generalized_sample,
    head_threshold_for_t_acc,
    sample_record,
    summarize_generalized,
    with_head_threshold,
)


def rec(i, u, gt, pred):
    return {"I": i, "U": u, "no_target_gt": gt, "no_target_pred": pred}


# One sample per branch of ReLA's table, plus more target samples for Pr@k; target masks have 10 pixels.
BRANCHES = [
    rec(0, 0, True, True),     # TP: no-target sample, said empty -> IoU 1, adds 0/0
    rec(0, 5, True, False),    # FN: no-target sample with a 5-pixel mask -> IoU 0, adds 0/5
    rec(0, 10, False, True),   # FP: target sample, empty prediction -> IoU 0, adds 0/10
    rec(8, 10, False, False),  # TN: IoU 0.8
    rec(6, 12, False, True),   # FP with a mask (the head said empty): I := 0, adds 0/12
    rec(9, 10, False, False),  # TN: 0.9
    rec(7, 10, False, False),  # TN: 0.7
]


def test_every_branch_of_the_table():
    assert [generalized_sample(r) for r in BRANCHES] == [
        ("TP", 0, 0, 1.0), ("FN", 0, 5, 0.0), ("FP", 0, 10, 0.0), ("TN", 8, 10, 0.8), ("FP", 0, 12, 0.0),
        ("TN", 9, 10, 0.9), ("TN", 7, 10, 0.7)]


def test_summary_by_hand():
    s = summarize_generalized(BRANCHES)
    assert (s["num_samples"], s["num_target_samples"], s["num_no_target_samples"]) == (7, 5, 2)
    assert (s["TP"], s["FN"], s["FP"], s["TN"]) == (1, 1, 2, 3)
    assert s["gIoU"] == pytest.approx((1 + 0.8 + 0.9 + 0.7) / 7)
    assert s["cIoU"] == pytest.approx((8 + 9 + 7) / (5 + 10 + 10 + 12 + 10 + 10))
    assert s["N-acc"] == pytest.approx(1 / 2) and s["T-acc"] == pytest.approx(3 / 5)
    assert s["Pr@0.7"] == pytest.approx(3 / 5)  # 0.8, 0.9, 0.7 of the five target samples
    assert s["Pr@0.8"] == pytest.approx(2 / 5) and s["Pr@0.9"] == pytest.approx(1 / 5)
    # Classic metrics: the target samples' own masks (the FP with a mask keeps 6/12).
    assert s["mean_iou"] == pytest.approx((0 + 0.8 + 0.5 + 0.9 + 0.7) / 5)
    assert s["overall_iou"] == pytest.approx((8 + 6 + 9 + 7) / (10 + 10 + 12 + 10 + 10))
    assert [s[f"precision@{k}"] for k in (0.5, 0.6, 0.7, 0.8, 0.9)] == pytest.approx([4 / 5, 3 / 5, 3 / 5, 2 / 5, 1 / 5])


def test_no_target_sample_said_present_with_an_empty_mask():
    """The head may say "target" while the mask is empty: IoU 0, adds 0/0 (U is 0)."""
    s = summarize_generalized([rec(0, 0, True, False), rec(5, 10, False, False)])
    assert s["gIoU"] == pytest.approx(0.25) and s["cIoU"] == pytest.approx(0.5) and s["N-acc"] == 0.0


def test_without_no_target_samples_n_acc_is_undefined():
    s = summarize_generalized(BRANCHES[2:])
    assert s["N-acc"] is None and s["num_no_target_samples"] == 0
    assert s["T-acc"] == pytest.approx(3 / 5) and s["gIoU"] == pytest.approx((0.8 + 0.9 + 0.7) / 5)
    assert "N-acc = n/a" in format_generalized_report(s)


def test_only_correct_no_target_samples():
    s = summarize_generalized([rec(0, 0, True, True)] * 3)
    assert s["gIoU"] == 1.0 and s["N-acc"] == 1.0
    assert s["cIoU"] is None and s["T-acc"] is None and s["Pr@0.7"] is None and s["mean_iou"] is None


def test_empty_record_list():
    s = summarize_generalized([])
    assert s["num_samples"] == 0 and s["TP"] == s["FN"] == s["FP"] == s["TN"] == 0
    assert all(s[k] is None for k in ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.9", "mean_iou", "overall_iou"))
    assert "gIoU = n/a" in format_generalized_report(s)


def test_report_in_percent():
    report = format_generalized_report(summarize_generalized(BRANCHES))
    assert "gIoU = 48.57" in report and "cIoU = 42.11" in report
    assert "N-acc = 50.00" in report and "T-acc = 60.00" in report and "Pr@0.8 = 40.00" in report
    assert "Mean IoU = 58.00" in report and "overall IoU = 57.69" in report


def masks(rows):
    return torch.tensor(rows, dtype=torch.int64)


TARGET = masks([[1, 1, 0], [1, 0, 0]])


def test_sample_record_from_masks():
    pred = masks([[1, 0, 0], [1, 1, 0]])
    assert sample_record(pred, TARGET) == {"I": 2, "U": 4, "pred_pixels": 3, "no_target_gt": False,
                                           "no_target_pred": False}
    empty = torch.zeros_like(TARGET)
    record = sample_record(empty, TARGET)
    assert record["no_target_pred"] and (record["I"], record["U"], record["pred_pixels"]) == (0, 3, 0)
    record = sample_record(pred, empty, no_target_gt=True)
    assert record["no_target_gt"] and not record["no_target_pred"] and record["U"] == record["pred_pixels"] == 3


@pytest.mark.parametrize("pixels, threshold, expected", [(2, 1, False), (2, 2, False), (2, 3, True), (0, 1, True)])
def test_pixel_threshold(pixels, threshold, expected):
    pred = torch.zeros(4, 4, dtype=torch.int64)
    pred.view(-1)[:pixels] = 1
    assert sample_record(pred, pred, no_target_pixels=threshold)["no_target_pred"] is expected


@pytest.mark.parametrize("logit, expected", [(2.5, True), (-0.1, False), (torch.tensor(0.3), True)])
def test_head_logit_decides_whatever_the_mask(logit, expected):
    full, empty = torch.ones_like(TARGET), torch.zeros_like(TARGET)
    assert sample_record(full, TARGET, no_target_logit=logit)["no_target_pred"] is expected
    assert sample_record(empty, TARGET, no_target_logit=logit)["no_target_pred"] is expected


def head_record(logit, no_target_gt):
    mask = torch.zeros_like(TARGET) if no_target_gt else TARGET
    return sample_record(TARGET, mask, no_target_gt=no_target_gt, no_target_logit=logit)


def test_head_logit_is_kept_for_rescoring_and_masks_alone_have_none():
    assert head_record(torch.tensor(-1.25), False)["no_target_logit"] == -1.25
    assert "no_target_logit" not in sample_record(TARGET, TARGET)


def test_val_tuned_head_threshold_keeps_t_acc_and_catches_the_rest():
    """Ten target samples with logits 0..9 and four no-target samples: the threshold that keeps
    T-acc >= 0.9 is the 9th smallest target logit; no-target samples above it are caught."""
    targets = [head_record(float(v), False) for v in range(10)]
    nothing = [head_record(v, True) for v in (8.5, 3.0, 12.0, 9.5)]
    records = targets + nothing
    threshold = head_threshold_for_t_acc(records, 0.9)
    assert threshold == 8.0
    summary = summarize_generalized(with_head_threshold(records, threshold))
    assert summary["T-acc"] == pytest.approx(0.9) and summary["N-acc"] == pytest.approx(3 / 4)
    assert summarize_generalized(with_head_threshold(records, 7.0))["T-acc"] == pytest.approx(0.8)
    assert head_threshold_for_t_acc(records, 1.0) == 9.0 and head_threshold_for_t_acc(records, 0.0) == 0.0
    # records decided by the mask (no head) keep their decision
    plain = sample_record(torch.zeros_like(TARGET), TARGET)
    assert with_head_threshold([plain], -100.0) == [plain]
    with pytest.raises(ValueError, match="no target samples"):
        head_threshold_for_t_acc(nothing, 0.9)


def test_on_classic_sets_a_head_that_says_nothing_scores_zero():
    """A target sample the head declares empty gives the user no mask: IoU 0 (ReLA's FP rule), however
    good the mask was; the mask alone is still available (head_decides=False), and masks without a
    head are scored as before."""
    from metrics import summarize

    rejected, accepted = head_record(1.5, False), head_record(-1.5, False)
    assert rejected["I"] == accepted["I"] == 3
    assert summarize([rejected, accepted])["mean_iou"] == pytest.approx(0.5)
    assert summarize([rejected, accepted], head_decides=False)["mean_iou"] == pytest.approx(1.0)
    assert summarize([rejected])["overall_iou"] == 0.0
    plain_empty = sample_record(torch.zeros_like(TARGET), TARGET)  # no head: the mask's own I and U
    assert plain_empty["no_target_pred"] and summarize([plain_empty])["mean_iou"] == 0.0
