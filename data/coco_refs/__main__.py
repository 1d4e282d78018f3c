"""Command line: `python -m data.coco_refs --coco /data/coco --root refer/data`."""
from __future__ import annotations

import argparse
import os
import sys

from data.coco_refs import __doc__ as package_doc
from data.coco_refs.build import DEFAULT_MIN_AREA, build
from errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.coco_refs", description=package_doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=package_doc)
    parser.add_argument("--coco", default="", help="COCO 2017 folder holding annotations/, train2017/, val2017/")
    parser.add_argument("--train-json", default="", help="default: <coco>/annotations/instances_train2017.json")
    parser.add_argument("--val-json", default="", help="default: <coco>/annotations/instances_val2017.json")
    parser.add_argument("--train-images", default="", help="default: <coco>/train2017")
    parser.add_argument("--val-images", default="", help="default: <coco>/val2017")
    parser.add_argument("--root", default="refer/data", help="REFER data root (default: refer/data)")
    parser.add_argument("--dataset", default=None, help="default: cocorefs, or gcocorefs with --generalized")
    parser.add_argument("--splitBy", default="unc")
    parser.add_argument("--generalized", action="store_true",
                        help="write grefs(<splitBy>).json with multi-target and no-target expressions too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA,
                        help=f"smallest target, as a fraction of the image area (default {DEFAULT_MIN_AREA})")
    parser.add_argument("--val-fraction", type=float, default=0.5, help="share of val2017 images in val; the rest test")
    parser.add_argument("--max-refs-per-image", type=int, default=4)
    parser.add_argument("--sentences-per-ref", type=int, default=3)
    parser.add_argument("--no-target-per-image", type=int, default=1, help="with --generalized")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--examples", default="", help="also save a picture of a few refs here (a .png path)")
    return parser


def paths(args, parser) -> dict:
    def pick(given, *default):
        if given:
            return given
        if not args.coco:
            parser.error("give --coco, or --train-json, --val-json, --train-images and --val-images")
        return os.path.join(args.coco, *default)

    return {"train_json": pick(args.train_json, "annotations", "instances_train2017.json"),
            "val_json": pick(args.val_json, "annotations", "instances_val2017.json"),
            "train_images": pick(args.train_images, "train2017"), "val_images": pick(args.val_images, "val2017")}


def format_summary(summary: dict) -> str:
    lines = [f"{summary['dataset']} ({summary['splitBy']}) -> {summary['root']}",
             f"  {'split':6s} {'images':>8s} {'refs':>8s} {'sentences':>10s}"]
    for split, row in sorted(summary["splits"].items()):
        lines.append(f"  {split:6s} {row['images']:8d} {row['refs']:8d} {row['sentences']:10d}")
    lines.append(f"  total  {summary['images']:8d} {summary['refs']:8d} {summary['sentences']:10d}")
    lines.append("  expression types: " + ", ".join(f"{k} {v}" for k, v in summary["expression_types"].items()))
    if summary["generalized"]:
        lines.append("  refs: " + ", ".join(f"{k} {v}" for k, v in summary["ref_kinds"].items()))
    lines.append(f"  counterfactual sentences: {summary['counterfactuals']}")
    lines.append("  left out: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary["skipped"].items()))
    lines += [f"  warning: {w}" for w in summary["warnings"]]
    lines.append(f"  built in {summary['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = build(args.root, **paths(args, parser), dataset=args.dataset or ("gcocorefs" if args.generalized
                                                                                   else "cocorefs"),
                        splitBy=args.splitBy, generalized=args.generalized, seed=args.seed, min_area=args.min_area,
                        val_fraction=args.val_fraction, max_refs_per_image=args.max_refs_per_image,
                        sentences_per_ref=args.sentences_per_ref, no_target_per_image=args.no_target_per_image,
                        progress=not args.no_progress)
    except UserInputError as error:
        if os.environ.get("LAVT_DEBUG"):
            raise
        sys.stderr.write(f"error: {error}\n")
        sys.exit(1)
    print(format_summary(summary))
    if args.examples:
        from data.coco_refs.examples import draw_examples

        for kind, sentences in draw_examples(args.root, summary["dataset"], args.examples, args.splitBy):
            print(f"  example {kind}: " + " | ".join(sentences))
    return summary


if __name__ == "__main__":
    main()
