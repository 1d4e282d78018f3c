"""Writing a SynRef set in the REFER layout: splits, held-out pairs, images, COCO annotations,
refs and the scene sidecar. `generate` is the entry point."""
from __future__ import annotations

import json
import os
import pickle
import time

import numpy as np
from PIL import Image

from errors import UserInputError

from .counterfactual import counterfactual_form
from .forms import choose_forms
from .language import SHAPE_WORDS, normalize_sentence, realize
from .sampling import sample_scene
from .scene import COLOURS, SHAPES
from .semantics import EXPRESSION_TYPES

SPLITS = ("train", "val", "testA", "testB", "testC")
SPLIT_TYPES = {  # expression types allowed per split
    "train": EXPRESSION_TYPES, "val": EXPRESSION_TYPES, "testC": EXPRESSION_TYPES,
    "testA": ("attribute",), "testB": ("location", "relation", "ordinal"),
}
DEFAULT_MIX = {"attribute": 0.35, "location": 0.25, "relation": 0.2, "ordinal": 0.2}


def check_params(num_images, img_size, seed, val_fraction, test_fraction, num_held_out, distractor_prob, mix) -> dict:
    """Validate the generator's arguments (errors name the argument); returns the expression mix."""
    if num_images < 5:
        raise UserInputError(f"num_images={num_images}: need at least 5 (one image per split).")
    if seed < 0:
        raise UserInputError(f"seed={seed}: must be a non-negative integer.")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise UserInputError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must lie in [0, 1).")
    if img_size < 32:
        raise UserInputError(f"img_size={img_size}: shapes are unreadable below 32 pixels; use 32 or more.")
    if not 1 <= num_held_out <= len(SHAPES):
        raise UserInputError(f"num_held_out={num_held_out}: choose 1..{len(SHAPES)}.")
    if not 0.0 <= distractor_prob <= 1.0:
        raise UserInputError(f"distractor_prob={distractor_prob}: must lie in [0, 1].")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    if set(mix) != set(EXPRESSION_TYPES) or min(mix.values()) <= 0:
        raise UserInputError(f"mix={mix}: give a positive weight for each of {', '.join(EXPRESSION_TYPES)}.")
    return mix


def split_plan(rng, num_images, val_fraction, test_fraction) -> list:
    """The split of every image, in image order."""
    counts = {"val": max(1, round(num_images * val_fraction))}
    counts.update({s: max(1, round(num_images * test_fraction)) for s in ("testA", "testB", "testC")})
    counts["train"] = num_images - sum(counts.values())
    if counts["train"] < 1:
        raise UserInputError(
            f"num_images={num_images} leaves no training images with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction} (at least one image per split); use more images or smaller fractions."
        )
    plan = [s for s in SPLITS for _ in range(counts[s])]
    return [plan[i] for i in rng.permutation(num_images)]


# testC's colour-shape pairs are one fixed design for every seed (as CLEVR-CoGenT fixes its
# condition split), so that a backbone pretrained without them (tools/pretrain_backbone.py) keeps
# testC a test of composition whatever seed the benchmark is generated with. Distinct colours and
# shapes, so each stays common; the first six are the pairs seed 0 drew before the design was fixed.
HELD_OUT_DESIGN = (("yellow", "cross"), ("cyan", "triangle"), ("green", "heart"), ("purple", "hexagon"),
                   ("blue", "diamond"), ("red", "square"), ("orange", "star"), ("pink", "circle"))


def held_out_pairs(rng, count) -> list:
    """The first `count` pairs of HELD_OUT_DESIGN, reserved for testC targets."""
    # The two draws that used to choose the pairs are kept, so that everything drawn after them
    # (splits, scenes, wording) is what it was for every seed.
    rng.permutation(len(COLOURS))
    rng.permutation(len(SHAPES))
    return list(HELD_OUT_DESIGN[:count])


def is_held_out(obj: dict, held_out: list) -> bool:
    return (obj["colour"], obj["shape"]) in held_out


def referable(obj: dict, split: str, held_out: list) -> bool:
    """testC refers only to held-out colour-shape pairs, the other splits never do."""
    return is_held_out(obj, held_out) == (split == "testC")


def refer_image(rng, split, img_size, held_out, mix, distractor_prob):
    """Sample until the scene has at least one referable object; returns scene, polygons, {obj: forms}."""
    types = SPLIT_TYPES[split]
    while True:
        scene, polygons, image, visible = sample_scene(rng, img_size, held_out, force_held_out=(split == "testC"),
                                                       distractor_prob=distractor_prob)
        objects = scene["objects"]
        referred = {}
        for i, obj in enumerate(objects):
            if not referable(obj, split, held_out):
                continue
            forms = choose_forms(rng, i, objects, img_size, types, mix, int(rng.integers(2, 4)))
            if forms:
                referred[i] = forms
        if referred:
            return scene, polygons, image, visible, referred


def expressions(rng, forms: list, count: int) -> list:
    """`count` distinct (form, raw, rng state before phrasing) triples; a form may be phrased twice
    when there are too few forms. The state lets a counterfactual be phrased with the same choices."""
    out, seen = [], set()
    for attempt in range(count * 8):
        form = forms[attempt % len(forms)] if attempt < len(forms) else forms[int(rng.integers(len(forms)))]
        state = rng.bit_generator.state
        raw = realize(form, rng)
        if normalize_sentence(raw)[0] not in seen:
            seen.add(normalize_sentence(raw)[0])
            out.append((form, raw, state))
        if len(out) == count:
            break
    return out


def refuse_other_layout(root: str, dataset: str, other_refs_file: str) -> None:
    """A normal and a generalized set share file names (instances.json ...): never mix them in one folder."""
    path = os.path.join(root, dataset, other_refs_file)
    if os.path.exists(path):
        raise UserInputError(f"{path} exists: {os.path.join(root, dataset)} holds a set of the other layout; "
                         "choose another --dataset (or delete that folder).")


class Records:
    """What a generator run accumulates: COCO images and annotations, refs, scenes, sentence forms."""

    def __init__(self, root: str, dataset: str, img_size: int):
        self.dataset, self.img_size = dataset, img_size
        self.data_dir = os.path.join(root, dataset)
        self.image_dir = os.path.join(root, "images", dataset)
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.image_dir, exist_ok=True)
        # "synonyms": the other nouns the expressions use for a shape (read by the drop-category probe).
        self.categories = [{"id": i + 1, "name": s, "supercategory": "shape", "synonyms": SHAPE_WORDS[s][1:]}
                           for i, s in enumerate(SHAPES)]
        self.category_ids = {c["name"]: c["id"] for c in self.categories}
        self.images, self.annotations, self.refs, self.scenes, self.expressions = [], [], [], [], []
        self.counterfactuals = {}  # str(sent_id) -> raw counterfactual sentence
        self.stats = {s: {"images": 0, "refs": 0, "sentences": 0} for s in SPLITS}
        self.type_counts = dict.fromkeys(EXPRESSION_TYPES, 0)
        self.ann_id = self.sent_id = 0

    def add_image(self, image_id: int, split: str, pixels, visible: list, polygons: list, objects: list) -> str:
        """Save the PNG and one annotation per object (setting obj['ann_id']); returns the file stem."""
        stem = f"{self.dataset}_{image_id:012d}"
        Image.fromarray(pixels).save(os.path.join(self.image_dir, stem + ".png"), compress_level=1)
        self.images.append({"id": image_id, "file_name": stem + ".png", "height": self.img_size,
                            "width": self.img_size, "license": 1, "coco_url": "", "flickr_url": "",
                            "date_captured": "2026-01-01 00:00:00"})
        self.stats[split]["images"] += 1
        for obj, mask, parts in zip(objects, visible, polygons, strict=True):
            self.ann_id += 1
            obj["ann_id"] = self.ann_id
            ys, xs = np.nonzero(mask)
            self.annotations.append({
                "id": self.ann_id, "image_id": image_id, "category_id": self.category_ids[obj["shape"]],
                "segmentation": parts, "area": float(mask.sum()),
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                "iscrowd": 0,
            })
        return stem

    def add_sentences(self, split: str, pairs: list, extras: list | None = None) -> tuple[list, list]:
        """REFER sentences for the next ref's (form, raw) pairs; records each form (plus its extras)."""
        sentences, sent_ids = [], []
        for k, (form, raw) in enumerate(pairs):
            sent, tokens = normalize_sentence(raw)
            sentences.append({"tokens": tokens, "raw": raw, "sent_id": self.sent_id, "sent": sent})
            self.expressions.append({"sent_id": self.sent_id, "ref_id": len(self.refs), "form": form,
                                     **(extras[k] if extras else {})})
            sent_ids.append(self.sent_id)
            self.type_counts[form["type"]] += 1
            self.sent_id += 1
        self.stats[split]["refs"] += 1
        self.stats[split]["sentences"] += len(sentences)
        return sentences, sent_ids

    def write_common(self, params: dict, held_out: list, splitBy: str) -> None:
        """instances.json, counterfactuals(<splitBy>).json and the synthetic_scenes.json sidecar."""
        with open(os.path.join(self.data_dir, f"counterfactuals({splitBy}).json"), "w", encoding="utf-8") as handle:
            json.dump(self.counterfactuals, handle, separators=(",", ":"))
        with open(os.path.join(self.data_dir, "instances.json"), "w", encoding="utf-8") as handle:
            json.dump({"images": self.images, "annotations": self.annotations, "categories": self.categories},
                      handle, separators=(",", ":"))
        with open(os.path.join(self.data_dir, "synthetic_scenes.json"), "w", encoding="utf-8") as handle:
            json.dump({"format": "synref-scenes-v1", "params": params, "held_out_pairs": [list(p) for p in held_out],
                       "scenes": self.scenes, "expressions": self.expressions}, handle, separators=(",", ":"))

    def summary(self, root: str, splitBy: str, held_out: list, distractor_share: float, started: float) -> dict:
        return {
            "root": os.path.abspath(root), "dataset": self.dataset, "splitBy": splitBy, "splits": self.stats,
            "images": len(self.images), "refs": len(self.refs), "sentences": self.sent_id,
            "distractor_share": distractor_share, "expression_types": self.type_counts,
            "counterfactuals": len(self.counterfactuals), "held_out_pairs": [list(p) for p in held_out],
            "seconds": time.perf_counter() - started,
        }


def write_counterfactuals(records: Records, rng, triples: list, sent_ids: list, objects: list, img_size: int,
                          exclude_pairs=()) -> None:
    """Each sentence's counterfactual (`counterfactual_form`), phrased from the rng state and word
    choices of its original, so the two usually differ in the changed words only. Recorded in
    `records.counterfactuals` and, as 'counterfactual', in the sentence's sidecar entry."""
    entries = records.expressions[len(records.expressions) - len(sent_ids):]
    for (form, _, state), sent_id, entry in zip(triples, sent_ids, entries, strict=True):
        negative = counterfactual_form(form, objects, img_size, rng, exclude_pairs)
        if negative is None:
            continue
        replay = np.random.Generator(np.random.PCG64())
        replay.bit_generator.state = state
        records.counterfactuals[str(sent_id)] = realize(negative, replay, like=form)
        entry["counterfactual"] = negative


def shares_shape_or_colour(objects: list, index: int) -> bool:
    me = objects[index]
    return any(j != index and (o["shape"] == me["shape"] or o["colour"] == me["colour"])
               for j, o in enumerate(objects))


def _add_refs(records: Records, rng, cf_rng, split: str, image_id: int, stem: str, objects: list, referred: dict,
              exclude_pairs) -> int:
    """One ref per referred object, in object order; returns how many have a same-shape/colour distractor."""
    with_distractor = 0
    for i, obj in enumerate(objects):
        if i not in referred:
            continue
        triples = expressions(rng, referred[i], len(referred[i]) if len(referred[i]) > 1 else 2)
        sentences, sent_ids = records.add_sentences(split, [(form, raw) for form, raw, _ in triples])
        write_counterfactuals(records, cf_rng, triples, sent_ids, objects, records.img_size, exclude_pairs)
        records.refs.append({"sent_ids": sent_ids, "file_name": f"{stem}_{obj['ann_id']}.png", "ann_id": obj["ann_id"],
                             "ref_id": len(records.refs), "image_id": image_id, "split": split,
                             "sentences": sentences, "category_id": records.category_ids[obj["shape"]]})
        with_distractor += shares_shape_or_colour(objects, i)
    return with_distractor


def generate(root: str, dataset: str = "synref", num_images: int = 2000, img_size: int = 128, seed: int = 0,
             splitBy: str = "unc", val_fraction: float = 0.1, test_fraction: float = 0.05,
             num_held_out: int = 6, distractor_prob: float = 0.8, mix: dict | None = None,
             verbose: bool = False) -> dict:
    """Write a SynRef dataset under `root` (REFER layout) and return a summary dict.

    Besides the REFER files, `counterfactuals(<splitBy>).json` maps str(sent_id) to a counterfactual
    sentence (see `counterfactual_form`) for every sentence that has one. Its choices come from a
    random stream of their own, so the other files are what they were without it.
    """
    started = time.perf_counter()
    mix = check_params(num_images, img_size, seed, val_fraction, test_fraction, num_held_out, distractor_prob, mix)
    refuse_other_layout(root, dataset, f"grefs({splitBy}).json")
    master = np.random.default_rng(seed)
    held_out = held_out_pairs(master, num_held_out)
    plan = split_plan(master, num_images, val_fraction, test_fraction)
    records = Records(root, dataset, img_size)
    with_distractor = 0
    for index, split in enumerate(plan):
        rng, cf_rng = np.random.default_rng([seed, index]), np.random.default_rng([seed, index, 1])
        scene, polygons, pixels, visible, referred = refer_image(rng, split, img_size, held_out, mix, distractor_prob)
        image_id = index + 1
        stem = records.add_image(image_id, split, pixels, visible, polygons, scene["objects"])
        exclude = () if split == "testC" else held_out  # a held-out pair is named only in testC
        with_distractor += _add_refs(records, rng, cf_rng, split, image_id, stem, scene["objects"], referred, exclude)
        records.scenes.append({"image_id": image_id, "split": split, **scene})
        if verbose and (index + 1) % 500 == 0:
            print(f"  {index + 1}/{num_images} images ({time.perf_counter() - started:.1f} s)", flush=True)

    with open(os.path.join(records.data_dir, f"refs({splitBy}).p"), "wb") as handle:
        pickle.dump(records.refs, handle, protocol=2)
    params = {"dataset": dataset, "num_images": num_images, "img_size": img_size, "seed": seed,
              "splitBy": splitBy, "val_fraction": val_fraction, "test_fraction": test_fraction,
              "num_held_out": num_held_out, "distractor_prob": distractor_prob, "mix": mix}
    records.write_common(params, held_out, splitBy)
    return records.summary(root, splitBy, held_out, with_distractor / max(len(records.refs), 1), started)


def read_sidecar(root: str, dataset: str) -> dict:
    """A generated set's synthetic_scenes.json: its params, scenes (objects with their ann_id) and the
    semantic form of every expression."""
    with open(os.path.join(root, dataset, "synthetic_scenes.json"), encoding="utf-8") as handle:
        return json.load(handle)


def expression_types(root: str, dataset: str) -> dict:
    """{sent_id: expression type} of a generated set, read from its synthetic_scenes.json sidecar."""
    return {e["sent_id"]: e["form"]["type"] for e in read_sidecar(root, dataset)["expressions"]}
