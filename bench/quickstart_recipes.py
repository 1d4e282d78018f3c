"""Quickstart recipe search: which nano recipe learns most in the quickstart's CPU budget?

    python bench/quickstart_recipes.py --measure-cost                 # CPU seconds per optimizer step of each recipe
    python bench/quickstart_recipes.py --device cuda --parallel 8     # train + evaluate every recipe at once

Each recipe is the quickstart's earlier recipe (BEFORE below) with some values changed, trained by
train.py and evaluated on val, every expression, by test.py, as the quickstart does; the results are
in docs/synthetic.md (Quickstart results). Learning per optimizer step does not depend on the device,
so many recipes can train at once on one GPU and their val numbers carry over to the CPU; what a
recipe costs on the CPU is measured separately (--measure-cost: optimizer steps of the same model on
random data, bf16 autocast, this machine's threads). With --deadline-s, runs still going at the
deadline are stopped and reported from the per-epoch val of their metrics.jsonl (one expression per
object, as train.py validates).
"""
import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.machine import add_threads_argument, apply_threads, machine_line  # noqa: E402

# The quickstart's recipe before this search (2026-11-25); each candidate changes some of its values.
# drop_path is stochastic depth (the released rate is 0.3).
BEFORE = {"num_images": 2500, "gen_img_size": 128, "img_size": 64, "window_size": 4, "batch_size": 16,
          "epochs": 11, "lr": 3e-4, "weight_decay": 1e-2, "drop_path": 0.3, "loss": "ce+dice", "amp": "bf16"}
RECIPES = {
    "quickstart before": {},
    "lr 6e-4": {"lr": 6e-4},
    "lr 1e-3": {"lr": 1e-3},
    "no drop-path, 12 epochs": {"drop_path": 0.0, "epochs": 12},
    "batch 32, lr 6e-4, 14 epochs": {"batch_size": 32, "lr": 6e-4, "epochs": 14},
    "4500 images, 6 epochs": {"num_images": 4500, "epochs": 6},
    "96 px, window 6, 6 epochs": {"img_size": 96, "window_size": 6, "epochs": 6},
    "batch 32, lr 1e-3, no drop-path, 16 epochs": {"batch_size": 32, "lr": 1e-3, "drop_path": 0.0, "epochs": 16},
    # second round, on the CPU (run as tools/quickstart.py with these values)
    "no drop-path, 10 epochs": {"drop_path": 0.0, "epochs": 10},
    "batch 32, lr 6e-4, no drop-path, 12 epochs": {"batch_size": 32, "lr": 6e-4, "drop_path": 0.0, "epochs": 12},
    "batch 32, lr 3e-4, no drop-path, 12 epochs": {"batch_size": 32, "drop_path": 0.0, "epochs": 12},
    "batch 32, lr 6e-4, no drop-path, 96 px, window 6, 7 epochs": {
        "batch_size": 32, "lr": 6e-4, "drop_path": 0.0, "img_size": 96, "window_size": 6, "epochs": 7},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/quickstart_recipes")
    parser.add_argument("--recipe", action="append", default=[], dest="recipes",
                        help="a recipe name (repeat for several; default: all)")
    parser.add_argument("--parallel", type=int, default=1, help="recipes trained at once")
    parser.add_argument("--workers", type=int, default=2, help="data loading workers per run")
    add_threads_argument(parser)
    parser.add_argument("--deadline-s", type=float, default=0, help="stop runs still going after this many seconds")
    parser.add_argument("--measure-cost", action="store_true", help="only time CPU optimizer steps per recipe")
    return parser.parse_args(argv)


def recipe(name):
    return {**BEFORE, **RECIPES[name]}


def slug(name):
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _train_step(model, optimizer, batch):
    """One bf16 optimizer step of `model` on `batch` = (image, words, mask, target)."""
    import torch
    import torch.nn.functional as F

    image, words, mask, target = batch
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(image, words, mask)
    F.cross_entropy(logits.float(), target).backward()
    optimizer.step()


def measure_cost(names, steps=6):
    """CPU seconds per optimizer step (random data, bf16 autocast) of each recipe's model and batch."""
    import torch

    from lib.segmentation import SWIN_CONFIGS, build_lavt

    embed_dim, depths, heads = SWIN_CONFIGS["nano"]
    for name in names:
        r = recipe(name)
        torch.manual_seed(0)
        model = build_lavt(embed_dim, depths, heads, window_size=r["window_size"], text_dim=384,
                           drop_path_rate=r["drop_path"]).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=r["lr"])
        b, size = r["batch_size"], r["img_size"]
        image, words = torch.randn(b, 3, size, size), torch.randn(b, 384, 20)
        mask, target = torch.ones(b, 20, 1), torch.randint(0, 2, (b, size, size))
        batch = (image, words, mask, target)
        _train_step(model, optimizer, batch)  # warm-up, not timed
        started = time.perf_counter()
        for _ in range(steps):
            _train_step(model, optimizer, batch)
        seconds = (time.perf_counter() - started) / steps
        print(f"| {name} | {b} | {size} | {seconds:.3f} | {b / seconds:.0f} |", flush=True)


def data_root(out, r):
    return os.path.join(out, f"data_{r['num_images']}_{r['gen_img_size']}")


def generate_all(out, names):
    """One SynRef set per (num_images, gen_img_size), generated in parallel."""
    jobs = {}
    for name in names:
        r = recipe(name)
        root = data_root(out, r)
        if root not in jobs and not os.path.isdir(os.path.join(root, "synref")):
            cmd = [sys.executable, "-m", "data.synthetic", "--root", root, "--num-images", str(r["num_images"]),
                   "--img-size", str(r["gen_img_size"]), "--seed", "0"]
            jobs[root] = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    for root, job in jobs.items():
        if job.wait():
            sys.exit(f"error: generating {root} failed")


def flags(r, root, opts):
    return ["--device", opts.device, "--model", "lavt", "--swin_type", "nano", "--window-size", str(r["window_size"]),
            "--ck_bert", "minilm", "--bert_tokenizer", "minilm", "--dataset", "synref", "--splitBy", "unc",
            "--refer_data_root", root, "--img_size", str(r["img_size"]), "--workers", str(opts.workers),
            "--amp", r["amp"]]


def train_then_test(name, out, opts):
    """A shell command line: train.py with the recipe, then test.py on val (every expression)."""
    r, run_dir = recipe(name), os.path.join(out, slug(name))
    os.makedirs(run_dir, exist_ok=True)
    common = flags(r, data_root(out, r), opts)
    train = [sys.executable, "train.py", *common, "--batch-size", str(r["batch_size"]), "--epochs", str(r["epochs"]),
             "--lr", str(r["lr"]), "--wd", str(r["weight_decay"]), "--loss", r["loss"], "--drop-path",
             str(r["drop_path"]), "--bert-trainable-layers", "0", "--seed", "0", "--model_id", "recipe",
             "--run-dir", run_dir, "--output-dir", run_dir, "--print-freq", "100"]
    test = [sys.executable, "test.py", *common, "--resume", os.path.join(run_dir, "model_best_recipe.pth"),
            "--split", "val", "--results-json", os.path.join(run_dir, "val.json")]
    train_log, test_log = (shlex.quote(os.path.join(run_dir, name)) for name in ("train.log", "test.log"))
    return f"{shlex.join(train)} > {train_log} 2>&1 && {shlex.join(test)} > {test_log} 2>&1"


def report(name, out, wall_s):
    run_dir = os.path.join(out, slug(name))
    rows = []
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    log = open(os.path.join(run_dir, "train.log")).read() if os.path.exists(os.path.join(run_dir, "train.log")) else ""
    found = re.search(r"(\d+) optimizer steps/epoch", log)
    steps = int(found.group(1)) * len(rows) if found else 0
    curve = " ".join(f"{100 * row['val_mean_iou']:.1f}" for row in rows)
    final = "-"
    if os.path.exists(os.path.join(run_dir, "val.json")):
        results = json.load(open(os.path.join(run_dir, "val.json")))
        final = f"{100 * results['mean_iou']:.1f} / {100 * results['overall_iou']:.1f}"
    line = f"| {name} | {len(rows)}/{recipe(name)['epochs']} | {steps} | {curve} | {final} | {wall_s:.0f} |"
    print(line, flush=True)
    return {"name": name, "recipe": recipe(name), "epochs_done": len(rows), "steps": steps,
            "val_curve": [row["val_mean_iou"] for row in rows], "val_all_sentences": final, "wall_s": wall_s}


def run_all(names, out, opts):
    print("| recipe | epochs | optimizer steps | val mean IoU per epoch (one expression per object) | "
          "val mean / overall IoU (every expression) | wall (s) |\n|---|---|---|---|---|---|", flush=True)
    started, pending, running, rows = time.time(), list(names), {}, []
    while pending or running:
        while pending and len(running) < opts.parallel:
            name = pending.pop(0)
            job = subprocess.Popen(train_then_test(name, out, opts), shell=True, cwd=REPO, start_new_session=True)
            running[name] = (job, time.time())
        time.sleep(2)
        late = opts.deadline_s and time.time() - started > opts.deadline_s
        for name, (job, begun) in list(running.items()):
            if job.poll() is not None or late:
                if job.poll() is None:
                    os.killpg(job.pid, signal.SIGKILL)
                elif job.returncode:
                    print(f"  {name}: failed (exit code {job.returncode}); see {os.path.join(out, slug(name))}",
                          flush=True)
                rows.append(report(name, out, time.time() - begun))
                del running[name]
        if late:
            pending = []
    with open(os.path.join(out, "recipes.json"), "w") as handle:
        json.dump(rows, handle, indent=2)


def main():
    opts = parse_args()
    apply_threads(opts.threads)  # the training subprocesses inherit OMP_NUM_THREADS
    print(machine_line(opts.threads), flush=True)
    names = opts.recipes or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        sys.exit(f"error: unknown recipe(s) {unknown}; known: {list(RECIPES)}")
    if opts.measure_cost:
        print("| recipe | batch | px | CPU s / step | images/s |\n|---|---|---|---|---|")
        return measure_cost(names)
    out = os.path.abspath(opts.out)
    os.makedirs(out, exist_ok=True)
    generate_all(out, names)
    run_all(names, out, opts)


if __name__ == "__main__":
    main()
