"""COCO-Refs (data/coco_refs): referring expressions generated from COCO-format instance files.

The truth checks below read the SOURCE annotation files and decide every expression with their
own plain code (box centres, areas, counts); they share nothing with data/coco_refs/semantics.py.
"""
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from data.coco_refs import build, write_coco_fixture
from data.coco_refs.__main__ import main
from data.coco_refs.stream import JsonMapWriter, PickleListWriter, stream_top_level
from errors import UserInputError
from refer import GREFER, REFER, load_refs_pickle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:__array__ implementation:DeprecationWarning")
SIDE_WORDS = {"left": ("left",), "right": ("right",), "top": ("top", "highest"), "bottom": ("bottom", "lowest")}
RELATION_WORDS = {"left": ("left",), "right": ("right",), "above": ("above", "higher"), "below": ("below", "lower", "beneath")}
ORDINAL = {2: ("second", "2nd"), 3: ("third", "3rd"), 4: ("fourth", "4th"), 5: ("fifth", "5th"), 6: ("sixth", "6th")}
NUMBER = {2: ("both", "two", "2"), 3: ("three", "3"), 4: ("four", "4"), 5: ("five", "5"), 6: ("six", "6")}


@pytest.fixture(scope="module")
def sets(module_tmp):
    folder = module_tmp("coco_refs")
    paths = write_coco_fixture(str(folder / "coco"), num_train=14, num_val=24, seed=3)
    root = str(folder / "data")
    found = {"paths": paths, "root": root}
    for name, generalized in (("cocorefs", False), ("gcocorefs", True)):
        found[name] = build(root, **paths, dataset=name, generalized=generalized)
    return found


def source(paths):
    """Per source file: images by id, annotations by image, category ids."""
    out = {}
    for key in ("train_json", "val_json"):
        data = json.load(open(paths[key]))
        by_image = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        out[key] = ({img["id"]: img for img in data["images"]}, by_image, {c["id"] for c in data["categories"]})
    return out


def generated(sets, name):
    """refs, sentence forms, instances.json, counterfactuals, the source files, images and categories by id."""
    folder = os.path.join(sets["root"], name)
    refs = (json.load(open(os.path.join(folder, "grefs(unc).json"))) if name == "gcocorefs"
            else load_refs_pickle(os.path.join(folder, "refs(unc).p")))
    forms = {}
    for line in open(os.path.join(folder, "coco_refs_forms(unc).jsonl")):
        entry = json.loads(line)
        forms[entry["sent_id"]] = entry
    instances = json.load(open(os.path.join(folder, "instances.json")))
    counterfactuals = json.load(open(os.path.join(folder, "counterfactuals(unc).json")))
    images = {img["id"]: img for img in instances["images"]}
    names = {c["id"]: c for c in instances["categories"]}
    return refs, forms, instances, counterfactuals, source(sets["paths"]), images, names


def scene_of(src, image):
    """The source image's annotations, looked up by its COCO split and id."""
    images, by_image, listed = src["train_json" if image["coco_split"] == "train2017" else "val_json"]
    return images[image["coco_id"]], by_image.get(image["coco_id"], []), listed


def centre(ann, image, axis):
    x, y, w, h = ann["bbox"]
    return (x + w / 2) / image["width"] if axis == "x" else (y + h / 2) / image["height"]


def of_category(anns, cat):
    return [a for a in anns if a["category_id"] == cat]


def truth(form, image, anns):
    """The ann ids the form refers to, decided directly on the source annotations; None if it
    does not make sense (the generator must never write such a form)."""
    same = of_category(anns, form["cat"])
    if any(a["iscrowd"] for a in same):
        return None
    kind = form["type"]
    if kind == "category":
        return [a["id"] for a in same] if len(same) <= 1 else None
    if kind == "multi":
        return [a["id"] for a in same] if len(same) == form["count"] else [] if len(same) < form["count"] else None
    if kind == "relation":
        landmark = of_category(anns, form["lm"])
        if len(landmark) != 1:
            return None
        axis, sign = {"left": ("x", -1), "right": ("x", 1), "above": ("y", -1), "below": ("y", 1)}[form["rel"]]
        on_side = [a for a in same if sign * (centre(a, image, axis) - centre(landmark[0], image, axis)) > 0]
        return [a["id"] for a in on_side] if len(on_side) <= 1 else None
    if kind == "order" and form["rank"] > len(same):
        return []
    if not same:
        return []
    if kind in ("location", "order"):
        side = form["where"] if kind == "location" else form["from"]
        rank = 1 if kind == "location" else form["rank"]
        axis, sign = {"left": ("x", 1), "right": ("x", -1), "top": ("y", 1), "bottom": ("y", -1)}[side]
        keys = {a["id"]: sign * centre(a, image, axis) for a in same}
        hits = [i for i, k in keys.items() if sum(other < k for other in keys.values()) == rank - 1
                and list(keys.values()).count(k) == 1]
        return hits if len(hits) == 1 else None
    if kind == "size":
        areas = sorted(same, key=lambda a: a["area"], reverse=form["which"] == "largest")
        first, second = areas[0]["area"], areas[1]["area"] if len(areas) > 1 else None
        if second is None or first == second:
            return None
        return [areas[0]["id"]]
    raise AssertionError(form)


def words_fit(form, text, names):
    """The sentence names the form's category (a listed noun) and its location / order / count word."""
    text = f" {text} "
    nouns = [names[form["cat"]]["name"], *names[form["cat"]]["synonyms"]]
    ok = any(f" {n} " in text for n in nouns)
    if form["type"] == "location":
        ok &= any(w in text for w in SIDE_WORDS[form["where"]])
    elif form["type"] == "order":
        ok &= any(f" {w} " in text for w in ORDINAL[form["rank"]]) and form["from"] in text
    elif form["type"] == "size":
        ok &= any(w in text for w in (("largest", "biggest") if form["which"] == "largest" else ("smallest", "tiniest")))
    elif form["type"] == "relation":
        lm = [names[form["lm"]]["name"], *names[form["lm"]]["synonyms"]]
        ok &= any(w in text for w in RELATION_WORDS[form["rel"]]) and any(f" {n} " in text for n in lm)
    elif form["type"] == "multi":
        ok &= any(f" {w} " in text for w in NUMBER[form["count"]])
    return ok


@pytest.mark.parametrize("name", ["cocorefs", "gcocorefs"])
def test_every_expression_is_true(sets, name):
    refs, forms, _, _, src, images, names = generated(sets, name)
    checked = {}
    for ref in refs:
        image, anns, _ = scene_of(src, images[ref["image_id"]])
        targets = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
        if targets == [-1]:
            continue
        by_id = {a["id"]: a for a in anns}
        for ann_id in targets:  # never a crowd or a tiny object
            assert not by_id[ann_id]["iscrowd"] and by_id[ann_id]["area"] >= 0.005 * image["width"] * image["height"]
        for sent in ref["sentences"]:
            form = forms[sent["sent_id"]]["form"]
            assert truth(form, image, anns) is not None and sorted(truth(form, image, anns)) == sorted(targets), (
                sent["raw"], form)
            assert words_fit(form, sent["sent"], names), (sent["raw"], form)
            checked[form["type"]] = checked.get(form["type"], 0) + 1
    kinds = {"category", "location", "order", "size", "relation"} | ({"multi"} if name == "gcocorefs" else set())
    assert set(checked) == kinds, checked


@pytest.mark.parametrize("name", ["cocorefs", "gcocorefs"])
def test_counterfactual_and_no_target_expressions_match_nothing(sets, name):
    refs, forms, _, counterfactuals, src, images, names = generated(sets, name)
    sentences = {s["sent_id"]: (s, ref) for ref in refs for s in ref["sentences"]}
    assert counterfactuals and {int(k) for k in counterfactuals} <= set(sentences)
    nothing = [(forms[int(k)]["counterfactual"], raw, sentences[int(k)][1]) for k, raw in counterfactuals.items()]
    nothing += [(forms[s["sent_id"]]["form"], s["sent"], ref) for ref in refs if ref.get("no_target")
                for s in ref["sentences"]]
    assert (name == "gcocorefs") == any(ref.get("no_target") for ref in refs)
    for form, raw, ref in nothing:
        image, anns, listed = scene_of(src, images[ref["image_id"]])
        assert truth(form, image, anns) == [], (raw, form)
        assert all(a["category_id"] in listed for a in anns)  # an unlisted category could be anything
        assert words_fit(form, " ".join(raw.lower().split()), names), (raw, form)
    for key, raw in counterfactuals.items():
        original, _ = sentences[int(key)]
        assert raw != original["raw"]


@pytest.mark.parametrize("name", ["cocorefs", "gcocorefs"])
def test_no_object_or_image_in_two_splits(sets, name):
    refs, _, instances, _, src, images, _ = generated(sets, name)
    split_of_image, split_of_ann = {}, {}
    for ref in refs:
        assert split_of_image.setdefault(ref["image_id"], ref["split"]) == ref["split"]
        for ann_id in ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]:
            if ann_id != -1:
                assert split_of_ann.setdefault(ann_id, ref["split"]) == ref["split"]
        source_split = images[ref["image_id"]]["coco_split"]
        assert source_split == ("train2017" if ref["split"] == "train" else "val2017")
    assert set(split_of_image.values()) == {"train", "val", "testA", "testB"}
    assert len(images) == len(instances["images"]) == len(split_of_image)
    for ref in refs:  # testB: every target's category has another instance in its image
        if ref["split"] == "testB" and ref["ann_id"] not in (-1, [-1]):
            _, anns, _ = scene_of(src, images[ref["image_id"]])
            cat = ref["category_id"][0] if isinstance(ref["category_id"], list) else ref["category_id"]
            assert len(of_category(anns, cat)) >= 2


def test_masks_and_images_come_from_the_coco_files(sets):
    refer = REFER(sets["root"], "cocorefs", "unc")
    src = source(sets["paths"])
    for ref in refer.data["refs"]:
        image, anns, _ = scene_of(src, refer.Imgs[ref["image_id"]])
        ann = next(a for a in anns if a["id"] == ref["ann_id"])
        seg = ann["segmentation"]
        rle = seg if isinstance(seg, dict) else mask_utils.merge(mask_utils.frPyObjects(seg, image["height"], image["width"]))
        assert np.array_equal(refer.getMask(ref)["mask"] > 0, mask_utils.decode(rle) > 0)
        path = refer.image_path(refer.Imgs[ref["image_id"]]["file_name"])
        assert os.path.realpath(path).startswith(os.path.realpath(os.path.dirname(os.path.dirname(sets["paths"]["train_json"]))))
    grefer = GREFER(sets["root"], "gcocorefs", "unc")
    assert any(grefer.is_no_target(r) for r in grefer.data["refs"])
    person = next(c for c in refer.data["categories"] if c["name"] == "person")
    assert "people" in person["synonyms"]  # the drop-category probe reads these


def test_colliding_ids_are_renumbered(tmp_path):
    paths = write_coco_fixture(str(tmp_path / "coco"), num_train=8, num_val=8, seed=1, colliding_ids=True)
    build(str(tmp_path / "data"), **paths)
    refer = REFER(str(tmp_path / "data"), "cocorefs", "unc")
    assert len({img["id"] for img in refer.data["images"]}) == len(refer.data["images"])
    val = [r for r in refer.data["refs"] if r["split"] != "train"]
    assert val
    src = source(paths)
    for ref in val:  # the val file's own mask, not the train annotation with the same id
        image, anns, _ = scene_of(src, refer.Imgs[ref["image_id"]])
        written = refer.Anns[ref["ann_id"]]
        assert written["image_id"] == ref["image_id"]
        assert any(a["bbox"] == written["bbox"] and a["segmentation"] == written["segmentation"] for a in anns)


def test_streaming_reader_and_writers(tmp_path):
    data = {"info": {"v": 1.5, "s": "caf\u00e9 \u2603"}, "images": [{"id": 12345678901, "x": [1e-3, -2, 3.25]}] * 5,
            "empty": [], "annotations": [{"id": k, "seg": {"counts": "ab\\\"c", "size": [1, 2]}} for k in range(50)],
            "n": 123456789, "categories": []}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data, indent=1))
    for chunk in (1, 3, 7, 1 << 20):
        seen = {"images": [], "annotations": [], "empty": []}
        others = stream_top_level(str(path), {k: v.append for k, v in seen.items()}, chunk=chunk)
        assert seen["images"] == data["images"] and seen["annotations"] == data["annotations"] and not seen["empty"]
        assert others == {"info": data["info"], "n": 123456789}
    path.write_text('{"images": [1, 2')
    with pytest.raises(UserInputError, match="not a JSON object"):
        stream_top_level(str(path), {})
    items = [{"a": [1, 2, {"b": "c"}], "s": "x" * k} for k in range(2500)]
    writer = PickleListWriter(str(tmp_path / "r.p"), batch=1000)
    for item in items:
        writer.add(item)
    writer.close()
    assert load_refs_pickle(tmp_path / "r.p") == items == pickle.load(io.BytesIO((tmp_path / "r.p").read_bytes()))
    table = JsonMapWriter(str(tmp_path / "m.json"))
    table.add(1, "one")
    table.add("2", "two \"2\"")
    table.close()
    assert json.loads((tmp_path / "m.json").read_text()) == {"1": "one", "2": "two \"2\""}


def test_command_line(tmp_path, capsys):
    write_coco_fixture(str(tmp_path / "coco"), num_train=6, num_val=8, seed=2)
    summary = main(["--coco", str(tmp_path / "coco"), "--root", str(tmp_path / "data"), "--no-progress"])
    assert summary["refs"] > 0 and "expression types" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--coco", str(tmp_path / "missing"), "--root", str(tmp_path / "data"), "--no-progress"])
    assert "not found" in capsys.readouterr().err


def run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_nano_model_trains_evaluates_and_probes(sets, tmp_path):
    flags = ["--device", "cpu", "--swin_type", "nano", "--ck_bert", "minilm", "--bert_tokenizer", "minilm",
             "--dataset", "cocorefs", "--refer_data_root", sets["root"], "--img_size", "64", "--window-size", "4",
             "--workers", "0"]
    run(["train.py", *flags, "--batch-size", "8", "--epochs", "1", "--bert-trainable-layers", "0",
         "--model_id", "c", "--run-dir", str(tmp_path / "run"), "--output-dir", str(tmp_path)])
    checkpoint = str(tmp_path / "model_best_c.pth")
    for split in ("testB", "test"):
        run(["test.py", *flags, "--split", split, "--resume", checkpoint, "--results-json", str(tmp_path / "r.json")])
        assert json.loads((tmp_path / "r.json").read_text())["num_samples"] > 0
    run(["tools/probes.py", *flags, "--split", "val", "--resume", checkpoint, "--probe-out", str(tmp_path / "probes"),
         "--probes", "clean,swap,category,empty,shuffle,drop-category,counterfactual"])
    found = json.loads((tmp_path / "probes" / "probes.json").read_text())["results"]
    assert found["counterfactual"]["num_samples"] > 0 and found["drop-category"]["num_samples"] > 0


def test_arguments_are_checked(tmp_path):
    paths = write_coco_fixture(str(tmp_path / "coco"), num_train=3, num_val=3)
    with pytest.raises(UserInputError):
        build(str(tmp_path / "data"), **paths, val_fraction=1.5)


def test_malformed_annotations_and_confusable_categories(tmp_path):
    """An image with an unreadable annotation gives no refs (it could be a distractor), the same
    file twice is refused, and "the bear" is never 'absent' next to a teddy bear."""
    paths = write_coco_fixture(str(tmp_path / "coco"), num_train=6, num_val=6, seed=5)
    data = json.load(open(paths["train_json"]))
    victim = data["annotations"][0]["image_id"]
    data["annotations"].append({"id": 10**6, "image_id": victim, "category_id": 1})  # no bbox
    data["categories"] += [{"id": 23, "name": "bear", "supercategory": "animal"},
                           {"id": 88, "name": "teddy bear", "supercategory": "indoor"}]
    json.dump(data, open(paths["train_json"], "w"))
    build(str(tmp_path / "data"), **paths)
    refer = REFER(str(tmp_path / "data"), "cocorefs", "unc")
    assert refer.data["refs"] and all(r["image_id"] != victim for r in refer.data["refs"])
    with pytest.raises(UserInputError, match="both train and val"):
        build(str(tmp_path / "data2"), **{**paths, "val_json": paths["train_json"]})
    from data.coco_refs.build import Builder

    builder = Builder({}, None)
    builder.set_categories(data["categories"])
    assert 88 in builder.confusable[23] and 23 in builder.confusable[88] and not builder.confusable[1]
