"""The newcomer path, end to end on one CPU with nothing downloaded (run by `make quickstart`).

1. generates the synthetic referring benchmark (`python -m data.synthetic`, REFER layout);
2. trains a `nano` LAVT with the packaged MiniLM text encoder (`train.py`, one process);
3. evaluates the best checkpoint on val / testA / testB / testC, then runs the language probes of
   tools/probes.py on val (clean, swap, category, empty, shuffle, drop-category, counterfactual):
   a model that reads the expression must collapse when each expression is swapped for the
   expression of a DIFFERENT object in the same image;
4. writes results.md / results.json, probes.md, curve.png (loss and val IoU per epoch) and
   pictures of the best and worst val predictions under --out.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SPLITS = ("val", "testA", "testB", "testC")
PROBES = "clean,swap,category,empty,shuffle,drop-category,counterfactual"
# Sentences per evaluation batch: 64 evaluated val 1.4x faster than 16 on the 2 cores, same numbers.
EVAL_BATCH = 64
# The recipe: the best of the candidates tried on 2 CPU cores within the quickstart's budget
# (docs/synthetic.md lists each with its result). It fine-tunes the shipped Swin pretrained on
# generated scenes, which was also taught where each object is and its rank from each side
# (tools/pretrain_backbone.py --position-bins 4 --rank-tasks), as LAVT fine-tunes an ImageNet Swin; that Swin learns at a fifth of the rate
# of the fusion and decoder, which start from scratch. Without stochastic depth the small model
# learns faster; batch 32 trains 1.3x more images per CPU second. Against the keyword shortcut, one
# expression in ten is swapped for a counterfactual with an empty target and a no-target head learns
# to reject those; a tenth of its gradient reaches the shared features (--no-target-grad-scale 0.1),
# enough for them to carry "nothing matches": on the language benchmark (24 epochs) this met the
# issue's aim on two seeds at no cost to the mask, where a head that only reads the features (0) met
# it on one (docs/benchmarks.md). At these 12 epochs four seeds gave -2.0 +- 1.8 points of val against
# the recipe before, within what draws vary (docs/synthetic.md, rows R0.1). --negative-prob 0 trains
# without them (no head), the recipe before. The rate ramps up over the first epoch
# (--lr-warmup-epochs 1): at full rate from the first step, the parts that start from scratch left
# some draws on a plateau near 40 for most of the run; with the ramp six draws gave 58.9-62.2
# against 46.4-61.5 (docs/synthetic.md, rows WU). The pixel-word attention of each stage has four
# heads (LAVT's --mha 4-4-4-4; released: one), so that a pixel can gather its shape word and its
# position word apart: +3.9 points over four sets at the same cost per step (rows MH).
RECIPE = {
    "swin_type": "nano", "num_images": 2500, "gen_img_size": 128, "img_size": 64, "window_size": 4, "batch_size": 32,
    "epochs": 12, "lr": 1e-3, "weight_decay": 1e-2, "drop_path": 0.0, "loss": "ce+dice", "amp": "bf16",
    "pretrained": "pretrained_weights/swin_nano_synref_rank.pth", "swin_lr_scale": 0.2,
    "negative_prob": 0.1, "no_target_grad_scale": 0.1, "hflip_prob": 0.0, "lr_warmup_epochs": 1.0, "mha": "4-4-4-4",
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    for key, value in RECIPE.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value, dest=key)
    return parser.parse_args()


def remedy_flags(opts):
    """train.py's flags against the keyword shortcut: negatives with a no-target head, or none."""
    if opts.negative_prob <= 0:
        return []
    return ["--negative-prob", str(opts.negative_prob), "--no-target-head",
            "--no-target-grad-scale", str(opts.no_target_grad_scale)]


def step(message):
    print(f"\n==> {message}", flush=True)


def run(cmd):
    print("$ " + shlex.join(cmd), flush=True)  # quoted: an empty --mha "" stays visible
    subprocess.run(cmd, cwd=REPO, check=True)


def common_flags(opts, data_root):
    return ["--device", "cpu", "--model", "lavt", "--swin_type", opts.swin_type, "--window-size", str(opts.window_size),
            "--ck_bert", "minilm", "--bert_tokenizer", "minilm", "--dataset", "synref", "--splitBy", "unc",
            "--refer_data_root", data_root, "--img_size", str(opts.img_size), "--workers", "0",
            "--amp", opts.amp, "--eval-batch-size", str(EVAL_BATCH), "--mha", opts.mha]


def plot_curve(metrics_path, out_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_path)]
    epochs = [r["epoch"] + 1 for r in rows]
    fig, left = plt.subplots(figsize=(6, 3.5))
    left.plot(epochs, [r["train_loss"] for r in rows], "o-", color="tab:red", label="train loss")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss", color="tab:red")
    right = left.twinx()
    right.plot(epochs, [100 * r["val_overall_iou"] for r in rows], "s-", color="tab:blue", label="val overall IoU")
    right.plot(epochs, [100 * r["val_mean_iou"] for r in rows], "^--", color="tab:cyan", label="val mean IoU")
    right.set_ylabel("val IoU (%)", color="tab:blue")
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def plot_overlays(dataset, prediction_dir, out_paths, count=4):
    """The `count` best and worst val predictions (image, expression, predicted mask, ground truth),
    written to out_paths = (best picture, worst picture)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    rows = [json.loads(line) for line in open(os.path.join(prediction_dir, "predictions.jsonl"))]
    rows.sort(key=lambda r: r["IoU"])
    for chosen, out_path in zip((rows[-count:][::-1], rows[:count]), out_paths):
        _overlay_figure(plt, np, Image, dataset, prediction_dir, chosen, out_path)


def _overlay_figure(plt, np, Image, dataset, prediction_dir, chosen, out_path):
    index_of = {ref_id: i for i, ref_id in enumerate(dataset.ref_ids)}
    fig, axes = plt.subplots(len(chosen), 3, figsize=(7.5, 2.6 * len(chosen)), squeeze=False)
    for row, axis in zip(chosen, axes):
        index = index_of[row["ref_id"]]
        info = dataset.image_info(index)
        image = Image.open(os.path.join(dataset.refer.IMAGE_DIR, info["file_name"])).convert("RGB")
        size = Image.open(os.path.join(prediction_dir, row["mask"])).size
        image = np.asarray(image.resize(size, Image.BILINEAR))
        pred = np.asarray(Image.open(os.path.join(prediction_dir, row["mask"]))) > 0
        truth = np.asarray(Image.fromarray(dataset.original_target(index) * 255).resize(size, Image.NEAREST)) > 0
        axis[0].imshow(image)
        axis[0].set_title(f"\"{row['sentence']}\"", fontsize=8)
        for ax, mask, name in ((axis[1], pred, f"prediction (IoU {100 * row['IoU']:.0f})"), (axis[2], truth, "ground truth")):
            shown = image.astype(float)
            shown[~mask] *= 0.2  # darken everything but the mask: visible whatever the object's colour
            ax.imshow(shown.astype(np.uint8))
            ax.set_title(name, fontsize=8)
        for ax in axis:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def mean_iou_by_expression_type(dataset, prediction_dir, data_root):
    """Mean IoU per SynRef expression type (attribute / location / relation / ordinal) of saved predictions."""
    from data.synthetic import expression_types

    type_of = expression_types(data_root, "synref")
    ious = {}
    for line in open(os.path.join(prediction_dir, "predictions.jsonl")):
        row = json.loads(line)
        sent_id = dataset.refer.Refs[row["ref_id"]]["sent_ids"][row["sentence_index"]]
        ious.setdefault(type_of[sent_id], []).append(row["IoU"])
    return {kind: {"num_samples": len(v), "mean_iou": sum(v) / len(v)} for kind, v in sorted(ious.items())}


def evaluate_split(model, dataset, device, amp_dtype, prediction_dir=""):
    from data.evaluation import evaluate_dataset

    return evaluate_dataset(model, dataset, device, max_sentences=EVAL_BATCH, amp_dtype=amp_dtype,
                            prediction_dir=prediction_dir, print_freq=10**9)


SPLIT_MEANING = {
    "val": "10% of the images, every expression type, objects like those of training",
    "testA": "attribute expressions only (\"the small red star\")",
    "testB": "location, relation and ordinal expressions only (\"the circle left of the red one\")",
    "testC": "targets whose colour-shape pair never appears as a target in training (compositional)",
}


def markdown_table(results):
    header = "| split | samples | mean IoU | overall IoU | P@0.5 | P@0.7 | P@0.9 |\n|---|---|---|---|---|---|---|\n"
    lines = []
    for name, r in results.items():
        lines.append(f"| {name} | {r['num_samples']} | {100 * r['mean_iou']:.2f} | {100 * r['overall_iou']:.2f} | "
                     f"{100 * r['precision@0.5']:.2f} | {100 * r['precision@0.7']:.2f} | {100 * r['precision@0.9']:.2f} |")
    return header + "\n".join(lines) + "\n"


def language_verdict(report):
    """One sentence: does the model read the words (reading gap >= 10 points of mean IoU)?"""
    gap = report["probe_indicators"].get("reading gap (clean - swap, same objects)")
    gap = None if gap is None else 100 * gap  # points, as printed
    if gap is None:
        return "**Language check: not measured** (no val image holds two referred objects)."
    passed = gap >= 10
    text = (f"**Language check: {'passed' if passed else 'NOT passed'}.** Giving each val object the expression "
            f"of another object of the same image changes mean IoU by {-gap:+.1f} points on those objects "
            f"(reading gap {gap:.1f}; passed means a gap of 10 points or more): ")
    return text + ("the model segments what the words say." if passed else
                   "the model mostly segments the same thing whatever the words say.")


def remedy_note(report):
    """What the remedy against the keyword shortcut did, or "" when the quickstart trained without it."""
    alone = report["results"].get("val, the mask alone")
    if alone is None:
        return ""
    recipe = report["recipe"]
    return (f"Trained against the keyword shortcut (`--negative-prob {recipe['negative_prob']} --no-target-head "
            f"--no-target-grad-scale {recipe['no_target_grad_scale']}`): the no-target head said \"nothing here\" for "
            f"{100 * alone['rejected_by_head']:.1f}% of the val expressions, which count as IoU 0 in every row but "
            f"\"val, the mask alone\" (every mask scored as if the head had not spoken).\n")


def results_markdown(report, probe_table):
    timings = report["timings"]
    lines = ["# Quickstart results (nano LAVT, synthetic benchmark, CPU)", "",
             "All numbers are percent. Every expression of a split is one sample. The splits of the generated set:",
             "", *[f"- **{split}**: {meaning}" for split, meaning in SPLIT_MEANING.items()], "",
             markdown_table(report["results"]),
             *filter(None, [remedy_note(report)]), language_verdict(report), "",
             "Val mean IoU by expression type: " + ", ".join(
                 f"{k} {100 * v['mean_iou']:.2f} ({v['num_samples']} samples)"
                 for k, v in report["val_by_expression_type"].items()) + ".", "",
             "The last point of curve.png's val IoU differs from the val row above: during training, validation "
             "uses ONE randomly drawn expression per object (as the released train.py does), the table EVERY "
             "expression.", "",
             "## Language probes on val (tools/probes.py)", "", probe_table,
             "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "",
             "## Best val predictions", "", "![best](best_predictions.png)", "",
             "## Worst val predictions", "", "![worst](worst_predictions.png)", ""]
    return "\n".join(lines)


def evaluate_checkpoint(opts, out, data_root):
    """(results per split, val by expression type, probe results, probe indicators, val dataset)."""
    import probes
    import torch

    import cli
    import metrics
    from data.dataset_refer_bert import ReferDataset
    from lib.architecture import load_model
    from transforms import get_transform

    checkpoint = os.path.join(out, "model_best_quickstart.pth")
    args = probes.get_probe_parser().parse_args([*common_flags(opts, data_root), "--resume", checkpoint])
    device = torch.device("cpu")
    model = load_model(args, device)
    amp_dtype = cli.amp_dtype_for(opts.amp, device)
    results, records, datasets = {}, {}, {}
    for split in SPLITS:
        datasets[split] = ReferDataset(args, image_transforms=get_transform(opts.img_size), split=split, eval_mode=True)
        prediction_dir = os.path.join(out, "predictions", split) if split == "val" else ""
        results[split], records[split] = evaluate_split(model, datasets[split], device, amp_dtype, prediction_dir)
        print(f"{split}: mean IoU {100 * results[split]['mean_iou']:.2f}, overall IoU {100 * results[split]['overall_iou']:.2f}")
    # The clean probe is val's own evaluation above: reuse it rather than evaluate val twice.
    probe_results = probes.run_probes(model, datasets["val"], probes.parse_probes(PROBES), device, args, amp_dtype,
                                      clean_records=records["val"])
    results["val, swapped expressions"] = probe_results["swap"]
    if any("no_target_logit" in r for r in records["val"]):  # a head: the masks as if it had never said "nothing"
        results["val, the mask alone"] = metrics.summarize(records["val"], head_decides=False)
        results["val, the mask alone"]["rejected_by_head"] = sum(bool(r["no_target_pred"]) for r in records["val"]) / len(
            records["val"])
    by_type = mean_iou_by_expression_type(datasets["val"], os.path.join(out, "predictions", "val"),
                                          data_root)
    return results, by_type, probe_results, probes.indicators(probe_results), datasets["val"]


def main():
    opts = parse_args()
    started = time.time()
    out = os.path.abspath(opts.out)
    data_root = os.path.join(out, "data")
    run_dir = os.path.join(out, "train")
    os.makedirs(out, exist_ok=True)
    timings = {}

    step("1/4 generating the synthetic referring benchmark")
    t = time.time()
    run([sys.executable, "-m", "data.synthetic", "--root", data_root, "--dataset", "synref",
         "--num-images", str(opts.num_images), "--img-size", str(opts.gen_img_size), "--seed", str(opts.seed)])
    timings["generate_s"] = time.time() - t

    step("2/4 training a nano LAVT on the CPU")
    t = time.time()
    run([sys.executable, "train.py", *common_flags(opts, data_root), "--batch-size", str(opts.batch_size),
         "--epochs", str(opts.epochs), "--lr", str(opts.lr), "--wd", str(opts.weight_decay),
         "--drop-path", str(opts.drop_path), "--loss", opts.loss, "--bert-trainable-layers", "0",
         "--pretrained_swin_weights", opts.pretrained, "--swin-lr-scale", str(opts.swin_lr_scale),
         "--seed", str(opts.seed), "--model_id", "quickstart", "--overwrite", "--run-dir", run_dir, "--output-dir", out,
         "--print-freq", "50", "--hflip-prob", str(opts.hflip_prob),
         "--lr-warmup-epochs", str(opts.lr_warmup_epochs), *remedy_flags(opts)])
    timings["train_s"] = time.time() - t

    step("3/4 evaluating the best checkpoint, then the language probes on val")
    t = time.time()
    results, by_type, probe_results, found, val_set = evaluate_checkpoint(opts, out, data_root)
    timings["evaluate_s"] = time.time() - t

    step("4/4 writing the report")
    write_report(opts, out, run_dir, timings, started, results, by_type, probe_results, found, val_set)


def write_report(opts, out, run_dir, timings, started, results, by_type, probe_results, found, val_set):
    import probes

    plot_curve(os.path.join(run_dir, "metrics.jsonl"), os.path.join(out, "curve.png"))
    plot_overlays(val_set, os.path.join(out, "predictions", "val"),
                  (os.path.join(out, "best_predictions.png"), os.path.join(out, "worst_predictions.png")))
    timings["total_s"] = time.time() - started
    import metrics

    drop = results["val"]["mean_iou"] - results["val, swapped expressions"]["mean_iou"]
    report = {"recipe": vars(opts), "results": results, "val_by_expression_type": by_type,
              "probes": probe_results, "probe_indicators": probes.indicators_as_fractions(found),
              "timings": {k: round(v, 1) for k, v in timings.items()}, "swap_drop_mean_iou": round(drop, 4),
              "units": metrics.JSON_UNITS}
    probe_table = probes.markdown(probe_results, found)
    print("\nLanguage probes on val:\n" + probe_table)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    with open(os.path.join(out, "probes.md"), "w") as handle:
        handle.write(probe_table)
    with open(os.path.join(out, "results.md"), "w") as handle:
        handle.write(results_markdown(report, probe_table))
    print(open(os.path.join(out, "results.md")).read())
    print(f"Outputs in {out}: results.md, results.json, probes.md, curve.png, best_predictions.png, "
          f"worst_predictions.png, predictions/val/, model_best_quickstart.pth, train/ (log.txt, metrics.jsonl)")


if __name__ == "__main__":
    main()
