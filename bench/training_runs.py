"""Steps shared by the training benchmarks (bench_language.py, bench_generalized.py).

Each step is a subprocess of the project's own command lines (`python -m data.synthetic`,
`train.py`, `tools/probes.py`, `test.py`), so a benchmark measures exactly what a user runs. Steps
write a `done.json` stamp holding their command; a rerun with the same command skips the step,
so an interrupted benchmark continues where it stopped (delete the folder to start over).
Training time is reported as wall seconds and as CPU seconds of the child process (user + system):
the second is what "equal CPU time" compares, as it moves less when other jobs share the machine.
"""
import json
import os
import resource
import subprocess
import sys
import time

from machine import add_threads_argument

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The benchmarks' two sizes. "standard" fine-tunes the quickstart's pretrained nano backbone
# (tools/pretrain_backbone.py, with position and rank tasks) with the quickstart's recipe at twice its epochs,
# without the learning-rate ramp and the four fusion heads the quickstart added later (docs/benchmarks.md's
# tables were measured without them); "tiny" is a smoke run from scratch.
PRETRAINED_NANO = "pretrained_weights/swin_nano_synref_rank.pth"
BUDGETS = {
    "standard": {"swin_type": "nano", "num_images": 2500, "gen_img_size": 128, "img_size": 64, "window_size": 4, "batch_size": 32,
                 "epochs": 24, "lr": 1e-3, "drop_path": 0.0, "swin_lr_scale": 0.2, "pretrained": PRETRAINED_NANO,
                 "amp": "bf16", "seed": 0},
    "tiny": {"swin_type": "nano", "num_images": 40, "gen_img_size": 64, "img_size": 64, "window_size": 4, "batch_size": 8,
             "epochs": 1, "lr": 3e-4, "drop_path": 0.0, "swin_lr_scale": 1.0, "pretrained": "",
             "amp": "bf16", "seed": 0},
}


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(cmd, folder, log_name="log.txt", threads=0):
    """Run `cmd` (list) from the repository root, output to folder/log_name; returns the stamp dict.

    `threads` > 0 sets OMP_NUM_THREADS for the child: on a machine shared with other jobs, PyTorch's
    default (one thread per core) can spin-wait for busy cores and run many times slower.

    Skipped (the earlier stamp returned) when folder/done.json records the same command.
    """
    os.makedirs(folder, exist_ok=True)
    stamp = done_before(cmd, folder)
    if stamp is not None:
        print(f"  (done before: {os.path.join(folder, 'done.json')})", flush=True)
        return stamp
    print("$ " + " ".join(cmd), flush=True)
    wall, cpu = time.time(), _children_cpu_seconds()
    with open(os.path.join(folder, log_name), "w") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads > 0 else None
        result = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        sys.exit(f"error: step failed (exit code {result.returncode}); see {os.path.join(folder, log_name)}")
    stamp = {"command": cmd, "wall_s": round(time.time() - wall, 1), "cpu_s": round(_children_cpu_seconds() - cpu, 1)}
    with open(os.path.join(folder, "done.json"), "w") as handle:
        json.dump(stamp, handle, indent=2)
    return stamp


def done_before(cmd, folder):
    """The stamp of folder/done.json when it records `cmd`, else None."""
    path = os.path.join(folder, "done.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        stamp = json.load(handle)
    return stamp if stamp.get("command") == cmd else None


def generate(out, dataset, num_images, gen_img_size, seed, generalized=False):
    """Generate a SynRef set under out/data (skipped when already generated with the same command)."""
    cmd = [sys.executable, "-m", "data.synthetic", "--root", os.path.join(out, "data"), "--dataset", dataset,
           "--num-images", str(num_images), "--img-size", str(gen_img_size), "--seed", str(seed)]
    return run_step(cmd + (["--generalized"] if generalized else []), os.path.join(out, "generate"))


def model_flags(out, dataset, opts):
    """Flags shared by train.py, test.py and tools/probes.py: the quickstart's recipe on CPU."""
    return ["--device", "cpu", "--model", "lavt", "--swin_type", opts.swin_type, "--window-size", str(opts.window_size),
            "--ck_bert", "minilm", "--bert_tokenizer", "minilm", "--dataset", dataset, "--splitBy", "unc",
            "--refer_data_root", os.path.join(out, "data"), "--img_size", str(opts.img_size), "--workers", "0",
            "--amp", opts.amp]


def train(out, name, dataset, opts, extra_flags):
    """Train one recipe into out/<name>/ (checkpoint: out/<name>/model_best_<name>.pth); returns its stamp."""
    folder = os.path.join(out, name)
    cmd = [sys.executable, "train.py", *model_flags(out, dataset, opts), "--batch-size", str(opts.batch_size),
           "--epochs", str(opts.epochs), "--seed", str(opts.seed), "--lr", str(opts.lr), "--wd", "0.01", "--loss", "ce+dice",
           "--bert-trainable-layers", "0", "--model_id", name, "--run-dir", folder, "--output-dir", folder,
           "--drop-path", str(opts.drop_path), "--swin-lr-scale", str(opts.swin_lr_scale),
           "--pretrained_swin_weights", opts.pretrained, "--print-freq", "100",
           # A step that is not stamped done (unfinished, or another command) starts over in its folder.
           "--overwrite", *extra_flags]
    stamp = run_step(cmd, folder, log_name="train_output.txt", threads=opts.threads)
    stamp["checkpoint"] = os.path.join(folder, f"model_best_{name}.pth")
    return stamp


def add_recipe_arguments(parser, defaults, examples):
    """One flag per key of `examples` (--num-images, --epochs, ...), typed like its example value."""
    for key, value in examples.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=defaults[key], dest=key)
    add_threads_argument(parser)  # here: OMP_NUM_THREADS of every step
