"""Generalized SynRef (gRefCOCO layout): exact ground truth for no-target, multi-target and
single-target expressions, shares, split and held-out rules, determinism, command line."""
import json
import os
import re
import subprocess
import sys

import pytest

from data import synthetic
from data.synthetic import SHAPE_WORDS, denotation, referent
from data.synthetic.generalized import absent_shape_form

SIZE = 64
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gset(module_tmp):
    """A 40-image generalized set at 64 px with its grefs / instances / sidecar loaded."""
    root = module_tmp("gsynref")
    summary = synthetic.generate_generalized(str(root), dataset="gsyn", num_images=40, img_size=SIZE, seed=0)
    data_dir = root / "gsyn"
    meta = json.loads((data_dir / "synthetic_scenes.json").read_text())
    return {
        "root": root, "summary": summary, "refs": json.loads((data_dir / "grefs(unc).json").read_text()),
        "instances": json.loads((data_dir / "instances.json").read_text()), "meta": meta,
        "scenes": {scene["image_id"]: scene for scene in meta["scenes"]},
        "entries": {e["sent_id"]: e for e in meta["expressions"]},
    }


def indices(scene, ann_ids):
    by_ann = {obj["ann_id"]: i for i, obj in enumerate(scene["objects"])}
    return sorted(by_ann[a] for a in ann_ids if a != -1)


def names(word, sentence):
    """Whether `word` (or its plural) occurs as whole words in the normalised sentence."""
    return re.search(rf"\b{re.escape(word)}(s|es)?\b", sentence) is not None


# ---- layout -------------------------------------------------------------------------------------
def test_grefcoco_layout_fields(gset):
    refs, instances = gset["refs"], gset["instances"]
    assert set(instances) == {"images", "annotations", "categories"}
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {im["id"]: im for im in instances["images"]}
    image_dir = gset["root"] / "images" / "gsyn"
    for ref in refs:
        assert set(ref) == {"ref_id", "image_id", "split", "file_name", "sent_ids", "sentences", "ann_id",
                            "category_id", "no_target"}
        assert isinstance(ref["ann_id"], list) and isinstance(ref["category_id"], list)
        assert len(ref["ann_id"]) == len(ref["category_id"]) >= 1
        assert ref["no_target"] == (ref["ann_id"] == [-1]) == (ref["category_id"] == [-1])
        if not ref["no_target"]:
            assert len(set(ref["ann_id"])) == len(ref["ann_id"])
            assert all(anns[a]["image_id"] == ref["image_id"] for a in ref["ann_id"])
            assert [anns[a]["category_id"] for a in ref["ann_id"]] == ref["category_id"]
        assert (image_dir / images[ref["image_id"]]["file_name"]).is_file()
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for sent in ref["sentences"]:
            assert set(sent) == {"sent_id", "raw", "sent", "tokens"}
            assert sent["tokens"] == sent["sent"].split() and sent["sent"] == sent["sent"].lower()
    assert [r["ref_id"] for r in refs] == list(range(len(refs)))
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(set(sent_ids)) == len(sent_ids) == len(gset["entries"])
    assert not (gset["root"] / "gsyn" / "refs(unc).p").exists()


def test_grefer_masks_are_the_union_of_the_painted_targets(gset):
    import numpy as np

    from refer.grefer import GREFER

    grefer = GREFER(str(gset["root"]), dataset="gsyn", splitBy="unc")
    assert len(grefer.getRefIds()) == len(gset["refs"])
    for ref in gset["refs"][:60]:
        scene = gset["scenes"][ref["image_id"]]
        _, visible = synthetic.render_scene(scene)
        expected = np.zeros((SIZE, SIZE), dtype=bool)
        for i in indices(scene, ref["ann_id"]):
            expected |= visible[i]
        assert np.array_equal(grefer.getMask(grefer.loadRefs(ref["ref_id"])[0])["mask"].astype(bool), expected)


# ---- ground truth ---------------------------------------------------------------------------------
def test_every_expression_denotes_exactly_its_targets(gset):
    kinds = set()
    for ref in gset["refs"]:
        scene = gset["scenes"][ref["image_id"]]
        targets = indices(scene, ref["ann_id"])
        assert 1 <= len(ref["sentences"]) <= 3 and len({s["sent"] for s in ref["sentences"]}) == len(ref["sentences"])
        for sent in ref["sentences"]:
            entry = gset["entries"][sent["sent_id"]]
            assert entry["ref_id"] == ref["ref_id"]
            form = entry["form"]
            assert denotation(form, scene["objects"], scene["img_size"]) == targets, (sent["raw"], form)
            kind = "none" if not targets else "multi" if len(targets) > 1 else "single"
            assert entry["kind"] == kind and ("count" in form) == (kind == "multi")
            if kind == "single":
                assert referent(form, scene["objects"], scene["img_size"]) == targets[0]
            kinds.add(kind)
            for key, table in (("size", synthetic.SIZE_WORDS), ("colour", synthetic.COLOUR_WORDS),
                               ("shape", SHAPE_WORDS)):
                if key in form["target"]:
                    assert any(names(w, sent["sent"]) for w in table[form["target"][key]]), (sent["raw"], form)
    assert kinds == {"none", "multi", "single"}


def test_no_target_expressions_match_nothing_and_vary(gset):
    derived = set()
    for entry in gset["entries"].values():
        if entry["kind"] != "none":
            continue
        scene = gset["scenes"][gset["refs"][entry["ref_id"]]["image_id"]]
        objects, form = scene["objects"], entry["form"]
        assert synthetic.evaluate(form, objects, scene["img_size"]) == ([], [])
        source = next(o for o in objects if o["ann_id"] == entry["source_ann_id"])
        present_shapes = {o["shape"] for o in objects}
        if entry["derived"] == "counterfactual":  # the noun of an object that is there, one thing changed
            assert form["target"]["shape"] == source["shape"]
        else:
            assert entry["derived"] == "absent_shape" and form["target"]["shape"] not in present_shapes
        derived.add(entry["derived"])
    assert derived == {"counterfactual", "absent_shape"}


def test_multi_target_expressions_match_two_or_more(gset):
    multi = [r for r in gset["refs"] if len(r["ann_id"]) > 1]
    assert multi
    for ref in multi:
        scene = gset["scenes"][ref["image_id"]]
        for sent in ref["sentences"]:
            form = gset["entries"][sent["sent_id"]]["form"]
            found = denotation(form, scene["objects"], scene["img_size"])
            assert len(found) >= 2 and found == indices(scene, ref["ann_id"])
            if form["count"] != "all":
                assert form["count"] == len(found)


def test_default_shares_and_summary(gset):
    refs, summary = gset["refs"], gset["summary"]
    none = sum(r["no_target"] for r in refs) / len(refs)
    multi = sum(len(r["ann_id"]) > 1 for r in refs) / len(refs)
    assert abs(none - 0.2) < 0.05 and abs(multi - 0.2) < 0.05, (none, multi)
    assert summary["ref_kinds"] == {"single": len(refs) - round(none * len(refs)) - round(multi * len(refs)),
                                    "multi": round(multi * len(refs)), "none": round(none * len(refs))}
    assert summary["refs"] == len(refs) and summary["sentences"] == len(gset["entries"])


def test_split_and_held_out_rules(gset):
    held_out = {tuple(p) for p in gset["meta"]["held_out_pairs"]}
    splits_per_image = {}
    for ref in gset["refs"]:
        scene = gset["scenes"][ref["image_id"]]
        objects = scene["objects"]
        involved = [objects[i] for i in indices(scene, ref["ann_id"])]
        entries = [gset["entries"][s["sent_id"]] for s in ref["sentences"]]
        if ref["no_target"]:
            involved = [o for o in objects if o["ann_id"] == entries[0]["source_ann_id"]]
        touches_held_out = any((o["colour"], o["shape"]) in held_out for o in involved)
        if ref["split"] == "testC":
            assert touches_held_out
        else:
            assert not touches_held_out
            assert all((e["form"]["target"].get("colour"), e["form"]["target"].get("shape")) not in held_out
                       for e in entries)
        types = {e["form"]["type"] for e in entries}
        if ref["split"] == "testA":
            assert types == {"attribute"}
        if ref["split"] == "testB":
            assert "attribute" not in types
        splits_per_image.setdefault(ref["image_id"], set()).add(ref["split"])
    assert all(len(s) == 1 for s in splits_per_image.values())
    assert {r["split"] for r in gset["refs"]} == set(synthetic.SPLITS)


# ---- hand-made scenes ------------------------------------------------------------------------------
def obj(shape, colour, size, x, y, ann_id=0):
    return {"shape": shape, "colour": colour, "size": size, "cx": x * 100, "cy": y * 100, "ann_id": ann_id}


def test_plural_and_no_target_semantics_by_hand():
    scene = [obj("circle", "red", "small", 0.2, 0.5), obj("circle", "red", "big", 0.8, 0.5),
             obj("circle", "red", "big", 0.5, 0.9), obj("square", "blue", "big", 0.5, 0.2)]
    red = {"type": "attribute", "target": {"colour": "red"}}
    assert denotation({**red, "count": "all"}, scene, 100) == [0, 1, 2]
    assert denotation({**red, "count": 3}, scene, 100) == [0, 1, 2]
    assert denotation({**red, "count": 2}, scene, 100) is None  # "both red shapes" when there are three
    assert denotation({**red, "target": {"colour": "red", "size": "big"}, "count": 2}, scene, 100) == [1, 2]
    assert denotation({**red, "target": {"colour": "blue"}, "count": "all"}, scene, 100) is None  # only one
    assert denotation(red, scene, 100) is None  # singular "the red shape": ambiguous, not multi-target
    assert denotation({**red, "target": {"colour": "green"}}, scene, 100) == []  # no target
    below = {"type": "relation", "target": {"shape": "circle"}, "relation": "below",
             "landmark": {"shape": "square"}, "count": "all"}
    assert denotation(below, scene, 100) == [0, 1, 2]
    scene[0]["cy"] = 25  # 5% below the square: unclear, so the plural is not well defined
    assert denotation(below, scene, 100) is None
    above = {"type": "relation", "target": {"shape": "circle"}, "relation": "above", "landmark": {"shape": "square"}}
    scene[0]["cy"] = 50
    assert denotation(above, scene, 100) == []  # the noun exists, the relation holds for none
    assert denotation({**above, "landmark": {"shape": "star"}}, scene, 100) is None  # no landmark at all
    with pytest.raises(ValueError, match="count"):
        denotation({**red, "count": 1}, scene, 100)


def test_absent_shape_form_names_a_shape_not_in_the_scene():
    import numpy as np

    scene = [obj(s, "red", "big", 0.1 + 0.1 * k, 0.5) for k, s in enumerate(synthetic.SHAPES[:7])]
    form = {"type": "attribute", "target": {"colour": "red", "shape": "circle", "size": "big"}}
    result = absent_shape_form(form, scene, 100, np.random.default_rng(0))
    assert result["target"] == {"colour": "red", "size": "big", "shape": synthetic.SHAPES[7]}
    scene.append(obj(synthetic.SHAPES[7], "red", "big", 0.9, 0.9))
    assert absent_shape_form(form, scene, 100, np.random.default_rng(0)) is None  # every shape is there


# ---- determinism and command line ---------------------------------------------------------------------
def files(root):
    out = {}
    for dirpath, _, names_ in os.walk(root):
        for name in names_:
            with open(os.path.join(dirpath, name), "rb") as handle:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = handle.read()
    return out


def test_same_seed_same_bytes(tmp_path):
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        synthetic.generate_generalized(str(tmp_path / name), num_images=8, img_size=40, seed=seed)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert a["gsynref/grefs(unc).json"] != c["gsynref/grefs(unc).json"]


@pytest.mark.slow
def test_command_line_generalized(tmp_path):
    def run(*extra):
        return subprocess.run([sys.executable, "-m", "data.synthetic", "--root", str(tmp_path), "--num-images", "12",
                               "--img-size", "40", "--seed", "2", *extra], cwd=REPO, capture_output=True, text=True,
                              timeout=120)

    result = run("--dataset", "g", "--generalized", "--no-target-share", "0.5", "--multi-target-share", "0")
    assert result.returncode == 0, result.stderr
    assert "targets: single" in result.stdout
    refs = json.loads((tmp_path / "g" / "grefs(unc).json").read_text())
    assert not any(len(r["ann_id"]) > 1 for r in refs)
    assert abs(sum(r["no_target"] for r in refs) / len(refs) - 0.5) < 0.1
    assert len(list((tmp_path / "images" / "g").glob("g_*.png"))) == 12
    result = run("--generalized")  # default folder name: never the normal set's
    assert result.returncode == 0 and (tmp_path / "gsynref" / "grefs(unc).json").is_file()
    result = run("--dataset", "n", "--no-target-share", "0.3")
    assert result.returncode == 2 and "--generalized" in result.stderr
    result = run("--dataset", "g")  # a normal set into a generalized folder would mix two layouts
    assert result.returncode == 1 and result.stderr.startswith("error:") and "grefs(unc).json" in result.stderr
    result = run("--dataset", "h", "--generalized", "--no-target-share", "0.7", "--multi-target-share", "0.5")
    assert result.returncode == 1 and "no_target_share" in result.stderr
