"""A small gRefCOCO-layout set written by the tests (shared by test_grefer and test_no_target).

Expected masks are built from pixel sets given here (RLE annotations) or from each polygon
decoded on its own (polygon annotations), so the union / crowd / no-target logic is checked
independently of the code under test.
"""
import argparse
import json
import pickle

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

H1, W1 = 24, 32  # image 1
H2, W2 = 20, 18  # image 2
SQUARE = [2, 2, 10, 2, 10, 10, 2, 10]
LEFT = [12, 4, 20, 4, 20, 14, 12, 14]
RIGHT = [16, 8, 26, 8, 26, 20, 16, 20]  # overlaps LEFT: the union keeps the overlap


def pixels(height, width, box):
    """A uint8 mask with the rows y0:y1, columns x0:x1 set."""
    mask = np.zeros((height, width), dtype=np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = 1
    return mask


CROWD_PIXELS = pixels(H1, W1, (0, 24, 28, 32))
PLAIN_RLE_PIXELS = pixels(H2, W2, (3, 9, 4, 15))
COMPRESSED_RLE_PIXELS = pixels(H2, W2, (12, 18, 1, 7))


def uncompressed_rle(mask):
    """COCO uncompressed RLE (column-major runs, starting with zeros)."""
    flat = mask.flatten(order="F")
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return {"size": list(mask.shape), "counts": runs}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def polygon_mask(polygon, height, width):
    return mask_utils.decode(mask_utils.frPyObjects([polygon], height, width))[:, :, 0]


def sentence(sent_id, raw):
    return {"sent_id": sent_id, "raw": raw, "sent": raw.lower(), "tokens": raw.lower().split()}


def ref(ref_id, ann_id, split, sentences, image_id=1, category_id=None, **extra):
    category = category_id if category_id is not None else ([1] * len(ann_id) if isinstance(ann_id, list) else 1)
    return {"ref_id": ref_id, "image_id": image_id, "split": split, "file_name": f"img{image_id}.png",
            "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences, "ann_id": ann_id,
            "category_id": category, **extra}


INSTANCES = {
    "images": [{"id": 1, "file_name": "img1.png", "height": H1, "width": W1},
               {"id": 2, "file_name": "img2.png", "height": H2, "width": W2}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [SQUARE], "bbox": [2, 2, 8, 8]},
        {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "segmentation": [LEFT, RIGHT],
         "bbox": [12, 4, 14, 16]},
        {"id": 12, "image_id": 1, "category_id": 3, "iscrowd": 1, "segmentation": compressed_rle(CROWD_PIXELS),
         "bbox": [28, 0, 4, 24]},
        {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": uncompressed_rle(PLAIN_RLE_PIXELS),
         "bbox": [4, 3, 11, 6]},
        {"id": 14, "image_id": 2, "category_id": 1, "iscrowd": 0,
         "segmentation": compressed_rle(COMPRESSED_RLE_PIXELS), "bbox": [1, 12, 6, 6]},
    ],
    "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "blob"}, {"id": 3, "name": "crowd"}],
}
REFS = [
    ref(1, [10, 11], "train", [sentence(1, "both shapes"), sentence(2, "the two things on the left")]),
    ref(2, [-1], "train", [sentence(3, "the purple star")], category_id=[], no_target=True),
    ref(3, [10, 12], "val", [sentence(4, "square and the crowd")]),
    ref(4, [-1], "val", [sentence(5, "a green car"), sentence(6, "the dog"), sentence(7, "the red circle")],
        category_id=1, no_target=True),
    ref(5, 13, "testA", [sentence(8, "the bar")], image_id=2),  # single ints, as ReLA accepts
    ref(6, [13, 14], "testB", [sentence(9, "all bars")], image_id=2, no_target=False),
    ref(7, [12], "testB", [sentence(10, "the crowd only")]),
]


def expected_mask(ref_id):
    square, blob = polygon_mask(SQUARE, H1, W1), polygon_mask(LEFT, H1, W1) | polygon_mask(RIGHT, H1, W1)
    return {1: square | blob, 2: np.zeros((H1, W1), np.uint8), 3: square, 4: np.zeros((H1, W1), np.uint8),
            5: PLAIN_RLE_PIXELS, 6: PLAIN_RLE_PIXELS | COMPRESSED_RLE_PIXELS, 7: np.zeros((H1, W1), np.uint8)}[ref_id]


def write_set(root, name="grefcoco", refs=REFS, instances=INSTANCES, fmt="json"):
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(instances))
    if fmt == "json":
        (folder / "grefs(unc).json").write_text(json.dumps(refs))
    else:
        (folder / "grefs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    image_dir = root / "images" / ("mscoco/images/train2014" if name == "grefcoco" else name)
    image_dir.mkdir(parents=True, exist_ok=True)
    for image in instances["images"]:
        Image.new("RGB", (image["width"], image["height"]), (90, 120, 200)).save(image_dir / image["file_name"])
    return root


def make_args(root, name="grefcoco"):
    return argparse.Namespace(refer_data_root=str(root), dataset=name, splitBy="unc", bert_tokenizer="minilm")
