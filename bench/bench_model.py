"""Speed benchmark of the LAVT model: forward (eval) and training-step time per configuration.

    python bench/bench_model.py                      # nano 96 px and Swin-T 224 px, fp32 and bf16
    python bench/bench_model.py --configs base:480:12 --amp off --device cuda

A config is `swin_type:img_size:window`. Prints a Markdown table (median of --repeats runs after
--warmup runs) and optionally writes it as JSON. Speed targets live here, never in the tests.
Reference point (../shared/NOTES.md, 2 CPU cores): the original implementation takes 0.219 s per
Swin-T 224 forward and 1.67 s per Swin-T 224 training step at batch 2, fp32.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lib.segmentation import SWIN_CONFIGS, build_lavt  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["nano:96:6", "tiny:224:7"])
    parser.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=["off", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--text-dim", type=int, default=768)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="", help="also write the results here")
    return parser.parse_args()


def timed(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_config(swin_type, img_size, window, amp, opts, device):
    embed_dim, depths, heads = SWIN_CONFIGS[swin_type]
    model = build_lavt(embed_dim, depths, heads, window_size=window, text_dim=opts.text_dim).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b = opts.batch_size
    image = torch.randn(b, 3, img_size, img_size, device=device)
    words = torch.randn(b, opts.text_dim, 20, device=device)
    word_mask = torch.ones(b, 20, 1, device=device)
    target = torch.randint(0, 2, (b, img_size, img_size), device=device)
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def forward():
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(image, words, word_mask)

    def train_step():
        model.train()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(image, words, word_mask)
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return {
        "config": f"{swin_type} {img_size}px w{window}", "amp": amp, "batch": b,
        "forward_s": timed(forward, device, opts.warmup, opts.repeats),
        "train_step_s": timed(train_step, device, opts.warmup, opts.repeats),
    }


def main():
    opts = parse_args()
    device = torch.device(opts.device)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print("| config | amp | batch | forward (s) | train step (s) |\n|---|---|---|---|---|")
    for spec in opts.configs:
        swin_type, img_size, window = spec.split(":")
        for amp in opts.amp:
            row = bench_config(swin_type, int(img_size), int(window), amp, opts, device)
            rows.append(row)
            print(f"| {row['config']} | {amp} | {row['batch']} | {row['forward_s']:.3f} | {row['train_step_s']:.3f} |",
                  flush=True)
    if opts.json:
        with open(opts.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
