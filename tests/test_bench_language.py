"""bench/bench_language.py's head threshold: the fewest counterfactual false positives at a clean floor."""
import math

import pytest

from bench.bench_language import head_trade_off


def row(iou, logit):
    return {"I": iou * 10, "U": 10, "no_target_logit": logit}


def test_threshold_keeps_the_clean_floor_and_rejects_the_most_counterfactuals():
    clean = [row(1.0, -2.0), row(0.8, -1.0), row(0.6, 0.5), row(0.4, 3.0)]  # mask-alone mean 0.7
    counterfactual = [row(0.0, v) for v in (-1.5, 0.0, 1.0, 2.0, 4.0)]
    best = head_trade_off(clean, counterfactual, floor=0.6)
    # Rejecting the 0.4 sample (threshold < 3) keeps 0.6; rejecting the 0.6 one as well (threshold < 0.5) would not.
    assert best["clean_mean_iou"] == pytest.approx(0.6) and best["false_positive_rate"] == pytest.approx(2 / 5)
    assert 0.5 <= best["threshold"] < 1.0  # counterfactuals at or below it are the false positives
    never = head_trade_off(clean, counterfactual, floor=0.7)  # only "never reject a clean one" keeps 0.7
    assert never["clean_mean_iou"] == pytest.approx(0.7) and never["false_positive_rate"] == pytest.approx(4 / 5)
    assert head_trade_off(clean, counterfactual, floor=0.71) is None
    anything = head_trade_off(clean, counterfactual, floor=0.0)  # no floor: the first threshold rejecting every counterfactual
    assert anything["false_positive_rate"] == 0.0 and anything["clean_mean_iou"] == pytest.approx(0.25)
    assert math.isinf(head_trade_off(clean, counterfactual, floor=0.7)["threshold"]) is False


def test_budget_and_swin_type_reach_every_command():
    from bench.bench_language import parse_args
    from bench.training_runs import model_flags

    tiny = parse_args(["--budget", "tiny", "--out", "/tmp/unused"])
    assert tiny.swin_type == "nano" and tiny.epochs == 1
    flags = model_flags("/tmp/unused", "synref", parse_args(["--swin-type", "tiny", "--epochs", "3"]))
    assert flags[flags.index("--swin_type") + 1] == "tiny"


def test_cross_fitted_threshold_is_scored_on_the_half_it_was_not_chosen_on():
    from bench.bench_language import cross_fitted_trade_off

    def ref_row(ref_id, iou, logit):
        return {**row(iou, logit), "ref_id": ref_id}

    # Even refs: rejecting the clean row at logit 0 is free (its mask scores 0), so tuned there the threshold is -2.
    # Odd refs: the clean row at logit 0 is a good mask, so tuned there it is 0 (the counterfactual at 1 is still out).
    clean = [ref_row(0, 1.0, -2.0), ref_row(2, 0.0, 0.0), ref_row(1, 0.5, -2.0), ref_row(3, 0.8, 0.0)]
    counterfactual = [ref_row(4, 0.0, -1.0), ref_row(5, 0.0, 1.0)]
    fitted = cross_fitted_trade_off(clean, counterfactual, floor=0.5)
    assert fitted["thresholds"] == [0.0, -2.0]  # the even half decided by the odd half's choice, and back
    # The odd half, at -2, loses its 0.8 mask: pooled clean (1 + 0 + 0.5 + 0) / 4, below the floor it was tuned for.
    assert fitted["clean_mean_iou"] == pytest.approx(0.375)
    assert fitted["false_positive_rate"] == pytest.approx(0.5)  # the even counterfactual (-1) passes at 0
    in_sample = head_trade_off(clean, counterfactual, floor=0.5)  # tuned on all of it: keeps every clean mask
    assert in_sample["clean_mean_iou"] == pytest.approx(0.575)
    assert cross_fitted_trade_off(clean, counterfactual, floor=0.6) is None  # the even half never reaches 0.6


def test_standard_budget_fine_tunes_the_quickstarts_shipped_backbone():
    import os

    from bench.training_runs import BUDGETS, REPO
    from tools.quickstart import RECIPE

    # The benchmarks' tables (docs/benchmarks.md) were measured from the quickstart's backbone: a renamed
    # or dropped file must fail here, not as a training run half an hour in.
    pretrained = BUDGETS["standard"]["pretrained"]
    assert pretrained == RECIPE["pretrained"]
    assert os.path.isfile(os.path.join(REPO, pretrained))
