"""Latency per image of the whole referring model (text encoder included): PyTorch fp32, PyTorch
bf16 autocast and onnxruntime (the file tools/export_onnx.py writes), batch 1, one expression.

    python bench/bench_onnx.py                        # nano 64 px (MiniLM) and Swin-B 480 px (BERT-base)
    python bench/bench_onnx.py --configs nano:64:4:minilm --repeats 10

A config is `swin_type:img_size:window:text`, text = `minilm` (the packaged 384-wide encoder) or
`bert-base` (a 768-wide, 12-layer BERT built from bert-base-uncased's configuration). Weights are
random (speed does not depend on them), so no checkpoint or download is needed. Prints a Markdown
table of medians after --warmup runs; needs onnx, onnxscript and onnxruntime (requirements-dev.txt).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import add_threads_argument, apply_threads, machine_line  # noqa: E402
from bert import load_tokenizer  # noqa: E402
from lib.onnx_export import INPUT_NAMES, export_onnx, onnx_session, require_onnx, sample_inputs  # noqa: E402
from lib.referring_model import build_model  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["nano:64:4:minilm", "base:480:12:bert-base"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    add_threads_argument(parser)
    return parser.parse_args()


def timed(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def text_encoder_dir(text, root):
    """'minilm', or a directory with bert-base-uncased's configuration and vocabulary."""
    if text == "minilm":
        return "minilm"
    from transformers import BertConfig

    path = os.path.join(root, "bert_base_config")
    BertConfig().save_pretrained(path)  # the defaults are bert-base-uncased's: 768 wide, 12 layers
    load_tokenizer("minilm").save_pretrained(path)  # the same WordPiece vocabulary
    return path


def bench_config(spec, opts, root):
    swin_type, img_size, window, text = spec.split(":")
    img_size = int(img_size)
    encoder = text_encoder_dir(text, root)
    args = argparse.Namespace(model="lavt", swin_type=swin_type, window_size=int(window), ck_bert=encoder,
                              bert_tokenizer=encoder, img_size=img_size)
    model = build_model(args, pretrained=False).eval()
    tokenizer = load_tokenizer(encoder)
    inputs = sample_inputs(1, img_size, tokenizer, seed=1)
    path = os.path.join(root, f"{swin_type}_{img_size}.onnx")
    started = time.perf_counter()
    export_onnx(model, path, img_size, tokenizer)
    export_s = time.perf_counter() - started
    session = onnx_session(path, threads=opts.threads or None)
    feed = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, inputs)}

    def pytorch(dtype):
        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                model(*inputs)
        return run

    row = {"config": f"{swin_type} {img_size} px, window {window}, {text}",
           "fp32": timed(pytorch(None), opts.warmup, opts.repeats),
           "bf16": timed(pytorch(torch.bfloat16), opts.warmup, opts.repeats),
           "onnxruntime": timed(lambda: session.run(["logits"], feed), opts.warmup, opts.repeats),
           "export_s": export_s, "size_mib": os.path.getsize(path) / 2**20}
    os.remove(path)
    return row


def main():
    opts = parse_args()
    apply_threads(opts.threads)
    require_onnx()
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {machine_line(opts.threads)}; "
          f"median of {opts.repeats} runs, batch 1, one expression")
    print("| config | PyTorch fp32 | PyTorch bf16 | onnxruntime fp32 | export | ONNX file |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for spec in opts.configs:
            row = bench_config(spec, opts, root)
            print(f"| {row['config']} | {row['fp32']:.3f} s | {row['bf16']:.3f} s | {row['onnxruntime']:.3f} s | "
                  f"{row['export_s']:.0f} s | {row['size_mib']:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
