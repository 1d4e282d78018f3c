"""SynRef: a procedurally generated referring-segmentation dataset in the on-disk REFER layout.

    python -m data.synthetic --root refer/data --dataset synref --num-images 2000 --img-size 128 --seed 0

writes, exactly as RefCOCO is laid out (so `REFER` -> `ReferDataset` -> model -> metrics run unchanged):

    <root>/<dataset>/refs(<splitBy>).p         pickled list of refs (builtin types only, protocol 2)
    <root>/<dataset>/instances.json            COCO-style images / annotations (polygons) / categories
    <root>/images/<dataset>/<dataset>_<12-digit id>.png
    <root>/<dataset>/synthetic_scenes.json     sidecar (not read by REFER): every scene's objects and
                                               every sentence's semantic form, for checking and analysis

Scenes hold 2-6 flat-coloured shapes (8 shapes x 8 colours x 2 sizes) on a textured background.
Expressions are generated from semantic forms (attribute / location / relation / ordinal, see
`evaluate`) and kept only if the form picks out exactly one object with clear geometric margins.
Splits: train, val, testA (attribute expressions), testB (location / relation / ordinal) and testC
(targets are colour-shape pairs never referred to in train). See docs/synthetic.md.

Masks are exact: every shape is a polygon rasterised by pycocotools (the decoder `REFER.getMask`
uses), and the picture is painted from those masks, so an unoccluded object's annotation is its
drawing polygon; an occluded object's annotation is traced along the pixel edges of its visible
mask, and the generator re-decodes every annotation and rejects a scene unless it equals the
painted pixels.
"""
from __future__ import annotations

import argparse
import colorsys
import itertools
import json
import os
import pickle
import time

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = [
    "SHAPES", "COLOURS", "SIZES", "EXPRESSION_TYPES", "generate", "sample_scene", "render_scene",
    "shape_polygon", "mask_to_polygons", "evaluate", "referent", "realize", "normalize_sentence",
    "outline_target", "write_examples", "main",
]

# ---- vocabulary ---------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart")
COLOURS = {  # saturated and far apart in hue/brightness; backgrounds stay desaturated
    "red": (214, 39, 40), "orange": (245, 140, 20), "yellow": (236, 216, 30), "green": (44, 160, 60),
    "cyan": (20, 190, 205), "blue": (40, 80, 220), "purple": (130, 55, 185), "pink": (245, 125, 195),
}
SIZES = ("small", "big")
SIZE_FRACTION = {"small": (0.13, 0.17), "big": (0.26, 0.32)}  # object extent / image side
ATTRIBUTES = ("size", "colour", "shape")
EXPRESSION_TYPES = ("attribute", "location", "relation", "ordinal")
SPLITS = ("train", "val", "testA", "testB", "testC")
SPLIT_TYPES = {  # expression types allowed per split
    "train": EXPRESSION_TYPES, "val": EXPRESSION_TYPES, "testC": EXPRESSION_TYPES,
    "testA": ("attribute",), "testB": ("location", "relation", "ordinal"),
}
DEFAULT_MIX = {"attribute": 0.35, "location": 0.25, "relation": 0.2, "ordinal": 0.2}

COLOUR_WORDS = {c: [c] for c in COLOURS} | {"cyan": ["cyan", "turquoise"], "purple": ["purple", "violet"]}
SHAPE_WORDS = {s: [s] for s in SHAPES} | {"circle": ["circle", "disk"], "diamond": ["diamond", "rhombus"],
                                           "cross": ["cross", "plus sign"]}
SIZE_WORDS = {"small": ["small", "little"], "big": ["big", "large"]}
GENERIC_NOUNS = ["shape", "object", "thing", "figure"]

# Geometry of the semantics, in units of the image side. A comparison closer than the margin is
# "unclear" and makes an expression ambiguous, so kept expressions never hinge on a few pixels.
POSITION_MARGIN = 0.08
DISTANCE_MARGIN = 0.08
QUADRANT_MARGIN = 0.05
CENTER_RADIUS = 0.2
MIN_VISIBLE = 0.75  # every object keeps at least this share of its own area

NO, MAYBE, YES = 0, 1, 2
SIDES = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}  # axis, sign of the key
CORNERS = {"top left": (-1, -1), "top right": (1, -1), "bottom left": (-1, 1), "bottom right": (1, 1)}
WHERES = (*SIDES, *CORNERS, "center")
RELATIONS = ("left", "right", "above", "below", "nearest")


# ---- geometry and rendering -----------------------------------------------------------------------
def _unit_outline(shape: str) -> np.ndarray:
    """(N, 2) outline centred on its box, half-extent ~1, areas roughly equal (~2.2-2.6)."""
    if shape == "circle":
        t = np.arange(64) * (2 * np.pi / 64)
        return 0.92 * np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return 0.8 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    if shape == "triangle":
        t = np.deg2rad([-90, 30, 150])
        return 1.3 * np.stack([np.cos(t), np.sin(t) + 0.25], 1)
    if shape == "star":
        t = np.arange(10) * (np.pi / 5) - np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, 1.2, 0.55)
        return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
    if shape == "hexagon":
        t = np.arange(6) * (np.pi / 3)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "diamond":
        return np.array([[0, -1.2], [0.85, 0], [0, 1.2], [-0.85, 0]])
    if shape == "cross":
        a, w = 1.0, 0.36
        return np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a],
                         [-w, w], [-a, w], [-a, -w], [-w, -w]])
    if shape == "heart":
        t = np.arange(48) * (2 * np.pi / 48)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x / 16, (y - 2.539) / 14.461], 1)
    raise ValueError(f"Unknown shape '{shape}'; choose one of {', '.join(SHAPES)}.")


_UNIT_OUTLINES = {shape: _unit_outline(shape) for shape in SHAPES}


def shape_polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list:
    """Flat polygon [x1, y1, x2, y2, ...] in pixel-corner coordinates, rounded to 1/100 pixel.

    Rounded here, before anything is drawn, so that the stored annotation is bit-for-bit the
    polygon that was rasterised.
    """
    c, s = np.cos(angle), np.sin(angle)
    points = _UNIT_OUTLINES[shape] @ np.array([[c, s], [-s, c]]) * radius + np.array([cx, cy])
    return [round(float(v), 2) for v in points.reshape(-1)]


def _polygon_mask(polygon: list, size: int) -> np.ndarray:
    """Rasterise with pycocotools, the same rule `REFER.getMask` decodes annotations with."""
    rle = mask_utils.frPyObjects([polygon], size, size)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def _background(spec: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 background: gradient / stripes / checker / value noise + grain."""
    c0, c1 = np.array(spec["colours"], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    along = np.cos(spec["angle"]) * xx + np.sin(spec["angle"]) * yy
    kind = spec["kind"]
    if kind == "gradient":
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif kind == "stripes":
        t = ((along / spec["period"]) % 1.0 < 0.5).astype(np.float32)
    elif kind == "checker":
        t = ((xx // spec["period"] + yy // spec["period"]) % 2).astype(np.float32)
    elif kind == "noise":
        cells = rng.random((spec["cells"], spec["cells"])).astype(np.float32)
        t = np.asarray(Image.fromarray(cells).resize((size, size), Image.BILINEAR))
    else:
        raise ValueError(f"Unknown background kind '{kind}'.")
    image = c0 + t[..., None] * (c1 - c0)
    return image + rng.normal(0.0, spec["grain"], (size, size, 1)).astype(np.float32)


def render_scene(scene: dict) -> tuple[np.ndarray, list]:
    """Paint a scene: returns the RGB image (H, W, 3) uint8 and each object's VISIBLE mask (bool).

    Objects are painted in list order, later ones on top; each object's pixels are exactly its
    visible mask. A pure function of `scene` (noise comes from `scene['noise_seed']`).
    """
    image, _, visible = _paint(scene)
    return image, visible


def _paint(scene: dict) -> tuple[np.ndarray, list, list]:
    size = scene["img_size"]
    rng = np.random.default_rng(scene["noise_seed"])
    image = _background(scene["background"], size, rng)
    grain = rng.normal(0.0, 4.0, (size, size, 1)).astype(np.float32)
    full = [_polygon_mask(obj["polygon"], size) for obj in scene["objects"]]
    for obj, mask in zip(scene["objects"], full, strict=True):
        ys, xs = np.nonzero(mask)
        # A soft linear shading keeps objects from looking perfectly flat without blurring colours.
        along = ((xs - obj["cx"]) * np.cos(obj["angle"]) + (ys - obj["cy"]) * np.sin(obj["angle"])) / obj["radius"]
        paint = np.array(obj["rgb"], dtype=np.float32) * (1.0 + obj["shade"] * along.astype(np.float32))[:, None]
        image[ys, xs] = paint + grain[ys, xs]
    visible = []
    covered = np.zeros((size, size), dtype=bool)
    for mask in reversed(full):
        visible.append(mask & ~covered)
        covered |= mask
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), full, visible[::-1]


# ---- exact polygons of pixel masks ------------------------------------------------------------------
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # right, down, left, up (image coordinates, y down)


def mask_to_polygons(mask: np.ndarray) -> tuple[list, bool]:
    """Polygons whose pycocotools decoding is exactly `mask`, and whether `mask` has holes.

    Walks the pixel-edge boundary of each 4-connected component clockwise (on screen), with
    vertices at pixel corners: pixel (x, y) is the square [x, x+1] x [y, y+1], which pycocotools
    fills exactly. Where two pixels touch only diagonally the walk turns right, keeping them in
    separate loops. Loops that run counter-clockwise enclose holes, which COCO polygons cannot
    express (they are unioned), so callers reject such masks.
    """
    height, width = mask.shape
    padded = np.pad(mask.astype(bool), 1)
    inner = padded[1:-1, 1:-1]
    stride = width + 1
    outgoing: dict[int, list] = {}
    # (bg neighbour test, vertex offset of the edge start, direction index) for top/right/bottom/left
    for neighbour, (dx, dy), direction in (
        (padded[:-2, 1:-1], (0, 0), 0), (padded[1:-1, 2:], (1, 0), 1),
        (padded[2:, 1:-1], (1, 1), 2), (padded[1:-1, :-2], (0, 1), 3),
    ):
        ys, xs = np.nonzero(inner & ~neighbour)
        for start in ((ys + dy) * stride + xs + dx).tolist():
            outgoing.setdefault(start, []).append(direction)
    used: set = set()
    polygons, has_holes = [], False
    for first in sorted(outgoing):
        for first_dir in outgoing[first]:
            if (first, first_dir) in used:
                continue
            corners, vertex, direction = [], first, first_dir
            while True:
                used.add((vertex, direction))
                step_x, step_y = _STEPS[direction]
                vertex += step_y * stride + step_x
                choices = outgoing[vertex]
                turn = choices[0] if len(choices) == 1 else (direction + 1) % 4
                if turn != direction:
                    corners.append(vertex)
                direction = turn
                if vertex == first and direction == first_dir:
                    break
            xy = np.array([(v % stride, v // stride) for v in corners], dtype=np.int64)
            twice_area = int(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))
            if twice_area > 0:
                polygons.append(xy.reshape(-1).tolist())
            else:
                has_holes = True
    return polygons, has_holes


def _decode_polygons(polygons: list, size: int) -> np.ndarray:
    rles = mask_utils.frPyObjects(polygons, size, size)
    return mask_utils.decode(mask_utils.merge(rles, intersect=False)).astype(bool)


# ---- scene sampling -----------------------------------------------------------------------------
def _random_background(rng: np.random.Generator) -> dict:
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.18), rng.uniform(0.35, 0.85)
    val2 = float(np.clip(val + rng.choice([-1, 1]) * rng.uniform(0.12, 0.3), 0.25, 0.95))
    colours = [[round(255 * c, 1) for c in colorsys.hsv_to_rgb((hue + rng.uniform(-0.1, 0.1)) % 1, sat, v)]
               for v in (val, val2)]
    kind = str(rng.choice(["gradient", "stripes", "checker", "noise"]))
    return {"kind": kind, "colours": colours, "angle": round(float(rng.uniform(0, np.pi)), 4),
            "period": int(rng.integers(8, 25)), "cells": int(rng.integers(3, 9)),
            "grain": round(float(rng.uniform(2.0, 9.0)), 2)}


def _sample_identities(rng, count, held_out, force_held_out, distractor_prob):
    """(shape, colour, size) triples; most objects copy the shape or colour of an earlier one."""
    objects = []
    for index in range(count):
        if index == 0 and force_held_out:
            colour, shape = held_out[int(rng.integers(len(held_out)))]
        elif index > 0 and rng.random() < distractor_prob:
            base = objects[int(rng.integers(len(objects)))]
            keep = int(rng.integers(3))  # 0: shape, 1: colour, 2: both (then size or place differs)
            shape = base[0] if keep in (0, 2) else SHAPES[int(rng.integers(len(SHAPES)))]
            colour = base[1] if keep in (1, 2) else list(COLOURS)[int(rng.integers(len(COLOURS)))]
        else:
            shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
        objects.append((shape, colour, SIZES[int(rng.integers(2))]))
    return objects


def _place(rng, identities, size, max_tries=25):
    """Positions with occlusion limits: returns the placed objects (some may be dropped)."""
    placed, full_masks = [], []
    for shape, colour, size_word in identities:
        radius = rng.uniform(*SIZE_FRACTION[size_word]) * size / 2
        rotate_freely = shape in ("star", "hexagon")
        angle = rng.uniform(0, 2 * np.pi) if rotate_freely else rng.uniform(-0.26, 0.26)
        outline = np.array(shape_polygon(shape, 0.0, 0.0, radius, angle)).reshape(-1, 2)
        low, high = -outline.min(0) + 1.0, size + 0.0 - outline.max(0) - 1.0
        for _ in range(max_tries):
            cx, cy = rng.uniform(low[0], high[0]), rng.uniform(low[1], high[1])
            polygon = shape_polygon(shape, cx, cy, radius, angle)
            mask = _polygon_mask(polygon, size)
            if not _occlusion_ok(mask, colour, placed, full_masks, gap=max(1, round(0.025 * size))):
                continue
            jitter = rng.integers(-12, 13, size=3)
            placed.append({
                "shape": shape, "colour": colour, "size": size_word, "cx": round(float(cx), 2),
                "cy": round(float(cy), 2), "radius": round(float(radius), 2), "angle": round(float(angle), 4),
                "polygon": polygon, "rgb": [int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter, strict=True)],
                "shade": round(float(rng.uniform(-0.12, 0.12)), 3),
            })
            full_masks.append(mask)
            break
    return placed


def _occlusion_ok(mask, colour, placed, full_masks, gap) -> bool:
    """A new top object must leave each earlier one MIN_VISIBLE of its area, and keep `gap` pixels
    away from objects of its own colour (touching same-coloured shapes would read as one blob)."""
    if not placed:
        return True
    grown = mask.copy()
    for _ in range(gap):
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    for obj, other in zip(placed, full_masks, strict=True):
        if obj["colour"] == colour and (grown & other).any():
            return False
    later = mask.copy()
    for other in reversed(full_masks):
        if (other & ~later).sum() < MIN_VISIBLE * other.sum():
            return False
        later |= other
    return True


def sample_scene(rng: np.random.Generator, img_size: int, held_out: list = (), force_held_out: bool = False,
                 distractor_prob: float = 0.8, num_objects: tuple = (2, 6)) -> tuple[dict, list, np.ndarray, list]:
    """A random scene, checked against its own pixels.

    Returns `(scene, polygons, image, visible_masks)`: the scene dict (builtin types; objects in
    painting order), per object its annotation polygons (flat lists), the painted uint8 image and
    per object its visible bool mask. `force_held_out` makes the first object one of the
    `held_out` (colour, shape) pairs. Placements whose visible masks have holes or whose polygons
    would not decode to exactly the painted pixels are rejected and resampled.
    """
    while True:
        count = int(rng.integers(num_objects[0], num_objects[1] + 1))
        identities = _sample_identities(rng, count, held_out, force_held_out, distractor_prob)
        objects = _place(rng, identities, img_size)
        if len(objects) < 2:
            continue
        scene = {"img_size": img_size, "background": _random_background(rng),
                 "noise_seed": int(rng.integers(2**31)), "objects": objects}
        image, full, visible = _paint(scene)
        polygons = _annotation_polygons(scene, full, visible)
        if polygons is not None:
            return scene, polygons, image, visible


def _annotation_polygons(scene: dict, full: list, visible: list):
    """Per object: its drawing polygon if unoccluded, else its traced visible region; None if unusable."""
    result = []
    for obj, whole, mask in zip(scene["objects"], full, visible, strict=True):
        if np.array_equal(whole, mask):
            result.append([obj["polygon"]])
            continue
        polygons, has_holes = mask_to_polygons(mask)
        if has_holes or not polygons or not np.array_equal(_decode_polygons(polygons, scene["img_size"]), mask):
            return None
        result.append(polygons)
    return result


# ---- semantics ----------------------------------------------------------------------------------
def _matches(obj: dict, description: dict) -> bool:
    return all(obj[key] == value for key, value in description.items())


def _ranked(keys: dict, rank: int, margin: float) -> dict:
    """Status of "the rank-th smallest key" per candidate, three-valued (YES / MAYBE / NO)."""
    status = {}
    for i, key in keys.items():
        before = sum(other < key - margin for j, other in keys.items() if j != i)
        unclear = sum(abs(other - key) <= margin for j, other in keys.items() if j != i)
        if before == rank - 1 and unclear == 0:
            status[i] = YES
        elif before <= rank - 1 <= before + unclear:
            status[i] = MAYBE
        else:
            status[i] = NO
    return status


def _threshold(value: float, limit: float, margin: float) -> int:
    """Three-valued "value < limit"."""
    return YES if value < limit - margin else NO if value > limit + margin else MAYBE


def evaluate(form: dict, objects: list, img_size: int) -> tuple[list, list]:
    """Objects that a semantic form certainly denotes (YES) and those it might (MAYBE).

    Forms: {'type': 'attribute', 'target': desc}; {'type': 'location', 'target': desc, 'where': w}
    with w in left/right/top/bottom (extreme), 'top left'... (corner: extreme along the diagonal
    and inside that quadrant), 'center' (nearest the centre, within CENTER_RADIUS);
    {'type': 'ordinal', 'target': desc, 'rank': k, 'from': side} (k-th from that side);
    {'type': 'relation', 'target': desc, 'relation': r, 'landmark': desc}, r in left/right/above/
    below (CLEVR-style: centre further that way than the landmark's) or 'nearest'. `desc` maps
    some of size/colour/shape to a value; the landmark must be the only object matching its desc.
    Positions are object centres in units of the image side; comparisons within a margin are MAYBE.
    """
    pos = {i: (obj["cx"] / img_size, obj["cy"] / img_size) for i, obj in enumerate(objects)}
    candidates = [i for i, obj in enumerate(objects) if _matches(obj, form["target"])]
    kind = form["type"]
    if kind == "attribute":
        status = dict.fromkeys(candidates, YES)
    elif kind == "location" and form["where"] in SIDES:
        axis, sign = SIDES[form["where"]]
        status = _ranked({i: -sign * pos[i][axis] for i in candidates}, 1, POSITION_MARGIN)
    elif kind == "location" and form["where"] in CORNERS:
        sx, sy = CORNERS[form["where"]]
        status = _ranked({i: -(sx * pos[i][0] + sy * pos[i][1]) for i in candidates}, 1, POSITION_MARGIN)
        for i in candidates:  # and inside that quadrant
            inside = min(_threshold(-sx * (pos[i][0] - 0.5), 0.0, QUADRANT_MARGIN),
                         _threshold(-sy * (pos[i][1] - 0.5), 0.0, QUADRANT_MARGIN))
            status[i] = min(status[i], inside)
    elif kind == "location" and form["where"] == "center":
        dist = {i: float(np.hypot(pos[i][0] - 0.5, pos[i][1] - 0.5)) for i in candidates}
        status = _ranked(dist, 1, DISTANCE_MARGIN)
        for i in candidates:
            status[i] = min(status[i], _threshold(dist[i], CENTER_RADIUS, 0.03))
    elif kind == "ordinal":
        axis, sign = SIDES[form["from"]]
        status = _ranked({i: -sign * pos[i][axis] for i in candidates}, form["rank"], POSITION_MARGIN)
    elif kind == "relation":
        landmarks = [i for i, obj in enumerate(objects) if _matches(obj, form["landmark"])]
        if len(landmarks) != 1:
            return [], candidates  # the landmark itself is ambiguous
        lm = landmarks[0]
        candidates = [i for i in candidates if i != lm]
        relation = form["relation"]
        if relation == "nearest":
            status = _ranked({i: float(np.hypot(pos[i][0] - pos[lm][0], pos[i][1] - pos[lm][1]))
                              for i in candidates}, 1, DISTANCE_MARGIN)
        else:
            axis, sign = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}[relation]
            status = {i: _threshold(-sign * (pos[i][axis] - pos[lm][axis]), 0.0, POSITION_MARGIN)
                      for i in candidates}
    else:
        raise ValueError(f"Unknown semantic form {form!r}.")
    return ([i for i in candidates if status[i] == YES], [i for i in candidates if status[i] == MAYBE])


def referent(form: dict, objects: list, img_size: int):
    """Index of the one object the form denotes, or None if it denotes none or is ambiguous."""
    yes, maybe = evaluate(form, objects, img_size)
    return yes[0] if len(yes) == 1 and not maybe else None


# ---- choosing forms ---------------------------------------------------------------------------------
def _descriptions(obj: dict) -> list:
    return [{key: obj[key] for key in keys} for n in range(4) for keys in itertools.combinations(ATTRIBUTES, n)]


def _candidate_forms(kind: str, target: int, objects: list) -> list:
    """Every form of one type that could describe objects[target] (not yet checked for uniqueness)."""
    count = {}  # how many objects each description matches, memoised per call
    for obj in objects:
        for desc in _descriptions(obj):
            key = tuple(sorted(desc.items()))
            count[key] = count.get(key, 0) + 1

    def matching(desc):
        return count.get(tuple(sorted(desc.items())), 0)

    descs = _descriptions(objects[target])
    if kind == "attribute":
        return [{"type": "attribute", "target": d} for d in descs if d and matching(d) == 1]
    shared = [d for d in descs if matching(d) >= 2]  # location words must be needed
    if kind == "location":
        return [{"type": "location", "target": d, "where": w} for d in shared for w in WHERES]
    if kind == "ordinal":
        return [{"type": "ordinal", "target": d, "rank": k, "from": side}
                for d in shared for k in (2, 3) for side in SIDES]
    landmarks = [lm for j, other in enumerate(objects) if j != target
                 for lm in _descriptions(other) if lm and matching(lm) == 1]
    return [{"type": "relation", "target": d, "relation": r, "landmark": lm}
            for lm in landmarks for d in shared for r in RELATIONS]


def _choose_forms(rng, target, objects, img_size, types, mix, count) -> list:
    """Up to `count` distinct forms that denote exactly objects[target], types drawn from `mix`.

    A type already used is down-weighted (x0.25) so an object's expressions vary; a type with no
    valid form left drops out.
    """
    pools, chosen, used = {}, [], []
    available = list(types)
    while len(chosen) < count and available:
        weights = np.array([mix[t] * (0.25 if t in used else 1.0) for t in available])
        kind = available[int(rng.choice(len(available), p=weights / weights.sum()))]
        if kind not in pools:
            pool = _candidate_forms(kind, target, objects)
            pools[kind] = [pool[i] for i in rng.permutation(len(pool))]
        pool = pools[kind]
        while pool:
            form = pool.pop()
            if referent(form, objects, img_size) == target:
                chosen.append(form)
                used.append(kind)
                break
        else:
            available.remove(kind)
    return chosen


# ---- realisation ------------------------------------------------------------------------------------
def _pick(rng, options, p_first: float | None = None):
    """A random option; with `p_first`, the first (most common) word gets that probability."""
    if p_first is not None and len(options) > 1:
        return options[0] if rng.random() < p_first else options[1 + int(rng.integers(len(options) - 1))]
    return options[int(rng.integers(len(options)))]


class _Lexicon:
    """Word choices for one sentence: a synonym, once drawn, is reused (no 'turquoise ... cyan')."""

    def __init__(self, rng):
        self.rng, self.words = rng, {}

    def word(self, table: dict, value: str) -> str:
        if value not in self.words:
            self.words[value] = _pick(self.rng, table[value], p_first=0.75)
        return self.words[value]

    def noun_phrase(self, desc: dict, allow_one: bool = True) -> str:
        """Adjectives + noun, no determiner: 'small purple star', 'red one', 'shape'."""
        adjectives = [self.word(table, desc[key]) for key, table in (("size", SIZE_WORDS), ("colour", COLOUR_WORDS))
                      if key in desc]
        if "shape" in desc:
            noun = self.word(SHAPE_WORDS, desc["shape"])
        else:
            noun = _pick(self.rng, GENERIC_NOUNS + (["one"] if adjectives and allow_one else []))
        return " ".join([*adjectives, noun])


def _article(rng, p_the: float = 0.75) -> str:
    return "the " if rng.random() < p_the else ""


def _realize_attribute(rng, lex: _Lexicon, desc: dict) -> str:
    if "shape" in desc and len(desc) >= 2 and rng.random() < 0.3:  # "the star that is small and purple"
        words = [lex.word(table, desc[key]) for key, table in (("size", SIZE_WORDS), ("colour", COLOUR_WORDS))
                 if key in desc]
        return f"{_article(rng)}{lex.word(SHAPE_WORDS, desc['shape'])} that is {' and '.join(words)}"
    if "shape" in desc and "colour" in desc and rng.random() < 0.2:  # "the small red colored star"
        size = lex.word(SIZE_WORDS, desc["size"]) + " " if "size" in desc else ""
        return f"{_article(rng)}{size}{lex.word(COLOUR_WORDS, desc['colour'])} colored {lex.word(SHAPE_WORDS, desc['shape'])}"
    return _article(rng) + lex.noun_phrase(desc)


_LOCATION_TEMPLATES = {
    "left": ["the leftmost {n}", "{np} on the left", "{np} on the far left", "{np} furthest to the left", "left {n}"],
    "right": ["the rightmost {n}", "{np} on the right", "{np} on the far right", "{np} furthest to the right", "right {n}"],
    "top": ["the topmost {n}", "{np} at the top", "the highest {n}", "top {n}", "{np} closest to the top"],
    "bottom": ["the bottom {n}", "{np} at the bottom", "the lowest {n}", "bottom {n}", "{np} closest to the bottom"],
    "center": ["{np} in the middle", "{np} in the center", "{np} closest to the center", "the most central {n}"],
}
for _corner in CORNERS:
    _upper = _corner.replace("top", "upper").replace("bottom", "lower")
    _LOCATION_TEMPLATES[_corner] = [f"{{np}} in the {_corner}", f"{{np}} in the {_corner} corner",
                                    f"{_corner} {{n}}", f"{{np}} at the {_upper}"]
_RELATION_TEMPLATES = {
    "left": ["{np} left of {lm}", "{np} to the left of {lm}", "{np} on the left of {lm}"],
    "right": ["{np} right of {lm}", "{np} to the right of {lm}", "{np} on the right of {lm}"],
    "above": ["{np} above {lm}", "{np} that is above {lm}", "{np} higher up than {lm}"],
    "below": ["{np} below {lm}", "{np} under {lm}", "{np} beneath {lm}", "{np} that is below {lm}"],
    "nearest": ["{np} closest to {lm}", "{np} nearest to {lm}", "{np} next to {lm}", "{np} nearest {lm}"],
}
_ORDINAL_TEMPLATES = ["the {k} {n} from the {side}", "{k} {n} from the {side}", "the {k} {n} from {side}",
                      "the {k} {n} counting from the {side}"]
_ORDINAL_WORDS = {2: ["second", "2nd"], 3: ["third", "3rd"]}


def realize(form: dict, rng: np.random.Generator) -> str:
    """A raw English expression for a semantic form (phrasing drawn from `rng`)."""
    kind = form["type"]
    lex = _Lexicon(rng)
    if kind == "attribute":
        text = _realize_attribute(rng, lex, form["target"])
    else:
        n = lex.noun_phrase(form["target"])
        slots = {"n": n, "np": _article(rng) + n}
        if kind == "location":
            template = _pick(rng, _LOCATION_TEMPLATES[form["where"]])
        elif kind == "relation":
            template = _pick(rng, _RELATION_TEMPLATES[form["relation"]])
            slots["lm"] = _article(rng, 0.9) + lex.noun_phrase(form["landmark"])
        elif kind == "ordinal":
            template = _pick(rng, _ORDINAL_TEMPLATES)
            slots.update(k=_pick(rng, _ORDINAL_WORDS[form["rank"]], p_first=0.75), side=form["from"])
        else:
            raise ValueError(f"Unknown semantic form {form!r}.")
        text = template.format(**slots)
    text = " ".join(text.split())
    if rng.random() < 0.15:  # RefCOCO's raw strings are sometimes capitalised / punctuated
        text = text[0].upper() + text[1:]
    if rng.random() < 0.1:
        text += "."
    return text


def normalize_sentence(raw: str) -> tuple[str, list]:
    """REFER's `sent` (lower case, letters/digits/spaces) and `tokens` for a raw expression."""
    sent = " ".join("".join(ch if ch.isalnum() else " " for ch in raw.lower()).split())
    return sent, sent.split()


# ---- dataset writing ------------------------------------------------------------------------------
def _split_plan(rng, num_images, val_fraction, test_fraction) -> list:
    counts = {"val": max(1, round(num_images * val_fraction))}
    counts.update({s: max(1, round(num_images * test_fraction)) for s in ("testA", "testB", "testC")})
    counts["train"] = num_images - sum(counts.values())
    if counts["train"] < 1:
        raise ValueError(
            f"num_images={num_images} leaves no training images with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction} (at least one image per split); use more images or smaller fractions."
        )
    plan = [s for s in SPLITS for _ in range(counts[s])]
    return [plan[i] for i in rng.permutation(num_images)]


def _held_out_pairs(rng, count) -> list:
    """Colour-shape pairs reserved for testC targets; distinct colours and shapes, so each stays common."""
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:count]]
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:count]]
    return [(c, s) for c, s in zip(colours, shapes, strict=True)]


def _refer_image(rng, split, img_size, held_out, mix, distractor_prob):
    """Sample until the scene has at least one referable object; returns scene, polygons, {obj: forms}."""
    types = SPLIT_TYPES[split]
    while True:
        scene, polygons, image, visible = sample_scene(rng, img_size, held_out, force_held_out=(split == "testC"),
                                                       distractor_prob=distractor_prob)
        objects = scene["objects"]
        referred = {}
        for i, obj in enumerate(objects):
            if ((obj["colour"], obj["shape"]) in held_out) != (split == "testC"):
                continue
            forms = _choose_forms(rng, i, objects, img_size, types, mix, int(rng.integers(2, 4)))
            if forms:
                referred[i] = forms
        if referred:
            return scene, polygons, image, visible, referred


def _expressions(rng, forms: list, count: int) -> list:
    """`count` distinct (form, raw) pairs; a form may be phrased twice when there are too few forms."""
    out, seen = [], set()
    for attempt in range(count * 8):
        form = forms[attempt % len(forms)] if attempt < len(forms) else forms[int(rng.integers(len(forms)))]
        raw = realize(form, rng)
        if normalize_sentence(raw)[0] not in seen:
            seen.add(normalize_sentence(raw)[0])
            out.append((form, raw))
        if len(out) == count:
            break
    return out


def generate(root: str, dataset: str = "synref", num_images: int = 2000, img_size: int = 128, seed: int = 0,
             splitBy: str = "unc", val_fraction: float = 0.1, test_fraction: float = 0.05,
             num_held_out: int = 6, distractor_prob: float = 0.8, mix: dict | None = None,
             verbose: bool = False) -> dict:
    """Write a SynRef dataset under `root` (REFER layout) and return a summary dict."""
    started = time.perf_counter()
    if num_images < 5:
        raise ValueError(f"num_images={num_images}: need at least 5 (one image per split).")
    if seed < 0:
        raise ValueError(f"seed={seed}: must be a non-negative integer.")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must lie in [0, 1).")
    if img_size < 32:
        raise ValueError(f"img_size={img_size}: shapes are unreadable below 32 pixels; use 32 or more.")
    if not 1 <= num_held_out <= len(SHAPES):
        raise ValueError(f"num_held_out={num_held_out}: choose 1..{len(SHAPES)}.")
    if not 0.0 <= distractor_prob <= 1.0:
        raise ValueError(f"distractor_prob={distractor_prob}: must lie in [0, 1].")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    if set(mix) != set(EXPRESSION_TYPES) or min(mix.values()) <= 0:
        raise ValueError(f"mix={mix}: give a positive weight for each of {', '.join(EXPRESSION_TYPES)}.")
    master = np.random.default_rng(seed)
    held_out = _held_out_pairs(master, num_held_out)
    plan = _split_plan(master, num_images, val_fraction, test_fraction)

    data_dir = os.path.join(root, dataset)
    image_dir = os.path.join(root, "images", dataset)
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)

    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    category_ids = {c["name"]: c["id"] for c in categories}
    images, annotations, refs, scenes, semantic = [], [], [], [], []
    stats = {s: {"images": 0, "refs": 0, "sentences": 0} for s in SPLITS}
    type_counts = dict.fromkeys(EXPRESSION_TYPES, 0)
    with_distractor = 0
    ann_id, sent_id = 0, 0
    for index, split in enumerate(plan):
        rng = np.random.default_rng([seed, index])
        scene, polygons, pixels, visible, referred = _refer_image(rng, split, img_size, held_out, mix, distractor_prob)
        image_id = index + 1
        stem = f"{dataset}_{image_id:012d}"
        Image.fromarray(pixels).save(os.path.join(image_dir, stem + ".png"), compress_level=1)
        images.append({"id": image_id, "file_name": stem + ".png", "height": img_size, "width": img_size,
                       "license": 1, "coco_url": "", "flickr_url": "", "date_captured": "2026-01-01 00:00:00"})
        stats[split]["images"] += 1
        objects = scene["objects"]
        for i, (obj, mask, parts) in enumerate(zip(objects, visible, polygons, strict=True)):
            ann_id += 1
            obj["ann_id"] = ann_id
            ys, xs = np.nonzero(mask)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": category_ids[obj["shape"]],
                "segmentation": parts, "area": float(mask.sum()),
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                "iscrowd": 0,
            })
            if i not in referred:
                continue
            sentences, sent_ids = [], []
            for form, raw in _expressions(rng, referred[i], len(referred[i]) if len(referred[i]) > 1 else 2):
                sent, tokens = normalize_sentence(raw)
                sentences.append({"tokens": tokens, "raw": raw, "sent_id": sent_id, "sent": sent})
                semantic.append({"sent_id": sent_id, "ref_id": len(refs), "form": form})
                sent_ids.append(sent_id)
                type_counts[form["type"]] += 1
                sent_id += 1
            refs.append({"sent_ids": sent_ids, "file_name": f"{stem}_{ann_id}.png", "ann_id": ann_id,
                         "ref_id": len(refs), "image_id": image_id, "split": split, "sentences": sentences,
                         "category_id": category_ids[obj["shape"]]})
            stats[split]["refs"] += 1
            stats[split]["sentences"] += len(sentences)
            with_distractor += any(j != i and (o["shape"] == obj["shape"] or o["colour"] == obj["colour"])
                                   for j, o in enumerate(objects))
        scenes.append({"image_id": image_id, "split": split, **scene})
        if verbose and (index + 1) % 500 == 0:
            print(f"  {index + 1}/{num_images} images ({time.perf_counter() - started:.1f} s)", flush=True)

    with open(os.path.join(data_dir, f"refs({splitBy}).p"), "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    with open(os.path.join(data_dir, "instances.json"), "w", encoding="utf-8") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle,
                  separators=(",", ":"))
    params = {"dataset": dataset, "num_images": num_images, "img_size": img_size, "seed": seed,
              "splitBy": splitBy, "val_fraction": val_fraction, "test_fraction": test_fraction,
              "num_held_out": num_held_out, "distractor_prob": distractor_prob, "mix": mix}
    with open(os.path.join(data_dir, "synthetic_scenes.json"), "w", encoding="utf-8") as handle:
        json.dump({"format": "synref-scenes-v1", "params": params, "held_out_pairs": [list(p) for p in held_out],
                   "scenes": scenes, "expressions": semantic}, handle, separators=(",", ":"))
    return {
        "root": os.path.abspath(root), "dataset": dataset, "splitBy": splitBy, "splits": stats,
        "images": len(images), "refs": len(refs), "sentences": sent_id,
        "distractor_share": with_distractor / max(len(refs), 1), "expression_types": type_counts,
        "held_out_pairs": [list(p) for p in held_out], "seconds": time.perf_counter() - started,
    }


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


def _format_summary(summary: dict) -> str:
    lines = [f"{summary['dataset']} ({summary['splitBy']}) -> {summary['root']}",
             f"  {'split':6s} {'images':>7s} {'refs':>7s} {'sentences':>10s}"]
    for split, row in summary["splits"].items():
        lines.append(f"  {split:6s} {row['images']:7d} {row['refs']:7d} {row['sentences']:10d}")
    lines.append(f"  total  {summary['images']:7d} {summary['refs']:7d} {summary['sentences']:10d}")
    types = ", ".join(f"{k} {v}" for k, v in summary["expression_types"].items())
    lines.append(f"  expression types: {types}")
    lines.append(f"  refs whose target shares shape or colour with another object: {100 * summary['distractor_share']:.1f}%")
    lines.append(f"  held-out (testC) colour-shape pairs: {', '.join(' '.join(p) for p in summary['held_out_pairs'])}")
    lines.append(f"  generated in {summary['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="refer/data", help="REFER data root (default: refer/data)")
    parser.add_argument("--dataset", default="synref", help="dataset folder name (default: synref)")
    parser.add_argument("--splitBy", default="unc", help="refs(<splitBy>).p name (default: unc)")
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
    args = parser.parse_args(argv)
    mix = None
    if args.mix:
        try:
            mix = {k.strip(): float(v) for k, v in (item.split("=") for item in args.mix.split(","))}
        except ValueError:
            parser.error(f"--mix '{args.mix}': expected type=weight pairs separated by commas")
    summary = generate(args.root, dataset=args.dataset, num_images=args.num_images, img_size=args.img_size,
                       seed=args.seed, splitBy=args.splitBy, val_fraction=args.val_fraction,
                       test_fraction=args.test_fraction, num_held_out=args.num_held_out,
                       distractor_prob=args.distractor_prob, mix=mix, verbose=True)
    print(_format_summary(summary))
    if args.examples_dir:
        for path, split, sentences in write_examples(args.root, args.dataset, args.examples_dir, args.splitBy):
            print(f"  example {split}: {path}: " + " | ".join(sentences))
    return summary


if __name__ == "__main__":
    main()
