"""SynRef generator: REFER layout, determinism, exact polygons, unique expressions, split rules."""
import argparse
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from data import synthetic
from data.synthetic import SHAPE_WORDS, mask_to_polygons, referent, render_scene
from refer import REFER, load_refs_pickle

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture", "refcoco")
SIZE = 64


def target_index(scene, ann_id):
    return [obj["ann_id"] for obj in scene["objects"]].index(ann_id)


def decode(segmentation, size):
    rles = mask_utils.frPyObjects(segmentation, size, size)
    return mask_utils.decode(mask_utils.merge(rles, intersect=False)).astype(bool)


# ---- layout -------------------------------------------------------------------------------------
def test_files_mirror_the_refcoco_fixture_fields(synref):
    fixture_refs = load_refs_pickle(os.path.join(FIXTURE, "refs(unc).p"))
    with open(os.path.join(FIXTURE, "instances.json")) as handle:
        fixture_instances = json.load(handle)
    refs, instances = synref["refs"], synref["instances"]
    assert set(instances) == set(fixture_instances)
    assert {k for r in refs for k in r} == set(fixture_refs[0])
    assert {k for r in refs for s in r["sentences"] for k in s} == set(fixture_refs[0]["sentences"][0])
    # RefCOCO's image records also carry license / urls / date, which the trimmed fixture dropped.
    coco_image_extras = {"license", "coco_url", "flickr_url", "date_captured"}
    assert set(fixture_instances["images"][0]) <= set(instances["images"][0])
    assert set(instances["images"][0]) <= set(fixture_instances["images"][0]) | coco_image_extras
    assert set(instances["annotations"][0]) == set(fixture_instances["annotations"][0])
    # Categories add "synonyms" (the other nouns the expressions use; read by the drop-category probe).
    assert set(instances["categories"][0]) == set(fixture_instances["categories"][0]) | {"synonyms"}
    for category in instances["categories"]:
        assert all(word != category["name"] for word in category["synonyms"])
    images = {im["id"]: im for im in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    image_dir = synref["root"] / "images" / "synref"
    for ref in refs:
        image = images[ref["image_id"]]
        assert (image_dir / image["file_name"]).is_file()
        assert ref["file_name"] == f"{image['file_name'][:-4]}_{ref['ann_id']}.png"  # COCO's <stem>_<ann_id>
        assert anns[ref["ann_id"]]["image_id"] == ref["image_id"]
        assert anns[ref["ann_id"]]["category_id"] == ref["category_id"]
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for sent in ref["sentences"]:
            assert sent["sent"] == sent["sent"].lower() and sent["tokens"] == sent["sent"].split()
    for ann in instances["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE and ann["area"] > 0 and ann["iscrowd"] == 0
    # Restricted unpickler accepted it, so only builtin types; ids are unique.
    assert len({r["ref_id"] for r in refs}) == len(refs)
    assert len({s["sent_id"] for r in refs for s in r["sentences"]}) == sum(len(r["sentences"]) for r in refs)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    def files(root):
        out = {}
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as handle:
                    out[os.path.relpath(path, root)] = handle.read()
        return out

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthetic.generate(str(tmp_path / name), num_images=10, img_size=48, seed=seed)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a.keys() == b.keys() and len(a) == 10 + 4  # images, refs, instances, sidecar, counterfactuals
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert a["synref/refs(unc).p"] != c["synref/refs(unc).p"]
    assert a["synref/instances.json"] != c["synref/instances.json"]
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs)


# ---- pixels and polygons --------------------------------------------------------------------------
def test_polygons_decode_to_the_painted_objects(synref):
    anns = {a["id"]: a for a in synref["instances"]["annotations"]}
    image_dir = synref["root"] / "images" / "synref"
    traced = 0
    for scene in synref["meta"]["scenes"]:
        image, visible = render_scene(scene)
        with Image.open(image_dir / f"synref_{scene['image_id']:012d}.png") as png:
            saved = np.asarray(png)
        assert np.array_equal(image, saved)  # the renderer reproduces the stored picture
        for obj, mask in zip(scene["objects"], visible, strict=True):
            ann = anns[obj["ann_id"]]
            decoded = decode(ann["segmentation"], SIZE)
            iou = (decoded & mask).sum() / (decoded | mask).sum()
            assert iou > 0.98, (scene["image_id"], obj["ann_id"], iou)
            assert ann["area"] == mask.sum()
            traced += ann["segmentation"] != [obj["polygon"]]
            # The object's pixels carry its colour: a mask/drawing mismatch would mix in other colours.
            assert np.abs(image[mask].mean(0) - np.array(obj["rgb"])).max() < 20
    assert traced > 0, "no occluded object in the sample: the traced-polygon path went untested"


def test_refer_get_mask_is_the_visible_object(synref):
    refer = REFER(str(synref["root"]), "synref", "unc")
    for ref in refer.data["refs"][:60]:
        scene = synref["scenes"][ref["image_id"]]
        _, visible = render_scene(scene)
        assert np.array_equal(refer.getMask(ref)["mask"].astype(bool), visible[target_index(scene, ref["ann_id"])])


def test_mask_to_polygons_is_exact_and_reports_holes():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        mask = rng.random((9, 11)) < rng.uniform(0.3, 0.9)
        polygons, has_holes = mask_to_polygons(mask)
        if mask.any() and not has_holes:
            rles = mask_utils.frPyObjects(polygons, 9, 11)
            assert np.array_equal(mask_utils.decode(mask_utils.merge(rles, intersect=False)).astype(bool), mask)
            checked += 1
    assert checked > 50
    pinch = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=bool)
    pinch[1, 1] = False  # two pixels touching only at corners around a gap
    polygons, has_holes = mask_to_polygons(pinch)
    assert not has_holes and len(polygons) == 2  # 4-connected pieces
    ring = np.ones((5, 5), dtype=bool)
    ring[2, 2] = False
    assert mask_to_polygons(ring)[1]


# ---- expressions ---------------------------------------------------------------------------------
def test_every_expression_denotes_exactly_its_target(synref):
    forms = {e["sent_id"]: e["form"] for e in synref["meta"]["expressions"]}
    refs = synref["refs"]
    for ref in refs:
        scene = synref["scenes"][ref["image_id"]]
        assert 2 <= len(ref["sentences"]) <= 3 and len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"])
        for sent in ref["sentences"]:
            form = forms[sent["sent_id"]]
            assert referent(form, scene["objects"], scene["img_size"]) == target_index(scene, ref["ann_id"])
            words = f" {sent['sent']} "
            for key, table in (("size", synthetic.SIZE_WORDS), ("colour", synthetic.COLOUR_WORDS), ("shape", SHAPE_WORDS)):
                if key in form["target"]:
                    assert any(f" {w} " in words for w in table[form["target"][key]]), (sent["raw"], form)
    assert len(forms) == sum(len(r["sentences"]) for r in refs)


def obj(shape, colour, size, x, y):
    return {"shape": shape, "colour": colour, "size": size, "cx": x * 100, "cy": y * 100}


def test_ambiguous_expressions_are_rejected():
    def unique(form, objects):
        return referent(form, objects, 100)

    red_circles = [obj("circle", "red", "small", 0.2, 0.5), obj("circle", "red", "big", 0.8, 0.5),
                   obj("square", "blue", "big", 0.5, 0.2)]
    assert unique({"type": "attribute", "target": {"colour": "red", "shape": "circle"}}, red_circles) is None
    assert unique({"type": "attribute", "target": {"colour": "red", "size": "big"}}, red_circles) == 1
    close = [obj("circle", "red", "small", 0.30, 0.2), obj("circle", "blue", "small", 0.34, 0.8),
             obj("circle", "green", "big", 0.8, 0.5)]
    leftmost = {"type": "location", "target": {"shape": "circle"}, "where": "left"}
    assert unique(leftmost, close) is None  # 4% apart: within the margin
    close[1]["cx"] = 50
    assert unique(leftmost, close) == 0
    twins = [obj("square", "red", "big", 0.2, 0.2), obj("square", "red", "big", 0.8, 0.2),
             obj("star", "blue", "small", 0.5, 0.7), obj("star", "blue", "small", 0.9, 0.7)]
    relation = {"type": "relation", "target": {"shape": "star"}, "relation": "right",
                "landmark": {"colour": "red", "shape": "square"}}
    assert unique(relation, twins) is None  # two possible landmarks
    relation["landmark"] = {"shape": "square"}
    assert unique(relation, twins) is None
    twins[1]["shape"] = "heart"
    assert unique(relation, twins) is None  # both stars are right of the one square
    relation["target"] = {"shape": "star"}
    relation["relation"] = "nearest"
    assert unique(relation, twins) == 2
    row = [obj("hexagon", "pink", "small", x, 0.5) for x in (0.1, 0.3, 0.35, 0.8)]
    second = {"type": "ordinal", "target": {"shape": "hexagon"}, "rank": 2, "from": "left"}
    assert unique(second, row) is None  # 2nd and 3rd are 5% apart
    assert unique({**second, "from": "right"}, row) is None
    row[2]["cx"] = 55
    assert unique(second, row) == 1 and unique({**second, "from": "right"}, row) == 2
    corner = {"type": "location", "target": {}, "where": "bottom right"}
    assert unique(corner, [obj("star", "red", "big", 0.3, 0.3), obj("star", "red", "big", 0.2, 0.1)]) is None
    center = {"type": "location", "target": {}, "where": "center"}
    assert unique(center, [obj("star", "red", "big", 0.1, 0.1), obj("star", "red", "big", 0.9, 0.9)]) is None


def test_distractor_share_and_expression_variety(synref):
    refs, scenes = synref["refs"], synref["scenes"]
    shared = 0
    for ref in refs:
        scene = synref["scenes"][ref["image_id"]]
        me = scene["objects"][target_index(scene, ref["ann_id"])]
        shared += any(o is not me and (o["shape"] == me["shape"] or o["colour"] == me["colour"])
                      for o in scenes[ref["image_id"]]["objects"])
    assert shared / len(refs) >= 0.8
    assert synref["summary"]["distractor_share"] == pytest.approx(shared / len(refs))
    types = {e["form"]["type"] for e in synref["meta"]["expressions"]}
    assert types == set(synthetic.EXPRESSION_TYPES)
    assert len({s["sent"] for r in refs for s in r["sentences"]}) > 0.8 * sum(len(r["sentences"]) for r in refs)


def test_split_rules(synref):
    held_out = {tuple(p) for p in synref["meta"]["held_out_pairs"]}
    assert len(held_out) == 6
    forms = {e["sent_id"]: e["form"] for e in synref["meta"]["expressions"]}
    splits_per_image = {}
    for ref in synref["refs"]:
        scene = synref["scenes"][ref["image_id"]]
        target = scene["objects"][target_index(scene, ref["ann_id"])]
        pair = (target["colour"], target["shape"])
        assert (pair in held_out) == (ref["split"] == "testC"), (ref["split"], pair)
        kinds = {forms[s["sent_id"]]["type"] for s in ref["sentences"]}
        if ref["split"] == "testA":
            assert kinds == {"attribute"}
        if ref["split"] == "testB":
            assert "attribute" not in kinds
        splits_per_image.setdefault(ref["image_id"], set()).add(ref["split"])
        assert scene["split"] == ref["split"]
    assert all(len(s) == 1 for s in splits_per_image.values())  # a whole image belongs to one split
    refer = REFER(str(synref["root"]), "synref", "unc")
    by_split = {s: set(refer.getRefIds(split=s)) for s in ("train", "val", "testA", "testB", "testC", "test")}
    assert all(by_split.values())
    assert by_split["test"] == by_split["testA"] | by_split["testB"] | by_split["testC"]
    assert sum(len(by_split[s]) for s in synthetic.SPLITS) == len(synref["refs"])


def test_every_split_loads_through_refer_dataset(synref):
    from data.dataset_refer_bert import ReferDataset
    from transforms import get_transform

    args = argparse.Namespace(refer_data_root=str(synref["root"]), dataset="synref", splitBy="unc",
                              bert_tokenizer="minilm")
    for split in ("train", "val", "testA", "testB", "testC", "test"):
        dataset = ReferDataset(args, image_transforms=get_transform(32), split=split, eval_mode=split != "train")
        image, target, input_ids, attention_mask = dataset[len(dataset) - 1]
        assert image.shape == (3, 32, 32) and target.shape == (32, 32)
        assert set(torch.unique(target).tolist()) <= {0, 1} and target.sum() > 0
        assert input_ids.shape[:2] == (1, 20) and attention_mask.shape == input_ids.shape
        # Every expression keeps its [SEP] (at most 18 word pieces): nothing is cut off.
        for ids in dataset.input_ids:
            for row in ids:
                assert 102 in row.flatten().tolist()


# ---- command line and errors ------------------------------------------------------------------------
@pytest.mark.slow
def test_command_line_writes_the_layout(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "data.synthetic", "--root", str(tmp_path), "--dataset", "tiny", "--num-images", "6",
         "--img-size", "40", "--seed", "1", "--splitBy", "mine"],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "testC" in result.stdout and "generated in" in result.stdout
    assert (tmp_path / "tiny" / "refs(mine).p").is_file() and (tmp_path / "tiny" / "instances.json").is_file()
    assert len(list((tmp_path / "images" / "tiny").glob("tiny_*.png"))) == 6
    refs = pickle.loads((tmp_path / "tiny" / "refs(mine).p").read_bytes())
    assert {r["split"] for r in refs} == set(synthetic.SPLITS)


@pytest.mark.parametrize("kwargs, word", [({"num_images": 3}, "num_images"), ({"img_size": 16}, "img_size"),
                                          ({"mix": {"attribute": 1.0}}, "mix"), ({"num_held_out": 0}, "num_held_out")])
def test_bad_arguments_are_named(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        synthetic.generate(str(tmp_path), **{"num_images": 10, "img_size": 48, **kwargs})


def test_write_examples_outlines_one_ref_per_split(synref, tmp_path):
    written = synthetic.write_examples(str(synref["root"]), "synref", str(tmp_path), scale=2)
    assert [split for _, split, _ in written] == list(synthetic.SPLITS)
    for path, _, sentences in written:
        with Image.open(path) as image:
            assert image.size == (2 * SIZE, 2 * SIZE) and sentences
    assert (tmp_path / "synref_overview.png").is_file()
