"""bench/bench_generalized.py's held-out threshold: each half of val decided by the other half's threshold."""
import pytest

from bench.bench_generalized import cross_fitted_head


def record(no_target_gt, logit):
    return {"I": 0 if no_target_gt else 8, "U": 10, "pred_pixels": 9, "no_target_gt": no_target_gt,
            "no_target_pred": logit > 0, "no_target_logit": logit}


def test_each_half_is_decided_by_the_threshold_of_the_other():
    # First half: targets at logits 0, 1 (a threshold keeping both: 1); second half: targets at 5, 6 (threshold 6).
    first = [record(False, 0.0), record(False, 1.0), record(True, 3.0), record(True, 7.0)]
    second = [record(False, 5.0), record(False, 6.0), record(True, 2.0), record(True, 8.0)]
    fitted = cross_fitted_head(first + second, min_t_acc=1.0)
    assert fitted["thresholds"] == [6.0, 1.0]
    # First half at 6: targets kept, no-target 3 missed, 7 caught; second half at 1: both targets
    # rejected, no-target 2 and 8 caught.
    assert fitted["T-acc"] == pytest.approx(2 / 4) and fitted["N-acc"] == pytest.approx(3 / 4)


def test_default_recipes_parse():
    from bench.bench_generalized import RECIPES, parse_args

    assert all("," not in name for name in RECIPES)  # --recipes is a comma-separated list of these names
    assert parse_args([]).recipes == list(RECIPES)
