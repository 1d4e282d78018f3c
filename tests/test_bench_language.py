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
