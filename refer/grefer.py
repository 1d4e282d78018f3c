"""GREFER: index of a generalized referring-expression dataset (gRefCOCO and sets in its layout).

    grefer = GREFER(data_root, dataset="grefcoco", splitBy="unc")
    ref = grefer.loadRefs(grefer.getRefIds(split="val")[0])[0]
    mask = grefer.getMask(ref)["mask"]  # uint8 (H, W), 1 on every referred object, all 0 for no target

On disk (`data_root`): `<dataset>/grefs(<splitBy>).p` (read with the restricted unpickler) or
`<dataset>/grefs(<splitBy>).json`, the pickle winning when both exist (as in ReLA's loader), plus
`<dataset>/instances.json`. Images: MS-COCO train2014 (`images/mscoco/images/train2014`) for
`grefcoco`, `images/<dataset>/` for any other name (the REFER rule).

A ref is `{ref_id, image_id, split, sentences: [{sent_id, raw, ...}], ann_id, category_id}` where
`ann_id` and `category_id` are lists (a single int is accepted, as ReLA accepts it) and
`ann_id == [-1]` means the expression refers to nothing. gRefCOCO refs also carry
`no_target: bool`; when present it must agree with `ann_id`.

Masks: the union of the listed annotations, each decoded like REFER (parts validated, then
every pixel > 0 is object); crowd annotations (`iscrowd` 1) are skipped, as in ReLA; a no-target
ref has an all-zero mask. Everything a ref points to is checked when the index is built, so a
malformed file fails at once with a `UserInputError` naming the file and the ref.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from numbers import Integral

import numpy as np
from pycocotools import mask as mask_utils

from errors import UserInputError

from .images import find_coco2017_dir
from .refer import REFER, _as_list, check_ref_fields, load_instances
from .safe_pickle import load_refs_pickle

__all__ = ["GREFER", "GREF_SETUP_HINT", "NO_TARGET", "grefs_path"]

NO_TARGET = [-1]
GREF_SETUP_HINT = (
    "See README.md, section 'Data setup': gRefCOCO (grefs(unc).json and instances.json) comes from "
    "github.com/henghuiding/gRefCOCO; its images are MS-COCO train2014, unpacked into "
    "<data_root>/images/mscoco/images/train2014."
)


def grefs_path(data_root, dataset: str, split_by: str) -> str | None:
    """The generalized refs file of `dataset` (pickle first, then JSON), or None if there is none."""
    folder = os.path.join(os.path.abspath(os.path.expanduser(os.fspath(data_root))), dataset)
    for name in (f"grefs({split_by}).p", f"grefs({split_by}).json"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _load_grefs(path: str) -> list:
    if path.endswith(".p"):
        refs = load_refs_pickle(path)
    else:
        try:
            with open(path, encoding="utf-8") as handle:
                refs = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserInputError(f"'{path}' is not valid JSON ({err}). {GREF_SETUP_HINT}") from err
    if not isinstance(refs, list):
        raise UserInputError(f"'{path}' holds a {type(refs).__name__}, expected a list of refs. {GREF_SETUP_HINT}")
    return refs


def _id_list(value, field: str, allow_empty: bool = False) -> list:
    """`ann_id` / `category_id` as a list of integers (one int is accepted; only categories may be [])."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if (not values and not allow_empty) or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
        raise TypeError(f"{field} must be an integer or a{'' if allow_empty else ' non-empty'} list of integers, "
                        f"got {value!r}")
    return [int(v) for v in values]


class GREFER(REFER):
    """gRefCOCO-style index with REFER's methods; `refToAnn[ref_id]` is a LIST of annotations."""

    def __init__(self, data_root, dataset: str = "grefcoco", splitBy: str = "unc", coco2017_dir=None):
        data_root = os.path.abspath(os.path.expanduser(os.fspath(data_root)))
        self.ROOT_DIR = data_root
        self.COCO2017_DIR = find_coco2017_dir(data_root, coco2017_dir)
        self.DATA_DIR = os.path.join(data_root, dataset)
        self.IMAGE_DIR = (os.path.join(data_root, "images", "mscoco", "images", "train2014") if dataset == "grefcoco"
                          else os.path.join(data_root, "images", dataset))
        self.dataset, self.splitBy = dataset, splitBy
        self.refs_path = grefs_path(data_root, dataset, splitBy)
        if self.refs_path is None:
            raise FileNotFoundError(f"gRefCOCO refs file for {dataset} ({splitBy}) not found: neither "
                                    f"'{self.DATA_DIR}/grefs({splitBy}).json' nor '.p' exists. {GREF_SETUP_HINT}")
        instances_path = os.path.join(self.DATA_DIR, "instances.json")
        if not os.path.isfile(instances_path):
            raise FileNotFoundError(f"COCO instances file for {dataset} not found: '{instances_path}'. "
                                    f"{GREF_SETUP_HINT}")
        try:
            instances = load_instances(instances_path, GREF_SETUP_HINT)
        except ValueError as err:
            raise UserInputError(str(err)) from err
        self.data = {"dataset": dataset, "refs": _load_grefs(self.refs_path), "images": instances.get("images", []),
                     "annotations": instances.get("annotations", []), "categories": instances.get("categories", [])}
        self._create_index(self.refs_path, instances_path)

    def _create_index(self, refs_path: str, instances_path: str) -> None:
        try:
            self._index_instances(instances_path)
        except ValueError as err:
            raise UserInputError(str(err)) from err
        self.Refs, self.Sents, self.sentToRef, self.sentToTokens = {}, {}, {}, {}
        self.refToAnn, self.annToRef = {}, defaultdict(list)
        self.imgToRefs, self.catToRefs = defaultdict(list), defaultdict(list)
        for position, ref in enumerate(self.data["refs"]):
            self._index_ref(position, ref)
        # Plain dicts, as in REFER: a missing key is an error rather than a new empty entry.
        self.annToRef, self.imgToRefs, self.catToRefs = dict(self.annToRef), dict(self.imgToRefs), dict(self.catToRefs)

    def _index_ref(self, position: int, ref) -> None:
        name = f"ref {ref.get('ref_id', '?')!r}" if isinstance(ref, dict) else f"entry {position}"
        try:
            ref_id, ann_ids, anns = self._checked_ref(ref)
        except (KeyError, TypeError, ValueError) as err:
            detail = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            raise UserInputError(
                f"Malformed {name} in '{self.refs_path}': {detail}. Every ref needs ref_id, image_id, split, "
                "sentences [{sent_id, raw}], ann_id and category_id (lists; ann_id [-1] means no target)."
            ) from err
        self.Refs[ref_id] = ref
        self.refToAnn[ref_id] = anns
        self.imgToRefs[ref["image_id"]].append(ref)
        for category_id in dict.fromkeys(_id_list(ref["category_id"], "category_id", allow_empty=True)):
            self.catToRefs[category_id].append(ref)
        for ann_id in ann_ids:
            self.annToRef[ann_id].append(ref)
        for sent in ref["sentences"]:
            self.Sents[sent["sent_id"]] = sent
            self.sentToRef[sent["sent_id"]] = ref
            self.sentToTokens[sent["sent_id"]] = sent.get("tokens", [])

    def _checked_ref(self, ref) -> tuple:
        """(ref_id, ann_ids, annotations) of a ref whose fields are all usable; raises otherwise."""
        check_ref_fields(ref, self.Refs, self.Imgs, f"{self.DATA_DIR}/instances.json")
        ref_id, image_id = ref["ref_id"], ref["image_id"]
        _id_list(ref["category_id"], "category_id", allow_empty=True)  # a no-target ref may have none
        ann_ids = _id_list(ref["ann_id"], "ann_id")
        no_target = ann_ids == NO_TARGET
        if "no_target" in ref and (not isinstance(ref["no_target"], Integral) or bool(ref["no_target"]) != no_target):
            raise ValueError(f"no_target is {ref['no_target']!r} but ann_id is {ref['ann_id']!r} "
                             "(ann_id [-1] marks a no-target ref)")
        if no_target:
            return ref_id, [], []
        if -1 in ann_ids:
            raise ValueError(f"ann_id {ann_ids}: -1 (no target) cannot be combined with annotations")
        missing = [a for a in ann_ids if a not in self.Anns]
        if missing:
            raise ValueError(f"ann_id {missing} not in '{self.DATA_DIR}/instances.json'")
        anns = [self.Anns[a] for a in dict.fromkeys(ann_ids)]
        foreign = [ann["id"] for ann in anns if ann["image_id"] != image_id]
        if foreign:
            raise ValueError(f"annotation(s) {foreign} belong to another image than image_id {image_id}")
        return ref_id, list(dict.fromkeys(ann_ids)), anns

    # ---- ids ------------------------------------------------------------------------------
    def getRefIds(self, image_ids=[], cat_ids=[], ref_ids=[], split=""):  # noqa: B006 -- REFER's API
        """Refs filtered by images, categories (any of the ref's), ref ids and exact split name."""
        image_ids, cat_ids, ref_ids = _as_list(image_ids), _as_list(cat_ids), _as_list(ref_ids)
        refs = [r for i in image_ids for r in self.imgToRefs.get(i, [])] if image_ids else self.data["refs"]
        if cat_ids:
            wanted = set(cat_ids)
            refs = [r for r in refs if wanted.intersection(_id_list(r["category_id"], "category_id", True))]
        if ref_ids:
            wanted_refs = set(ref_ids)
            refs = [r for r in refs if r["ref_id"] in wanted_refs]
        if split:
            refs = [r for r in refs if r["split"] == split]
        return [r["ref_id"] for r in refs]

    def getAnnIds(self, image_ids=[], cat_ids=[], ref_ids=[]):  # noqa: B006 -- REFER's API
        image_ids, cat_ids, ref_ids = _as_list(image_ids), _as_list(cat_ids), _as_list(ref_ids)
        anns = [a for i in image_ids for a in self.imgToAnns.get(i, [])] if image_ids else self.data["annotations"]
        if cat_ids:
            wanted_cats = set(cat_ids)
            anns = [a for a in anns if a["category_id"] in wanted_cats]
        if ref_ids:
            wanted = {a["id"] for ref_id in ref_ids for a in self.refToAnn[ref_id]}
            anns = [a for a in anns if a["id"] in wanted]
        return [a["id"] for a in anns]

    def getRefBox(self, ref_id):
        """The boxes [x, y, w, h] of the ref's annotations (empty for a no-target ref)."""
        return [ann["bbox"] for ann in self.refToAnn[ref_id]]

    def is_no_target(self, ref: dict) -> bool:
        return _id_list(ref["ann_id"], "ann_id") == NO_TARGET

    # ---- masks ------------------------------------------------------------------------------
    def getMask(self, ref: dict) -> dict:
        """`{'mask': uint8 (H, W) 0/1, 'area': object pixels, 'empty': no-target ref}`."""
        image = self.Imgs[ref["image_id"]]
        height, width = int(image["height"]), int(image["width"])
        mask = np.zeros((height, width), dtype=bool)
        for ann in self.refToAnn[ref["ref_id"]]:
            if ann.get("iscrowd"):
                continue
            try:
                rles = self._annotation_rles(ann, height, width)
            except ValueError as err:
                raise UserInputError(f"Ref {ref['ref_id']} of '{self.refs_path}': {err}") from err
            if rles:
                mask |= mask_utils.decode(rles).any(axis=2)
        return {"mask": mask.astype(np.uint8), "area": float(mask.sum()), "empty": self.is_no_target(ref)}

    def showRef(self, ref: dict, ax=None):
        """The image, the union mask and every referred box, titled with the sentences."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
        from PIL import Image

        ax = ax or plt.gca()
        image = self.Imgs[ref["image_id"]]
        ax.imshow(Image.open(self.image_path(image["file_name"])).convert("RGB"))
        self.showMask(ref, ax=ax)
        for x, y, w, h in self.getRefBox(ref["ref_id"]):
            ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="green", linewidth=2))
        ax.set_title("\n".join(f"{i + 1}. {s['raw']}" for i, s in enumerate(ref["sentences"])), fontsize=8)
        ax.axis("off")
        return ax


def category_ids(ref):
    """The referred categories of a ref: one id (REFER) or a list (gRefCOCO, where -1 means none)."""
    ids = ref["category_id"] if isinstance(ref["category_id"], (list, tuple)) else [ref["category_id"]]
    return [c for c in ids if c != -1]
