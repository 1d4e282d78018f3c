"""train.py and test.py end to end on a generated generalized (gRefCOCO-layout) set, with and
without the no-target head: gIoU / cIoU / N-acc / T-acc reported, predictions carry the flags."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # train.py and test.py in subprocesses


@pytest.fixture(scope="module")
def gsynref(generated_set):
    return str(generated_set(generalized=True, dataset="gsynref", num_images=16, img_size=64, seed=5))


def run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("head", [False, True])
def test_generalized_set_trains_and_evaluates(gsynref, tmp_path, head):
    flags = ["--device", "cpu", "--swin_type", "nano", "--ck_bert", "minilm", "--bert_tokenizer", "minilm",
             "--dataset", "gsynref", "--refer_data_root", gsynref, "--img_size", "64", "--window-size", "4",
             "--workers", "0", *(["--no-target-head"] if head else [])]
    run(["train.py", *flags, "--batch-size", "8", "--epochs", "1", "--bert-trainable-layers", "0",
         "--model_id", "g", "--run-dir", str(tmp_path / "run"), "--output-dir", str(tmp_path)])
    epoch = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"val_gIoU", "val_cIoU", "val_N-acc", "val_T-acc"} <= set(epoch)
    result = run(["test.py", *flags, "--split", "val", "--resume", str(tmp_path / "model_best_g.pth"),
                  "--results-json", str(tmp_path / "r.json"), "--save-predictions", str(tmp_path / "pred")])
    assert "gIoU" in result.stdout and "N-acc" in result.stdout
    summary = json.loads((tmp_path / "r.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == summary["num_samples"] == summary["num_target_samples"] + summary["num_no_target_samples"]
    assert summary["num_no_target_samples"] == sum(r["no_target_gt"] for r in rows) > 0
    assert summary["TP"] == sum(r["no_target_gt"] and r["no_target_pred"] for r in rows)
    assert summary["gIoU"] == pytest.approx(sum(r["IoU"] for r in rows) / len(rows))  # fractions, as every JSON
    for row in rows:
        assert {"ref_id", "sentence_index", "sentence", "I", "U", "IoU", "no_target_gt", "no_target_pred"} <= set(row)
        assert (tmp_path / "pred" / row["mask"]).is_file()
