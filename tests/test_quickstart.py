"""The quickstart script end to end at toy size: every report file is written and consistent."""
import json
import os
import re
import subprocess
import sys

import pytest

from lib.checkpoint_io import load_checkpoint_file
from tools.quickstart import RECIPE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_writes_report_curve_and_overlays(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, "tools/quickstart.py", "--out", str(out), "--num-images", "40", "--gen-img-size", "64",
           "--epochs", "2", "--batch-size", "8", "--drop-path", "0.1"]
    # One thread: on a loaded 2-core machine, two spin-waiting threads made this run 6x slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"val", "testA", "testB", "testC", "val, swapped expressions", "val, the mask alone"}
    val, swapped = report["results"]["val"], report["results"]["val, swapped expressions"]
    assert 0 < swapped["num_samples"] <= val["num_samples"]
    assert report["swap_drop_mean_iou"] == round(val["mean_iou"] - swapped["mean_iou"], 4)  # fractions
    assert sum(v["num_samples"] for v in report["val_by_expression_type"].values()) == val["num_samples"]
    alone = report["results"]["val, the mask alone"]  # the head's rejections score 0 in "val" only
    assert alone["num_samples"] == val["num_samples"] and alone["mean_iou"] >= val["mean_iou"]
    rows = [json.loads(line) for line in (out / "predictions" / "val" / "predictions.jsonl").open()]
    mask_ious = [r["I"] / r["U"] if r["U"] else 0.0 for r in rows]
    assert abs(alone["mean_iou"] - sum(mask_ious) / len(rows)) < 1e-9
    assert abs(val["mean_iou"] - sum(0.0 if r["no_target_pred"] else m for r, m in zip(rows, mask_ious)) / len(rows)) < 1e-9
    assert alone["rejected_by_head"] == sum(bool(r["no_target_pred"]) for r in rows) / len(rows)
    probes = report["probes"]
    assert set(probes) == {"clean", "clean, swap objects", "swap", "category", "empty", "shuffle", "drop-category",
                           "counterfactual"}
    assert probes["clean"]["num_samples"] == val["num_samples"] and probes["swap"] == swapped
    gap = report["probe_indicators"]["reading gap (clean - swap, same objects)"]
    assert abs(gap - (probes["clean, swap objects"]["mean_iou"] - swapped["mean_iou"])) < 1e-9
    assert 0 <= report["probe_indicators"]["counterfactual false-positive rate"] <= 1
    for name in ("results.md", "probes.md", "curve.png", "best_predictions.png", "worst_predictions.png",
                 "model_best_quickstart.pth"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "results.md").read_text()
    for expected in ("percent", "testC", "Language check: " + ("passed" if gap >= 10 else "NOT passed"),
                     "ONE randomly drawn expression", "## Best val predictions", "## Worst val predictions",
                     "counterfactual false-positive rate", "Trained against the keyword shortcut (`--negative-prob 0.1"):
        assert expected in text, expected
    assert "Outputs in" in result.stdout
    checkpoint = load_checkpoint_file(str(out / "model_best_quickstart.pth"))
    assert checkpoint["args"].drop_path_rate == 0.1 and checkpoint["args"].batch_size == 8  # the recipe reached train.py
    assert checkpoint["args"].negative_prob == 0.1 and checkpoint["args"].no_target_grad_scale == 0.1
    assert RECIPE["mha"] == "4-4-4-4" and checkpoint["args"].mha == RECIPE["mha"]  # four fusion heads a stage
    # The ramp reached the scheduler: the rate printed after the first step is 2 / N of the poly rate (N steps an epoch).
    steps, first_lr = re.search(r"Epoch: \[0\] \[\s*0/(\d+)\].*?lr: (\S+)", result.stdout).groups()
    steps = int(steps)
    assert steps > 2  # with 2 steps an epoch the ramp's first rate would equal the poly rate
    expected = RECIPE["lr"] * (2 / steps) * (1 - 1 / (2 * steps)) ** 0.9
    assert RECIPE["lr_warmup_epochs"] == 1 and float(first_lr) == pytest.approx(expected, rel=1e-2)
    assert any(key.startswith("no_target_head.") for key in checkpoint["model"])


def test_negative_prob_zero_trains_without_the_remedy(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO, "tools"))
    import quickstart

    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--negative-prob", "0"])
    assert quickstart.remedy_flags(quickstart.parse_args()) == []
    monkeypatch.setattr(sys, "argv", ["quickstart.py"])
    flags = quickstart.remedy_flags(quickstart.parse_args())
    assert flags[flags.index("--negative-prob") + 1] == "0.1" and "--no-target-head" in flags
    assert flags[flags.index("--no-target-grad-scale") + 1] == "0.1"
