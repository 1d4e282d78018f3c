"""Does training against the keyword shortcut help? Language probes per training recipe (issues 12 and 18).

    python bench/bench_language.py --out runs/bench_language            # the measured benchmark
    python bench/bench_language.py --out /tmp/bl --budget tiny          # a minute-long smoke run

Generates a SynRef set (REFER layout, with counterfactuals), fine-tunes the shipped pretrained nano
backbone with the quickstart's recipe at 24 epochs without its learning-rate ramp
(bench/training_runs.py BUDGETS: 64 px, window 4,
frozen MiniLM with cached features, bf16 autocast, batch 32, AdamW 1e-3 with the Swin at 0.2x, CE + Dice)
once per training option at the same number of epochs, then evaluates each best checkpoint on val under every language probe
(tools/probes.py: clean, swap, category, empty, shuffle, drop-category, counterfactual). Prints one
table, probes side by side, and writes it to <out>/bench_language.md and .json. Recipes (--recipes
picks some):

- baseline: the released training (no option);
- negatives: --negative-prob 0.3 (exact counterfactual expressions with empty targets);
- word-mask: --word-mask-prob 0.15 (whole words replaced by [MASK]);
- both: the two options together;
- negatives + head: negatives with the no-target head deciding "nothing matches";
- negatives 0.1 + probe head: a third of the negatives, and the head only reads the features the mask
  learns (--no-target-grad-scale 0), so that its loss does not pull on the shared model;
- negatives 0.3 + probe head: the probe head with three times the negatives to learn from;
- negatives 0.1 + head at 0.1x: a tenth of the head's gradient reaches the shared model, so the
  features can learn a little of "nothing matches" without the mask paying for it.

Aim (issue 18): a recipe whose counterfactual false-positive rate is >= 40 points below the
baseline's, with clean val mean IoU at most 2 points lower.
Finished steps are skipped when rerun with the same commands (see bench/training_runs.py).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import training_runs  # noqa: E402
from machine import machine_line  # noqa: E402

RECIPES = {
    "baseline": [],
    "negatives": ["--negative-prob", "0.3"],
    "word-mask": ["--word-mask-prob", "0.15"],
    "both": ["--negative-prob", "0.3", "--word-mask-prob", "0.15"],
    "negatives + head": ["--negative-prob", "0.3", "--no-target-head"],
    "negatives 0.1 + probe head": ["--negative-prob", "0.1", "--no-target-head", "--no-target-grad-scale", "0"],
    "negatives 0.3 + probe head": ["--negative-prob", "0.3", "--no-target-head", "--no-target-grad-scale", "0"],
    "negatives 0.1 + head at 0.1x": ["--negative-prob", "0.1", "--no-target-head", "--no-target-grad-scale", "0.1"],
}
PROBES = "clean,swap,category,empty,shuffle,drop-category,counterfactual"
DATASET = "synref"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_language", help="output directory")
    parser.add_argument("--budget", choices=sorted(training_runs.BUDGETS), default="standard",
                        help="preset of the size flags below (which override it)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    training_runs.add_recipe_arguments(parser, {k: None for k in training_runs.BUDGETS["standard"]}, training_runs.BUDGETS["standard"])
    opts = parser.parse_args(argv)
    for key, value in training_runs.BUDGETS[opts.budget].items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.recipes = [r.strip() for r in opts.recipes.split(",") if r.strip()]
    unknown = [r for r in opts.recipes if r not in RECIPES]
    if unknown or not opts.recipes:
        parser.error(f"--recipes: unknown {unknown or 'empty list'}; choose from {', '.join(RECIPES)}")
    opts.out = os.path.abspath(opts.out)
    return opts


def probe(opts, name, checkpoint):
    folder = os.path.join(opts.out, name, "probes")
    # The probes build the model of the checkpoint: a recipe's architecture flag (the no-target head) goes along.
    architecture = [flag for flag in RECIPES[name] if flag == "--no-target-head"]
    # A head's per-sample logits are kept (predictions.jsonl) to trace its threshold afterwards (head_trade_off).
    keep = ["--save-predictions", os.path.join(folder, "predictions")] if architecture else []
    cmd = [sys.executable, "tools/probes.py", *training_runs.model_flags(opts.out, DATASET, opts), *architecture,
           "--split", "val",
           "--resume", checkpoint, "--probes", PROBES, "--probe-out", folder, "--eval-batch-size", "32", *keep]
    stamp = training_runs.run_step(cmd, folder, log_name="probes_output.txt", threads=opts.threads)
    with open(os.path.join(folder, "probes.json")) as handle:
        stored = json.load(handle)
    # Points, as the tables and aims below use them (probes.json holds fractions, metrics.JSON_UNITS).
    stored["indicators"] = {name + (" (%)" if name.startswith("counterfactual") else ""):
                            value if "/" in name else 100 * value for name, value in stored["indicators"].items()}
    return {**stored, "seconds": stamp["wall_s"]}


ROWS = (  # (label, how to read it from one recipe's {"train", "probes"})
    ("train CPU seconds", lambda r: r["train"]["cpu_s"], "{:.0f}"),
    ("train wall seconds", lambda r: r["train"]["wall_s"], "{:.0f}"),
    *[(f"{p} mean IoU", lambda r, p=p: 100 * r["probes"]["results"][p]["mean_iou"], "{:.2f}")
      for p in ("clean", "clean, swap objects", "swap", "category", "empty", "shuffle", "drop-category")],
    ("clean overall IoU", lambda r: 100 * r["probes"]["results"]["clean"]["overall_iou"], "{:.2f}"),
    ("counterfactual: samples", lambda r: r["probes"]["results"]["counterfactual"]["num_samples"], "{}"),
)


def table(results):
    """Markdown: one column per recipe, rows = training time, probe mean IoUs, indicators."""
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, read, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt.format(read(results[n])) for n in names) + " |")
    for indicator in results[names[0]]["probes"]["indicators"]:
        values = [results[n]["probes"]["indicators"].get(indicator) for n in names]
        lines.append(f"| {indicator} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def verdict(results):
    """Which recipes meet the aim against the baseline (None when the baseline was not run)."""
    if "baseline" not in results:
        return None
    base = results["baseline"]["probes"]

    def key(r, name):
        return r["indicators"][name]

    fp, gap = "counterfactual false-positive rate (%)", "reading gap (clean - swap, same objects)"
    found = {}
    for name, r in results.items():
        if name == "baseline":
            continue
        p = r["probes"]
        found[name] = {
            "false_positive_drop_points": key(base, fp) - key(p, fp),
            "reading_gap_change_points": key(p, gap) - key(base, gap),
            "clean_mean_iou_change_points": 100 * (p["results"]["clean"]["mean_iou"] - base["results"]["clean"]["mean_iou"]),
        }
        f = found[name]
        f["meets_aim"] = f["false_positive_drop_points"] >= 40 and f["clean_mean_iou_change_points"] >= -2
    return found


def read_rows(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def head_trade_off(clean_rows, counterfactual_rows, floor):
    """The no-target head's threshold that gives the fewest counterfactual false positives while clean
    mean IoU (a rejected expression scores 0) stays >= `floor` (a fraction): {"threshold", "clean_mean_iou",
    "false_positive_rate"}, or None when no threshold keeps the floor.

    Rows are predictions.jsonl rows of the clean and counterfactual probes (I, U, no_target_logit). The
    threshold is chosen on the same val expressions it is then scored on: read it as the best this head
    can do, not as a held-out number.
    """
    import numpy as np

    arrays = _head_arrays(clean_rows, counterfactual_rows)
    _, clean_logits, false_logits = arrays
    best = None
    for threshold in np.unique(np.concatenate([clean_logits, false_logits, [np.inf]])):
        clean, false_positives = _scored_at(arrays, threshold)
        if clean >= floor and (best is None or false_positives < best["false_positive_rate"]):
            best = {"threshold": float(threshold), "clean_mean_iou": clean, "false_positive_rate": false_positives}
    return best


def _head_arrays(clean_rows, counterfactual_rows):
    """(clean mask IoUs, clean head logits, counterfactual head logits) as arrays, read once per search."""
    import numpy as np

    return (np.array([r["I"] / r["U"] if r["U"] else 0.0 for r in clean_rows]),
            np.array([r["no_target_logit"] for r in clean_rows]),
            np.array([r["no_target_logit"] for r in counterfactual_rows]))


def _scored_at(arrays, threshold):
    """(clean mean IoU, counterfactual false-positive rate) at one head threshold: a clean expression whose
    logit is above it is rejected and scores 0; a counterfactual at or below it is a false positive."""
    import numpy as np

    mask_iou, clean_logits, false_logits = arrays
    return float(np.where(clean_logits > threshold, 0.0, mask_iou).mean()), float((false_logits <= threshold).mean())


def cross_fitted_trade_off(clean_rows, counterfactual_rows, floor):
    """head_trade_off scored on expressions it was not tuned on: val split by the parity of ref_id (both
    probes of one object fall in the same half), each half decided by the threshold chosen on the other,
    the halves pooled. {"clean_mean_iou", "false_positive_rate", "thresholds"}, or None when a half has no
    threshold that keeps the floor. Rows need "ref_id" besides what head_trade_off reads."""
    halves = [([r for r in clean_rows if r["ref_id"] % 2 == parity],
               [r for r in counterfactual_rows if r["ref_id"] % 2 == parity]) for parity in (0, 1)]
    chosen = [head_trade_off(*tuning_half, floor) for tuning_half in reversed(halves)]
    if None in chosen:
        return None
    thresholds = [best["threshold"] for best in chosen]
    # Score each half at its own threshold, then pool the halves weighted by their sizes.
    parts = [(_scored_at(_head_arrays(clean, false), t), len(clean), len(false)) for (clean, false), t in zip(halves, thresholds)]
    return {"clean_mean_iou": sum(s[0] * n for s, n, _ in parts) / len(clean_rows),
            "false_positive_rate": sum(s[1] * m for s, _, m in parts) / len(counterfactual_rows),
            "thresholds": thresholds}


def tuned_heads(opts, results, max_cost=0.02):
    """For each head recipe, at the floor baseline clean mean IoU - `max_cost` (needs the baseline):
    {"val": head_trade_off (tuned and scored on all val), "cross_fitted": cross_fitted_trade_off}."""
    if "baseline" not in results:
        return {}
    floor = results["baseline"]["probes"]["results"]["clean"]["mean_iou"] - max_cost
    found = {}
    for name in [n for n in results if "--no-target-head" in RECIPES[n]]:
        folder = os.path.join(opts.out, name, "probes", "predictions")
        rows = [read_rows(os.path.join(folder, probe, "predictions.jsonl")) for probe in ("clean", "counterfactual")]
        found[name] = {"val": head_trade_off(*rows, floor), "cross_fitted": cross_fitted_trade_off(*rows, floor)}
    return found


def main():
    opts = parse_args()
    print(machine_line(opts.threads), flush=True)
    print(f"==> generating {opts.num_images} SynRef images", flush=True)
    training_runs.generate(opts.out, DATASET, opts.num_images, opts.gen_img_size, opts.seed)
    results = {}
    for name in opts.recipes:  # one at a time: each training gets the whole machine
        print(f"==> {name}: training {opts.epochs} epochs {' '.join(RECIPES[name]) or '(no option)'}", flush=True)
        trained = training_runs.train(opts.out, name, DATASET, opts, RECIPES[name])
        print(f"==> {name}: probes on val", flush=True)
        results[name] = {"flags": RECIPES[name], "train": trained, "probes": probe(opts, name, trained["checkpoint"])}
    text = table(results)
    aim = verdict(results)
    if aim:
        text += "\nAgainst the baseline (points; aim: false positives -40 or better, clean >= -2):\n\n"
        text += "\n".join(f"- {n}: counterfactual false positives {-v['false_positive_drop_points']:+.1f}, reading gap "
                          f"{v['reading_gap_change_points']:+.1f}, clean mean IoU {v['clean_mean_iou_change_points']:+.2f}"
                          f" -> {'meets the aim' if v['meets_aim'] else 'does not meet the aim'}" for n, v in aim.items())
        text += "\n"
    tuned = tuned_heads(opts, results)
    for name, found in tuned.items():
        best, fitted = found["val"], found["cross_fitted"]
        text += (f"\n{name}, head threshold chosen on val for clean mean IoU >= baseline - 2: " + (
            "no threshold keeps clean mean IoU there.\n" if best is None else
            f"threshold {best['threshold']:.3f}, clean mean IoU {100 * best['clean_mean_iou']:.2f}, counterfactual "
            f"false positives {100 * best['false_positive_rate']:.1f}%.\n"))
        if fitted is not None:
            text += (f"Each half of val (by ref_id) decided by the threshold chosen on the other half: clean mean IoU "
                     f"{100 * fitted['clean_mean_iou']:.2f}, counterfactual false positives "
                     f"{100 * fitted['false_positive_rate']:.1f}% (thresholds {fitted['thresholds'][0]:.3f}, "
                     f"{fitted['thresholds'][1]:.3f}).\n")
    print("\n" + text)
    with open(os.path.join(opts.out, "bench_language.md"), "w") as handle:
        handle.write(f"# Language probes per training recipe (SynRef val, {opts.num_images} images, "
                     f"{opts.epochs} epochs each)\n\n{text}")
    with open(os.path.join(opts.out, "bench_language.json"), "w") as handle:
        json.dump({"settings": {k: v for k, v in vars(opts).items()}, "results": results,
                   "against_baseline": {name: {k.replace("_points", ""): v / 100 if k.endswith("_points") else v
                                               for k, v in found.items()} for name, found in (aim or {}).items()},
                   "head_threshold_within_2_points": tuned,
                   "units": "fractions (metrics.JSON_UNITS); seconds"},
                  handle, indent=2)
    print(f"Written: {os.path.join(opts.out, 'bench_language.md')} and bench_language.json")


if __name__ == "__main__":
    main()
