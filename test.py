"""Evaluate a LAVT checkpoint on one split: mean IoU, precision@0.5..0.9 and overall IoU.

Works with this project's checkpoints and with the ones released with the LAVT paper, e.g.
`python test.py --model lavt --swin_type base --dataset refcoco --split val
 --resume ./checkpoints/refcoco.pth --workers 4 --ddp_trained_weights --window12 --img_size 480`.
Prints the released test.py's report and writes the same numbers to a JSON file. Runs in one
process or distributed (`torchrun --nproc_per_node N test.py ...`) with identical numbers.
"""
import json
import os
import time

import engine
import utils
from args import get_parser
from data.dataset_refer_bert import ReferDataset
from transforms import get_transform


def results_path(args):
    if args.results_json:
        return args.results_json
    stem = os.path.splitext(args.resume)[0]
    return f"{stem}_{args.dataset}_{args.splitBy}_{args.split}_{args.eval_protocol}.json"


def main(args):
    if not args.resume:
        raise ValueError("--resume: pass the checkpoint (.pth) to evaluate.")
    if not os.path.exists(args.resume):  # before the results directory next to it is created
        raise FileNotFoundError(f"--resume {args.resume}: no such checkpoint file; pass the .pth file to evaluate.")
    device = utils.resolve_device(args.device)
    _, _, device = utils.init_distributed_mode(device, args.dist_timeout)
    amp_dtype = engine.amp_dtype_for(args.amp, device)
    output = results_path(args)
    if utils.is_main_process():
        utils.check_writable_dir(os.path.dirname(os.path.abspath(output)), "--results-json")
        if args.save_predictions:
            utils.check_writable_dir(args.save_predictions, "--save-predictions")
    # The data first: a wrong split or path is reported before a large checkpoint is read.
    dataset = ReferDataset(args, image_transforms=get_transform(args.img_size), split=args.split, eval_mode=True)
    model, text_encoder = engine.load_trained_model(args, device)
    started = time.time()
    with utils.out_of_memory_hint(args, "--eval-batch-size"):
        summary = engine.evaluate(model, text_encoder, dataset, device, eval_batch_size=args.eval_batch_size,
                                  protocol=args.eval_protocol, amp_dtype=amp_dtype,
                                  prediction_dir=args.save_predictions, workers=args.workers)
    if utils.is_main_process():
        print(engine.format_report(summary))
        record = {
            "checkpoint": os.path.abspath(args.resume), "model": args.model, "swin_type": args.swin_type,
            "dataset": args.dataset, "splitBy": args.splitBy, "split": args.split,
            "protocol": args.eval_protocol, "img_size": args.img_size,
            **{key: (value * 100 if key != "num_samples" else value) for key, value in summary.items()},
            "units": "percent", "seconds": round(time.time() - started, 2),
        }
        with open(output, "w") as handle:
            json.dump(record, handle, indent=2)
        print(f"Results written to {output}")
    utils.cleanup_distributed()


if __name__ == "__main__":
    utils.run_cli(main, get_parser())
