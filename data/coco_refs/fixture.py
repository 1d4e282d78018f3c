"""A small COCO-2017-format folder with JPEG images, for trying `python -m data.coco_refs` without
COCO, for the tests and for the docs/coco_refs.md picture.

    <folder>/annotations/instances_{train,val}2017.json    <folder>/{train,val}2017/<12 digits>.jpg

Each image holds flat-painted objects of a few real COCO categories (same ids and names) on a
noisy background, with what real files contain besides plain polygons: RLE segmentations, crowd
annotations, tiny objects, images without annotations, an annotation of an unlisted category,
one of an image the file does not list, and a listed category no image contains.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"}, {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 17, "name": "cat", "supercategory": "animal"}, {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 24, "name": "zebra", "supercategory": "animal"}, {"id": 47, "name": "cup", "supercategory": "kitchen"},
    {"id": 73, "name": "laptop", "supercategory": "electronic"},
]
COLOURS = {1: (200, 80, 60), 3: (60, 90, 200), 17: (230, 170, 40), 18: (120, 70, 30), 47: (40, 160, 150),
           73: (90, 90, 90), 999: (180, 40, 180)}
UNLISTED = 999  # a category id the files do not list
PLACED = (1, 3, 17, 18, 47, 73)  # zebra (24) is listed but never placed


def _outline(rng, x, y, w, h) -> list:
    """A flat polygon inside the box: an ellipse or a rectangle."""
    if rng.random() < 0.5:
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    return np.round(np.stack([x + w / 2 + w / 2 * np.cos(t), y + h / 2 + h / 2 * np.sin(t)], 1), 2).reshape(-1).tolist()


def _scene(rng, width, height) -> list:
    """(category, box) per object: one category several times, a few others once, each in its own
    cell of a 3 x 2 grid so that positions differ clearly."""
    main = int(rng.choice(PLACED))
    cats = [main] * int(rng.integers(1, 5)) + [int(c) for c in rng.choice(PLACED, int(rng.integers(0, 3)))]
    cells = rng.permutation(6)[:len(cats)]
    objects = []
    for cat, cell in zip(cats, cells):
        cw, ch = width / 3, height / 2
        scale = float(rng.choice([0.18, 0.5, 0.7, 0.9], p=[0.1, 0.3, 0.3, 0.3]))
        w, h = cw * scale, ch * scale * float(rng.uniform(0.7, 1.0))
        x = (cell % 3) * cw + float(rng.uniform(0, cw - w))
        y = (cell // 3) * ch + float(rng.uniform(0, ch - h))
        objects.append((cat, round(x, 2), round(y, 2), round(w, 2), round(h, 2)))
    return objects


def _paint(rng, width, height, anns) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.array(rng.integers(90, 200, 3), dtype=np.float32)
    image = base + 30 * (xx / width)[..., None] - 20 * (yy / height)[..., None]
    image += rng.normal(0, 6, (height, width, 3)).astype(np.float32)
    for ann, mask in anns:
        image[mask] = np.array(COLOURS[ann["category_id"]], dtype=np.float32) + rng.normal(0, 8, (int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _annotation(rng, ann_id, image_id, cat, box, width, height, crowd=False) -> tuple[dict, np.ndarray]:
    x, y, w, h = box
    polygon = _outline(rng, x, y, w, h)
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
    mask = mask_utils.decode(rle).astype(bool)
    if crowd or rng.random() < 0.15:  # RLE: uncompressed counts for crowds (as COCO), compressed otherwise
        if crowd:
            segmentation = {"size": [height, width], "counts": _runs(mask)}
        else:
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    else:
        segmentation = [polygon]
    area = float(mask_utils.area(rle))
    bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": segmentation, "area": area,
            "bbox": bbox, "iscrowd": int(crowd)}, mask


def _runs(mask: np.ndarray) -> list:
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major, as COCO RLEs
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def write_split(folder, name, image_ids, ann_start, rng, size, extras=True) -> dict:
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    images, annotations, ann_id = [], [], ann_start
    for k, image_id in enumerate(image_ids):
        width, height = size
        file_name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "license": 1, "date_captured": "2017-01-01 00:00:00"})
        painted = []
        objects = [] if extras and k == 1 else _scene(rng, width, height)  # one image without annotations
        for cat, *box in objects:
            ann_id += 1
            ann, mask = _annotation(rng, ann_id, image_id, cat, box, width, height)
            annotations.append(ann)
            painted.append((ann, mask))
        if extras and k in (2, 5):  # a crowd region, or an object of an unlisted category, in a free corner
            ann_id += 1
            cat = objects[0][0] if k == 2 else UNLISTED
            ann, mask = _annotation(rng, ann_id, image_id, cat, (1, height - 6, 5, 5), width, height, crowd=k == 2)
            annotations.append(ann)
            painted.append((ann, mask))
        Image.fromarray(_paint(rng, width, height, painted)).save(os.path.join(folder, name, file_name), quality=90)
    if extras:  # an annotation whose image the file does not list
        annotations.append({**annotations[0], "id": ann_id + 1, "image_id": max(image_ids) + 1000})
    return {"info": {"description": "COCO-format fixture"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": CATEGORIES}


def write_coco_fixture(folder, num_train: int = 12, num_val: int = 16, size=(96, 64), seed: int = 0,
                       colliding_ids: bool = False) -> dict:
    """Write the folder; returns the paths `build` takes. `colliding_ids`: the val file reuses the
    train file's image and annotation ids (COCO's do not; other COCO-format files may)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "annotations"), exist_ok=True)
    train_ids = [100 + 7 * k for k in range(num_train)]
    val_ids = train_ids[:min(num_val, num_train)] if colliding_ids else [5000 + 3 * k for k in range(num_val)]
    paths = {}
    for name, ids, start in (("train2017", train_ids, 0), ("val2017", val_ids, 0 if colliding_ids else 100000)):
        data = write_split(folder, name, ids, start, rng, size)
        paths[f"{name[:-4]}_json"] = os.path.join(folder, "annotations", f"instances_{name}.json")
        paths[f"{name[:-4]}_images"] = os.path.join(folder, name)
        with open(paths[f"{name[:-4]}_json"], "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    return paths
