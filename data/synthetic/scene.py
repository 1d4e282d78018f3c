"""The visual world of SynRef: shapes, colours, sizes, and painting a scene into pixels.

A scene is a builtin-types dict: `img_size`, `background` (a texture spec), `noise_seed` and
`objects` in painting order, each with `shape`, `colour`, `size`, centre `cx`/`cy`, `radius`,
`angle`, drawing `polygon`, jittered `rgb` and `shade`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .polygons import polygon_mask

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart")
COLOURS = {  # saturated and far apart in hue/brightness; backgrounds stay desaturated
    "red": (214, 39, 40), "orange": (245, 140, 20), "yellow": (236, 216, 30), "green": (44, 160, 60),
    "cyan": (20, 190, 205), "blue": (40, 80, 220), "purple": (130, 55, 185), "pink": (245, 125, 195),
}
SIZES = ("small", "big")
SIZE_FRACTION = {"small": (0.13, 0.17), "big": (0.26, 0.32)}  # object extent / image side


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
    image, _, visible = paint_scene(scene)
    return image, visible


def paint_scene(scene: dict) -> tuple[np.ndarray, list, list]:
    """`render_scene`, also returning each object's full (unoccluded) mask: (image, full, visible)."""
    size = scene["img_size"]
    rng = np.random.default_rng(scene["noise_seed"])
    image = _background(scene["background"], size, rng)
    grain = rng.normal(0.0, 4.0, (size, size, 1)).astype(np.float32)
    full = [polygon_mask(obj["polygon"], size) for obj in scene["objects"]]
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
