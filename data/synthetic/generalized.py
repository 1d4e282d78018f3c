"""The generalized (gRefCOCO-layout) SynRef set: expressions that refer to one object, to several
("both red shapes", "all circles", "the squares left of the star") or to none ("the purple star"
when no purple star exists), ground truth derived from the scene semantics like every other
expression. `generate_generalized` is the entry point (`python -m data.synthetic --generalized`)."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from errors import UserInputError

from .counterfactual import counterfactual_form, names_pair
from .forms import plural_forms
from .scene import SHAPES
from .semantics import denotation
from .writer import (
    SPLIT_TYPES,
    Records,
    check_params,
    expressions,
    held_out_pairs,
    is_held_out,
    refer_image,
    refuse_other_layout,
    shares_shape_or_colour,
    split_plan,
    write_counterfactuals,
)

KINDS = ("single", "multi", "none")
DEFAULT_NO_TARGET_SHARE = 0.2
DEFAULT_MULTI_TARGET_SHARE = 0.2


def absent_shape_form(form: dict, objects: list, img_size: int, rng, exclude_pairs=()) -> dict | None:
    """The form with its shape replaced (or set) by a shape no object in the scene has: nothing matches."""
    present = {obj["shape"] for obj in objects}
    shapes = [s for s in SHAPES if s not in present]
    for index in rng.permutation(len(shapes)):
        candidate = {**form, "target": {**form["target"], "shape": shapes[int(index)]}}
        if not names_pair(candidate, exclude_pairs) and denotation(candidate, objects, img_size) == []:
            return candidate
    return None


class ImagePools:
    """One image's candidate refs of each kind, built lazily and used up as refs are made.

    `take(kind)` returns (target indices, [form, ...], [expression extras]) or None when that kind
    has nothing (left) here. Held-out colour-shape pairs follow the normal set's rule: outside
    testC no target is a held-out object and no no-target form is derived from one or names one;
    in testC every ref involves a held-out object.
    """

    def __init__(self, rng, objects, img_size, split, held_out, referred):
        self.rng, self.objects, self.img_size, self.split = rng, objects, img_size, split
        self.held_out, self.referred = held_out, referred
        self.singles = list(referred)
        self.sources = list(referred)
        self.groups = None

    def _pop(self, items: list):
        return items.pop(int(self.rng.integers(len(items))))

    def take(self, kind: str):
        return {"single": self._single, "multi": self._multi, "none": self._none}[kind]()

    def _single(self):
        if not self.singles:
            return None
        i = self._pop(self.singles)
        return [i], self.referred[i], [{}] * len(self.referred[i])

    def _multi(self):
        if self.groups is None:
            types = [t for t in ("attribute", "relation") if t in SPLIT_TYPES[self.split]]
            groups = plural_forms(self.objects, self.img_size, types)
            self.groups = [(list(s), forms) for s, forms in sorted(groups.items())
                           if any(is_held_out(self.objects[i], self.held_out) for i in s) == (self.split == "testC")]
        if not self.groups:
            return None
        targets, forms = self._pop(self.groups)
        chosen = [forms[int(k)] for k in self.rng.permutation(len(forms))[:int(self.rng.integers(2, 4))]]
        return targets, chosen, [{}] * len(chosen)

    def _none(self):
        exclude = () if self.split == "testC" else self.held_out
        while self.sources:
            source = self._pop(self.sources)
            found = {}
            for form in self.referred[source]:
                for derived, make in (("counterfactual", counterfactual_form), ("absent_shape", absent_shape_form)):
                    negative = make(form, self.objects, self.img_size, self.rng, exclude)
                    if negative is not None:
                        found.setdefault(json.dumps(negative, sort_keys=True), (negative, derived))
            if found:
                options = list(found.values())
                picked = [options[int(k)] for k in self.rng.permutation(len(options))[:int(self.rng.integers(2, 4))]]
                extras = [{"derived": derived, "source_ann_id": self.objects[source]["ann_id"]} for _, derived in picked]
                return [], [negative for negative, _ in picked], extras
        return None


def _kind_order(counts: dict, shares: dict) -> list:
    """Kinds by how far their ref count lags behind their share (ties in KINDS order)."""
    total = sum(counts.values()) + 1
    return sorted(KINDS, key=lambda kind: counts[kind] - shares[kind] * total)


def _add_generalized_refs(records, rng, cf_rng, split, image_id, stem, objects, pools, counts, shares) -> int:
    """As many refs as the image has referable objects, each of the kind furthest behind its share."""
    with_distractor = 0
    exclude = () if split == "testC" else pools.held_out
    for _ in range(len(pools.referred)):
        for kind in _kind_order(counts, shares):
            taken = pools.take(kind)
            if taken is not None:
                break
        else:
            return with_distractor
        targets, forms, extras = taken
        counts[kind] += 1
        extra_of = {id(form): extra for form, extra in zip(forms, extras, strict=True)}  # phrasing keeps the objects
        triples = expressions(rng, forms, len(forms) if len(forms) > 1 else 2)
        sentences, sent_ids = records.add_sentences(split, [(form, raw) for form, raw, _ in triples],
                                                    [{"kind": kind, **extra_of[id(form)]} for form, _, _ in triples])
        if kind == "single":
            write_counterfactuals(records, cf_rng, triples, sent_ids, objects, pools.img_size, exclude)
            with_distractor += shares_shape_or_colour(objects, targets[0])
        records.refs.append({
            "sent_ids": sent_ids, "file_name": f"{stem}.png",
            "ann_id": [objects[i]["ann_id"] for i in targets] or [-1], "ref_id": len(records.refs),
            "image_id": image_id, "split": split, "sentences": sentences,
            "category_id": [records.category_ids[objects[i]["shape"]] for i in targets] or [-1],
            "no_target": not targets,
        })
    return with_distractor


def check_shares(no_target_share: float, multi_target_share: float) -> dict:
    """The target share of each ref kind; single-target refs get the rest."""
    if not (0 <= no_target_share <= 1 and 0 <= multi_target_share <= 1 and no_target_share + multi_target_share <= 1):
        raise UserInputError(f"no_target_share={no_target_share}, multi_target_share={multi_target_share}: each "
                             "must lie in [0, 1] and together at most 1 (the rest are single-target refs).")
    return {"single": 1 - no_target_share - multi_target_share, "multi": multi_target_share, "none": no_target_share}


def generate_generalized(root: str, dataset: str = "gsynref", num_images: int = 2000, img_size: int = 128,
                         seed: int = 0, splitBy: str = "unc", val_fraction: float = 0.1, test_fraction: float = 0.05,
                         num_held_out: int = 6, distractor_prob: float = 0.8, mix: dict | None = None,
                         no_target_share: float = DEFAULT_NO_TARGET_SHARE,
                         multi_target_share: float = DEFAULT_MULTI_TARGET_SHARE, verbose: bool = False) -> dict:
    """Write a generalized SynRef set (gRefCOCO layout: `grefs(<splitBy>).json`) and return a summary dict.

    Same scenes, splits and expression types per split as `generate`; the share of refs with no
    target and with several targets follow `no_target_share` / `multi_target_share`.
    """
    started = time.perf_counter()
    mix = check_params(num_images, img_size, seed, val_fraction, test_fraction, num_held_out, distractor_prob, mix)
    shares = check_shares(no_target_share, multi_target_share)
    refuse_other_layout(root, dataset, f"refs({splitBy}).p")
    master = np.random.default_rng(seed)
    held_out = held_out_pairs(master, num_held_out)
    plan = split_plan(master, num_images, val_fraction, test_fraction)
    records = Records(root, dataset, img_size)
    counts, with_distractor = dict.fromkeys(KINDS, 0), 0
    for index, split in enumerate(plan):
        rng, cf_rng = np.random.default_rng([seed, index]), np.random.default_rng([seed, index, 1])
        scene, polygons, pixels, visible, referred = refer_image(rng, split, img_size, held_out, mix, distractor_prob)
        stem = records.add_image(index + 1, split, pixels, visible, polygons, scene["objects"])
        pools = ImagePools(rng, scene["objects"], img_size, split, held_out, referred)
        with_distractor += _add_generalized_refs(records, rng, cf_rng, split, index + 1, stem, scene["objects"],
                                                 pools, counts, shares)
        records.scenes.append({"image_id": index + 1, "split": split, **scene})
        if verbose and (index + 1) % 500 == 0:
            print(f"  {index + 1}/{num_images} images ({time.perf_counter() - started:.1f} s)", flush=True)
    with open(os.path.join(records.data_dir, f"grefs({splitBy}).json"), "w", encoding="utf-8") as handle:
        json.dump(records.refs, handle, separators=(",", ":"))
    params = {"dataset": dataset, "num_images": num_images, "img_size": img_size, "seed": seed, "splitBy": splitBy,
              "val_fraction": val_fraction, "test_fraction": test_fraction, "num_held_out": num_held_out,
              "distractor_prob": distractor_prob, "mix": mix, "generalized": True,
              "no_target_share": no_target_share, "multi_target_share": multi_target_share}
    records.write_common(params, held_out, splitBy)
    summary = records.summary(root, splitBy, held_out, with_distractor / max(counts["single"], 1), started)
    summary["ref_kinds"] = counts
    summary["sentence_kinds"] = dict.fromkeys(KINDS, 0)
    for entry in records.expressions:
        summary["sentence_kinds"][entry["kind"]] += 1
    return summary
