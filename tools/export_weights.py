"""Write a model-only weights file for deployment from a training checkpoint.

    python tools/export_weights.py --resume runs/quickstart/model_best_quickstart.pth --out nano.pth
    python tools/export_weights.py --resume model_best_refcoco.pth --out refcoco_fp16.pth --dtype fp16

Keeps the model's weights and the training options (the architecture is read from them), drops
the optimizer, scheduler and other training state, optionally stores floating-point tensors in
fp16 or bf16 (loaded back as fp32), and names an unchanged text encoder (e.g. the frozen packaged
MiniLM, --ck_bert minilm) instead of copying it. test.py, the Predictor, tools/web_demo.py and
tools/export_onnx.py load the file like any checkpoint. See lib/weights.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402
from errors import UserInputError  # noqa: E402
from lib.checkpoint_io import atomic_torch_save, load_checkpoint_file  # noqa: E402
from lib.weights import STORAGE_DTYPES, model_only_weights  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", required=True, help="the checkpoint (.pth): ours or a released LAVT one")
    parser.add_argument("--out", required=True, help="the weights file to write")
    parser.add_argument("--dtype", default="fp32", choices=list(STORAGE_DTYPES),
                        help="storage of floating-point tensors (fp16/bf16: half the size; loaded as fp32)")
    parser.add_argument("--copy-text-encoder", action="store_true", dest="copy_text_encoder",
                        help="copy the text encoder even when it is unchanged from its package weights")
    parser.add_argument("--ck_bert", help="the text encoder's name, when the checkpoint's options do not give it")
    return parser


def main(args):
    if os.path.abspath(args.out) == os.path.abspath(args.resume):
        raise UserInputError("--out must differ from --resume: the checkpoint would be overwritten.")
    checkpoint = load_checkpoint_file(args.resume, what="--resume")
    weights, note = model_only_weights(checkpoint, args.dtype, reference_text_encoder=not args.copy_text_encoder,
                                       ck_bert=args.ck_bert)
    atomic_torch_save(weights, args.out)
    before, after = os.path.getsize(args.resume), os.path.getsize(args.out)
    print(f"Wrote {args.out}: {after / 1e6:.1f} MB ({args.dtype} storage; {args.resume}: {before / 1e6:.1f} MB); "
          f"{note}")


if __name__ == "__main__":
    cli.run_cli(main, get_parser())
