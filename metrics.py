"""Referring-segmentation metrics and the per-sample predictions file.

As the released LAVT test.py computes them: every sentence is one sample; I and U are pixel
counts of the argmax mask against the target; IoU = I / U (0 when U = 0); mean IoU averages the
per-sample IoUs, overall IoU is sum(I) / sum(U), precision@k is the share of samples with
IoU >= k. Summaries hold fractions; reports print percent.

Every JSON file the codebase writes follows `JSON_UNITS` (docs/training.md, "Units of the JSON files");
Markdown and printouts stay in percent.

Generalized sets (gRefCOCO, expressions with no or several targets): `sample_record` adds each
sample's predicted and true no-target flags, `summarize_generalized` computes ReLA's gIoU, cIoU,
N-acc, T-acc and Pr@k, `format_generalized_report` prints them.
"""
import json
import math
import os

import numpy as np
from PIL import Image

JSON_UNITS = ("fractions: IoU, precision, accuracy, rates and their differences in [0, 1] (not percent); "
              "times in seconds; counts as integers")

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred, target):
    """Pixel counts (I, U) of two binary masks of equal shape."""
    pred = pred.bool()
    target = target.bool()
    return int((pred & target).sum()), int((pred | target).sum())


def summarize_for(dataset, records):
    """The summary a dataset is reported with: generalized (gRefCOCO) or classic (RefCOCO)."""
    return summarize_generalized(records) if getattr(dataset, "generalized", False) else summarize(records)


def report_for(summary):
    return format_generalized_report(summary) if "gIoU" in summary else format_report(summary)


def answered_intersection(record, head_decides=True):
    """I of a record as the user gets it: 0 when a no-target head said "nothing here" (ReLA's FP rule:
    no mask is given), else the mask's. Records without a head, or `head_decides=False`: the mask's."""
    if head_decides and "no_target_logit" in record and record["no_target_pred"]:
        return 0
    return record["I"]


def summarize(records, thresholds=PRECISION_THRESHOLDS, head_decides=True):
    """Metrics (fractions, not percent) from per-sample records (dicts with "I" and "U").

    Samples a no-target head declared empty score IoU 0 (`answered_intersection`) unless
    `head_decides=False` (the mask alone)."""
    intersections = [answered_intersection(r, head_decides) for r in records]
    ious = [i / r["U"] if r["U"] > 0 else 0.0 for i, r in zip(intersections, records)]
    total_i = sum(intersections)
    total_u = sum(r["U"] for r in records)
    n = len(records)
    summary = {
        "num_samples": n,
        "mean_iou": sum(ious) / n if n else 0.0,
        "overall_iou": total_i / total_u if total_u else 0.0,
    }
    for k in thresholds:
        summary[f"precision@{k}"] = sum(iou >= k for iou in ious) / n if n else 0.0
    return summary


def format_report(summary):
    """The released test.py's printout (percent, two decimals)."""
    lines = ["Final results:", "Mean IoU is %.2f\n" % (summary["mean_iou"] * 100)]
    for k in PRECISION_THRESHOLDS:
        lines.append("    precision@%s = %.2f" % (k, summary[f"precision@{k}"] * 100))
    lines.append("    overall IoU = %.2f" % (summary["overall_iou"] * 100))
    return "\n".join(lines)


# ---- generalized referring segmentation (gRefCOCO; ReLA's refer_evaluation.py after its 2023 fix) ----
GENERALIZED_THRESHOLDS = (0.7, 0.8, 0.9)


def sample_record(mask, target, no_target_gt=False, no_target_logit=None, no_target_pixels=1):
    """One sample's record: I, U, pred_pixels, no_target_gt and no_target_pred (and no_target_logit).

    `mask` and `target` are binary (H, W) tensors of equal shape. The no-target decision is the
    head's when a `no_target_logit` is given (logit > 0, i.e. probability > 0.5; the logit is kept
    in the record, so that another threshold can be scored afterwards: `with_head_threshold`),
    otherwise "the predicted mask has fewer than `no_target_pixels` pixels" (default 1: it is empty).
    """
    inter, union = intersection_union(mask, target)
    pred_pixels = int(mask.bool().sum())
    record = {"I": inter, "U": union, "pred_pixels": pred_pixels, "no_target_gt": bool(no_target_gt)}
    if no_target_logit is None:
        return {**record, "no_target_pred": pred_pixels < no_target_pixels}
    logit = float(no_target_logit)
    return {**record, "no_target_pred": logit > 0, "no_target_logit": logit}


def generalized_sample(record):
    """(outcome, I, U, IoU) a record adds to the generalized metrics, by ReLA's table.

    Outcomes use ReLA's names, where "positive" means "no target": TP (no-target sample said to
    have none: IoU 1, adds 0/0), FN (no-target sample given a target: IoU 0, adds 0/U, and U is
    the predicted mask since the target is empty), FP (target sample said to have none: I := 0,
    U still added, IoU 0), TN (target sample segmented: IoU = I/U, 0 when U = 0).
    """
    inter, union = record["I"], record["U"]
    if record["no_target_gt"]:
        return ("TP", 0, 0, 1.0) if record["no_target_pred"] else ("FN", 0, union, 0.0)
    if record["no_target_pred"]:
        return "FP", 0, union, 0.0
    return "TN", inter, union, inter / union if union else 0.0


def with_head_threshold(records, threshold):
    """`records` re-decided by their no-target head at logit > `threshold` (records without one stay)."""
    return [{**r, "no_target_pred": r["no_target_logit"] > threshold} if "no_target_logit" in r else r
            for r in records]


def head_threshold_for_t_acc(records, min_t_acc):
    """The lowest head-logit threshold at which T-acc on `records` is still >= `min_t_acc`.

    Target samples count as TN when their logit is <= the threshold, so it is the
    ceil(min_t_acc * n)-th smallest logit of the n target samples: every lower threshold would
    reject more of them, every higher one would miss more no-target samples.
    """
    logits = sorted(r["no_target_logit"] for r in records if not r["no_target_gt"])
    if not logits:
        raise ValueError("head_threshold_for_t_acc: no target samples to keep")
    return logits[max(math.ceil(min_t_acc * len(logits)), 1) - 1]


def _ratio(numerator, denominator):
    return numerator / denominator if denominator else None


def summarize_generalized(records, thresholds=GENERALIZED_THRESHOLDS):
    """gIoU, cIoU, N-acc, T-acc, Pr@k (fractions) plus the classic metrics on target samples.

    gIoU: mean per-sample IoU over all samples; cIoU: sum I / sum U; N-acc: TP / (TP + FN);
    T-acc: TN / (TN + FP); "Pr@k": share of TARGET samples whose IoU (0 when said empty) >= k.
    mean_iou, overall_iou and precision@k are `summarize` on the target samples' own I/U
    (the mask alone, as the released test.py would score them). A value that would divide by
    zero is None: N-acc without no-target samples, T-acc / Pr@k / classic without target
    samples, cIoU when sum U is 0, everything for an empty record list.
    """
    outcomes = [generalized_sample(r) for r in records]
    counts = {name: sum(o[0] == name for o in outcomes) for name in ("TP", "FN", "FP", "TN")}
    target_ious = [iou for name, _, _, iou in outcomes if name in ("FP", "TN")]
    summary = {"num_samples": len(records), "num_target_samples": len(target_ious),
               "num_no_target_samples": counts["TP"] + counts["FN"], **counts,
               "gIoU": _ratio(sum(o[3] for o in outcomes), len(outcomes)),
               "cIoU": _ratio(sum(o[1] for o in outcomes), sum(o[2] for o in outcomes)),
               "N-acc": _ratio(counts["TP"], counts["TP"] + counts["FN"]),
               "T-acc": _ratio(counts["TN"], counts["TN"] + counts["FP"])}
    for k in thresholds:
        summary[f"Pr@{k}"] = _ratio(sum(iou >= k for iou in target_ious), len(target_ious))
    classic = summarize([r for r in records if not r["no_target_gt"]], head_decides=False)
    del classic["num_samples"]
    if not target_ious:
        classic = dict.fromkeys(classic)
    return {**summary, **classic}


def _percent(value):
    return "n/a" if value is None else "%.2f" % (value * 100)


def format_generalized_report(summary, thresholds=GENERALIZED_THRESHOLDS):
    """The generalized metrics in percent ("n/a" where undefined), then the classic ones on target samples."""
    lines = [f"Generalized results ({summary['num_samples']} samples: {summary['num_target_samples']} with a "
             f"target, {summary['num_no_target_samples']} without):",
             f"    gIoU = {_percent(summary['gIoU'])}",
             f"    cIoU = {_percent(summary['cIoU'])}",
             f"    N-acc = {_percent(summary['N-acc'])} (no-target samples said empty: {summary['TP']}, "
             f"given a mask: {summary['FN']})",
             f"    T-acc = {_percent(summary['T-acc'])} (target samples segmented: {summary['TN']}, "
             f"said empty: {summary['FP']})"]
    lines += [f"    Pr@{k} = {_percent(summary[f'Pr@{k}'])}" for k in thresholds]
    lines.append("Target samples only (classic metrics of the masks):")
    lines.append(f"    Mean IoU = {_percent(summary['mean_iou'])}")
    lines += [f"    precision@{k} = {_percent(summary[f'precision@{k}'])}" for k in PRECISION_THRESHOLDS]
    lines.append(f"    overall IoU = {_percent(summary['overall_iou'])}")
    return "\n".join(lines)


class PredictionWriter:
    """Per-sentence PNG masks and a JSON-lines record (ref id, sentence, I, U, IoU) for error analysis."""

    def __init__(self, directory, dataset):
        self.directory = directory
        self.dataset = dataset
        os.makedirs(directory, exist_ok=True)

    def iou(self, record):
        """The sample's IoU; on generalized sets ReLA's (1 for a correctly predicted 'no target')."""
        if getattr(self.dataset, "generalized", False):
            return generalized_sample(record)[3]
        return answered_intersection(record) / record["U"] if record["U"] else 0.0

    def mask_name(self, index, sentence_index):
        return f"ref{self.dataset.ref_ids[index]}_sent{sentence_index}.png"

    def write_mask(self, index, sentence_index, mask):
        image = Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255)
        image.save(os.path.join(self.directory, self.mask_name(index, sentence_index)))

    def write_records(self, records):
        """`records`: dicts with index, sentence_index, I, U (and any extra fields), in sample order."""
        with open(os.path.join(self.directory, "predictions.jsonl"), "w") as handle:
            for record in records:
                index, j = record["index"], record["sentence_index"]
                row = {"ref_id": int(self.dataset.ref_ids[index]), "sentence_index": j,
                       "sentence": self.dataset.sentences[index][j],
                       **{k: v for k, v in record.items() if k not in ("index", "sentence_index")},
                       "IoU": self.iou(record),
                       "mask": self.mask_name(index, j)}
                handle.write(json.dumps(row) + "\n")
