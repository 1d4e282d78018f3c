"""The quickstart script end to end at toy size: every report file is written and consistent."""
import json
import os
import subprocess
import sys

import pytest

from lib.checkpoint_io import load_checkpoint_file

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
    assert set(report["results"]) == {"val", "testA", "testB", "testC", "val, swapped expressions"}
    val, swapped = report["results"]["val"], report["results"]["val, swapped expressions"]
    assert 0 < swapped["num_samples"] <= val["num_samples"]
    assert report["swap_drop_mean_iou"] == round(val["mean_iou"] - swapped["mean_iou"], 4)  # fractions
    assert sum(v["num_samples"] for v in report["val_by_expression_type"].values()) == val["num_samples"]
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
                     "counterfactual false-positive rate"):
        assert expected in text, expected
    assert "Outputs in" in result.stdout
    checkpoint = load_checkpoint_file(str(out / "model_best_quickstart.pth"))
    assert checkpoint["args"].drop_path_rate == 0.1 and checkpoint["args"].batch_size == 8  # the recipe reached train.py
