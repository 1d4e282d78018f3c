"""REFER index on the recorded fixture: split selection, masks, lookups, errors, safe unpickling.

Every id, size and sentence is read from the fixture files or from what the original code
recorded for them (`refer_fixture_expected.pt`), so the tests follow the fixture when it changes.
"""
import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from refer import REFER, UnsafePickleError, load_refs_pickle, object_mask

FIXTURE_ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture")
# pycocotools 2.0.x + NumPy 2 warn inside `decode`; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
EXPECTED = torch.load(os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture_expected.pt"),
                      weights_only=True)
with open(os.path.join(FIXTURE_ROOT, "refcoco", "instances.json"), encoding="utf-8") as _handle:
    INSTANCES = json.load(_handle)
REFS = load_refs_pickle(os.path.join(FIXTURE_ROOT, "refcoco", "refs(unc).p"))
ANNS = {ann["id"]: ann for ann in INSTANCES["annotations"]}
# Refs whose recorded summed mask reaches 2: polygons of one annotation overlap.
OVERLAPPING_REFS = sorted(ref_id for ref_id, peak in EXPECTED["masks_max_value"].items() if peak > 1)
# Refs with a plain 0/1 polygon mask, usable as ground truth when re-encoding annotations.
BINARY_POLYGON_REFS = [ref["ref_id"] for ref in REFS if EXPECTED["masks_max_value"].get(ref["ref_id"]) == 1
                       and isinstance(ANNS[ref["ann_id"]]["segmentation"], list)
                       and all(isinstance(part, list) for part in ANNS[ref["ann_id"]]["segmentation"])]


@pytest.fixture(scope="module")
def refer():
    return REFER(FIXTURE_ROOT, "refcoco", "unc")


def copy_fixture(tmp_path, dataset="refcoco"):
    """A writable copy of the fixture's annotations (images are not needed by REFER)."""
    root = tmp_path / "root"
    shutil.copytree(os.path.join(FIXTURE_ROOT, "refcoco"), root / dataset)
    return root


def edit_instances(root, dataset, edit):
    path = root / dataset / "instances.json"
    instances = json.loads(path.read_text())
    edit(instances)
    path.write_text(json.dumps(instances))


def decode_runs(runs, height, width):
    """An uncompressed COCO RLE (column-major runs, starting with zeros) as a (H, W) 0/1 array."""
    flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
    assert flat.size == height * width
    return flat.reshape(width, height).T


def encode_runs(mask):
    """The inverse of `decode_runs`: a leading 0-run is written when the first pixel is set."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return [0] + runs if flat[0] == 1 else runs


def image_size(image_id):
    return tuple(EXPECTED["raw_images_rgb"][image_id].shape[:2])


def expected_split(ref_split, split):
    """The original toolkit's split rule, written out for checking."""
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


@pytest.mark.parametrize("split", sorted(EXPECTED["ref_ids"]))
def test_ref_ids_per_split_match_recording(refer, split):
    assert refer.getRefIds(split=split) == EXPECTED["ref_ids"][split]


def test_split_selection_rules(refer):
    all_ids = refer.getRefIds()
    assert all_ids == [ref["ref_id"] for ref in refer.data["refs"]] == EXPECTED["ref_ids_all"]
    assert refer.getRefIds(split="testC") == []
    assert refer.getRefIds(split="testAB") == []
    # 'test' is the union of testA and testB here, in file order
    assert sorted(refer.getRefIds(split="test")) == sorted(refer.getRefIds(split="testA") + refer.getRefIds(split="testB"))


def test_masks_and_areas_match_recording(refer):
    recorded, failed = set(EXPECTED["masks"]), set(EXPECTED["getMask_errors"])
    assert not recorded & failed and recorded | failed == set(refer.Refs)
    for ref_id, expected_mask in EXPECTED["masks"].items():
        result = refer.getMask(refer.Refs[ref_id])
        assert result["mask"].dtype == np.uint8
        assert result["mask"].shape == tuple(expected_mask.shape) == image_size(refer.Refs[ref_id]["image_id"])
        np.testing.assert_array_equal(result["mask"], expected_mask.numpy(), err_msg=f"ref {ref_id}")
        assert result["mask"].max() == EXPECTED["masks_max_value"][ref_id]
        # the summed mask's pixel count is the sum of the parts' areas, overlaps counted twice
        assert result["area"] == EXPECTED["areas"][ref_id] == float(result["mask"].sum(dtype=np.int64))
        assert refer.getMaskByRef(ref_id=ref_id)["area"] == result["area"]


@pytest.mark.parametrize("ref_id", sorted(EXPECTED["getMask_errors"]))
def test_annotations_the_original_could_not_decode_give_a_binary_mask(refer, ref_id):
    """The released getMask raised on these (e.g. a crowd RLE dict); ours decodes them."""
    ref = refer.Refs[ref_id]
    segmentation = refer.refToAnn[ref_id]["segmentation"]
    result = refer.getMask(ref)
    mask = result["mask"]
    assert mask.dtype == np.uint8 and mask.shape == image_size(ref["image_id"])
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert result["area"] == float(mask.sum(dtype=np.int64))
    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], list):
        np.testing.assert_array_equal(mask, decode_runs(segmentation["counts"], *mask.shape))
    np.testing.assert_array_equal(object_mask(mask), mask)


@pytest.mark.parametrize("ref_id", OVERLAPPING_REFS)
def test_overlapping_polygons_are_summed(refer, ref_id):
    """Released rule: parts decoded one by one and added; the overlap holds 2 and counts twice."""
    ref = refer.Refs[ref_id]
    polygons = refer.refToAnn[ref_id]["segmentation"]
    assert isinstance(polygons, list) and len(polygons) >= 2
    height, width = image_size(ref["image_id"])
    parts = [mask_utils.frPyObjects([polygon], height, width)[0] for polygon in polygons]
    separately = sum(mask_utils.decode(part).astype(np.int64) for part in parts)
    result = refer.getMask(ref)
    np.testing.assert_array_equal(result["mask"], separately)
    assert result["area"] == sum(float(mask_utils.area(part)) for part in parts)
    overlap = result["mask"] == 2
    assert overlap.any()
    released, union = object_mask(result["mask"]), object_mask(result["mask"], union=True)
    assert not released[overlap].any() and union[overlap].all()
    np.testing.assert_array_equal(union, (separately > 0).astype(np.uint8))
    assert released.sum() == union.sum() - overlap.sum()


def test_object_mask_rule():
    summed = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    assert object_mask(summed).tolist() == [[0, 1, 0, 0]]
    assert object_mask(summed, union=True).tolist() == [[0, 1, 1, 1]]
    assert object_mask(summed).dtype == object_mask(summed, union=True).dtype == np.uint8


def test_lookups_are_consistent(refer):
    for ref_id, ref in refer.Refs.items():
        ann = refer.loadAnns(ref["ann_id"])[0]
        assert refer.refToAnn[ref_id] is ann and refer.annToRef[ann["id"]] is ref
        assert refer.getRefBox(ref_id) == ann["bbox"]
        assert ann["image_id"] == ref["image_id"]
        assert ref in refer.imgToRefs[ref["image_id"]] and ref in refer.catToRefs[ref["category_id"]]
        assert refer.getAnnIds(ref_ids=ref_id) == [ref["ann_id"]]
        assert refer.getImgIds(ref_ids=[ref_id]) == [ref["image_id"]]
        for sent in ref["sentences"]:
            assert refer.sentToRef[sent["sent_id"]] is ref
            assert refer.Sents[sent["sent_id"]] is sent
            assert refer.sentToTokens[sent["sent_id"]] == sent["tokens"]
    first, last = EXPECTED["ref_ids_all"][0], EXPECTED["ref_ids_all"][-1]
    assert refer.loadRefs([last, first]) == [refer.Refs[last], refer.Refs[first]]
    assert refer.loadRefs(np.int64(first)) == [refer.Refs[first]]
    for image_id in EXPECTED["raw_images_rgb"]:
        image = refer.loadImgs(np.int64(image_id))[0]
        assert (image["height"], image["width"]) == image_size(image_id)
    assert refer.getCatIds() == [cat["id"] for cat in INSTANCES["categories"]]
    # Cats maps id -> name, as in the original
    assert refer.loadCats(refer.getCatIds()[::-1]) == [cat["name"] for cat in INSTANCES["categories"]][::-1]
    assert refer.getImgIds() == [image["id"] for image in INSTANCES["images"]]
    assert {sent_id: sent["raw"] for sent_id, sent in refer.Sents.items()} == EXPECTED["sentences_raw"]


def test_ref_filters_combine(refer):
    """Every image / category / split filter and their combinations, against the original's rules."""
    image_ids = [image["id"] for image in INSTANCES["images"]]
    cat_ids = [cat["id"] for cat in INSTANCES["categories"]]
    splits = ["train", "val", "testA", "testB", "test"]
    for image_id in image_ids:
        of_image = [ref for ref in REFS if ref["image_id"] == image_id]
        assert refer.getRefIds(image_ids=image_id) == [ref["ref_id"] for ref in of_image]
        for cat_id in cat_ids:
            assert refer.getRefIds(image_ids=[image_id], cat_ids=cat_id) == [
                ref["ref_id"] for ref in of_image if ref["category_id"] == cat_id]
    # several images: refs image by image, in the order the images are asked for
    reverse = image_ids[::-1]
    assert refer.getRefIds(image_ids=reverse) == [ref["ref_id"] for i in reverse for ref in REFS if ref["image_id"] == i]
    some_refs = EXPECTED["ref_ids_all"][::2]
    for split in splits:
        for cat_id in cat_ids:
            assert refer.getRefIds(cat_ids=[cat_id], split=split) == [
                ref["ref_id"] for ref in REFS if ref["category_id"] == cat_id and expected_split(ref["split"], split)]
        assert refer.getRefIds(ref_ids=some_refs, split=split) == [
            ref["ref_id"] for ref in REFS if ref["ref_id"] in some_refs and expected_split(ref["split"], split)]
    assert refer.getImgIds(ref_ids=EXPECTED["ref_ids_all"]) == list(dict.fromkeys(ref["image_id"] for ref in REFS))


def test_annotation_filters_combine(refer):
    cat_ids = [cat["id"] for cat in INSTANCES["categories"]]
    for image in INSTANCES["images"]:
        of_image = [ann for ann in INSTANCES["annotations"] if ann["image_id"] == image["id"]]
        assert refer.getAnnIds(image_ids=[image["id"]]) == [ann["id"] for ann in of_image]
        for cat_id in cat_ids:
            assert refer.getAnnIds(image_ids=[image["id"]], cat_ids=[cat_id]) == [
                ann["id"] for ann in of_image if ann["category_id"] == cat_id]
        for ref in REFS:
            assert refer.getAnnIds(image_ids=[image["id"]], ref_ids=[ref["ref_id"]]) == [
                ann["id"] for ann in of_image if ann["id"] == ref["ann_id"]]
    assert refer.getAnnIds() == [ann["id"] for ann in INSTANCES["annotations"]]


def test_image_dirs(refer, tmp_path):
    assert refer.IMAGE_DIR == os.path.join(os.path.abspath(FIXTURE_ROOT), "images", "mscoco", "images", "train2014")
    root = copy_fixture(tmp_path, dataset="mydata")
    os.rename(root / "mydata" / "refs(unc).p", root / "mydata" / "refs(custom).p")
    custom = REFER(str(root), "mydata", "custom")
    assert custom.IMAGE_DIR == os.path.join(str(root), "images", "mydata")
    assert custom.DATA_DIR == os.path.join(str(root), "mydata")
    assert custom.getRefIds(split="val") == EXPECTED["ref_ids"]["val"]
    with pytest.raises(ValueError, match=r"splitBy 'unc'.*custom"):
        REFER(str(root), "mydata", "unc")


def test_unknown_values_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"splitBy 'umd'.*refcoco'.*unc, google"):
        REFER(FIXTURE_ROOT, "refcoco", "umd")
    with pytest.raises(ValueError, match=r"Unknown dataset 'refcocoX'.*refcoco"):
        REFER(FIXTURE_ROOT, "refcocoX", "unc")
    with pytest.raises(ValueError, match=r"Unknown split 'tset'"):
        REFER(FIXTURE_ROOT, "refcoco", "unc").getRefIds(split="tset")
    with pytest.raises(ValueError, match=r"Unknown split 'Val'"):
        REFER(FIXTURE_ROOT, "refcoco", "unc").getRefIds(image_ids=[-1], split="Val")


def test_missing_files_name_the_path(tmp_path):
    missing_root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*Data setup"):
        REFER(str(missing_root), "refcoco", "unc")
    root = copy_fixture(tmp_path)
    os.remove(root / "refcoco" / "instances.json")
    with pytest.raises(FileNotFoundError, match=r"instances\.json.*Data setup"):
        REFER(str(root), "refcoco", "unc")
    with pytest.raises(FileNotFoundError, match=r"refs\(google\)\.p.*lichengunc/refer"):
        REFER(str(root), "refcoco", "google")


class _CreatesFile:
    """Unpickling this calls `open(path, 'w')`: a stand-in for an arbitrary code payload."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_hostile_refs_pickle_is_refused(tmp_path):
    root = copy_fixture(tmp_path)
    victim = tmp_path / "pwned.txt"
    refs_path = root / "refcoco" / "refs(unc).p"
    refs = load_refs_pickle(refs_path)
    refs[0]["sentences"][0]["raw"] = _CreatesFile(str(victim))
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        refs_path.write_bytes(pickle.dumps(refs, protocol=protocol))
        with pytest.raises(UnsafePickleError, match=r"refs\(unc\)\.p.*global .io\.open"):
            REFER(str(root), "refcoco", "unc")
        assert not victim.exists()
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


def test_plain_builtin_containers_are_admitted(tmp_path):
    path = tmp_path / "refs(x).p"
    payload = [{"ref_id": 1, "tags": {"a", "b"}, "frozen": frozenset([1]), "t": (1.5, None, True)}]
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
        assert load_refs_pickle(path) == payload


def test_corrupt_refs_pickle_names_file(tmp_path):
    root = copy_fixture(tmp_path)
    refs_path = root / "refcoco" / "refs(unc).p"
    refs_path.write_bytes(refs_path.read_bytes()[:200])
    with pytest.raises(pickle.UnpicklingError, match=r"refs\(unc\)\.p.*truncated or corrupt"):
        REFER(str(root), "refcoco", "unc")
    refs_path.write_bytes(b"not a pickle at all")
    with pytest.raises(pickle.UnpicklingError, match=r"refs\(unc\)\.p"):
        REFER(str(root), "refcoco", "unc")


def _py2_pickle(obj, text_encoding):
    """Protocol-2 bytes as Python 2 writes them, with `str` as raw byte strings (opcode 'U')."""
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2_pickle(k, text_encoding) + _py2_pickle(v, text_encoding) for k, v in obj.items()) + b"u"
    if isinstance(obj, list):
        return b"](" + b"".join(_py2_pickle(v, text_encoding) for v in obj) + b"e"
    if isinstance(obj, str):
        raw = obj.encode(text_encoding)
        return b"U" + bytes([len(raw)]) + raw
    if isinstance(obj, bool) or obj is None:
        raise TypeError(obj)
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    raise TypeError(obj)


@pytest.mark.parametrize("text_encoding", ["utf-8", "latin1"])
def test_python2_refs_pickle(tmp_path, text_encoding):
    root = copy_fixture(tmp_path)
    refs_path = root / "refcoco" / "refs(unc).p"
    refs = load_refs_pickle(refs_path)
    refs_path.write_bytes(b"\x80\x02" + _py2_pickle(refs, text_encoding) + b".")
    loaded = REFER(str(root), "refcoco", "unc")
    assert loaded.data["refs"] == refs
    raws = {sent_id: sent["raw"] for sent_id, sent in loaded.Sents.items()}
    assert raws == EXPECTED["sentences_raw"]
    assert any(not raw.isascii() for raw in raws.values()), "the fixture should hold a non-ASCII sentence"


def test_rle_annotations_decode(tmp_path):
    """Polygon annotations re-encoded as the RLE forms COCO files use give the same masks."""
    assert len(BINARY_POLYGON_REFS) >= 3
    dict_ref, crowd_ref, listed_ref = BINARY_POLYGON_REFS[:3]
    compressed = {}
    for ref_id in (dict_ref, listed_ref):
        compressed[ref_id] = mask_utils.encode(np.asfortranarray(EXPECTED["masks"][ref_id].numpy()))
        compressed[ref_id]["counts"] = compressed[ref_id]["counts"].decode("ascii")  # as stored in JSON
    crowd_mask = EXPECTED["masks"][crowd_ref].numpy().copy()
    crowd_mask[0, 0] = 1  # the runs then start with an empty 0-run
    uncompressed = {"size": list(crowd_mask.shape), "counts": encode_runs(crowd_mask)}
    ann_of = {ref["ref_id"]: ref["ann_id"] for ref in REFS}

    def to_rle(instances):
        for ann in instances["annotations"]:
            if ann["id"] == ann_of[dict_ref]:
                ann["segmentation"] = compressed[dict_ref]
            elif ann["id"] == ann_of[listed_ref]:
                ann["segmentation"] = [compressed[listed_ref]]
            elif ann["id"] == ann_of[crowd_ref]:
                ann["segmentation"] = uncompressed
                ann["iscrowd"] = 1

    root = copy_fixture(tmp_path)
    edit_instances(root, "refcoco", to_rle)
    rle_refer = REFER(str(root), "refcoco", "unc")
    expected = {dict_ref: EXPECTED["masks"][dict_ref].numpy(), listed_ref: EXPECTED["masks"][listed_ref].numpy(),
                crowd_ref: crowd_mask}
    for ref_id, expected_mask in expected.items():
        result = rle_refer.getMask(rle_refer.Refs[ref_id])
        np.testing.assert_array_equal(result["mask"], expected_mask, err_msg=f"ref {ref_id}")
        assert result["area"] == float(expected_mask.sum())


def test_empty_segmentation_gives_empty_mask(tmp_path):
    ref = REFS[0]
    root = copy_fixture(tmp_path)
    edit_instances(root, "refcoco", lambda inst: next(
        ann for ann in inst["annotations"] if ann["id"] == ref["ann_id"]).update(segmentation=[]))
    empty = REFER(str(root), "refcoco", "unc")
    result = empty.getMask(empty.Refs[ref["ref_id"]])
    assert result["mask"].shape == image_size(ref["image_id"])
    assert result["mask"].sum() == 0 and result["area"] == 0.0


def test_ref_pointing_to_missing_annotation(tmp_path):
    ref = REFS[-1]
    root = copy_fixture(tmp_path)
    edit_instances(root, "refcoco", lambda inst: inst.update(
        annotations=[ann for ann in inst["annotations"] if ann["id"] != ref["ann_id"]]))
    with pytest.raises(ValueError, match=rf"Ref {ref['ref_id']} .*annotation {ref['ann_id']}"):
        REFER(str(root), "refcoco", "unc")


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "is not valid JSON"),
    ('{"images": [], "annotations": 5}', "is not a COCO-style instances file"),
    ('[1, 2]', "is not a COCO-style instances file"),
    ('{"images": [{"idx": 1}], "annotations": [], "categories": []}', "Malformed entry"),
])
def test_malformed_instances_file_is_named(tmp_path, content, fragment):
    root = copy_fixture(tmp_path)
    path = root / "refcoco" / "instances.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=fragment) as err:
        REFER(str(root), "refcoco", "unc")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("segmentation, fragment", [
    ([[1, 2, 3, 4, 5, 6, 7]], "even number of finite coordinates"),
    ([[float("nan"), 2, 3, 4, 5, 6]], "NaN/inf"),  # pycocotools would crash the process on this
    ([[1, 2, "a", 4, 5, 6]], "not a list of numbers"),
    ("xx", "must be a list of polygons or an RLE dict"),
    ({"counts": "zz", "size": None}, "needs 'size'"),
    ({"counts": [5, 5], "SIZE": True}, "needs 'size'"),
    ({"counts": [5, 5], "size": "IMAGE"}, "does not cover"),  # runs overflowing the image: memory corruption in C
    ({"counts": "9", "size": "IMAGE"}, "does not cover"),
    ({"counts": "0]", "size": "IMAGE"}, "cannot be read"),
])
def test_hostile_segmentations_are_refused_naming_the_annotation(tmp_path, segmentation, fragment):
    root = copy_fixture(tmp_path)
    refer = REFER(str(root), "refcoco", "unc")
    ref = refer.Refs[BINARY_POLYGON_REFS[0]]
    ann = refer.refToAnn[ref["ref_id"]]
    image = refer.Imgs[ref["image_id"]]
    if isinstance(segmentation, dict) and segmentation.get("size") == "IMAGE":
        segmentation = {**segmentation, "size": [image["height"], image["width"]]}
    ann["segmentation"] = segmentation
    with pytest.raises(ValueError, match=fragment) as err:
        refer.getMask(ref)
    assert f"annotation {ann['id']}" in str(err.value)


def test_compressed_rle_counts_are_read_exactly(refer):
    from refer.refer import _compressed_rle_counts

    rng = np.random.default_rng(0)
    mask = np.asfortranarray((rng.random((37, 53)) > 0.6).astype(np.uint8))
    rle = mask_utils.encode(mask)
    runs = _compressed_rle_counts(rle["counts"])
    assert sum(runs) == mask.size
    decoded = np.repeat(np.arange(len(runs)) % 2, runs).reshape(53, 37).T  # column-major runs
    np.testing.assert_array_equal(decoded, mask)
