"""Where a SynRef model loses mean IoU: wrong object, hedged mask, or coarse outline, per expression type.

    python bench/failure_breakdown.py runs/quickstart/predictions/val --refer_data_root runs/quickstart/data

Reads the predictions.jsonl that test.py --save-predictions (or the quickstart, under predictions/val)
writes, and the SynRef sidecar of the set, and splits every expression into: missed (IoU < 0.1: wrong
object or nothing), hedged (0.1 <= IoU < 0.5: typically the target plus a look-alike; mean recall and
precision of those masks are printed) and found (IoU >= 0.5; their mean IoU is the outline quality,
which bounds what a perfect choice of object would score). The same per target size, in pixels at
the evaluation resolution (target = U - predicted + I). docs/synthetic.md's readings come from here.

Where the rows name their mask PNGs (test.py --save-predictions writes them beside the jsonl), each
mask is also compared with every object of its image: "wrong object" is the share of masks that
overlap another object more than the target, and "best-object IoU" the mean IoU of each mask with
the object it overlaps most: what val would score if every expression chose its object right and
the masks kept their outlines (a hedged mask scores low against every object, so hedging stays in it).
For relation and ordinal expressions, a third table says where those masks land, per relation and per
side counted from: on the target, on another object of the target's description (the wrong one of the
candidates), on the landmark a relation names, on another object, or on none (best-object IoU < 0.1,
or an expression the no-target head rejected, which the evaluation scores 0 whatever its mask).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

AREA_BINS = ((0, 60), (60, 120), (120, 250), (250, None))
LANDINGS = ("target", "another of its description", "the landmark", "another object", "none")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", help="folder holding predictions.jsonl")
    parser.add_argument("--refer_data_root", required=True, help="the SynRef set's REFER data root")
    parser.add_argument("--dataset", default="synref")
    parser.add_argument("--splitBy", default="unc")
    return parser.parse_args(argv)


def summarize(rows):
    """{"samples", "mean_iou", "missed", "hedged", "found" (shares), "found_iou", "hedged_recall",
    "hedged_precision"} of prediction rows (IoU, I, U, pred_pixels); values are fractions, None when empty.

    "IoU" is the evaluation's own (metrics.PredictionWriter: 0 for a target the no-target head rejected)."""
    ious = [r["IoU"] for r in rows]
    hedged = [r for r, iou in zip(rows, ious) if 0.1 <= iou < 0.5]
    found = [iou for iou in ious if iou >= 0.5]

    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None

    n = len(rows)
    compared = [r for r in rows if "best_object_iou" in r]
    return {"samples": n, "mean_iou": mean(ious),
            "wrong_object": mean(r["wrong_object"] for r in compared),
            "best_object_iou": mean(r["best_object_iou"] for r in compared),
            "missed": sum(iou < 0.1 for iou in ious) / n if n else None,
            "hedged": len(hedged) / n if n else None, "found": len(found) / n if n else None,
            "found_iou": mean(found),
            "hedged_recall": mean(r["I"] / target_pixels(r) for r in hedged),
            "hedged_precision": mean(r["I"] / r["pred_pixels"] for r in hedged)}


def target_pixels(row):
    return row["U"] - row["pred_pixels"] + row["I"]


def compare_with_every_object(rows, refer, predictions):
    """Adds "best_object_iou", "best_object" (the ann id of the object the mask overlaps most, None when
    it overlaps none) and "wrong_object" (bool) to each row whose mask PNG is in `predictions`.

    Objects are scored as the evaluation scores the target: the released rule (pixels covered once,
    refer.object_mask), resized with nearest neighbour to the mask's size, as transforms.Resize does.
    A tie with the target is not a wrong object."""
    import numpy as np
    from PIL import Image

    from refer.refer import object_mask

    objects = {}  # (image_id, size) -> {ann_id: mask}: an image's expressions share its objects

    def objects_of(image_id, size):
        if (image_id, size) not in objects:
            objects[image_id, size] = {
                ann["id"]: np.asarray(Image.fromarray(object_mask(refer.getAnnMask(ann)["mask"])).resize(size, Image.NEAREST)) > 0
                for ann in refer.imgToAnns.get(image_id, [])}
        return objects[image_id, size]

    for row in rows:
        if not row.get("mask") or not os.path.isfile(os.path.join(predictions, row["mask"])):
            continue
        predicted = np.asarray(Image.open(os.path.join(predictions, row["mask"]))) > 0
        size = (predicted.shape[1], predicted.shape[0])
        target = refer.refToAnn[row["ref_id"]]["id"]
        ious = {}
        for ann_id, obj in objects_of(refer.Refs[row["ref_id"]]["image_id"], size).items():
            union = np.logical_or(obj, predicted).sum()
            ious[ann_id] = float(np.logical_and(obj, predicted).sum() / union) if union else 0.0
        row["best_object_iou"] = max(ious.values(), default=0.0)
        row["best_object"] = max(ious, key=ious.get) if row["best_object_iou"] > 0 else None
        row["wrong_object"] = row["best_object_iou"] > ious.get(target, 0.0)


def per_sentence(refer, by_sent_id):
    """{(ref_id, sentence_index): value} from a {sent_id: value} map (a type, or a semantic form)."""
    return {(ref_id, i): by_sent_id[sent_id] for ref_id, ref in refer.Refs.items() for i, sent_id in enumerate(ref["sent_ids"])}


def breakdown(rows, types):
    """(per expression type, per target-size bin) summaries; `types` maps (ref_id, sentence_index) to a type."""
    by_type = {}
    for row in rows:
        by_type.setdefault(types[(row["ref_id"], row["sentence_index"])], []).append(row)
    by_area = {}
    for low, high in AREA_BINS:
        label = f"{low}-{high}" if high is not None else f">={low}"
        by_area[label] = [r for r in rows if target_pixels(r) >= low and (high is None or target_pixels(r) < high)]
    return ({k: summarize(v) for k, v in sorted(by_type.items())} | {"all": summarize(rows)},
            {k: summarize(v) for k, v in by_area.items()})


def landing(row, form, objects):
    """Where one compared mask lands (one of LANDINGS); `form` is the expression's semantic form and
    `objects` maps ann ids to the sidecar's objects. A tie with the target counts as the target."""
    from data.synthetic.semantics import matches

    if row["best_object_iou"] < 0.1 or row.get("no_target_pred"):
        return "none"
    if not row["wrong_object"]:
        return "target"
    chosen = objects[row["best_object"]]
    if form["type"] == "relation" and matches(chosen, form["landmark"]):
        return "the landmark"
    return "another of its description" if matches(chosen, form["target"]) else "another object"


def landings(rows, forms, objects):
    """{kind: {"samples": n, landing: share}} over the relation and ordinal rows that were compared with
    every object; kind is "relation: <relation>" or "ordinal: from <side>". `forms` maps
    (ref_id, sentence_index) to the expression's semantic form."""
    counts = {}
    for row in rows:
        form = forms[(row["ref_id"], row["sentence_index"])]
        if "best_object_iou" not in row or form["type"] not in ("relation", "ordinal"):
            continue
        kind = f"relation: {form['relation']}" if form["type"] == "relation" else f"ordinal: from {form['from']}"
        counts.setdefault(kind, []).append(landing(row, form, objects))
    return {kind: {"samples": len(found)} | {name: found.count(name) / len(found) for name in LANDINGS}
            for kind, found in sorted(counts.items())}


def landing_markdown(shares):
    lines = ["| relation / ordinal | samples | " + " | ".join(f"{name} %" for name in LANDINGS) + " |",
             "|---" * (len(LANDINGS) + 2) + "|"]
    for kind, s in shares.items():
        lines.append(f"| {kind} | {s['samples']} | " + " | ".join(f"{100 * s[name]:.1f}" for name in LANDINGS) + " |")
    return "\n".join(lines) + "\n"


def markdown(summaries, first_column):
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}"

    lines = [f"| {first_column} | samples | mean IoU | missed (<0.1) % | hedged (0.1-0.5) % | found (>=0.5) % | "
             "IoU of found | hedged: recall / precision | wrong object % | best-object IoU |", "|---" * 10 + "|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['samples']} | {pct(s['mean_iou'])} | {pct(s['missed'])} | {pct(s['hedged'])} | "
                     f"{pct(s['found'])} | {pct(s['found_iou'])} | {pct(s['hedged_recall'])} / {pct(s['hedged_precision'])} | "
                     f"{pct(s['wrong_object'])} | {pct(s['best_object_iou'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    from data.synthetic import read_sidecar
    from refer.refer import REFER

    args = parse_args(argv)
    with open(os.path.join(args.predictions, "predictions.jsonl")) as handle:
        rows = [json.loads(line) for line in handle]
    refer = REFER(args.refer_data_root, args.dataset, args.splitBy)
    sidecar = read_sidecar(args.refer_data_root, args.dataset)
    forms = per_sentence(refer, {e["sent_id"]: e["form"] for e in sidecar["expressions"]})
    types = {key: form["type"] for key, form in forms.items()}
    compare_with_every_object(rows, refer, args.predictions)
    by_type, by_area = breakdown(rows, types)
    print(markdown(by_type, "expression type"))
    print(markdown(by_area, "target pixels"))
    shares = landings(rows, forms, {obj["ann_id"]: obj for scene in sidecar["scenes"] for obj in scene["objects"]})
    if shares:
        print(landing_markdown(shares))


if __name__ == "__main__":
    main()
