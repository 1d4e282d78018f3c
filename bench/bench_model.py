"""Speed and memory benchmark of the LAVT model (text features are random: no BERT runs).

    python bench/bench_model.py                      # nano 96 px and Swin-T 224 px, fp32 and bf16
    python bench/bench_model.py --configs base:480:12 --amp off --device cuda
    python bench/bench_model.py --suite scaling      # the memory/precision levers at Swin-B 480

A config is `swin_type:img_size:window`. The default suite prints a Markdown table of forward (eval)
and training-step times (median of --repeats runs after --warmup runs). The `scaling` suite runs each
measurement in a fresh child process, so that each peak resident memory (ru_maxrss) is its own:
Swin-B 480 window-12 training step (batch 2, AdamW, cross-entropy) with and without activation
checkpointing, and batch-1 forward times in fp32 and bf16 autocast for Swin-T 224 and Swin-B 480.
Speed targets live here, never in the tests. Reference point (2 CPU cores, torch 2.14.1): the
original implementation takes 0.219 s per Swin-T 224 forward (batch 1) and 1.67 s per Swin-T 224
training step at batch 2, fp32.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import add_threads_argument, apply_threads, machine_line  # noqa: E402
from lib.segmentation import SWIN_CONFIGS, build_lavt  # noqa: E402

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="configs", choices=["configs", "scaling"])
    parser.add_argument("--configs", nargs="+", default=["nano:96:6", "tiny:224:7"])
    parser.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=sorted(AMP_DTYPES))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--text-dim", type=int, default=768, help="768 (BERT-base); the scaling suite uses 384")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="", help="also write the results here")
    add_threads_argument(parser)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # one scaling measurement, as JSON
    return parser.parse_args(argv)


def timed(fn, device, warmup, repeats, *args):
    """Median seconds of `fn(*args)` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_workload(swin_type, img_size, window, batch, text_dim, device, checkpoint_activations=False):
    """Model, optimizer and random inputs; returns (forward, train_step) closures taking an amp name."""
    embed_dim, depths, heads = SWIN_CONFIGS[swin_type]
    model = build_lavt(embed_dim, depths, heads, window_size=window, text_dim=text_dim,
                       checkpoint_activations=checkpoint_activations).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    image = torch.randn(batch, 3, img_size, img_size, device=device)
    words = torch.randn(batch, text_dim, 20, device=device)
    word_mask = torch.ones(batch, 20, 1, device=device)
    target = torch.randint(0, 2, (batch, img_size, img_size), device=device)

    def forward(amp):
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=AMP_DTYPES[amp], enabled=amp != "off"):
            model(image, words, word_mask)

    def train_step(amp):
        model.train()
        with torch.autocast(device.type, dtype=AMP_DTYPES[amp], enabled=amp != "off"):
            logits = model(image, words, word_mask)
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return forward, train_step


def run_configs(opts, device):
    rows = []
    print("| config | amp | batch | forward (s) | train step (s) |\n|---|---|---|---|---|")
    for spec in opts.configs:
        swin_type, img_size, window = spec.split(":")
        forward, train_step = make_workload(swin_type, int(img_size), int(window), opts.batch_size, opts.text_dim,
                                            device)
        for amp in opts.amp:
            row = {"config": f"{swin_type} {img_size}px w{window}", "amp": amp, "batch": opts.batch_size,
                   "forward_s": timed(forward, device, opts.warmup, opts.repeats, amp),
                   "train_step_s": timed(train_step, device, opts.warmup, opts.repeats, amp)}
            rows.append(row)
            print(f"| {row['config']} | {amp} | {row['batch']} | {row['forward_s']:.3f} | {row['train_step_s']:.3f} |",
                  flush=True)
    return rows


# The scaling suite: (label, measurement). Kept small: the whole suite runs in a few minutes on 2 cores.
SCALING = [
    ("train", dict(config="base:480:12", batch=2, checkpoint_activations=False, warmup=1, repeats=2)),
    ("train", dict(config="base:480:12", batch=2, checkpoint_activations=True, warmup=1, repeats=2)),
    ("forward", dict(config="tiny:224:7", batch=1, amps=["off", "bf16"], warmup=2, repeats=5)),
    ("forward", dict(config="base:480:12", batch=1, amps=["off", "bf16"], warmup=1, repeats=3)),
]


def child_main(spec, device):
    """One scaling measurement in this (fresh) process; prints its result as JSON on the last line."""
    swin_type, img_size, window = spec["config"].split(":")
    forward, train_step = make_workload(swin_type, int(img_size), int(window), spec["batch"], spec["text_dim"],
                                        device, spec.get("checkpoint_activations", False))
    result = dict(spec)
    if spec["kind"] == "train":
        result["step_s"] = timed(train_step, device, spec["warmup"], spec["repeats"], "off")
    else:
        result["forward_s"] = {amp: timed(forward, device, spec["warmup"], spec["repeats"], amp)
                               for amp in spec["amps"]}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # kB on Linux
    if device.type == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1e9
    print(json.dumps(result))


def run_child(spec, opts):
    command = [sys.executable, os.path.abspath(__file__), "--device", opts.device, "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"benchmark child {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_scaling(opts, measurements=SCALING):
    """Runs `measurements` (two train rows: plain then checkpointed; then forward rows) and prints them."""
    results = [run_child({"kind": kind, "text_dim": 384, **spec}, opts) for kind, spec in measurements]
    plain, checkpointed = results[0], results[1]
    print(f"| {plain['config']}, batch {plain['batch']}, fp32 train step | step (s) | peak RSS (GB) |\n|---|---|---|")
    for row, label in ((plain, "plain"), (checkpointed, "checkpoint_activations")):
        print(f"| {label} | {row['step_s']:.2f} | {row['peak_rss_gb']:.2f} |")
    print(f"checkpoint_activations: peak {checkpointed['peak_rss_gb'] / plain['peak_rss_gb']:.2f}x (target <= 0.6x) "
          f"at {checkpointed['step_s'] / plain['step_s']:.2f}x the time (target <= 1.4x)\n")
    print("| forward, batch 1 | fp32 (s) | bf16 autocast (s) | speed-up |\n|---|---|---|---|")
    for row in results[2:]:
        fp32, bf16 = row["forward_s"]["off"], row["forward_s"]["bf16"]
        print(f"| {row['config']} | {fp32:.3f} | {bf16:.3f} | {fp32 / bf16:.2f}x |")
    print("(target: bf16 >= 2.0x faster than fp32 at Swin-B 480)")
    return results


def main(argv=None):
    opts = parse_args(argv)
    apply_threads(opts.threads)  # before the children start: they inherit OMP_NUM_THREADS
    device = torch.device(opts.device)
    if opts.child:
        return child_main(json.loads(opts.child), device)
    print(f"torch {torch.__version__}, device {device}; {machine_line(opts.threads)}", flush=True)
    rows = run_scaling(opts) if opts.suite == "scaling" else run_configs(opts, device)
    if opts.json:
        with open(opts.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
