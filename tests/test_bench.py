"""bench/bench_model.py's scaling suite runs each measurement in its own child process and reports
its peak memory; exercised here on a nano model (timings are not checked: they belong in bench/)."""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_model.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_model", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_scaling_suite_measures_each_config_in_a_child(capsys):
    bench = load_bench()
    nano = dict(config="nano:64:4", batch=1, warmup=0, repeats=1)
    measurements = [("train", dict(nano, checkpoint_activations=False)),
                    ("train", dict(nano, checkpoint_activations=True)),
                    ("forward", dict(nano, amps=["off", "bf16"]))]
    results = bench.run_scaling(bench.parse_args(["--suite", "scaling"]), measurements)
    plain, checkpointed, forward = results
    assert not plain["checkpoint_activations"] and checkpointed["checkpoint_activations"]
    for row in results:
        assert 0.2 < row["peak_rss_gb"] < 8  # torch alone is a few hundred MB; a nano model adds little
    assert plain["step_s"] > 0 and set(forward["forward_s"]) == {"off", "bf16"}
    out = capsys.readouterr().out
    assert "| plain |" in out and "| checkpoint_activations |" in out and "| nano:64:4 |" in out
    assert "x (target <= 0.6x)" in out


def load_recipes():
    spec = importlib.util.spec_from_file_location("quickstart_recipes", BENCH.parent / "quickstart_recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_search_reports_partial_runs_from_their_logs(tmp_path, capsys):
    recipes = load_recipes()
    name = "no drop-path, 12 epochs"
    assert recipes.parse_args(["--recipe", name, "--recipe", "lr 6e-4"]).recipes == [name, "lr 6e-4"]  # commas kept
    assert recipes.recipe(name)["drop_path"] == 0.0 and recipes.recipe(name)["batch_size"] == 16
    run_dir = tmp_path / recipes.slug(name)
    run_dir.mkdir()
    (run_dir / "train.log").write_text("train: 6931 objects, val: 916 objects, 433 optimizer steps/epoch\n")
    (run_dir / "metrics.jsonl").write_text('{"val_mean_iou": 0.25}\n{"val_mean_iou": 0.3125}\n')
    row = recipes.report(name, str(tmp_path), 12.0)
    assert row["epochs_done"] == 2 and row["steps"] == 866 and row["val_all_sentences"] == "-"
    (run_dir / "val.json").write_text('{"mean_iou": 0.4125, "overall_iou": 0.385}')
    assert recipes.report(name, str(tmp_path), 12.0)["val_all_sentences"] == "41.2 / 38.5"
    assert "| no drop-path, 12 epochs | 2/12 | 866 | 25.0 31.2 |" in capsys.readouterr().out


def test_recipe_cost_is_measured_per_recipe(capsys):
    load_recipes().measure_cost(["quickstart before"], steps=1)
    cells = capsys.readouterr().out.strip().split("|")
    assert cells[1].strip() == "quickstart before" and cells[2].strip() == "16" and float(cells[4]) > 0
