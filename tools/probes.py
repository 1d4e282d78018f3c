"""Does the model read the words? Evaluate one checkpoint under language probes (data/probes.py).

    python tools/probes.py --resume model.pth --dataset refcoco --split val \
        --probes clean,swap,category,empty,shuffle,drop-category --probe-out probes/refcoco_val

Takes every flag of test.py and runs its evaluation once per probe (batched, and distributed
under torchrun with the same numbers as one process). Writes `probes.md` (table and indicators),
`probes.json` and `probes.png` (bar chart) into --probe-out; with --save-predictions, each
probe's masks and predictions.jsonl (holding the rewritten expressions) go to a subfolder.

Indicators (points of mean IoU unless said otherwise):
- reading gap = clean - swap, both on the objects that share their image with another one;
  large when the model segments what the words say rather than the most salient object;
- category reliance = category / clean (ratio): near 1 when the category word alone is enough;
- image-only share = empty / clean (ratio): what the model gets right without any words;
- order sensitivity = clean - shuffle: near 0 when word order is ignored;
- category-word dependence = clean - drop-category;
- counterfactual false-positive rate = share of counterfactual expressions (no object matches)
  for which the model still predicts a non-empty mask (percent; lower is better).
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cli  # noqa: E402
import metrics  # noqa: E402
import utils  # noqa: E402
from args import get_test_parser  # noqa: E402
from data.dataset_refer_bert import ReferDataset  # noqa: E402
from data.evaluation import evaluate_dataset  # noqa: E402
from data.probes import PROBES, rewrite  # noqa: E402
from errors import UserInputError  # noqa: E402
from lib.architecture import load_model  # noqa: E402
from lib.checkpoint_io import load_checkpoint_file  # noqa: E402
from transforms import get_transform  # noqa: E402

DEFAULT_PROBES = "clean,swap,category,empty,shuffle,drop-category"


def get_probe_parser():
    parser = get_test_parser()
    parser.description = "Evaluate a LAVT checkpoint under language probes"
    group = parser.add_argument_group("probes")
    group.add_argument("--probes", default=DEFAULT_PROBES,
                       help=f"comma-separated, from: {', '.join(PROBES)} (counterfactual: generated data only)")
    group.add_argument("--probe-seed", default=0, type=int, dest="probe_seed", help="seed of the shuffle probe")
    group.add_argument("--probe-out", default="probes", dest="probe_out", help="directory for probes.md/json/png")
    return parser


def parse_probes(text):
    probes = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise UserInputError(f"--probes {text!r}: unknown {unknown or 'empty list'}; choose from {', '.join(PROBES)}")
    if "swap" in probes and "clean" not in probes:
        probes.insert(0, "clean")  # the reading gap compares swap with clean on the same objects
    return probes


def indicators(results):
    """Derived indicators (see the module docstring) from per-probe summaries, in points / ratios."""
    def miou(name):
        return 100 * results[name]["mean_iou"] if name in results else None

    clean = miou("clean")
    found = {}
    if clean is not None:
        if "swap" in results:
            found["reading gap (clean - swap, same objects)"] = miou("clean, swap objects") - miou("swap")
        for probe, label in (("category", "category reliance (category / clean)"),
                             ("empty", "image-only share (empty / clean)")):
            if probe in results and clean > 0:
                found[label] = miou(probe) / clean
        for probe, label in (("shuffle", "order sensitivity (clean - shuffle)"),
                             ("drop-category", "category-word dependence (clean - drop-category)")):
            if probe in results:
                found[label] = clean - miou(probe)
    if "counterfactual" in results:
        found["counterfactual false-positive rate (%)"] = 100 * results["counterfactual"]["false_positive_rate"]
    return found


RATIO_INDICATORS = ("category reliance (category / clean)", "image-only share (empty / clean)")


def indicators_as_fractions(found):
    """`indicators` (points and ratios) in the JSON convention (metrics.JSON_UNITS): points / 100."""
    return {name.replace(" (%)", ""): value if name in RATIO_INDICATORS else value / 100 for name, value in found.items()}


def markdown(results, found):
    lines = ["| probe | samples | mean IoU | overall IoU |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['num_samples']} | {100 * r['mean_iou']:.2f} | {100 * r['overall_iou']:.2f} |")
    lines += ["", "| indicator | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in found.items()]
    return "\n".join(lines) + "\n"


def bar_chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    ax.bar(names, [100 * results[n]["mean_iou"] for n in names], color="#4c72b0")
    ax.set_ylabel("mean IoU (%)")
    ax.set_title("Language probes")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate_probe(model, dataset, probe, device, args, amp_dtype, prediction_dir=""):
    """(summary, rewritten dataset, per-sample records) of `dataset` under `probe`."""
    probed = rewrite(dataset, probe, seed=args.probe_seed)
    summary, records = evaluate_dataset(model, probed, device, max_sentences=args.eval_batch_size,
                                        original_size=args.eval_protocol == "original", workers=args.workers,
                                        amp_dtype=amp_dtype, prediction_dir=prediction_dir, print_freq=10**9,
                                        no_target_pixels=args.no_target_pixels)
    return summarize_probe(probed, probe, records, summary), probed, records


def summarize_probe(probed, probe, records, summary=None):
    """The probe's summary of `records` (`summary`: their `metrics.summarize_for`, when already computed)."""
    summary = dict(summary) if summary is not None else metrics.summarize_for(probed, records)
    # On generalized sets mean / overall IoU are those of the target samples (gIoU etc. are kept too);
    # a probe left with no target sample at all has nothing to measure them on.
    summary.update({key: summary[key] or 0.0 for key in ("mean_iou", "overall_iou")})
    if probe == "counterfactual":  # the model's own "no target" decision: its head, or an empty mask
        summary["false_positive_rate"] = sum(not r["no_target_pred"] for r in records) / max(len(records), 1)
    return summary


def run_probes(model, dataset, probes, device, args, amp_dtype=None, clean_records=None):
    """{probe name: summary}, plus "clean, swap objects" (clean on the swap probe's objects).

    `clean_records`: engine.evaluate's records of `dataset` itself, when the caller has them; the
    clean probe is then not evaluated again. "clean, swap objects" is cut from the clean records.
    """
    results = {}
    others = [p for p in probes if p != "clean"]
    if "clean" in probes or "swap" in probes:  # the reading gap compares swap with clean
        if clean_records is None:
            results["clean"], _, clean_records = evaluate_probe(model, dataset, "clean", device, args, amp_dtype,
                                                                prediction_dir=_prediction_dir(args, "clean"))
        else:
            results["clean"] = summarize_probe(dataset, "clean", clean_records)
        print(f"clean: mean IoU {100 * results['clean']['mean_iou']:.2f}")
    for probe in others:
        results[probe], probed, _ = evaluate_probe(model, dataset, probe, device, args, amp_dtype,
                                                   prediction_dir=_prediction_dir(args, probe))
        if probe == "swap":
            swapped = set(probed.ref_ids)
            kept = [r for r in clean_records if dataset.ref_ids[r["index"]] in swapped]
            results["clean, swap objects"] = summarize_probe(dataset, "clean", kept)
        print(f"{probe}: mean IoU {100 * results[probe]['mean_iou']:.2f}")
    return results


def _prediction_dir(args, probe):
    return os.path.join(args.save_predictions, probe) if args.save_predictions else ""


def main(args):
    probes = parse_probes(args.probes)
    if not args.resume:
        raise UserInputError("--resume: pass the checkpoint (.pth) to probe.")
    checkpoint = load_checkpoint_file(args.resume, what="--resume")
    _, _, device = utils.init_distributed_mode(cli.resolve_device(args.device), args.dist_timeout)
    amp_dtype = cli.amp_dtype_for(args.amp, device)
    model = load_model(args, device, checkpoint, allow_nonfinite=args.allow_nonfinite)  # fills in img_size, tokenizer
    dataset = ReferDataset(args, image_transforms=get_transform(args.img_size), split=args.split, eval_mode=True,
                           mask_union=args.mask_union)
    if utils.is_main_process():
        cli.check_writable_dir(args.probe_out, "--probe-out")
    results = run_probes(model, dataset, probes, device, args, amp_dtype)
    found = indicators(results)
    if utils.is_main_process():
        table = markdown(results, found)
        print(table)
        with open(os.path.join(args.probe_out, "probes.md"), "w") as handle:
            handle.write(f"# Language probes: {args.dataset} {args.split}, {os.path.basename(args.resume)}\n\n{table}")
        with open(os.path.join(args.probe_out, "probes.json"), "w") as handle:
            json.dump({"checkpoint": os.path.abspath(args.resume), "dataset": args.dataset, "split": args.split,
                       "results": results, "indicators": indicators_as_fractions(found),
                       "units": metrics.JSON_UNITS}, handle, indent=2)
        bar_chart(results, os.path.join(args.probe_out, "probes.png"))
    utils.cleanup_distributed()


if __name__ == "__main__":
    cli.run_cli(main, get_probe_parser())
