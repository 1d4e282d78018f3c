"""Export a LAVT checkpoint (text encoder + model) to one ONNX file and check it with onnxruntime.

    python tools/export_onnx.py --resume model_best_refcoco.pth --out lavt_refcoco.onnx

The architecture is read from the checkpoint (model flags only override it, as in the demo).
After writing the file, the ONNX graph runs in onnxruntime on sample inputs at batch 1 and 3 and
is compared with PyTorch: the largest |logit difference| and the share of pixels whose mask
agrees are printed, and the command fails when they exceed --atol or disagree. How to call the
file without this repository: docs/deployment.md, "Deployment: ONNX". Needs the optional packages onnx,
onnxscript and onnxruntime (requirements-dev.txt).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402
from bert import load_tokenizer  # noqa: E402
from errors import UserInputError  # noqa: E402
from lib import ranges  # noqa: E402
from lib.architecture import add_override_arguments, load_inferred_model, overrides_from  # noqa: E402
from lib.onnx_export import (  # noqa: E402
    OPSET,
    compare_with_pytorch,
    export_onnx,
    onnx_session,
    require_onnx,
    sample_inputs,
)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", required=True, help="the checkpoint (.pth): ours or a released LAVT one")
    parser.add_argument("--out", required=True, help="the ONNX file to write")
    parser.add_argument("--opset", type=ranges.flag_type(int, ranges.check_int, OPSET), default=OPSET,
                        help=f"ONNX opset version, {OPSET} or newer (the exporter writes no older one; default {OPSET})")
    parser.add_argument("--atol", type=ranges.flag_type(float, ranges.check_float, 0.0), default=1e-3, help="largest accepted |logit difference| (default 1e-3)")
    parser.add_argument("--no-verify", action="store_true", dest="no_verify", help="skip the onnxruntime check")
    add_override_arguments(parser)
    return parser


def verify(path, model, img_size, tokenizer, atol):
    session = onnx_session(path)
    for batch in (1, 3):
        difference, agreement = compare_with_pytorch(session, model, sample_inputs(batch, img_size, tokenizer, seed=1))
        print(f"batch {batch}: max |logit difference| {difference:.2e}, mask agreement {100 * agreement:.4f}%")
        if difference > atol or agreement < 1.0:
            raise RuntimeError(f"The ONNX graph '{path}' disagrees with PyTorch at batch {batch} (max |logit "
                               f"difference| {difference:.2e} > {atol:g}, or masks differ).")


def check_opset_supported(opset):
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UserInputError(f"--opset {opset}: the installed onnx {onnx.__version__} knows opsets up to {newest}; "
                             f"pass --opset {OPSET} to {newest}.")


def written_opset(path):
    """The default-domain opset of the ONNX file at `path`."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def main(args):
    require_onnx()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UserInputError(f"--out '{args.out}': the directory '{out_dir}' does not exist.")
    cli.check_output_file(args.out, "--out")  # before the export, which takes a while
    check_opset_supported(args.opset)
    model, used = load_inferred_model(args.resume, **overrides_from(args))
    tokenizer = load_tokenizer(used.bert_tokenizer)
    print(f"Exporting {used.model}, Swin-{used.swin_type}, window {used.window_size}, text encoder {used.ck_bert}, "
          f"input {used.img_size} x {used.img_size}")
    outputs = export_onnx(model, args.out, used.img_size, tokenizer, opset=args.opset)
    written = written_opset(args.out)
    if written != args.opset:
        os.remove(args.out)
        raise UserInputError(f"--opset {args.opset}: the exporter wrote opset {written} instead, so no file is kept; "
                             f"pass --opset {written}.")
    print(f"Wrote {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB): inputs image (B, 3, {used.img_size}, "
          f"{used.img_size}) float32, input_ids (B, 20) int64, attention_mask (B, 20) int64; outputs "
          f"{', '.join(outputs)}")
    if not args.no_verify:
        verify(args.out, model, used.img_size, tokenizer, args.atol)


if __name__ == "__main__":
    cli.run_cli(main, get_parser())
