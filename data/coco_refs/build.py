"""Building the REFER-layout set from COCO annotation files: `build` is the entry point."""
from __future__ import annotations

import json
import math
import os
import time
from array import array

import numpy as np

from data.synthetic.writer import refuse_other_layout
from errors import UserInputError

from .lexicon import category_synonyms, nouns, realize, sentence
from .semantics import denotation, instances, nothing_variants, true_forms
from .stream import JsonArrayWriter, JsonMapWriter, PickleListWriter, file_size, stream_top_level

DEFAULT_MIN_AREA = 0.005  # targets cover at least 0.5% of their image (~39 x 39 px of 640 x 480)
SOURCES = ("train2017", "val2017")
TYPE_ORDER = ("category", "location", "order", "size", "relation", "multi")


def _progress(total: int, desc: str, enabled: bool, unit: str = "B"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, leave=False)


class CompactInstances:
    """One annotation file with its segmentations dropped: images, categories, and per annotation
    its ids, box, area and crowd flag in flat arrays (~70 bytes an annotation)."""

    def __init__(self, path: str, progress: bool = False):
        self.path = path
        self.images: dict = {}  # id -> (width, height, file_name)
        self.categories: list = []
        self.columns = {name: array("q") for name in ("id", "image_id", "cat", "crowd")}
        self.box = array("d")  # x, y, w, h, area per annotation
        self.skipped = {"annotations": 0, "images": 0}
        self.unsafe_images: set = set()  # images with a malformed annotation: it could be a distractor
        bar = _progress(file_size(path), f"reading {os.path.basename(path)}", progress)
        with bar:
            stream_top_level(path, {"images": self._image, "annotations": self._annotation,
                                    "categories": self.categories.append}, progress=bar)
        if not self.images:
            raise UserInputError(f"'{path}' lists no usable images (each needs id, width, height and file_name).")

    def _image(self, image) -> None:
        try:
            key, size = int(image["id"]), (int(image["width"]), int(image["height"]), str(image["file_name"]))
        except (KeyError, TypeError, ValueError):
            self.skipped["images"] += 1
            return
        if size[0] <= 0 or size[1] <= 0 or key in self.images:
            self.skipped["images"] += 1
            return
        self.images[key] = size

    def _annotation(self, ann) -> None:
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            row = (int(ann["id"]), int(ann["image_id"]), int(ann["category_id"]), int(bool(ann.get("iscrowd", 0))))
            area = float(ann.get("area") or w * h)
        except (KeyError, TypeError, ValueError):
            self._malformed(ann)
            return
        if not all(math.isfinite(v) for v in (x, y, w, h, area)) or w <= 0 or h <= 0:
            self._malformed(ann)
            return
        for name, value in zip(("id", "image_id", "cat", "crowd"), row):
            self.columns[name].append(value)
        self.box.extend((x, y, w, h, area))

    def _malformed(self, ann) -> None:
        self.skipped["annotations"] += 1
        try:
            self.unsafe_images.add(int(ann["image_id"]))
        except (KeyError, TypeError, ValueError):
            pass

    def arrays(self):
        """Numpy views of the columns, annotation ids unique (the first one kept)."""
        columns = {name: np.frombuffer(col, dtype=np.int64) if len(col) else np.zeros(0, np.int64)
                   for name, col in self.columns.items()}
        box = np.frombuffer(self.box, dtype=np.float64).reshape(-1, 5) if len(self.box) else np.zeros((0, 5))
        _, first = np.unique(columns["id"], return_index=True)
        self.skipped["annotations"] += len(columns["id"]) - len(first)
        first.sort()
        return {name: col[first] for name, col in columns.items()}, box[first]


class Output:
    """The files being written, and the counts of the summary."""

    def __init__(self, data_dir: str, splitBy: str, generalized: bool):
        self.generalized = generalized
        refs_name = f"grefs({splitBy}).json" if generalized else f"refs({splitBy}).p"
        if generalized:
            self.refs_handle = open(os.path.join(data_dir, refs_name), "w", encoding="utf-8")  # noqa: SIM115
            self.refs = JsonArrayWriter(self.refs_handle)
        else:
            self.refs = PickleListWriter(os.path.join(data_dir, refs_name))
        self.counterfactuals = JsonMapWriter(os.path.join(data_dir, f"counterfactuals({splitBy}).json"))
        self.forms_handle = open(os.path.join(data_dir, f"coco_refs_forms({splitBy}).jsonl"), "w",  # noqa: SIM115
                                 encoding="utf-8")
        self.ref_id = self.sent_id = 0
        self.splits: dict = {}
        self.types = dict.fromkeys(TYPE_ORDER, 0)
        self.kinds = {"single": 0, "multi": 0, "none": 0}
        self.used_images: list = []  # output image records, in order
        self.referred: set = set()  # output annotation ids to copy into instances.json

    def add_ref(self, split: str, image: dict, targets: list, phrased: list, counterfactuals: list) -> None:
        sentences, sent_ids = [], []
        for (form, raw), negative in zip(phrased, counterfactuals):
            sentences.append(sentence(raw, self.sent_id))
            sent_ids.append(self.sent_id)
            record = {"sent_id": self.sent_id, "ref_id": self.ref_id, "form": form}
            if negative is not None:
                self.counterfactuals.add(str(self.sent_id), negative[1])
                record["counterfactual"] = negative[0]
            self.forms_handle.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.types[form["type"]] += 1
            self.sent_id += 1
        ann_ids = [obj["ann_id"] for obj in targets]
        cat_ids = [obj["cat"] for obj in targets]
        ref = {"image_id": image["id"], "split": split, "sentences": sentences, "file_name": image["file_name"],
               "ref_id": self.ref_id, "sent_ids": sent_ids}
        if self.generalized:
            ref.update(ann_id=ann_ids or [-1], category_id=cat_ids or [-1], no_target=not targets)
            self.kinds["none" if not targets else "single" if len(targets) == 1 else "multi"] += 1
        else:
            ref.update(ann_id=ann_ids[0], category_id=cat_ids[0])
            self.kinds["single"] += 1
        self.refs.add(ref)
        self.referred.update(ann_ids)
        row = self.splits.setdefault(split, {"images": 0, "refs": 0, "sentences": 0})
        row["refs"] += 1
        row["sentences"] += len(sentences)
        self.ref_id += 1

    def close(self) -> None:
        self.refs.close()
        if self.generalized:
            self.refs_handle.close()
        self.counterfactuals.close()
        self.forms_handle.close()


class Phraser:
    """Turns chosen forms into distinct sentences and finds each one's counterfactual."""

    def __init__(self, names: dict, supercategory: dict):
        self.names, self.supercategory = names, supercategory

    def phrase(self, rng, forms: list, count: int) -> list:
        """Up to `count` (form, raw, rng state) with distinct normalised sentences."""
        out, seen = [], set()
        for attempt in range(count * 4):
            form = forms[attempt % len(forms)]
            state = rng.bit_generator.state
            raw = realize(form, self.names, rng)
            if sentence(raw, 0)["sent"] not in seen:
                seen.add(sentence(raw, 0)["sent"])
                out.append((form, raw, state))
            if len(out) == count:
                break
        return out

    def counterfactual(self, rng, form: dict, state: dict, objects: list, absent: list, unknown: bool):
        """(form, raw) changed in one word so that nothing matches, phrased with the original's
        draws: a changed location / order / count word if one works, else a category with no
        instance here, one of the same supercategory first ("the zebra" for "the horse")."""
        variants = nothing_variants(form, objects, [], unknown)
        if not variants:
            home = self.supercategory.get(form["cat"])
            near = [c for c in absent if self.supercategory.get(c) == home]
            pool = near if near else absent
            picks = [pool[int(k)] for k in rng.permutation(len(pool))[:3]]
            variants = nothing_variants(form, objects, picks, unknown)[:1]
        if not variants:
            return None
        negative = variants[int(rng.integers(len(variants)))]
        replay = np.random.Generator(np.random.PCG64())
        replay.bit_generator.state = state
        return negative, realize(negative, self.names, replay)


def choose_forms(rng, forms: list, count: int) -> list:
    """Up to `count` forms of as many different types as there are, in random order."""
    by_type: dict = {}
    for k in rng.permutation(len(forms)):
        by_type.setdefault(forms[int(k)]["type"], []).append(forms[int(k)])
    chosen = []
    while len(chosen) < count and any(by_type.values()):
        for kind in [t for t in by_type if by_type[t]]:
            if len(chosen) < count:
                chosen.append(by_type[kind].pop())
    return chosen


class Builder:
    def __init__(self, params: dict, out: Output):
        self.params, self.out = params, out
        self.names, self.phraser = {}, Phraser({}, {})
        self.skipped = {"crowd": 0, "tiny": 0, "unknown_category": 0, "images_without_annotations": 0}

    def set_categories(self, categories: list) -> None:
        self.names = {c["id"]: c["name"] for c in categories}
        self.phraser = Phraser(self.names, {c["id"]: c.get("supercategory") for c in categories})
        # "the bear" is not absent next to a teddy bear, nor "the dog" next to a hot dog.
        words = {c: [f" {n} " for n in nouns(name)] for c, name in self.names.items()}
        self.confusable = {c: {d for d in words if d != c and any(a in b or b in a for a in words[c] for b in words[d])}
                           for c in words}

    def objects(self, rows: list, width: int, height: int) -> tuple[list, bool]:
        """The image's named objects and whether it has annotations of unlisted categories."""
        objects, unknown = [], False
        min_area = self.params["min_area"] * width * height
        for ann_id, cat, crowd, (x, y, w, h, area) in rows:
            if cat not in self.names:
                unknown = True
                self.skipped["unknown_category"] += 1
                continue
            kept = not crowd and area >= min_area
            self.skipped["crowd"] += bool(crowd)
            self.skipped["tiny"] += not crowd and not kept
            objects.append({"ann_id": ann_id, "cat": cat, "crowd": bool(crowd), "kept": kept, "area": area,
                            "cx": (x + w / 2) / width, "cy": (y + h / 2) / height})
        return objects, unknown

    def image(self, split: str, image: dict, rows: list, rng, cf_rng) -> None:
        objects, unknown = self.objects(rows, image["width"], image["height"])
        if not rows:
            self.skipped["images_without_annotations"] += 1
        forms = {i: true_forms(objects, i) for i, obj in enumerate(objects) if obj["kept"]}
        forms = {i: f for i, f in forms.items() if f}
        counts = {i: len(instances(objects, objects[i]["cat"])) for i in forms}
        if split == "test":  # testB: the category alone is ambiguous; testA: it is enough
            ambiguous = {i: f for i, f in forms.items() if counts[i] >= 2}
            split, forms = ("testB", ambiguous) if ambiguous else ("testA", forms)
        present = {obj["cat"] for obj in objects}
        absent = [c for c in self.names if c not in present and not self.confusable[c] & present]
        targets = [int(k) for k in rng.permutation(sorted(forms))[:self.params["max_refs_per_image"]]]
        before = self.out.ref_id
        for i in targets:
            chosen = choose_forms(rng, forms[i], self.params["sentences_per_ref"])
            self._add(split, image, [objects[i]], chosen, rng, cf_rng, objects, absent, unknown)
        if self.out.generalized:
            self._generalized(split, image, objects, absent, unknown, rng, cf_rng, forms, targets)
        if self.out.ref_id > before:
            self.out.used_images.append(image)
            self.out.splits[split]["images"] += 1

    def _add(self, split, image, targets, forms, rng, cf_rng, objects, absent, unknown) -> None:
        phrased = self.phraser.phrase(rng, forms, len(forms) if len(forms) > 1 else 2)
        negatives = [self.phraser.counterfactual(cf_rng, form, state, objects, absent, unknown)
                     if len(targets) == 1 else None for form, _, state in phrased]
        self.out.add_ref(split, image, targets, [(f, raw) for f, raw, _ in phrased], negatives)

    def _generalized(self, split, image, objects, absent, unknown, rng, cf_rng, forms, targets) -> None:
        """Multi-target refs ("both cats") and at most `no_target_per_image` no-target refs."""
        groups = []
        for cat in sorted({obj["cat"] for obj in objects}):
            found = instances(objects, cat)
            form = {"type": "multi", "cat": cat, "count": len(found)}
            if (2 <= len(found) <= 6 and all(objects[i]["kept"] for i in found)
                    and denotation(form, objects, unknown) == found):
                groups.append((found, form))
        for k in rng.permutation(len(groups))[:self.params["max_refs_per_image"]]:
            found, form = groups[int(k)]
            self._add(split, image, [objects[i] for i in found], [form], rng, cf_rng, objects, absent, unknown)
        sources = [f for i in targets for f in forms[i]] + [form for _, form in groups]
        changed = {json.dumps(v, sort_keys=True): v for f in sources for v in nothing_variants(f, objects, [], unknown)}
        changed = list(changed.values())
        # The plain "the zebra" where there is none; not where an unlisted category could be one.
        missing = [] if unknown else [{"type": "category", "cat": c} for c in absent]
        for _ in range(self.params["no_target_per_image"]):
            picked = [pool.pop(int(rng.integers(len(pool)))) for pool in (changed, missing) if pool]
            if not picked:
                break
            self._add(split, image, [], picked, rng, cf_rng, objects, absent, unknown)


def _split_of(source: int, image_id: int, seed: int, val_fraction: float) -> str:
    if source == 0:
        return "train"
    draw = np.random.default_rng([seed, 2, image_id & 0xFFFFFFFF]).random()
    return "val" if draw < val_fraction else "test"


def _generate_source(builder: Builder, source: int, compact: CompactInstances, offsets: tuple, link: str,
                     progress: bool) -> None:
    columns, box = compact.arrays()
    image_offset, ann_offset = offsets
    order = np.argsort(columns["image_id"], kind="stable")
    image_ids = columns["image_id"][order]
    starts = np.searchsorted(image_ids, sorted(compact.images))
    ends = np.searchsorted(image_ids, sorted(compact.images), side="right")
    seed, params = builder.params["seed"], builder.params
    with _progress(len(compact.images), f"expressions {link}", progress, unit="img") as bar:
        for image_id, start, end in zip(sorted(compact.images), starts, ends):
            bar.update(1)
            if image_id in compact.unsafe_images:
                continue
            width, height, file_name = compact.images[image_id]
            rows = [(int(columns["id"][k]) + ann_offset, int(columns["cat"][k]), int(columns["crowd"][k]),
                     tuple(box[k].tolist())) for k in order[start:end]]
            image = {"id": image_id + image_offset, "file_name": f"{link}/{file_name}", "height": height,
                     "width": width, "coco_id": image_id, "coco_split": link}
            split = _split_of(source, image_id, seed, params["val_fraction"])
            key = [seed, source, image_id & 0xFFFFFFFF]
            builder.image(split, image, rows, np.random.default_rng(key), np.random.default_rng([*key, 1]))


def _offsets(previous, compact: CompactInstances) -> tuple:
    """Id offsets for a second file whose image or annotation ids collide with the first's."""
    if previous is None:
        return 0, 0
    image_ids, ann_ids = previous
    ids = np.array(sorted(compact.images), dtype=np.int64)
    ann = np.frombuffer(compact.columns["id"], dtype=np.int64) if len(compact.columns["id"]) else np.zeros(0, np.int64)
    image_offset = int(image_ids.max()) + 1 if np.isin(ids, image_ids).any() else 0
    ann_offset = int(ann_ids.max()) + 1 if len(ann_ids) and np.isin(ann, ann_ids).any() else 0
    return image_offset, ann_offset


def _merge_categories(found: list, more: list, path: str) -> list:
    by_id = {}
    for cat in [*found, *more]:
        try:
            key, name = int(cat["id"]), str(cat["name"])
        except (KeyError, TypeError, ValueError):
            continue
        if key in by_id and by_id[key]["name"] != name:
            raise UserInputError(f"Category {key} is '{by_id[key]['name']}' in one file and '{name}' in '{path}'.")
        by_id.setdefault(key, {"id": key, "name": name, "supercategory": cat.get("supercategory", ""),
                               "synonyms": category_synonyms(name)})
    return [by_id[k] for k in sorted(by_id)]


def _write_instances(data_dir: str, out: Output, sources: list, categories: list, progress: bool) -> None:
    """instances.json: the images used, their referred annotations (segmentations included, read
    again from the source files), and the categories."""
    with open(os.path.join(data_dir, "instances.json"), "w", encoding="utf-8") as handle:
        handle.write('{"images":')
        images = JsonArrayWriter(handle)
        for image in out.used_images:
            images.add(image)
        images.close()
        handle.write(',"annotations":')
        anns = JsonArrayWriter(handle)
        for path, (image_offset, ann_offset) in sources:
            def copy(ann, image_offset=image_offset, ann_offset=ann_offset):
                try:
                    new_id = int(ann["id"]) + ann_offset
                except (KeyError, TypeError, ValueError):
                    return
                if new_id in out.referred:
                    out.referred.discard(new_id)  # a duplicated id is written once
                    anns.add({**ann, "id": new_id, "image_id": int(ann["image_id"]) + image_offset})

            with _progress(file_size(path), f"masks {os.path.basename(path)}", progress) as bar:
                stream_top_level(path, {"annotations": copy}, progress=bar)
        anns.close()
        handle.write(',"categories":' + json.dumps(categories, separators=(",", ":")) + "}")


def _link_images(image_dir: str, link: str, target: str) -> str | None:
    """<root>/images/<dataset>/<link> -> the COCO image folder (no copying); a warning or None."""
    path = os.path.join(image_dir, link)
    if os.path.islink(path):
        os.remove(path)
    elif os.path.exists(path):
        return f"{path} exists and is not a link; its images are used as they are"
    os.symlink(os.path.abspath(target), path, target_is_directory=True)
    return None if os.path.isdir(target) else f"image folder {target} does not exist (linked anyway)"


def build(root: str, train_json: str, val_json: str, train_images: str, val_images: str, dataset: str = "cocorefs",
          splitBy: str = "unc", generalized: bool = False, seed: int = 0, min_area: float = DEFAULT_MIN_AREA,
          val_fraction: float = 0.5, max_refs_per_image: int = 4, sentences_per_ref: int = 3,
          no_target_per_image: int = 1, progress: bool = False) -> dict:
    """Write the dataset under `root` and return a summary dict (see the package docstring)."""
    started = time.perf_counter()
    for path in (train_json, val_json):
        if not os.path.isfile(path):
            raise UserInputError(f"Annotation file '{path}' not found (COCO 2017: annotations/instances_*2017.json).")
    if os.path.samefile(train_json, val_json):
        raise UserInputError(f"'{train_json}' is given for both train and val: their images must differ.")
    if not (0 <= min_area < 1 and 0 < val_fraction < 1 and max_refs_per_image >= 1 and sentences_per_ref >= 1
            and no_target_per_image >= 0):
        raise UserInputError("min_area must lie in [0, 1), val_fraction in (0, 1), max_refs_per_image and "
                             "sentences_per_ref >= 1, no_target_per_image >= 0.")
    refuse_other_layout(root, dataset, f"refs({splitBy}).p" if generalized else f"grefs({splitBy}).json")
    data_dir, image_dir = os.path.join(root, dataset), os.path.join(root, "images", dataset)
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    params = {"seed": seed, "min_area": min_area, "val_fraction": val_fraction, "max_refs_per_image": max_refs_per_image,
              "sentences_per_ref": sentences_per_ref, "no_target_per_image": no_target_per_image}
    out = Output(data_dir, splitBy, generalized)
    warnings, sources, categories, previous, skipped_records = [], [], [], None, {"annotations": 0, "images": 0}
    builder = None
    for source, (path, images, link) in enumerate(((train_json, train_images, SOURCES[0]),
                                                   (val_json, val_images, SOURCES[1]))):
        compact = CompactInstances(path, progress)
        categories = _merge_categories(categories, compact.categories, path)
        if not categories:
            raise UserInputError(f"'{path}' lists no categories (each needs id and name).")
        offsets = _offsets(previous, compact)
        builder = builder or Builder(params, out)
        builder.set_categories(categories)
        _generate_source(builder, source, compact, offsets, link, progress)
        for key in skipped_records:
            skipped_records[key] += compact.skipped[key]
        if previous is None:
            previous = (np.array(sorted(compact.images), dtype=np.int64), np.array(compact.columns["id"], dtype=np.int64))
        sources.append((path, offsets))
        warning = _link_images(image_dir, link, images)
        if warning:
            warnings.append(warning)
        del compact
    out.close()
    referred = len(out.referred)
    _write_instances(data_dir, out, sources, categories, progress)
    if out.referred:
        raise RuntimeError(f"{len(out.referred)} referred annotations were not found again in the source files.")
    return {"root": os.path.abspath(root), "dataset": dataset, "splitBy": splitBy, "generalized": generalized,
            "splits": out.splits, "images": len(out.used_images), "refs": out.ref_id, "sentences": out.sent_id,
            "annotations": referred, "expression_types": out.types, "ref_kinds": out.kinds,
            "counterfactuals": out.counterfactuals.count, "skipped": {**builder.skipped, **{
                f"malformed_{k}": v for k, v in skipped_records.items()}},
            "warnings": warnings, "seconds": time.perf_counter() - started}
