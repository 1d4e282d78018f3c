"""REFER: index of a referring-expression dataset (RefCOCO, RefCOCO+, RefCOCOg, generated sets).

Re-implements the API of the REFER toolkit (github.com/lichengunc/refer) for Python 3:

    refer = REFER(data_root, dataset="refcoco", splitBy="unc")
    ref_ids = refer.getRefIds(split="testA")
    ref = refer.loadRefs(ref_ids[0])[0]
    mask = object_mask(refer.getMask(ref)["mask"])  # uint8 (H, W), 1 on the referred object

On disk (`data_root`): `<dataset>/refs(<splitBy>).p` (pickled list of refs), `<dataset>/instances.json`
(COCO-style images / annotations / categories) and the images under `IMAGE_DIR`.

Differences from the original toolkit, all deliberate:
- errors are exceptions (the original printed and called `sys.exit`);
- `getRefIds(image_ids=...)` returns the refs of those images (the original built a list of lists),
  and `getAnnIds(ref_ids=...)` really filters by the refs' annotations (the original computed the
  filter and returned the unfiltered list);
- `getMask` sums the annotation's parts exactly as the original does (overlapping polygons give
  2), but polygons with fewer than three points (zero area) are ignored instead of being read as
  boxes by pycocotools, and an RLE dict (crowd) annotation decodes instead of raising KeyError;
- refs pickles are read with a restricted unpickler (`refer.safe_pickle`);
- `ROOT_DIR` is the absolute data root (the original pointed at the toolkit's own folder).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
from collections import defaultdict
from numbers import Integral

import numpy as np
from pycocotools import mask as mask_utils

from errors import UserInputError

from .images import find_coco2017_dir, resolve_image_path
from .safe_pickle import load_refs_pickle

__all__ = ["REFER", "KNOWN_SPLITBY", "DATA_SETUP_HINT", "object_mask"]

KNOWN_SPLITBY = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc", "google"),
    "refcocog": ("umd", "google"),
}
_COCO_DATASETS = ("refcoco", "refcoco+", "refcocog")
_SPLITS = ("train", "val", "test", "testA", "testB", "testC", "testAB", "testBC", "testAC")
# Largest image side accepted: pycocotools allocates H*W bytes per part and its polygon code
# overflows int on huge sizes (a segfault, not an error); no referring dataset comes near this.
MAX_IMAGE_SIDE = 2**15
# How far (pixels) a polygon vertex may lie outside its image. Real annotations stray by a pixel
# at most; far-off values mean a wrong file, and huge ones overflow pycocotools' C code.
POLYGON_MARGIN = 16

DATA_SETUP_HINT = (
    "See README.md, section 'Data setup': the REFER annotations (refs(<splitBy>).p and "
    "instances.json per dataset) come from the refer repository, github.com/lichengunc/refer "
    "(download links in its README); the RefCOCO/RefCOCO+/RefCOCOg images are MS-COCO train2014 "
    "(images.cocodataset.org/zips/train2014.zip), unpacked into <data_root>/images/mscoco/images/train2014, "
    "or COCO 2017's train2017 folder (<data_root>/images/mscoco/images/train2017 or --coco2017-dir)."
)


def object_mask(summed: np.ndarray, union: bool = False) -> np.ndarray:
    """The object's 0/1 uint8 mask from `REFER.getMask`'s summed mask.

    Released rule (default): only pixels equal to 1 are object, so where two polygons of one
    annotation overlap the target has a hole. `union=True` counts every covered pixel instead.
    """
    return ((summed > 0) if union else (summed == 1)).astype(np.uint8)


def _as_list(value) -> list:
    """The original API takes either one id or a list of ids."""
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray, range)):
        return list(value)
    return [value]


def load_instances(path: str, hint: str) -> dict:
    """A COCO-style instances.json (an object with lists images / annotations / categories)."""
    try:
        with open(path, encoding="utf-8") as handle:
            instances = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"'{path}' is not valid JSON ({err}). {hint}") from err
    if not isinstance(instances, dict) or not all(
            isinstance(instances.get(key, []), list) for key in ("images", "annotations", "categories")):
        raise UserInputError(f"'{path}' is not a COCO-style instances file: expected an object with "
                         f"lists 'images', 'annotations' and 'categories'. {hint}")
    return instances


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_image_entry(image: dict, instances_path: str) -> None:
    """An image record's size and file name, checked before pycocotools or a path join sees them."""
    where = f"Image {image.get('id')!r} in '{instances_path}'"
    for key in ("height", "width"):
        value = image.get(key)
        if not _is_int(value) or not 1 <= value <= MAX_IMAGE_SIDE:
            raise UserInputError(
                f"{where} has {key} {value!r}; it must be an integer from 1 to {MAX_IMAGE_SIDE} (the image's "
                f"size in pixels). Fix the entry or re-download the annotations. {DATA_SETUP_HINT}")
    name = image.get("file_name")
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UserInputError(f"{where} has file_name {name!r}; it must be a non-empty string.")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
        raise UserInputError(
            f"{where} has file_name '{name}', which leads outside the image folder; file names must be "
            "relative to the dataset's image folder (no absolute path, no '..').")


def check_ref_fields(ref, refs: dict, images: dict, instances_path: str) -> None:
    """The fields REFER and GREFER refs share: a new integer ref_id, a string split, an image_id of
    `images`, and sentences [{sent_id, raw}] with string text. Raises KeyError/TypeError/ValueError."""
    if not isinstance(ref, dict):
        raise TypeError(f"expected a dict, got {type(ref).__name__}")
    ref_id = ref["ref_id"]
    if not _is_int(ref_id):
        raise TypeError(f"ref_id must be an integer, got {ref_id!r}")
    if ref_id in refs:
        # Keeping either copy would silently move an object between splits.
        raise ValueError(f"ref_id {ref_id} appears twice (also in a ref of split {refs[ref_id].get('split')!r})")
    if not isinstance(ref["split"], str):
        raise TypeError(f"split must be a string, got {ref['split']!r}")
    if ref["image_id"] not in images:
        raise ValueError(f"image_id {ref['image_id']!r} is not in '{instances_path}'")
    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not all(
            isinstance(s, dict) and _is_int(s.get("sent_id")) and isinstance(s.get("raw"), str) for s in sentences):
        raise TypeError("sentences must be a list of {sent_id (an integer), raw (a string), ...}")


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: '{path}'. {DATA_SETUP_HINT}")


class REFER:
    """Referring-expression index with the original REFER toolkit's methods and members."""

    def __init__(self, data_root: str, dataset: str = "refcoco", splitBy: str = "unc", coco2017_dir=None):
        data_root = os.path.abspath(os.path.expanduser(os.fspath(data_root)))
        if not os.path.isdir(data_root):
            raise FileNotFoundError(f"REFER data root '{data_root}' does not exist. {DATA_SETUP_HINT}")
        self.ROOT_DIR = data_root
        self.COCO2017_DIR = find_coco2017_dir(data_root, coco2017_dir)
        self.DATA_DIR = os.path.join(data_root, dataset)
        self._check_dataset_and_split_by(dataset, splitBy)
        if dataset in _COCO_DATASETS:
            self.IMAGE_DIR = os.path.join(data_root, "images", "mscoco", "images", "train2014")
        else:
            self.IMAGE_DIR = os.path.join(data_root, "images", dataset)
        self.dataset = dataset
        self.splitBy = splitBy

        refs_path = os.path.join(self.DATA_DIR, f"refs({splitBy}).p")
        instances_path = os.path.join(self.DATA_DIR, "instances.json")
        _require_file(refs_path, f"REFER refs file for {dataset} ({splitBy})")
        _require_file(instances_path, f"COCO instances file for {dataset}")
        refs = load_refs_pickle(refs_path)
        if not isinstance(refs, list):
            raise UserInputError(f"'{refs_path}' holds a {type(refs).__name__}, expected a list of refs. {DATA_SETUP_HINT}")
        instances = load_instances(instances_path, DATA_SETUP_HINT)
        self.data = {
            "dataset": dataset,
            "refs": refs,
            "images": instances.get("images", []),
            "annotations": instances.get("annotations", []),
            "categories": instances.get("categories", []),
        }
        self._create_index(refs_path, instances_path)

    def _check_dataset_and_split_by(self, dataset: str, split_by: str) -> None:
        if dataset in KNOWN_SPLITBY:
            if split_by not in KNOWN_SPLITBY[dataset]:
                raise UserInputError(
                    f"splitBy '{split_by}' is not valid for dataset '{dataset}'; choose one of "
                    f"{', '.join(KNOWN_SPLITBY[dataset])}."
                )
            return
        if not os.path.isdir(self.DATA_DIR):
            found = sorted(
                name for name in os.listdir(self.ROOT_DIR)
                if glob.glob(os.path.join(glob.escape(os.path.join(self.ROOT_DIR, name)), "*refs(*).[pj]*"))
            )
            raise UserInputError(
                f"Unknown dataset '{dataset}': it is not one of {', '.join(KNOWN_SPLITBY)}, grefcoco, and there is "
                f"no folder '{self.DATA_DIR}' (dataset folders found under {self.ROOT_DIR}: "
                f"{', '.join(found) or 'none'}). Check --dataset and --refer_data_root (README.md, 'Data setup')."
            )
        pattern = os.path.join(glob.escape(self.DATA_DIR), "refs(*).p")
        available = sorted(re.fullmatch(r"refs\((.*)\)\.p", os.path.basename(p)).group(1) for p in glob.glob(pattern))
        if available and split_by not in available:
            raise UserInputError(
                f"splitBy '{split_by}' is not valid for dataset '{dataset}': there is no "
                f"'{os.path.join(self.DATA_DIR, f'refs({split_by}).p')}'; choose one of {', '.join(available)}."
            )

    def _create_index(self, refs_path: str, instances_path: str) -> None:
        """Build every lookup table in one pass over annotations, images, categories and refs."""
        self._index_instances(instances_path)
        self._index_refs(refs_path, instances_path)

    def _index_instances(self, instances_path: str) -> None:
        self.Anns, self.Imgs, self.Cats = {}, {}, {}
        self.imgToAnns = defaultdict(list)
        try:
            for ann in self.data["annotations"]:
                self.Anns[ann["id"]] = ann
                self.imgToAnns[ann["image_id"]].append(ann)
            for img in self.data["images"]:
                self.Imgs[img["id"]] = img
                _check_image_entry(img, instances_path)
            for cat in self.data["categories"]:
                self.Cats[cat["id"]] = cat["name"]  # the original maps id -> name
        except (KeyError, TypeError) as err:
            raise UserInputError(
                f"Malformed entry in '{instances_path}' (missing or wrong field: {err}); annotations need id and "
                f"image_id, images need id, categories need id and name. {DATA_SETUP_HINT}"
            ) from err
        self.imgToAnns = dict(self.imgToAnns)

    def _index_refs(self, refs_path: str, instances_path: str) -> None:
        self.Refs, self.Sents = {}, {}
        self.imgToRefs, self.catToRefs = defaultdict(list), defaultdict(list)
        self.refToAnn, self.annToRef = {}, {}
        self.sentToRef, self.sentToTokens = {}, {}
        for ref in self.data["refs"]:
            try:
                ref_id, ann_id = ref["ref_id"], ref["ann_id"]
                check_ref_fields(ref, self.Refs, self.Imgs, instances_path)
                if ann_id in self.Anns and self.Anns[ann_id].get("image_id") != ref["image_id"]:
                    raise ValueError(f"annotation {ann_id} belongs to image {self.Anns[ann_id].get('image_id')!r}, "
                                     f"not to the ref's image_id {ref['image_id']!r}")
                self.Refs[ref_id] = ref
                self.imgToRefs[ref["image_id"]].append(ref)
                self.catToRefs[ref["category_id"]].append(ref)
                self.refToAnn[ref_id] = self.Anns[ann_id]
                self.annToRef[ann_id] = ref
                for sent in ref["sentences"]:
                    self.Sents[sent["sent_id"]] = sent
                    self.sentToRef[sent["sent_id"]] = ref
                    self.sentToTokens[sent["sent_id"]] = sent.get("tokens", [])
            except (KeyError, TypeError, ValueError) as err:
                ref_name = ref.get("ref_id", "?") if isinstance(ref, dict) else repr(ref)[:60]
                if isinstance(err, KeyError) and isinstance(ref, dict) and "ann_id" in ref and ref["ann_id"] not in self.Anns:
                    raise UserInputError(
                        f"Ref {ref_name} in '{refs_path}' points to annotation {ref['ann_id']}, which is not "
                        f"in '{instances_path}'. The two files must come from the same dataset. {DATA_SETUP_HINT}"
                    ) from err
                detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
                raise UserInputError(
                    f"Malformed ref {ref_name} in '{refs_path}' ({detail}); every ref needs "
                    "ref_id, ann_id, image_id, category_id, split and sentences[{sent_id, raw, ...}]."
                ) from err
        # Plain dicts from here on, so that a missing key is an error rather than a new empty entry.
        self.imgToRefs, self.catToRefs = dict(self.imgToRefs), dict(self.catToRefs)

    # ---- ids ------------------------------------------------------------------------------
    def getRefIds(self, image_ids=[], cat_ids=[], ref_ids=[], split=""):  # noqa: B006 -- original API
        if split and split not in _SPLITS:
            raise UserInputError(f"Unknown split '{split}'; choose one of {', '.join(_SPLITS)}.")
        image_ids, cat_ids, ref_ids = _as_list(image_ids), _as_list(cat_ids), _as_list(ref_ids)
        if image_ids:
            refs = [ref for image_id in image_ids for ref in self.imgToRefs.get(image_id, [])]
        else:
            refs = self.data["refs"]
        if cat_ids:
            wanted_cats = set(cat_ids)
            refs = [ref for ref in refs if ref["category_id"] in wanted_cats]
        if ref_ids:
            wanted_refs = set(ref_ids)
            refs = [ref for ref in refs if ref["ref_id"] in wanted_refs]
        if split:
            refs = [ref for ref in refs if self._in_split(ref["split"], split)]
        return [ref["ref_id"] for ref in refs]

    @staticmethod
    def _in_split(ref_split: str, split: str) -> bool:
        if split in ("testA", "testB", "testC"):
            return split[-1] in ref_split
        if split == "test":
            return "test" in ref_split
        return ref_split == split  # train, val, testAB, testBC, testAC

    def getAnnIds(self, image_ids=[], cat_ids=[], ref_ids=[]):  # noqa: B006 -- original API
        image_ids, cat_ids, ref_ids = _as_list(image_ids), _as_list(cat_ids), _as_list(ref_ids)
        if image_ids:
            anns = [ann for image_id in image_ids for ann in self.imgToAnns.get(image_id, [])]
        else:
            anns = self.data["annotations"]
        if cat_ids:
            wanted_cats = set(cat_ids)
            anns = [ann for ann in anns if ann["category_id"] in wanted_cats]
        if ref_ids:
            wanted_anns = {self.Refs[ref_id]["ann_id"] for ref_id in ref_ids}
            anns = [ann for ann in anns if ann["id"] in wanted_anns]
        return [ann["id"] for ann in anns]

    def getImgIds(self, ref_ids=[]):  # noqa: B006 -- original API
        ref_ids = _as_list(ref_ids)
        if ref_ids:
            return list(dict.fromkeys(self.Refs[ref_id]["image_id"] for ref_id in ref_ids))
        return list(self.Imgs)

    def getCatIds(self):
        return list(self.Cats)

    # ---- records ----------------------------------------------------------------------------
    def loadRefs(self, ref_ids=[]):  # noqa: B006 -- original API
        return [self.Refs[ref_id] for ref_id in _as_list(ref_ids)]

    def loadAnns(self, ann_ids=[]):  # noqa: B006 -- original API
        return [self.Anns[ann_id] for ann_id in _as_list(ann_ids)]

    def loadImgs(self, image_ids=[]):  # noqa: B006 -- original API
        return [self.Imgs[image_id] for image_id in _as_list(image_ids)]

    def loadCats(self, cat_ids=[]):  # noqa: B006 -- original API
        """Category names (the original stores `Cats` as id -> name)."""
        return [self.Cats[cat_id] for cat_id in _as_list(cat_ids)]

    def getRefBox(self, ref_id):
        return self.refToAnn[ref_id]["bbox"]

    def image_path(self, file_name: str) -> str:
        """Path of an image of this dataset (a COCO 2017 train2017 copy when the 2014 file is absent)."""
        return resolve_image_path(self.IMAGE_DIR, file_name, self.COCO2017_DIR)

    # ---- masks ------------------------------------------------------------------------------
    def _annotation_rles(self, ann: dict, height: int, width: int) -> list:
        """The annotation's parts (polygons and/or RLEs) as pycocotools RLEs of the image size.

        Every part is validated first: pycocotools' C code trusts its input, and a NaN coordinate
        or an RLE whose runs overflow the image would crash the process or corrupt memory.
        """
        where = f"annotation {ann.get('id')} of '{self.DATA_DIR}/instances.json'"
        segmentation = ann.get("segmentation") or []
        if not isinstance(segmentation, (dict, list)):
            raise UserInputError(f"The segmentation of {where} must be a list of polygons or an RLE dict.")
        parts = [segmentation] if isinstance(segmentation, dict) else segmentation
        polygons, rles = [], []
        for part in parts:
            if isinstance(part, dict):
                rles.append(_checked_rle(part, height, width, where))
            else:
                polygon = _checked_polygon(part, where, height, width)
                if len(polygon) >= 6:  # fewer than 3 points encloses nothing
                    polygons.append(polygon)
        return (mask_utils.frPyObjects(polygons, height, width) if polygons else []) + rles

    def getMask(self, ref: dict) -> dict:
        """`{'mask': uint8 (H, W), 'area': float}` as the released REFER computes them.

        Every part of the annotation (polygon or RLE) is decoded on its own and the masks are
        SUMMED, so a pixel inside two overlapping polygons holds 2; `area` is the sum of the
        parts' areas. The released dataset keeps only pixels equal to 1 as the object (see
        `object_mask`), which makes such overlaps holes.
        """
        return self.getAnnMask(self.refToAnn[ref["ref_id"]])

    def getAnnMask(self, ann: dict) -> dict:
        """`getMask` for any annotation of the dataset, referred or not (e.g. a target's look-alikes)."""
        image = self.Imgs[ann["image_id"]]
        height, width = int(image["height"]), int(image["width"])
        rles = self._annotation_rles(ann, height, width)
        if not rles:
            return {"mask": np.zeros((height, width), dtype=np.uint8), "area": 0.0}
        parts = mask_utils.decode(rles)  # (H, W, n_parts)
        # A uint16 sum wraps to the same uint8 values as an int64 one (65536 is a multiple of 256)
        # and takes a third of the time, which counts at one mask per training item.
        mask = np.ascontiguousarray(np.add.reduce(parts, axis=2, dtype=np.uint16).astype(np.uint8))
        return {"mask": mask, "area": float(sum(mask_utils.area(rles)))}

    def getMaskByRef(self, ref: dict | None = None, ref_id: Integral | None = None) -> dict:
        if ref is None:
            if ref_id is None:
                raise ValueError("getMaskByRef needs `ref` or `ref_id`.")
            ref = self.Refs[ref_id]
        return self.getMask(ref)

    # ---- plotting (optional; matplotlib is imported only here) ------------------------------
    def showRef(self, ref: dict, ax=None):
        """Draw the image, the referred object's mask and its box, titled with its sentences."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
        from PIL import Image

        ax = ax or plt.gca()
        image = self.Imgs[ref["image_id"]]
        ax.imshow(Image.open(self.image_path(image["file_name"])).convert("RGB"))
        self.showMask(ref, ax=ax)
        x, y, w, h = self.getRefBox(ref["ref_id"])
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="green", linewidth=2))
        ax.set_title("\n".join(f"{i + 1}. {s['sent']}" for i, s in enumerate(ref["sentences"])), fontsize=8)
        ax.axis("off")
        return ax

    def showMask(self, ref: dict, ax=None, color=(1.0, 0.2, 0.2), alpha: float = 0.5):
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        mask = self.getMask(ref)["mask"].astype(bool)
        overlay = np.zeros((*mask.shape, 4), dtype=np.float32)
        overlay[mask] = (*color, alpha)
        ax.imshow(overlay)
        return ax


def _checked_polygon(part, where: str, height: int, width: int) -> list:
    """A polygon [x1, y1, x2, y2, ...] of finite numbers near the image, or an error naming the annotation."""
    try:
        polygon = [float(v) for v in part]
    except (TypeError, ValueError) as err:
        raise UserInputError(f"A polygon of {where} is not a list of numbers ({err}).") from err
    if len(polygon) % 2 or not all(math.isfinite(v) for v in polygon):
        raise UserInputError(f"A polygon of {where} needs an even number of finite coordinates, got "
                         f"{len(polygon)} value(s){'' if all(map(math.isfinite, polygon)) else ' with NaN/inf'}.")
    for axis, values, side in (("x", polygon[0::2], width), ("y", polygon[1::2], height)):
        outside = [v for v in values if not -POLYGON_MARGIN <= v <= side + POLYGON_MARGIN]
        if outside:
            raise UserInputError(
                f"A polygon of {where} has {axis} = {outside[0]:g}, outside its {height}x{width} image (more than "
                f"{POLYGON_MARGIN} px beyond the border): the annotation does not belong to this image or its size "
                "is wrong. Fix or remove the annotation.")
    return polygon


def _compressed_rle_counts(text: bytes) -> list:
    """Run lengths of a COCO compressed RLE string (the format of pycocotools' rleFrString)."""
    counts, pos = [], 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("truncated run")
            char = text[pos] - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            pos += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def _checked_rle(part: dict, height: int, width: int, where: str) -> dict:
    """A pycocotools RLE of the image size whose runs cover the image exactly."""
    try:
        size = [int(s) for s in part["size"]]
        counts = part["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise UserInputError(f"An RLE of {where} needs 'size' [height, width] and 'counts' ({err}).") from err
    if size != [height, width]:
        raise UserInputError(f"{where[0].upper()}{where[1:]} has an RLE of size {size} but its image is {height}x{width}.")
    try:
        if isinstance(counts, list):
            runs = [int(c) for c in counts]
        else:
            counts = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
            runs = _compressed_rle_counts(counts)
    except (TypeError, ValueError, UnicodeEncodeError) as err:
        raise UserInputError(f"The RLE counts of {where} cannot be read ({err}).") from err
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise UserInputError(f"The RLE of {where} does not cover its {height}x{width} image exactly "
                         f"(runs sum to {sum(runs)}, or a run is negative).")
    if isinstance(part["counts"], list):
        return mask_utils.frPyObjects({"size": size, "counts": runs}, height, width)
    return {"size": size, "counts": counts}
