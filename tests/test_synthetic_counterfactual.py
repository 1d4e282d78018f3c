"""Counterfactual expressions (noun kept, one attribute / location / relation changed, nothing
matches) and the counterfactuals(<splitBy>).json file the generator writes for them."""

import numpy as np

from data import synthetic
from data.synthetic import SHAPE_WORDS, counterfactual_form, denotation, realize, referent
from data.synthetic.language import normalize_sentence

SIZE = 64


def changed_slots(original: dict, counterfactual: dict) -> list:
    """Slots in which two forms differ, the target desc counted per attribute."""
    slots = [k for k in original if k != "target" and original[k] != counterfactual[k]]
    keys = set(original["target"]) | set(counterfactual["target"])
    return slots + [k for k in keys if original["target"].get(k) != counterfactual["target"].get(k)]


def test_file_maps_sentence_ids_to_sentences(synref):
    sentences = {s["sent_id"]: s for r in synref["refs"] for s in r["sentences"]}
    counterfactuals = synref["counterfactuals"]
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in counterfactuals.items())
    assert {int(k) for k in counterfactuals} <= set(sentences)
    assert len(counterfactuals) >= 0.7 * len(sentences)  # most sentences have one (about 90%)
    with_form = {str(e["sent_id"]) for e in synref["entries"].values() if "counterfactual" in e}
    assert with_form == set(counterfactuals)


def test_every_counterfactual_matches_nothing_and_keeps_the_noun(synref):
    held_out = {tuple(p) for p in synref["meta"]["held_out_pairs"]}
    refs = {r["ref_id"]: r for r in synref["refs"]}
    substituted = 0
    for key, raw in synref["counterfactuals"].items():
        entry = synref["entries"][int(key)]
        ref = refs[entry["ref_id"]]
        scene = synref["scenes"][ref["image_id"]]
        objects = scene["objects"]
        target = next(o for o in objects if o["ann_id"] == ref["ann_id"])
        form, negative = entry["form"], entry["counterfactual"]
        assert synthetic.evaluate(negative, objects, SIZE) == ([], [])
        if negative["type"] == "relation":  # never "the big star left of the big star"
            landmark = next(o for o in objects if all(o[k] == v for k, v in negative["landmark"].items()))
            assert any(landmark[k] != v for k, v in negative["target"].items())
        assert denotation(negative, objects, SIZE) == []
        assert negative["target"]["shape"] == target["shape"]
        slots = changed_slots(form, negative)
        assert len([s for s in slots if not (s == "shape" and "shape" not in form["target"])]) == 1, (form, negative)
        sent = f" {normalize_sentence(raw)[0]} "
        assert sent.strip() != next(s["sent"] for s in ref["sentences"] if s["sent_id"] == int(key))
        for attribute, table in (("size", synthetic.SIZE_WORDS), ("colour", synthetic.COLOUR_WORDS),
                                 ("shape", SHAPE_WORDS)):
            if attribute in negative["target"]:
                assert any(f" {w} " in sent for w in table[negative["target"][attribute]]), (raw, negative)
        if ref["split"] != "testC":
            assert (negative["target"].get("colour"), negative["target"]["shape"]) not in held_out
        original = next(s for s in ref["sentences"] if s["sent_id"] == int(key))["tokens"]
        if form["type"] == "attribute" and slots in (["size"], ["colour"]) and slots[0] in form["target"]:
            # a substituted adjective: phrased like the original, so exactly that word differs
            tokens = normalize_sentence(raw)[1]
            assert len(tokens) == len(original) and sum(a != b for a, b in zip(tokens, original)) == 1, (raw, original)
            substituted += 1
    assert substituted > 10


def obj(shape, colour, size, x, y):
    return {"shape": shape, "colour": colour, "size": size, "cx": x * 100, "cy": y * 100}


def test_counterfactual_form_by_hand():
    scene = [obj("circle", "red", "small", 0.2, 0.5), obj("square", "blue", "big", 0.5, 0.5),
             obj("circle", "red", "small", 0.8, 0.5)]
    left = {"type": "relation", "target": {"shape": "circle"}, "relation": "left", "landmark": {"shape": "square"}}
    # "right" matches the other circle, above/below/nearest are unclear: the first added word that
    # no circle has (size before colour) is the change.
    assert counterfactual_form(left, scene, 100) == {**left, "target": {"shape": "circle", "size": "big"}}
    red_one = {"type": "attribute", "target": {"colour": "blue"}}  # "the blue one": names no shape
    result = counterfactual_form(red_one, scene, 100)
    assert result["target"]["shape"] == "square" and result["target"]["colour"] != "blue"
    assert denotation(result, scene, 100) == []
    assert counterfactual_form({"type": "attribute", "target": {"shape": "circle"}}, scene, 100) is None  # ambiguous


def test_none_when_every_single_change_still_matches():
    target = obj("circle", "red", "small", 0.1, 0.1)
    scene = [target, obj("circle", "red", "big", 0.3, 0.1)]
    scene += [obj("circle", c, "small", 0.1 + 0.1 * k, 0.5) for k, c in enumerate(synthetic.COLOURS) if c != "red"]
    form = {"type": "attribute", "target": {"shape": "circle", "colour": "red", "size": "small"}}
    assert referent(form, scene, 100) == 0
    assert counterfactual_form(form, scene, 100) is None
    scene.pop()  # one colour variant gone: now there is a counterfactual, and it is that colour
    assert counterfactual_form(form, scene, 100)["target"]["colour"] == list(synthetic.COLOURS)[-1]


def test_rng_order_is_reproducible_and_exclusions_hold():
    scene = [obj("star", "red", "big", 0.3, 0.3), obj("heart", "green", "small", 0.7, 0.7)]
    form = {"type": "attribute", "target": {"shape": "star", "colour": "red"}}
    picks = [counterfactual_form(form, scene, 100, np.random.default_rng(s))["target"]["colour"] for s in range(30)]
    assert picks == [counterfactual_form(form, scene, 100, np.random.default_rng(s))["target"]["colour"]
                     for s in range(30)]
    assert len(set(picks)) > 3
    excluded = {(c, "star") for c in synthetic.COLOURS if c != "blue"}
    assert counterfactual_form(form, scene, 100, np.random.default_rng(0), exclude_pairs=excluded)["target"] == {
        "shape": "star", "colour": "blue"}


def test_phrasing_follows_the_original_sentence():
    original = {"type": "attribute", "target": {"size": "big", "colour": "cyan", "shape": "diamond"}}
    changed = {"type": "attribute", "target": {"size": "big", "colour": "orange", "shape": "diamond"}}
    for seed in range(40):
        state = np.random.default_rng(seed).bit_generator.state
        replay = [np.random.Generator(np.random.PCG64()) for _ in range(2)]
        for generator in replay:
            generator.bit_generator.state = state
        a = normalize_sentence(realize(original, replay[0]))[1]
        b = normalize_sentence(realize(changed, replay[1], like=original))[1]
        assert len(a) == len(b) and [(x, y) for x, y in zip(a, b) if x != y] in (
            [("cyan", "orange")], [("turquoise", "orange")]), (a, b)
