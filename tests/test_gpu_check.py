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
    assert {(s["batch"] * s.get("accum", 1), s.get("accum", 1), s["checkpoint_activations"]) for s in large} == {
        (8, 1, False), (8, 1, True), (8, 4, False), (8, 4, True)}
