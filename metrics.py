"""Referring-segmentation metrics and the per-sample predictions file.

As the released LAVT test.py computes them: every sentence is one sample; I and U are pixel
counts of the argmax mask against the target; IoU = I / U (0 when U = 0); mean IoU averages the
per-sample IoUs, overall IoU is sum(I) / sum(U), precision@k is the share of samples with
IoU >= k. Summaries hold fractions; reports print percent.
"""
import json
import os

import numpy as np
from PIL import Image

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred, target):
    """Pixel counts (I, U) of two binary masks of equal shape."""
    pred = pred.bool()
    target = target.bool()
    return int((pred & target).sum()), int((pred | target).sum())


def summarize(records, thresholds=PRECISION_THRESHOLDS):
    """Metrics (fractions, not percent) from per-sample records (dicts with "I" and "U")."""
    ious = [r["I"] / r["U"] if r["U"] > 0 else 0.0 for r in records]
    total_i = sum(r["I"] for r in records)
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


class PredictionWriter:
    """Per-sentence PNG masks and a JSON-lines record (ref id, sentence, I, U, IoU) for error analysis."""

    def __init__(self, directory, dataset):
        self.directory = directory
        self.dataset = dataset
        os.makedirs(directory, exist_ok=True)

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
                       "IoU": record["I"] / record["U"] if record["U"] else 0.0,
                       "mask": self.mask_name(index, j)}
                handle.write(json.dumps(row) + "\n")
