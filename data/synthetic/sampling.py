"""Random scenes: which objects (with deliberate distractors), where (with occlusion limits), and
the exact annotation polygons of what ends up visible."""
from __future__ import annotations

import colorsys

import numpy as np

from .polygons import decode_polygons, mask_to_polygons, polygon_mask
from .scene import COLOURS, SHAPES, SIZE_FRACTION, SIZES, paint_scene, shape_polygon

MIN_VISIBLE = 0.75  # every object keeps at least this share of its own area


def _random_background(rng: np.random.Generator) -> dict:
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.18), rng.uniform(0.35, 0.85)
    val2 = float(np.clip(val + rng.choice([-1, 1]) * rng.uniform(0.12, 0.3), 0.25, 0.95))
    colours = [[round(255 * c, 1) for c in colorsys.hsv_to_rgb((hue + rng.uniform(-0.1, 0.1)) % 1, sat, v)]
               for v in (val, val2)]
    kind = str(rng.choice(["gradient", "stripes", "checker", "noise"]))
    return {"kind": kind, "colours": colours, "angle": round(float(rng.uniform(0, np.pi)), 4),
            "period": int(rng.integers(8, 25)), "cells": int(rng.integers(3, 9)),
            "grain": round(float(rng.uniform(2.0, 9.0)), 2)}


def _sample_identities(rng, count, held_out, force_held_out, distractor_prob, avoid=()):
    """(shape, colour, size) triples; most objects copy the shape or colour of an earlier one.
    No object has a (colour, shape) pair of `avoid`: its colour is drawn again."""
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
        while (colour, shape) in avoid:
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
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
            mask = polygon_mask(polygon, size)
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
                 distractor_prob: float = 0.8, num_objects: tuple = (2, 6),
                 avoid: tuple = ()) -> tuple[dict, list, np.ndarray, list]:
    """A random scene, checked against its own pixels.

    Returns `(scene, polygons, image, visible_masks)`: the scene dict (builtin types; objects in
    painting order), per object its annotation polygons (flat lists), the painted uint8 image and
    per object its visible bool mask. `force_held_out` makes the first object one of the
    `held_out` (colour, shape) pairs; no object has a (colour, shape) pair of `avoid`. Placements whose visible masks have holes or whose polygons
    would not decode to exactly the painted pixels are rejected and resampled.
    """
    while True:
        count = int(rng.integers(num_objects[0], num_objects[1] + 1))
        identities = _sample_identities(rng, count, held_out, force_held_out, distractor_prob, avoid)
        objects = _place(rng, identities, img_size)
        if len(objects) < 2:
            continue
        scene = {"img_size": img_size, "background": _random_background(rng),
                 "noise_seed": int(rng.integers(2**31)), "objects": objects}
        image, full, visible = paint_scene(scene)
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
        if has_holes or not polygons or not np.array_equal(decode_polygons(polygons, scene["img_size"]), mask):
            return None
        result.append(polygons)
    return result
