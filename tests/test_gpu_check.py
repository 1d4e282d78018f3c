"""bench/gpu_check.py: its CPU-side parts (the GPU run itself needs a CUDA machine)."""
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--work-dir", str(tmp_path / "work")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device is available" in done.stdout and "--device cpu" in done.stdout
    assert not (tmp_path / "work").exists()  # nothing generated or trained


def test_training_timer_and_out_of_memory_row(monkeypatch):
    gpu_check = load_gpu_check()
    spec = {"config": ("nano", 64, 4), "batch": 1, "accum": 2, "amp": "off", "checkpoint_activations": True}
    row = gpu_check.time_training(spec, torch.device("cpu"), steps=1)
    assert row["step_s"] > 0 and math.isclose(row["images_per_s"], 2 / row["step_s"])
    assert "| nano 64 w4 | 1 x 2 accumulated | off | checkpoint_activations |" == gpu_check.describe(spec)

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(gpu_check, "_time_training", out_of_memory)
    assert gpu_check.time_training(spec, torch.device("cpu"), steps=1) == {"error": "out of memory"}


def test_plan_covers_the_three_modes_and_the_large_options():
    gpu_check = load_gpu_check()
    config = gpu_check.plan(gpu_check.parse_args([]), torch.device("cuda"))
    assert config["modes"] == ["off", "bf16", "fp16"]
    specs = gpu_check.speed_specs(config)
    large = [s for s in specs if s["config"] == ("base", 480, 12)]
    # Batch 8 in one step is timed with the text encoder in the full-model rows (below).
    assert {(s["batch"] * s.get("accum", 1), s.get("accum", 1), s["checkpoint_activations"]) for s in large} == {
        (8, 4, False), (8, 4, True)}


# --------------------------------------------------------------------------- the full released model (issue 22)


def test_full_model_rows_cover_both_variants_three_precisions_and_checkpointing():
    gpu_check = load_gpu_check()
    config = gpu_check.plan(gpu_check.parse_args([]), torch.device("cuda"))
    assert config["full"] == ("base", 480, 12) and config["full_batch"] == 8 and config["eval_batch"] == 64
    assert config["text"] == {}  # BertConfig() defaults: BERT-base
    specs = gpu_check.full_model_specs(config)
    assert {(s["variant"], s["amp"], s["compile"], s["checkpoint_activations"]) for s in specs} == {
        (v, amp, compiled, ck) for v in ("lavt", "lavt_one") for amp, compiled in
        (("off", False), ("bf16", False), ("bf16", True)) for ck in (False, True)}
    assert [s["compile"] for s in specs] == [False] * 8 + [True] * 4  # a tight budget keeps the baselines
    cpu = gpu_check.plan(gpu_check.parse_args(["--device", "cpu", "--quick"]), torch.device("cpu"))
    assert not any(s["compile"] for s in gpu_check.full_model_specs(cpu))


def test_projected_hours_of_the_released_recipe():
    gpu_check = load_gpu_check()
    # The figure: 40 epochs over 42,404 objects at 40.9 images/s take about 11.5 hours.
    assert math.isclose(gpu_check.projected_hours(40.9, None), 40 * 42400 / 40.9 / 3600)
    assert 11.4 < gpu_check.projected_hours(40.9, None) < 11.6
    with_validation = gpu_check.projected_hours(40.9, 3811 / 10)  # 10 s of validation per epoch
    assert math.isclose(with_validation * 3600 - gpu_check.projected_hours(40.9, None) * 3600, 400)


def test_full_model_rows_on_the_cpu(capsys):
    gpu_check = load_gpu_check()
    config = gpu_check.plan(gpu_check.parse_args(["--device", "cpu", "--quick"]), torch.device("cpu"))
    model, optimizer = gpu_check.full_model("lavt", config["text"], config, torch.device("cpu"), False)
    assert model.bert_model.config.hidden_size == 32 and sum(len(g["params"]) for g in optimizer.param_groups) == len(
        [p for p in model.parameters() if p.requires_grad])
    plain = gpu_check.time_full_model({"variant": "lavt_one", "amp": "bf16", "compile": False,
                                       "checkpoint_activations": False}, config, torch.device("cpu"))
    assert plain["step_s"] > 0 and plain["eval_sentences_per_s"] > 0
    assert math.isclose(plain["images_per_s"], config["full_batch"] / plain["step_s"])
    checkpointed = gpu_check.time_full_model({"variant": "lavt", "amp": "off", "compile": False,
                                              "checkpoint_activations": True}, config, torch.device("cpu"))
    assert "eval_sentences_per_s" not in checkpointed  # evaluation does not checkpoint
    rows = gpu_check.measure_full_model(config, torch.device("cpu"), deadline=0)  # the budget is spent
    assert rows == []
    assert capsys.readouterr().out.count("skipped: --budget-s reached") == 8


@pytest.mark.slow
def test_cpu_dry_run_prints_every_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--workers", "0",
                           "--budget-s", "3600"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| pipeline (nano, SynRef) |" in out and "| config | batch | amp | options |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| lavt |", "| lavt_one |"))]
    assert len(rows) == 8 and not any("skipped" in row or "out of memory" in row for row in rows)
