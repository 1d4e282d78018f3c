"""One unit convention for the JSON files (metrics.JSON_UNITS): fractions, never percent."""
import argparse
import importlib.util
import json
import os

import metrics
import test as test_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_json_holds_the_summary_fractions(tmp_path):
    records = [{"I": 30, "U": 40}, {"I": 0, "U": 10}, {"I": 45, "U": 50}]
    summary = metrics.summarize(records)
    args = argparse.Namespace(resume="model.pth", model="lavt", swin_type="nano", dataset="refcoco", splitBy="unc",
                              split="val", eval_protocol="resized", img_size=64)
    test_script.write_results(tmp_path / "r.json", args, summary, 1.234)
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["units"] == metrics.JSON_UNITS and "fractions" in written["units"]
    assert written["mean_iou"] == summary["mean_iou"] == (0.75 + 0 + 0.9) / 3
    assert written["overall_iou"] == 75 / 100 and written["precision@0.5"] == 2 / 3
    assert written["seconds"] == 1.23


def test_probe_indicators_are_written_as_fractions():
    probes = load_tool("probes")
    results = {name: {"mean_iou": value, "overall_iou": value, "num_samples": 4} for name, value in
               (("clean", 0.6), ("clean, swap objects", 0.5), ("swap", 0.2), ("category", 0.3), ("empty", 0.15),
                ("shuffle", 0.55), ("drop-category", 0.4))}
    results["counterfactual"] = {"mean_iou": 0.0, "overall_iou": 0.0, "num_samples": 4, "false_positive_rate": 0.75}
    found = probes.indicators(results)
    assert abs(found["reading gap (clean - swap, same objects)"] - 30) < 1e-9  # points, for the Markdown table
    stored = probes.indicators_as_fractions(found)
    assert abs(stored["reading gap (clean - swap, same objects)"] - 0.3) < 1e-9
    assert abs(stored["order sensitivity (clean - shuffle)"] - 0.05) < 1e-9
    assert abs(stored["category reliance (category / clean)"] - 0.5) < 1e-9  # a ratio stays a ratio
    assert stored["counterfactual false-positive rate"] == 0.75
    assert "| counterfactual false-positive rate (%) | 75.00 |" in probes.markdown(results, found)
