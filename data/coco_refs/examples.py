"""A picture of a built set: a few refs of different kinds, their targets tinted and outlined in yellow, their
expressions (and one counterfactual) written underneath. Used for the docs/coco_refs.md picture."""
from __future__ import annotations

import json
import os
import textwrap

import numpy as np

from refer import GREFER, REFER
from refer.grefer import grefs_path

WANTED = ("location", "order", "size", "relation", "multi", "no target")


def _kind(refer, ref: dict, forms: dict) -> str:
    if isinstance(refer, GREFER) and refer.is_no_target(ref):
        return "no target"
    return forms[ref["sentences"][0]["sent_id"]]["form"]["type"]


def _panels(refer, forms: dict, count: int) -> list:
    """The first ref of each kind in WANTED (a ref's kind: its first sentence's form type, or none)."""
    chosen = {}
    for ref in refer.data["refs"]:
        kind = _kind(refer, ref, forms)
        if kind in WANTED and kind not in chosen:
            chosen[kind] = ref
    return [chosen[k] for k in WANTED if k in chosen][:count]


def draw_examples(root: str, dataset: str, out_path: str, splitBy: str = "unc", count: int = 6) -> list:
    """Save the picture; returns [(kind, [sentences])] of the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    generalized = grefs_path(root, dataset, splitBy) is not None
    refer = (GREFER if generalized else REFER)(root, dataset, splitBy)
    with open(os.path.join(root, dataset, f"coco_refs_forms({splitBy}).jsonl"), encoding="utf-8") as handle:
        forms = {entry["sent_id"]: entry for entry in map(json.loads, handle)}
    with open(os.path.join(root, dataset, f"counterfactuals({splitBy}).json"), encoding="utf-8") as handle:
        counterfactuals = json.load(handle)
    refs = _panels(refer, forms, count)
    fig, axes = plt.subplots(1, len(refs), figsize=(3.2 * len(refs), 4.4))
    written = []
    for ax, ref in zip(np.atleast_1d(axes), refs):
        image = np.asarray(Image.open(refer.image_path(refer.Imgs[ref["image_id"]]["file_name"])).convert("RGB"))
        mask = refer.getMask(ref)["mask"] > 0
        shown = image.astype(np.float32)
        shown[mask] = 0.5 * shown[mask] + 0.5 * np.array([255, 235, 0])
        ax.imshow(shown.astype(np.uint8))
        if mask.any():
            ax.contour(mask, levels=[0.5], colors="yellow", linewidths=1.2)
        ax.axis("off")
        sentences = [s["raw"] for s in ref["sentences"]]
        lines = [f'"{s}"' for s in sentences[:3]]
        negative = counterfactuals.get(str(ref["sentences"][0]["sent_id"]))
        if negative:
            lines.append(f'nothing: "{negative}"')
        kind = _kind(refer, ref, forms)
        ax.set_title(f"{kind} ({ref['split']})", fontsize=9)
        ax.text(0, -0.03, "\n".join(textwrap.fill(t, 34) for t in lines), transform=ax.transAxes, fontsize=7.5,
                va="top", ha="left", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
        written.append((kind, sentences))
    fig.tight_layout()
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    Image.open(out_path).convert("RGB").quantize(96).save(out_path, optimize=True)
    return written
