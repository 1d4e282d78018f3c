"""Pictures of a generated set: one outlined target per split and an overview (docs/images/)."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from .scene import render_scene
from .writer import SPLITS


def outline_target(image: np.ndarray, mask: np.ndarray, scale: int = 2) -> Image.Image:
    """The image enlarged `scale` times (nearest) with the mask's boundary drawn white over black."""
    big = np.repeat(np.repeat(image, scale, 0), scale, 1).copy()
    m = np.repeat(np.repeat(mask.astype(bool), scale, 0), scale, 1)
    inner = m.copy()
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        inner &= np.roll(m, shift, axis)
    edge = m & ~inner
    outer = edge.copy()
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        outer |= np.roll(edge, shift, axis)
    big[outer] = 0
    big[edge] = 255
    return Image.fromarray(big)


def write_examples(root: str, dataset: str, out_dir: str, splitBy: str = "unc", scale: int = 2) -> list:
    """For the first ref of each split, save the image with the target outlined (palette PNG),
    plus `<dataset>_overview.png`, the first 8 images side by side.

    Returns [(png path, split, [raw sentences])]; used to illustrate docs/synthetic.md.
    """
    from refer.safe_pickle import load_refs_pickle

    refs = load_refs_pickle(os.path.join(root, dataset, f"refs({splitBy}).p"))
    with open(os.path.join(root, dataset, "synthetic_scenes.json"), encoding="utf-8") as handle:
        scenes = {scene["image_id"]: scene for scene in json.load(handle)["scenes"]}
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for split in SPLITS:
        ref = next(r for r in refs if r["split"] == split)
        scene = scenes[ref["image_id"]]
        image, visible = render_scene(scene)
        index = [obj["ann_id"] for obj in scene["objects"]].index(ref["ann_id"])
        path = os.path.join(out_dir, f"{dataset}_{split}.png")
        outline_target(image, visible[index], scale).quantize(128).save(path, optimize=True)
        written.append((path, split, [s["raw"] for s in ref["sentences"]]))
    tiles = [render_scene(scenes[image_id])[0] for image_id in sorted(scenes)[:8]]
    rows = [np.concatenate(tiles[i:i + 4], 1) for i in range(0, len(tiles) - 3, 4)]
    if rows:
        path = os.path.join(out_dir, f"{dataset}_overview.png")
        Image.fromarray(np.concatenate(rows, 0)).quantize(128).save(path, optimize=True)
    return written
