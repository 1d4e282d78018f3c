"""GREFER and ReferDataset on a small gRefCOCO-layout set written by the tests.

Expected masks are built from pixel sets given here (RLE annotations) or from each polygon
decoded on its own (polygon annotations), so the union / crowd / no-target logic is checked
independently of the code under test.
"""
import copy
import json
import os

import numpy as np
import pytest

from data.dataset_refer_bert import ReferDataset
from errors import UserInputError
from refer import GREFER, REFER
from tests.grefer_set import (
    H1,
    INSTANCES,
    LEFT,
    REFS,
    RIGHT,
    W1,
    expected_mask,
    make_args,
    polygon_mask,
    write_set,
)

FIXTURE_ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture")

@pytest.fixture
def root(tmp_path):
    return write_set(tmp_path)


def test_polygons_really_overlap():
    """The fixture must exercise the union rule (REFER's == 1 rule would make a hole here)."""
    assert (polygon_mask(LEFT, H1, W1) & polygon_mask(RIGHT, H1, W1)).sum() > 0


@pytest.mark.parametrize("fmt", ["json", "pickle"])
def test_masks_are_unions_without_crowd(tmp_path, fmt):
    grefer = GREFER(write_set(tmp_path, fmt=fmt), "grefcoco", "unc")
    for r in REFS:
        got = grefer.getMask(grefer.Refs[r["ref_id"]])
        assert got["mask"].dtype == np.uint8 and set(np.unique(got["mask"])) <= {0, 1}
        np.testing.assert_array_equal(got["mask"], expected_mask(r["ref_id"]), err_msg=f"ref {r['ref_id']}")
        assert got["area"] == expected_mask(r["ref_id"]).sum()
        assert got["empty"] == (r["ann_id"] == [-1])


def test_index_members(root):
    grefer = GREFER(root, "grefcoco", "unc")
    assert grefer.IMAGE_DIR == str(root / "images" / "mscoco" / "images" / "train2014")
    assert grefer.getRefIds(split="val") == [3, 4]
    assert grefer.getRefIds(split="testB") == [6, 7]
    assert grefer.getRefIds(cat_ids=3) == []  # category 3 is not a ref category; anns are listed by category
    assert grefer.getRefIds(cat_ids=[1], split="train") == [1]  # ref 2 (no target) lists no category
    assert grefer.getRefIds(cat_ids=[1, 2], split="val") == [3, 4]
    assert grefer.getRefIds(image_ids=2) == [5, 6]
    assert [a["id"] for a in grefer.refToAnn[1]] == [10, 11] and grefer.refToAnn[2] == []
    assert [a["id"] for a in grefer.refToAnn[5]] == [13]
    assert sorted(r["ref_id"] for r in grefer.annToRef[10]) == [1, 3]
    assert grefer.getAnnIds(ref_ids=[1, 6]) == [10, 11, 13, 14]
    assert grefer.getRefBox(6) == [[4, 3, 11, 6], [1, 12, 6, 6]] and grefer.getRefBox(4) == []
    assert grefer.sentToRef[5]["ref_id"] == 4 and grefer.sentToTokens[5] == ["a", "green", "car"]


def test_pickle_wins_over_json(tmp_path):
    write_set(tmp_path, fmt="json")
    write_set(tmp_path, refs=REFS[:2], fmt="pickle")
    assert sorted(GREFER(tmp_path, "grefcoco", "unc").Refs) == [1, 2]


@pytest.mark.filterwarnings("ignore:Ref 7 has an empty mask")
@pytest.mark.parametrize("split, refs, samples, no_target", [
    ("train", [1, 2], 3, [False, True]),
    ("val", [3, 4], 4, [False, True]),
    ("testA", [5], 1, [False]),
    ("testB", [6, 7], 2, [False, False]),
])
def test_dataset_items_and_sample_counts(root, split, refs, samples, no_target):
    dataset = ReferDataset(make_args(root), split=split, eval_mode=True)
    assert dataset.generalized and dataset.ref_ids == refs and dataset.no_target == no_target
    assert sum(len(s) for s in dataset.sentences) == samples
    for index, ref_id in enumerate(refs):
        image, target, input_ids, attention_mask = dataset[index]
        np.testing.assert_array_equal(np.asarray(target), expected_mask(ref_id))
        assert input_ids.shape == attention_mask.shape == (1, 20, len(dataset.sentences[index]))


def test_no_warning_for_no_target_but_for_empty_target(root):
    dataset = ReferDataset(make_args(root), split="testB", eval_mode=True)
    with pytest.warns(UserWarning, match="Ref 7 has an empty mask"):
        dataset.original_target(1)  # only a crowd annotation: a target ref whose mask is empty
    dataset = ReferDataset(make_args(root), split="val", eval_mode=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not dataset.original_target(1).any()


def test_generated_name_detected_by_file(tmp_path):
    write_set(tmp_path, name="synref_gen")
    dataset = ReferDataset(make_args(tmp_path, "synref_gen"), split="val", eval_mode=True)
    assert dataset.generalized and isinstance(dataset.refer, GREFER)
    assert dataset.refer.IMAGE_DIR == str(tmp_path / "images" / "synref_gen")
    assert np.asarray(dataset[0][1]).shape == (H1, W1)


def test_classic_dataset_has_no_no_target(tmp_path):
    dataset = ReferDataset(make_args(FIXTURE_ROOT, "refcoco"), split="val", eval_mode=True)
    assert not dataset.generalized and type(dataset.refer) is REFER
    assert dataset.no_target == [False] * len(dataset)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"grefs\(unc\)\.json"):
        ReferDataset(make_args(tmp_path), split="val")
    write_set(tmp_path)
    (tmp_path / "grefcoco" / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances.json"):
        GREFER(tmp_path, "grefcoco", "unc")


def _edited(edit):
    refs = copy.deepcopy(REFS)
    edit(refs)
    return refs


MALFORMED_REFS = {
    "no-target mixed with an annotation": (lambda refs: refs[1].update(ann_id=[-1, 10], no_target=False), "ref 2"),
    "empty ann_id": (lambda refs: refs[0].update(ann_id=[]), "ref 1"),
    "unknown annotation": (lambda refs: refs[0].update(ann_id=[10, 999]), "ref 1"),
    "flag disagrees": (lambda refs: refs[5].update(no_target=True), "ref 6"),
    "flag says target": (lambda refs: refs[3].update(no_target=False), "ref 4"),
    "string ann_id": (lambda refs: refs[0].update(ann_id="10"), "ref 1"),
    "missing sentences": (lambda refs: refs[2].pop("sentences"), "ref 3"),
    "sentence without raw": (lambda refs: refs[2]["sentences"][0].pop("raw"), "ref 3"),
    "unknown image": (lambda refs: refs[2].update(image_id=77), "ref 3"),
    "annotation of another image": (lambda refs: refs[4].update(ann_id=[10]), "ref 5"),
    "duplicate ref id": (lambda refs: refs[3].update(ref_id=1), "ref 1"),
    "category not an integer": (lambda refs: refs[0].update(category_id=["dog"]), "ref 1"),
    "split not a string": (lambda refs: refs[0].update(split=None), "ref 1"),
    "not a dict": (lambda refs: refs.append("oops"), "entry 7"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_REFS))
def test_malformed_refs_name_file_and_ref(tmp_path, case):
    edit, name = MALFORMED_REFS[case]
    write_set(tmp_path, refs=_edited(edit))
    with pytest.raises(UserInputError) as info:
        GREFER(tmp_path, "grefcoco", "unc")
    message = str(info.value)
    assert "grefs(unc).json" in message and f"{name} " in message.replace("'", "").replace(":", " ")


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not valid JSON"),
    (json.dumps({"refs": []}), "expected a list of refs"),
])
def test_unreadable_refs_file(tmp_path, content, expected):
    write_set(tmp_path)
    (tmp_path / "grefcoco" / "grefs(unc).json").write_text(content)
    with pytest.raises(UserInputError, match=expected):
        GREFER(tmp_path, "grefcoco", "unc")


@pytest.mark.parametrize("segmentation, expected", [
    ([[1, 2, float("nan"), 4, 5, 6]], "finite"),
    ({"size": [H1 + 1, W1], "counts": [H1 * W1]}, "size"),
])
def test_bad_segmentation_names_ref_and_annotation(tmp_path, segmentation, expected):
    instances = copy.deepcopy(INSTANCES)
    instances["annotations"][1]["segmentation"] = segmentation
    grefer = GREFER(write_set(tmp_path, instances=instances), "grefcoco", "unc")
    np.testing.assert_array_equal(grefer.getMask(grefer.Refs[3])["mask"], expected_mask(3))  # ann 11 unused
    with pytest.raises(UserInputError, match=expected) as info:
        grefer.getMask(grefer.Refs[1])
    assert "Ref 1 " in str(info.value) and "annotation 11 " in str(info.value).lower()


def test_training_item_of_no_target_ref_is_empty(root):
    dataset = ReferDataset(make_args(root), split="train")
    image, target, input_ids, attention_mask = dataset[1]
    assert not np.asarray(target).any() and input_ids.shape == (1, 20)
    image, target, _, _ = dataset[0]
    assert int(np.asarray(target).sum()) == int(expected_mask(1).sum())
