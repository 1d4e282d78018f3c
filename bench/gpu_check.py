"""GPU check: training and evaluation on one CUDA device in fp32, bf16 and fp16, unattended.

    python bench/gpu_check.py                          # steps 1-4: 3.5 minutes on an H200 (2026-11-26);
                                                       # step 5 stops starting rows at --budget-s (450 s)
    python bench/gpu_check.py --only-full-model --budget-s 460   # step 5 alone
    python bench/gpu_check.py --device cpu --quick     # the same steps, tiny, on the CPU (no fp16, no compile)

Without a CUDA device (and without --device cpu) it says so and exits with code 0.
1. generates a small SynRef set (`python -m data.synthetic`) in a temporary directory;
2. per precision mode trains a nano LAVT for a few hundred iterations with train.py (fp16 with the
   gradient scaler) and reports the last validation mean IoU; test.py evaluates the fp32 checkpoint;
3. compares the CUDA and CPU logits of that checkpoint (TF32 off) on one batch;
4. times training steps on random data: the nano config per mode (step time, images/s, peak
   memory), then Swin-B 480 window 12 as batch 2 x 4 accumulated micro-batches (random word features);
5. the released recipe's model in full: Swin-B 480 window 12 with a BERT-base-sized text encoder
   (from its config, random weights; 10 of 12 layers trained as released), `lavt` and `lavt_one`,
   batch 8, in fp32, bf16 and bf16 + torch.compile, each with and without activation checkpointing:
   step time, images/s, peak memory, the projected wall time of the released recipe on one GPU
   (40 epochs x 42,404 objects at effective batch 32, plus the per-epoch validation of RefCOCO val's
   3,811 objects), and evaluation sentences/s at batch 64. Rows that would overrun --budget-s are
   skipped, and say so.
Prints Markdown tables (paste them into docs/benchmarks.md with the GPU's name and the date).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.machine import add_threads_argument, apply_threads, machine_line  # noqa: E402
from lib.segmentation import SWIN_CONFIGS, build_lavt  # noqa: E402

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_DIM = 384  # the packaged MiniLM's width
QUICK_TEXT_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
RELEASED = {"epochs": 40, "train_objects": 42404, "effective_batch": 32, "val_objects": 3811,
            "bert_trainable_layers": 10}
# Rough seconds per full-model row, so that a row that would overrun the budget is not started.
ROW_COST_S = {"eager": 25, "compile": 150}
NO_CUDA_MESSAGE = ("gpu_check: no CUDA device is available (torch.cuda.is_available() is False), so there is "
                   "nothing to check here. Run it on a machine with an NVIDIA GPU, or pass --device cpu "
                   "--quick for a dry run of its steps on the CPU.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a dry run of the steps, not a check)")
    parser.add_argument("--work-dir", default="", help="keep data, runs and checkpoints here (default: a temp dir)")
    add_threads_argument(parser)
    parser.add_argument("--workers", type=int, default=4, help="data loading workers of train.py / test.py")
    parser.add_argument("--only-full-model", action="store_true", dest="only_full_model",
                        help="skip steps 1-4: only the full-model rows (with --budget-s 460, all of them on an H200)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="seconds after which no further full-model row starts (unattended in under 8 minutes)")
    return parser.parse_args(argv)


def plan(opts, device):
    """Sizes of the check; --quick shrinks them for a CPU dry run."""
    quick = opts.quick
    return {
        "modes": ["off", "bf16"] + (["fp16"] if device.type == "cuda" else []),
        "num_images": 24 if quick else 400, "img_size": 64 if quick else 96, "window": 4 if quick else 6,
        "batch": 8 if quick else 16, "epochs": 1 if quick else 6, "steps": 2 if quick else 20,
        "large": ("nano", 64, 4) if quick else ("base", 480, 12), "large_batch": 2 if quick else 8,
        "large_steps": 1 if quick else 5,
        "timeout_s": 600 if quick else 150,
        # The released model: Swin-B 480 window 12 with BERT-base; --quick: nano with a 2-layer 32-wide BERT.
        "full": ("nano", 64, 4) if quick else ("base", 480, 12), "full_batch": 2 if quick else 8,
        "full_steps": 1 if quick else 5, "eval_batch": 4 if quick else 64, "eval_steps": 1 if quick else 3,
        "text": QUICK_TEXT_CONFIG if quick else {},
        "compile": device.type == "cuda",  # compiling on a CPU takes minutes: tests/test_compile.py covers it
    }


def run(cmd, timeout_s, log_path):
    """Run a command from the repository root, its output into log_path; raise with the log's tail."""
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    if done.returncode:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise RuntimeError(f"gpu_check: `{' '.join(cmd)}` failed (exit {done.returncode}):\n{tail}")


def pipeline_flags(config, data_root, opts):
    return ["--swin_type", "nano", "--window-size", str(config["window"]), "--img_size", str(config["img_size"]),
            "--ck_bert", "minilm", "--bert_tokenizer", "minilm", "--dataset", "synref", "--splitBy", "unc",
            "--refer_data_root", data_root, "--workers", str(opts.workers), "--device", opts.device]


def train_and_evaluate(config, work_dir, opts):
    """train.py per mode, then test.py on the fp32 checkpoint; returns (rows, fp32 checkpoint path)."""
    data_root = os.path.join(work_dir, "data")
    run([sys.executable, "-m", "data.synthetic", "--root", data_root, "--num-images", str(config["num_images"]),
         "--img-size", str(config["img_size"]), "--seed", "0"], config["timeout_s"], os.path.join(work_dir, "data.log"))
    rows = []
    for mode in config["modes"]:
        run_dir = os.path.join(work_dir, f"run_{mode}")
        started = time.perf_counter()
        run([sys.executable, "train.py", *pipeline_flags(config, data_root, opts), "--amp", mode,
             "--epochs", str(config["epochs"]), "-b", str(config["batch"]), "--lr", "3e-4", "--loss", "ce+dice",
             "--model_id", f"gpucheck_{mode}", "--run-dir", run_dir, "--output-dir", run_dir, "--print-freq", "50"],
            config["timeout_s"], os.path.join(work_dir, f"train_{mode}.log"))
        with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
            last = [json.loads(line) for line in handle][-1]
        rows.append({"mode": mode, "wall_s": time.perf_counter() - started, "val_mean_iou": 100 * last["val_mean_iou"]})
    checkpoint = os.path.join(work_dir, "run_off", "model_best_gpucheck_off.pth")
    run([sys.executable, "test.py", *pipeline_flags(config, data_root, opts), "--resume", checkpoint,
         "--split", "testA", "--results-json", os.path.join(work_dir, "testA.json")],
        config["timeout_s"], os.path.join(work_dir, "test.log"))
    with open(os.path.join(work_dir, "testA.json")) as handle:
        results = json.load(handle)  # fractions (metrics.JSON_UNITS)
    rows.append({"mode": "off, test.py on testA", "wall_s": results["seconds"], "val_mean_iou": 100 * results["mean_iou"]})
    return rows, checkpoint


def compare_devices(checkpoint_path, config, device):
    """Max |logit difference| between `device` and the CPU for the fp32 checkpoint, and argmax agreement."""
    from lib.checkpoint_io import load_checkpoint_file

    checkpoint = load_checkpoint_file(checkpoint_path)
    embed_dim, depths, heads = SWIN_CONFIGS["nano"]
    model = build_lavt(embed_dim, depths, heads, window_size=config["window"], text_dim=TEXT_DIM).eval()
    model.load_state_dict(checkpoint["model"])
    generator = torch.Generator().manual_seed(0)
    size = config["img_size"]
    inputs = (torch.randn(4, 3, size, size, generator=generator), torch.randn(4, TEXT_DIM, 12, generator=generator),
              torch.ones(4, 12, 1))
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            cpu = model(*inputs)
            other = model.to(device)(*(t.to(device) for t in inputs)).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    agreement = (cpu.argmax(1) == other.argmax(1)).float().mean().item()
    return {"max_abs_diff": (cpu - other).abs().max().item(), "max_abs_logit": cpu.abs().max().item(),
            "argmax_agreement": agreement}


def time_training(spec, device, steps):
    """Step time, images/s and peak memory of optimizer steps on random data, or {'error': ...} on OOM."""
    try:
        return _time_training(spec, device, steps)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:  # after the failed frame is gone, so that its tensors can be released
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _time_training(spec, device, steps):
    swin_type, img_size, window = spec["config"]
    embed_dim, depths, heads = SWIN_CONFIGS[swin_type]
    batch, accum, dtype = spec["batch"], spec.get("accum", 1), AMP_DTYPES[spec["amp"]]
    torch.manual_seed(0)
    model = build_lavt(embed_dim, depths, heads, window_size=window, text_dim=TEXT_DIM,
                       checkpoint_activations=spec.get("checkpoint_activations", False)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device.type) if spec["amp"] == "fp16" else None
    image = torch.randn(batch, 3, img_size, img_size, device=device)
    words, mask = torch.randn(batch, TEXT_DIM, 20, device=device), torch.ones(batch, 20, 1, device=device)
    target = torch.randint(0, 2, (batch, img_size, img_size), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accum):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(image, words, mask)
            loss = F.cross_entropy(logits.float(), target) / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    step()  # warm-up: kernels chosen, optimizer state allocated
    step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")
    return {"step_s": seconds, "images_per_s": batch * accum / seconds, "peak_gb": peak}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed_specs(config):
    nano = ("nano", config["img_size"], config["window"])
    large, batch = config["large"], config["large_batch"]
    steps = config["large_steps"]
    specs = [{"config": nano, "batch": config["batch"], "amp": mode, "steps": config["steps"]}
             for mode in config["modes"]]
    specs += [{"config": large, "batch": batch // 4 or 1, "accum": 4, "amp": "off", "checkpoint_activations": ck,
               "steps": steps} for ck in (False, True)]
    return specs


def describe(spec):
    swin_type, img_size, window = spec["config"]
    options = ["checkpoint_activations"] if spec.get("checkpoint_activations") else []
    batch = f"{spec['batch']} x {spec['accum']} accumulated" if spec.get("accum", 1) > 1 else str(spec["batch"])
    return f"| {swin_type} {img_size} w{window} | {batch} | {spec['amp']} | {', '.join(options) or '-'} |"


def print_header(device):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"\n## GPU check: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n", flush=True)


def print_pipeline(pipeline_rows, comparison, device):
    print("| pipeline (nano, SynRef) | wall (s) | mean IoU (%) |\n|---|---|---|")
    for row in pipeline_rows:
        print(f"| {row['mode']} | {row['wall_s']:.0f} | {row['val_mean_iou']:.1f} |")
    print(f"\n{device} vs CPU logits of the fp32 checkpoint: max |diff| {comparison['max_abs_diff']:.2e} "
          f"(logits up to {comparison['max_abs_logit']:.1f}), argmax agreement {100 * comparison['argmax_agreement']:.3f}%",
          flush=True)


def measure_speed(config, device):
    """Times each configuration, printing its row as soon as it is measured (a cut-short run keeps them)."""
    print("\n| config | batch | amp | options | step (s) | images/s | peak memory (GB) |\n|---|---|---|---|---|---|---|",
          flush=True)
    for spec in speed_specs(config):
        row = time_training(spec, device, spec["steps"])
        cells = ("out of memory | - | -" if "error" in row else
                 f"{row['step_s']:.3f} | {row['images_per_s']:.1f} | {row['peak_gb']:.2f}")
        print(f"{describe(spec)} {cells} |", flush=True)


def full_model(variant, text_config, config, device, checkpoint_activations):
    """The released model (`lavt`: separate BERT; `lavt_one`: BERT inside) with random weights, frozen
    and grouped as train.py does."""
    from transformers import BertConfig, BertModel

    from lib.referring_model import ReferringModel
    from train import build_param_groups, freeze_text_encoder_layers

    swin_type, _, window = config["full"]
    embed_dim, depths, heads = SWIN_CONFIGS[swin_type]
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**text_config), add_pooling_layer=False)
    common = dict(window_size=window, checkpoint_activations=checkpoint_activations)
    if variant == "lavt":
        model = ReferringModel(build_lavt(embed_dim, depths, heads, text_dim=bert.config.hidden_size, **common), bert)
    else:
        model = ReferringModel(build_lavt(embed_dim, depths, heads, text_encoder=bert, **common))
    freeze_text_encoder_layers(model.text_encoder, RELEASED["bert_trainable_layers"])
    model.to(device)
    return model, torch.optim.AdamW(build_param_groups(model), lr=1e-5, weight_decay=1e-2)


def text_batch(batch, vocab_size, device, generator):
    ids = torch.randint(1000, vocab_size, (batch, 20), generator=generator)
    lengths = torch.randint(4, 21, (batch, 1), generator=generator)
    mask = (torch.arange(20)[None] < lengths).long()
    return (ids * mask).to(device), mask.to(device)


def time_full_model(spec, config, device):
    """Training step time, images/s, peak memory and (without checkpointing) evaluation sentences/s of the
    full model, or {'error': ...} on OOM."""
    try:
        return _time_full_model(spec, config, device)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _time_full_model(spec, config, device):
    from lib.criterion import build_criterion

    model, optimizer = full_model(spec["variant"], config["text"], config, device, spec["checkpoint_activations"])
    if spec["compile"]:
        model.compile()  # in place, as train.py --compile does
    dtype = AMP_DTYPES[spec["amp"]]
    _, img_size, _ = config["full"]
    batch, generator = config["full_batch"], torch.Generator().manual_seed(0)
    image = torch.randn(batch, 3, img_size, img_size, generator=generator).to(device)
    ids, mask = text_batch(batch, model.text_encoder.config.vocab_size, device, generator)
    target = torch.randint(0, 2, (batch, img_size, img_size), generator=generator).to(device)
    criterion = build_criterion("ce")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            outputs = model(image, ids, mask)
        criterion(outputs, target).backward()
        optimizer.step()

    model.train()
    started = time.perf_counter()
    step()  # with --compile: tracing and compiling the forward and backward graphs
    synchronize(device)
    first = time.perf_counter() - started
    step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(config["full_steps"]):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / config["full_steps"]
    row = {"step_s": seconds, "images_per_s": batch / seconds, "first_step_s": first,
           "peak_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else float("nan")}
    optimizer.zero_grad(set_to_none=True)  # the gradients are not needed for evaluation
    if not spec["checkpoint_activations"]:  # checkpointing does nothing without gradients
        row["eval_sentences_per_s"] = _eval_rate(model, config, device, dtype, img_size, generator)
    return row


@torch.no_grad()
def _eval_rate(model, config, device, dtype, img_size, generator):
    model.eval()
    batch = config["eval_batch"]
    image = torch.randn(batch, 3, img_size, img_size, generator=generator).to(device)
    ids, mask = text_batch(batch, model.text_encoder.config.vocab_size, device, generator)

    def forward():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(image, ids, mask)["logits"].argmax(1)

    forward()  # with --compile: the evaluation graph
    synchronize(device)
    started = time.perf_counter()
    for _ in range(config["eval_steps"]):
        forward()
    synchronize(device)
    return batch * config["eval_steps"] / (time.perf_counter() - started)


def full_model_specs(config):
    """Eager rows first, then compiled ones (minutes each), so that a tight budget keeps the baselines."""
    modes = [("off", False), ("bf16", False)] + ([("bf16", True)] if config["compile"] else [])
    specs = [{"variant": variant, "amp": amp, "compile": compiled, "checkpoint_activations": ck}
             for amp, compiled in modes for ck in (False, True) for variant in ("lavt", "lavt_one")]
    return sorted(specs, key=lambda spec: spec["compile"])


def projected_hours(train_images_per_s, eval_sentences_per_s):
    """Wall hours of the released recipe on one GPU: 40 epochs of full effective batches plus validation."""
    per_epoch = RELEASED["train_objects"] // RELEASED["effective_batch"] * RELEASED["effective_batch"]
    seconds = RELEASED["epochs"] * per_epoch / train_images_per_s
    if eval_sentences_per_s:
        seconds += RELEASED["epochs"] * RELEASED["val_objects"] / eval_sentences_per_s
    return seconds / 3600


def measure_full_model(config, device, deadline):
    """Prints one row per spec as soon as it is measured; rows that would end after `deadline` are skipped."""
    swin_type, img_size, window = config["full"]
    text = "BERT-base" if not config["text"] else f"BERT {config['text']['hidden_size']}-wide"
    print(f"\n{swin_type} {img_size} w{window} + {text} (random weights), batch {config['full_batch']}; evaluation at "
          f"batch {config['eval_batch']}; recipe: {RELEASED['epochs']} epochs x {RELEASED['train_objects']:,} objects "
          f"+ validation of {RELEASED['val_objects']:,} per epoch\n")
    print("| model | amp | compile | checkpointing | step (s) | images/s | peak memory (GB) | first step (s) "
          "| recipe (h) | eval sentences/s |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    eval_rates, rows = {}, []
    for spec in full_model_specs(config):
        cells = (f"| {spec['variant']} | {spec['amp']} | {'yes' if spec['compile'] else 'no'} | "
                 f"{'yes' if spec['checkpoint_activations'] else 'no'} |")
        if time.monotonic() + ROW_COST_S["compile" if spec["compile"] else "eager"] > deadline:
            print(f"{cells} skipped: --budget-s reached | | | | | |", flush=True)
            continue
        row = time_full_model(spec, config, device)
        rows.append({**spec, **row})
        if "error" in row:
            print(f"{cells} out of memory | | | | | |", flush=True)
            continue
        key = (spec["variant"], spec["amp"], spec["compile"])
        eval_rates.setdefault(key, row.get("eval_sentences_per_s"))
        hours = projected_hours(row["images_per_s"], eval_rates[key])
        rate = row.get("eval_sentences_per_s")
        print(f"{cells} {row['step_s']:.3f} | {row['images_per_s']:.1f} | {row['peak_gb']:.2f} | "
              f"{row['first_step_s']:.1f} | {hours:.2f} | {'-' if rate is None else f'{rate:.1f}'} |", flush=True)
    return rows


def verdicts(pipeline_rows, comparison):
    """(check, passed) pairs: CPU and CUDA agree; reduced precision trains about as well as fp32."""
    checks = [("CUDA and CPU logits agree (max |diff| <= 1e-3 x max |logit|, argmax >= 99.9%)",
               comparison["max_abs_diff"] <= 1e-3 * max(1.0, comparison["max_abs_logit"])
               and comparison["argmax_agreement"] >= 0.999)]
    fp32 = pipeline_rows[0]["val_mean_iou"]
    for row in pipeline_rows[1:-1]:
        checks.append((f"{row['mode']} val mean IoU within 10 points of fp32", row["val_mean_iou"] >= fp32 - 10))
    return checks


def main(argv=None):
    opts = parse_args(argv)
    apply_threads(opts.threads)
    print(machine_line(opts.threads), flush=True)
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE)
        return 0
    config = plan(opts, device)
    deadline = time.monotonic() + opts.budget_s
    work_dir = opts.work_dir or tempfile.mkdtemp(prefix="lavt_gpu_check_")
    os.makedirs(work_dir, exist_ok=True)
    try:
        print(f"gpu_check: working in {work_dir}", flush=True)
        print_header(device)
        if opts.only_full_model:
            measure_full_model(config, device, deadline)
            return 0
        pipeline_rows, checkpoint = train_and_evaluate(config, work_dir, opts)
        comparison = compare_devices(checkpoint, config, device)
        print_pipeline(pipeline_rows, comparison, device)
        checks = verdicts(pipeline_rows, comparison)
        print("\n" + "\n".join(f"{'ok  ' if passed else 'FAIL'} {name}" for name, passed in checks), flush=True)
        measure_speed(config, device)
        measure_full_model(config, device, deadline)
    finally:
        if not opts.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
