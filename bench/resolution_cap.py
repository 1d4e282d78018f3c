"""How much mean IoU can a model reach at a given input size? The cap set by LAVT's output stride.

    python bench/resolution_cap.py --refer_data_root runs/quickstart/data --sizes 64 96 128

LAVT's decoder predicts logits at 1/4 of the input size, and the evaluation upsamples them
bilinearly (align_corners=True, as lib/segmentation.py does) before thresholding. Small targets
then cannot be outlined exactly whatever the model knows. For every object of --split, this script
fits the best possible logit map at the decoder's resolution to the object's target mask, exactly as
the evaluation resizes it (`get_transform(size)`), by gradient descent on the binary cross-entropy of
the upsampled logits (--steps Adam steps, all objects at once), and reports the mean IoU and
precision of those masks, every expression counted as the evaluation counts it. A perfect model at
that size scores about this; it is an estimate from above of what a recipe at that size can reach,
not a bound a model can exceed only by luck (the fit is not exhaustive, so the true cap may be a
little higher).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import add_threads_argument, apply_threads, machine_line  # noqa: E402

OUTPUT_STRIDE = 4  # LAVT's decoder output: the first stage's resolution


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refer_data_root", required=True, help="a REFER-layout root (e.g. the quickstart's data)")
    parser.add_argument("--dataset", default="synref")
    parser.add_argument("--splitBy", default="unc")
    parser.add_argument("--split", default="val")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128], help="input sizes (img_size)")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of the logit fit")
    add_threads_argument(parser)
    return parser.parse_args(argv)


def targets_at(dataset, size):
    """(N, size, size) float targets of every object, resized as the evaluation resizes them."""
    from transforms import get_transform

    dataset.image_transforms = get_transform(size)
    return torch.stack([dataset[i][1] for i in range(len(dataset))]).float()


def best_stride_masks(targets, steps, stride=OUTPUT_STRIDE):
    """Binary masks from the logit map at 1/stride that best fits each target after upsampling."""
    size = targets.shape[-1]
    logits = torch.zeros(targets.shape[0], 1, -(-size // stride), -(-size // stride), requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.5)
    for _ in range(steps):
        upsampled = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=True)[:, 0]
        loss = F.binary_cross_entropy_with_logits(upsampled, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=True)[:, 0] > 0


def cap(targets, masks, weights):
    """Mean IoU and P@0.5/0.9 of `masks` against `targets`, each object counted `weights` times."""
    truth = targets > 0.5
    intersection = (masks & truth).flatten(1).sum(1).double()
    union = (masks | truth).flatten(1).sum(1).double()
    iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    share = weights.double() / weights.sum()
    return {"mean_iou": float((iou * share).sum()), "precision@0.5": float(((iou >= 0.5) * share).sum()),
            "precision@0.9": float(((iou >= 0.9) * share).sum())}


def main(argv=None):
    opts = parse_args(argv)
    apply_threads(opts.threads)
    from args import get_test_parser
    from data.dataset_refer_bert import ReferDataset

    args = get_test_parser().parse_args(["--dataset", opts.dataset, "--splitBy", opts.splitBy, "--refer_data_root",
                                         opts.refer_data_root, "--bert_tokenizer", "minilm", "--ck_bert", "minilm"])
    dataset = ReferDataset(args, split=opts.split, eval_mode=True)
    weights = torch.tensor([len(sentences) for sentences in dataset.sentences])
    print(machine_line(opts.threads))
    print(f"{opts.dataset} {opts.split}: {len(dataset)} objects, {int(weights.sum())} expressions; "
          f"output stride {OUTPUT_STRIDE}, {opts.steps} fit steps\n")
    print("| input size | decoder output | mean IoU cap | P@0.5 cap | P@0.9 cap |\n|---|---|---|---|---|")
    for size in opts.sizes:
        targets = targets_at(dataset, size)
        found = cap(targets, best_stride_masks(targets, opts.steps), weights)
        side = -(-size // OUTPUT_STRIDE)
        print(f"| {size} | {side} x {side} | {100 * found['mean_iou']:.1f} | {100 * found['precision@0.5']:.1f} | "
              f"{100 * found['precision@0.9']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
