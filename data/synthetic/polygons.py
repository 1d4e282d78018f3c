"""Exact COCO polygons of pixel masks, and the pycocotools rasterisation they are checked against."""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # right, down, left, up (image coordinates, y down)


def polygon_mask(polygon: list, size: int) -> np.ndarray:
    """Rasterise with pycocotools, the same rule `REFER.getMask` decodes annotations with."""
    rle = mask_utils.frPyObjects([polygon], size, size)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def decode_polygons(polygons: list, size: int) -> np.ndarray:
    """Union of several polygons as pycocotools (and so `REFER.getMask`) decodes them."""
    rles = mask_utils.frPyObjects(polygons, size, size)
    return mask_utils.decode(mask_utils.merge(rles, intersect=False)).astype(bool)


def _boundary_edges(mask: np.ndarray, stride: int) -> dict:
    """Outgoing boundary edges per pixel corner (vertex = y * stride + x), as direction indices."""
    padded = np.pad(mask.astype(bool), 1)
    inner = padded[1:-1, 1:-1]
    outgoing: dict[int, list] = {}
    # (background neighbour, vertex offset of the edge start, direction) for top/right/bottom/left
    for neighbour, (dx, dy), direction in (
        (padded[:-2, 1:-1], (0, 0), 0), (padded[1:-1, 2:], (1, 0), 1),
        (padded[2:, 1:-1], (1, 1), 2), (padded[1:-1, :-2], (0, 1), 3),
    ):
        ys, xs = np.nonzero(inner & ~neighbour)
        for start in ((ys + dy) * stride + xs + dx).tolist():
            outgoing.setdefault(start, []).append(direction)
    return outgoing


def _walk_loop(outgoing: dict, used: set, first: int, first_dir: int, stride: int) -> list:
    """Corner vertices of the boundary loop that starts with edge (first, first_dir)."""
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
            return corners


def mask_to_polygons(mask: np.ndarray) -> tuple[list, bool]:
    """Polygons whose pycocotools decoding is exactly `mask`, and whether `mask` has holes.

    Walks the pixel-edge boundary of each 4-connected component clockwise (on screen), with
    vertices at pixel corners: pixel (x, y) is the square [x, x+1] x [y, y+1], which pycocotools
    fills exactly. Where two pixels touch only diagonally the walk turns right, keeping them in
    separate loops. Loops that run counter-clockwise enclose holes, which COCO polygons cannot
    express (they are unioned), so callers reject such masks.
    """
    stride = mask.shape[1] + 1
    outgoing = _boundary_edges(mask, stride)
    used: set = set()
    polygons, has_holes = [], False
    for first in sorted(outgoing):
        for first_dir in outgoing[first]:
            if (first, first_dir) in used:
                continue
            corners = _walk_loop(outgoing, used, first, first_dir, stride)
            xy = np.array([(v % stride, v // stride) for v in corners], dtype=np.int64)
            twice_area = int(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))
            if twice_area > 0:
                polygons.append(xy.reshape(-1).tolist())
            else:
                has_holes = True
    return polygons, has_holes
