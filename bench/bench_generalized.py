"""Saying "nothing": a nano LAVT with and without the no-target head on the generalized set (issue 11).

    python bench/bench_generalized.py --out runs/bench_generalized            # the measured benchmark
    python bench/bench_generalized.py --out /tmp/bg --budget tiny             # a smoke run

Generates a gRefCOCO-layout SynRef set (`python -m data.synthetic --generalized`: about 20% of
the refs refer to nothing, 20% to several objects), fine-tunes the shipped pretrained nano backbone
with the quickstart's recipe at 24 epochs without its learning-rate ramp (bench/training_runs.py
BUDGETS) once per recipe, for
the same number of epochs -- the released model (its "no target" is an empty predicted mask),
`--no-target-head` (a classifier on the fused top stage and the decoder's last map, lib/no_target.py,
trained with a binary loss beside the mask loss), the head with that loss weighted 5
(`--no-target-loss-weight 5`) and the "probe head", whose loss does not train the shared model
(`--no-target-grad-scale 0`) -- and scores each best checkpoint with ReLA's metrics (metrics.py: gIoU, cIoU, N-acc, T-acc,
Pr@0.7-0.9) on val and testC (held-out colour-shape pairs). Prints one table and writes
<out>/bench_generalized.md and .json. Aim (issue 11): with the head, N-acc >= 80 and T-acc >= 90.
Finished steps are skipped when rerun with the same commands (see bench/training_runs.py).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import training_runs  # noqa: E402
from machine import machine_line  # noqa: E402

import metrics  # noqa: E402

RECIPES = {"released": [], "no-target head": ["--no-target-head"],
           "head with loss weight 5": ["--no-target-head", "--no-target-loss-weight", "5"],
           "probe head": ["--no-target-head", "--no-target-grad-scale", "0"]}
DATASET = "gsynref"
SPLITS = ("val", "testC")
METRICS = ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.9", "mean_iou")
MIN_T_ACC = 0.9  # the aim's T-acc, at which a head's threshold is chosen on val


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_generalized", help="output directory")
    parser.add_argument("--budget", choices=sorted(training_runs.BUDGETS), default="standard",
                        help="preset of the size flags below (which override it)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    training_runs.add_recipe_arguments(parser, {k: None for k in training_runs.BUDGETS["standard"]}, training_runs.BUDGETS["standard"])
    opts = parser.parse_args(argv)
    opts.recipes = [r.strip() for r in opts.recipes.split(",") if r.strip()]
    unknown = [r for r in opts.recipes if r not in RECIPES]
    if unknown or not opts.recipes:
        parser.error(f"--recipes: unknown {unknown or 'empty list'}; choose from {', '.join(RECIPES)}")
    for key, value in training_runs.BUDGETS[opts.budget].items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.out = os.path.abspath(opts.out)
    return opts


def score(opts, checkpoint, split):
    """(ReLA's generalized metrics of `checkpoint` on `split` (fractions; see metrics.summarize_generalized),
    the per-sample records)."""
    import torch

    import cli
    from args import get_test_parser
    from data.dataset_refer_bert import ReferDataset
    from data.evaluation import evaluate_dataset
    from lib.architecture import load_model
    from transforms import get_transform

    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    args = get_test_parser().parse_args([*training_runs.model_flags(opts.out, DATASET, opts), "--split", split,
                                         "--resume", str(checkpoint)])
    device = torch.device("cpu")
    model = load_model(args, device)  # as test.py: the head, if any, is read off the checkpoint
    dataset = ReferDataset(args, image_transforms=get_transform(opts.img_size), split=split, eval_mode=True)
    # A generalized set: summarize_for gives ReLA's metrics (metrics.summarize_generalized).
    return evaluate_dataset(model, dataset, device, max_sentences=32, amp_dtype=cli.amp_dtype_for(opts.amp, device),
                            print_freq=10**9)


def tuned_head(scored, min_t_acc=MIN_T_ACC):
    """The head's scores with its threshold chosen on val (the lowest logit threshold keeping val T-acc >= min_t_acc),
    then applied unchanged to every split: {"threshold", "scores": {split: summary}}."""
    threshold = metrics.head_threshold_for_t_acc(scored["val"][1], min_t_acc)
    return {"threshold": threshold, "scores": {split: metrics.summarize_generalized(
        metrics.with_head_threshold(records, threshold)) for split, (_, records) in scored.items()}}


def cross_fitted_head(records, min_t_acc=MIN_T_ACC):
    """Val with a threshold it was not tuned on: val in two halves (dataset order, so images stay
    mostly whole), each half decided by the threshold `head_threshold_for_t_acc` picks on the other;
    ReLA's metrics of the pooled halves, plus "thresholds": the one each half was decided with."""
    half = len(records) // 2
    halves = (records[:half], records[half:])
    thresholds = [metrics.head_threshold_for_t_acc(other, min_t_acc) for other in reversed(halves)]
    decided = [r for part, t in zip(halves, thresholds) for r in metrics.with_head_threshold(part, t)]
    return {**metrics.summarize_generalized(decided), "thresholds": thresholds}


def table(results):
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in (("cpu_s", "train CPU seconds"), ("wall_s", "train wall seconds")):
        lines.append(f"| {label} | " + " | ".join(f"{results[n]['train'][key]:.0f}" for n in names) + " |")
    for split in SPLITS:
        first = results[names[0]]["scores"][split]
        lines.append(f"| **{split}** ({first['num_samples']} samples, {first['num_no_target_samples']} no-target) | "
                     + " | ".join("" for _ in names) + " |")
        for metric in METRICS:
            values = [results[n]["scores"][split][metric] for n in names]
            label = "mean IoU (target samples)" if metric == "mean_iou" else metric
            lines.append(f"| {split} {label} | " + " | ".join("n/a" if v is None else f"{100 * v:.2f}" for v in values)
                         + " |")
    return "\n".join(lines) + "\n"


def main():
    opts = parse_args()
    print(machine_line(opts.threads), flush=True)
    print(f"==> generating {opts.num_images} generalized SynRef images", flush=True)
    training_runs.generate(opts.out, DATASET, opts.num_images, opts.gen_img_size, opts.seed, generalized=True)
    results = {}
    for name in opts.recipes:  # one at a time: each training gets the whole machine
        flags = RECIPES[name]
        folder_name = name.replace(", ", "-").replace(" ", "-")
        print(f"==> {name}: training {opts.epochs} epochs {' '.join(flags)}", flush=True)
        trained = training_runs.train(opts.out, folder_name, DATASET, opts, flags)
        print(f"==> {name}: scoring", flush=True)
        scored = {split: score(opts, trained["checkpoint"], split) for split in SPLITS}
        results[name] = {"flags": flags, "train": trained, "scores": {split: s for split, (s, _) in scored.items()}}
        if "--no-target-head" in flags:
            # The same checkpoint, its head's threshold chosen on val for T-acc >= 90 (testC is not looked at).
            tuned = tuned_head(scored)
            results[f"{name}, val-tuned threshold"] = {"flags": flags, "train": trained, **tuned,
                                                       "val_cross_fitted": cross_fitted_head(scored["val"][1])}
    text = table(results)
    met = {}
    for name in [r for r in results if "--no-target-head" in results[r]["flags"]]:
        head = results[name]["scores"]["val"]
        met[name] = (head["N-acc"] or 0) >= 0.8 and (head["T-acc"] or 0) >= 0.9
        threshold = f", head logit threshold {results[name]['threshold']:.3f}" if "threshold" in results[name] else ""
        text += (f"\nAim (with the head, val N-acc >= 80 and T-acc >= 90), {name}: "
                 f"{'met' if met[name] else 'not met'} (N-acc {100 * (head['N-acc'] or 0):.2f}, "
                 f"T-acc {100 * (head['T-acc'] or 0):.2f}{threshold}).\n")
        if "val_cross_fitted" in results[name]:
            fitted = results[name]["val_cross_fitted"]
            text += (f"Threshold from the other half of val (each half scored with the threshold tuned on the other): "
                     f"N-acc {100 * (fitted['N-acc'] or 0):.2f}, T-acc {100 * (fitted['T-acc'] or 0):.2f}, "
                     f"gIoU {100 * (fitted['gIoU'] or 0):.2f} (thresholds {fitted['thresholds'][0]:.3f}, "
                     f"{fitted['thresholds'][1]:.3f}).\n")
    print("\n" + text)
    with open(os.path.join(opts.out, "bench_generalized.md"), "w") as handle:
        handle.write(f"# No-target head on the generalized SynRef set ({opts.num_images} images, "
                     f"{opts.epochs} epochs each)\n\n{text}")
    with open(os.path.join(opts.out, "bench_generalized.json"), "w") as handle:
        json.dump({"settings": vars(opts), "results": results, "aim_met": met}, handle, indent=2)
    print(f"Written: {os.path.join(opts.out, 'bench_generalized.md')} and bench_generalized.json")


if __name__ == "__main__":
    main()
