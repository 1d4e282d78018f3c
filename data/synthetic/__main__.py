"""Command line of the SynRef generator: `python -m data.synthetic --root R --dataset NAME ...`."""
from __future__ import annotations

import argparse
import os
import sys

from data.synthetic import __doc__ as package_doc
from data.synthetic.examples import write_examples
from data.synthetic.generalized import (
    DEFAULT_MULTI_TARGET_SHARE,
    DEFAULT_NO_TARGET_SHARE,
    generate_generalized,
)
from data.synthetic.writer import generate
from errors import UserInputError


def format_summary(summary: dict) -> str:
    lines = [f"{summary['dataset']} ({summary['splitBy']}) -> {summary['root']}",
             f"  {'split':6s} {'images':>7s} {'refs':>7s} {'sentences':>10s}"]
    for split, row in summary["splits"].items():
        lines.append(f"  {split:6s} {row['images']:7d} {row['refs']:7d} {row['sentences']:10d}")
    lines.append(f"  total  {summary['images']:7d} {summary['refs']:7d} {summary['sentences']:10d}")
    types = ", ".join(f"{k} {v}" for k, v in summary["expression_types"].items())
    lines.append(f"  expression types: {types}")
    if "ref_kinds" in summary:
        kinds = ", ".join(f"{k} {summary['ref_kinds'][k]} refs / {summary['sentence_kinds'][k]} sentences"
                          for k in summary["ref_kinds"])
        lines.append(f"  targets: {kinds}")
    which = "single-target refs" if "ref_kinds" in summary else "refs"
    lines.append(f"  {which} whose target shares shape or colour with another object: "
                 f"{100 * summary['distractor_share']:.1f}%")
    lines.append(f"  counterfactual sentences: {summary['counterfactuals']}")
    lines.append(f"  held-out (testC) colour-shape pairs: {', '.join(' '.join(p) for p in summary['held_out_pairs'])}")
    lines.append(f"  generated in {summary['seconds']:.1f} s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=package_doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="refer/data", help="REFER data root (default: refer/data)")
    parser.add_argument("--dataset", default=None,
                        help="dataset folder name (default: synref, or gsynref with --generalized)")
    parser.add_argument("--splitBy", default="unc", help="refs(<splitBy>).p / grefs(<splitBy>).json name (default: unc)")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--img-size", type=int, default=128, help="square image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.05, help="share of images for EACH of testA/testB/testC")
    parser.add_argument("--num-held-out", type=int, default=6, help="colour-shape pairs reserved for testC")
    parser.add_argument("--distractor-prob", type=float, default=0.8,
                        help="chance that each further object copies an earlier one's shape or colour")
    parser.add_argument("--mix", default=None,
                        help="expression type weights, e.g. attribute=0.35,location=0.25,relation=0.2,ordinal=0.2")
    parser.add_argument("--examples-dir", default="",
                        help="also save one outlined example per split here (as in docs/images/)")
    parser.add_argument("--generalized", action="store_true",
                        help="write a gRefCOCO-layout set (grefs(<splitBy>).json) whose expressions may refer to "
                             "no object or to several")
    parser.add_argument("--no-target-share", type=float, default=None,
                        help=f"with --generalized: share of refs with no target (default: {DEFAULT_NO_TARGET_SHARE})")
    parser.add_argument("--multi-target-share", type=float, default=None,
                        help=f"with --generalized: share of refs with several targets "
                             f"(default: {DEFAULT_MULTI_TARGET_SHARE})")
    return parser


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    mix = None
    if args.mix:
        try:
            mix = {k.strip(): float(v) for k, v in (item.split("=") for item in args.mix.split(","))}
        except ValueError:
            parser.error(f"--mix '{args.mix}': expected type=weight pairs separated by commas")
    try:
        summary = _generate(parser, args, mix)
    except UserInputError as error:  # a bad argument: one line (LAVT_DEBUG=1 shows the traceback)
        if os.environ.get("LAVT_DEBUG"):
            raise
        sys.stderr.write(f"error: {error}\n")
        sys.exit(1)
    print(format_summary(summary))
    if args.examples_dir and args.generalized:
        print("  (--examples-dir draws single-target refs of a normal set; skipped for --generalized)")
    elif args.examples_dir:
        for path, split, sentences in write_examples(args.root, summary["dataset"], args.examples_dir, args.splitBy):
            print(f"  example {split}: {path}: " + " | ".join(sentences))
    return summary


def _generate(parser, args, mix) -> dict:
    shares = {"no_target_share": args.no_target_share, "multi_target_share": args.multi_target_share}
    shares = {k: v for k, v in shares.items() if v is not None}
    if shares and not args.generalized:
        parser.error("--no-target-share and --multi-target-share need --generalized")
    common = dict(num_images=args.num_images, img_size=args.img_size, seed=args.seed, splitBy=args.splitBy,
                  val_fraction=args.val_fraction, test_fraction=args.test_fraction, num_held_out=args.num_held_out,
                  distractor_prob=args.distractor_prob, mix=mix, verbose=True)
    if args.generalized:
        return generate_generalized(args.root, dataset=args.dataset or "gsynref", **common, **shares)
    return generate(args.root, dataset=args.dataset or "synref", **common)


if __name__ == "__main__":
    main()
