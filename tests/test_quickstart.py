"""The quickstart script end to end at toy size: every report file is written and consistent."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_writes_report_curve_and_overlays(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, "tools/quickstart.py", "--out", str(out), "--num-images", "40", "--gen-img-size", "64",
           "--epochs", "2", "--batch-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"val", "testA", "testB", "testC", "val, swapped expressions"}
    val, swapped = report["results"]["val"], report["results"]["val, swapped expressions"]
    assert 0 < swapped["num_samples"] <= val["num_samples"]
    assert report["swap_drop_mean_iou_points"] == round(100 * (val["mean_iou"] - swapped["mean_iou"]), 2)
    assert sum(v["num_samples"] for v in report["val_by_expression_type"].values()) == val["num_samples"]
    for name in ("results.md", "curve.png", "overlays.png", "model_best_quickstart.pth"):
        assert (out / name).stat().st_size > 0, name
    assert "Outputs in" in result.stdout
