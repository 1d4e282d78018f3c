"""Evaluate a LAVT checkpoint on one split: mean IoU, precision@0.5..0.9 and overall IoU.

Works with this project's checkpoints and with the ones released with the LAVT paper. The
architecture (variant, Swin size, window, text encoder, fusion, input size) is read from the
checkpoint, so `python test.py --dataset refcoco --split val --resume ./checkpoints/refcoco.pth`
is enough; the original command, with `--model lavt --swin_type base --window12 --img_size 480
--ddp_trained_weights`, works too, and a model flag that contradicts the checkpoint is an error.
Prints the released test.py's report and writes the same numbers to a JSON file. Runs in one
process or distributed (`torchrun --nproc_per_node N test.py ...`) with identical numbers.
"""
import json
import os
import time

import cli
import metrics
import utils
from args import get_test_parser
from data.dataset_refer_bert import ReferDataset
from data.evaluation import evaluate_dataset
from errors import UserInputError
from lib.architecture import load_model
from lib.checkpoint_io import load_checkpoint_file
from transforms import get_transform


def results_path(args):
    if args.results_json:
        return args.results_json
    stem = os.path.splitext(args.resume)[0]
    return f"{stem}_{args.dataset}_{args.splitBy}_{args.split}_{args.eval_protocol}_{args.img_size}px.json"


def write_results(path, args, summary, seconds):
    record = {
        "checkpoint": os.path.abspath(args.resume), "model": args.model, "swin_type": args.swin_type,
        "dataset": args.dataset, "splitBy": args.splitBy, "split": args.split,
        "protocol": args.eval_protocol, "img_size": args.img_size,
        **summary, "units": metrics.JSON_UNITS, "seconds": round(seconds, 2),
    }
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2)
    print(f"Results written to {path}")


def main(args):
    if not args.resume:
        raise UserInputError("--resume: pass the checkpoint (.pth) to evaluate.")
    checkpoint = load_checkpoint_file(args.resume, what="--resume")  # before any output directory is made
    _, _, device = utils.init_distributed_mode(cli.resolve_device(args.device), args.dist_timeout)
    amp_dtype = cli.amp_dtype_for(args.amp, device)
    # First the model: it fills in the options the dataset and the results file need (img_size, tokenizer).
    model = load_model(args, device, checkpoint, allow_nonfinite=args.allow_nonfinite)
    output = results_path(args)
    dataset = ReferDataset(args, image_transforms=get_transform(args.img_size), split=args.split, eval_mode=True,
                           mask_union=args.mask_union)
    if utils.is_main_process():
        cli.check_output_file(output, "--results-json")
    if args.save_predictions:  # every rank writes its own masks there
        cli.check_writable_dir(args.save_predictions, "--save-predictions")
    started = time.time()
    with cli.out_of_memory_hint("--eval-batch-size", args.eval_batch_size, args.img_size):
        summary, _ = evaluate_dataset(model, dataset, device, max_sentences=args.eval_batch_size,
                                      original_size=args.eval_protocol == "original", workers=args.workers,
                                      amp_dtype=amp_dtype, prediction_dir=args.save_predictions,
                                      no_target_pixels=args.no_target_pixels)
    if utils.is_main_process():
        print(metrics.report_for(summary))
        write_results(output, args, summary, time.time() - started)
    utils.cleanup_distributed()


if __name__ == "__main__":
    cli.run_cli(main, get_test_parser())
