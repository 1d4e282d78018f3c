"""bench/bench_model.py's scaling suite runs each measurement in its own child process and reports
its peak memory; exercised here on a nano model (timings are not checked: they belong in bench/)."""
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_model.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_model", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
