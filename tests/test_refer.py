"""REFER index on the recorded fixture: split selection, masks, lookups, errors, safe unpickling."""
import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from refer import REFER, UnsafePickleError, load_refs_pickle

FIXTURE_ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture")
# pycocotools 2.0.x + NumPy 2 warn inside `decode`; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
EXPECTED = torch.load(os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture_expected.pt"),
                      weights_only=True)


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


@pytest.mark.parametrize("split", ["train", "val", "testA", "testB", "test"])
def test_ref_ids_per_split_match_recording(refer, split):
    assert refer.getRefIds(split=split) == EXPECTED["ref_ids"][split]


def test_split_selection_rules(refer):
    all_ids = refer.getRefIds()
    assert all_ids == [ref["ref_id"] for ref in refer.data["refs"]]
    assert refer.getRefIds(split="testC") == []
    assert refer.getRefIds(split="testAB") == []
    # 'test' is the union of testA and testB here, in file order
    assert sorted(refer.getRefIds(split="test")) == sorted(refer.getRefIds(split="testA") + refer.getRefIds(split="testB"))


def test_masks_and_areas_match_recording(refer):
    assert set(EXPECTED["masks"]) == set(refer.Refs)
    for ref_id, expected_mask in EXPECTED["masks"].items():
        result = refer.getMask(refer.Refs[ref_id])
        assert result["mask"].dtype == np.uint8
        assert result["mask"].shape == tuple(expected_mask.shape)
        np.testing.assert_array_equal(result["mask"], expected_mask.numpy(), err_msg=f"ref {ref_id}")
        assert result["area"] == EXPECTED["areas"][ref_id] == float(result["mask"].sum())
        assert refer.getMaskByRef(ref_id=ref_id)["area"] == result["area"]


def test_multi_part_object_mask_is_union(refer):
    ref = refer.Refs[4]  # two separate rectangles: 60x40 + 50x30
    assert len(refer.refToAnn[4]["segmentation"]) == 2
    mask = refer.getMask(ref)["mask"]
    assert mask.max() == 1 and mask.sum() == 2400 + 1500
    assert mask[80, 40] == 1 and mask[85, 100] == 1 and mask[85, 75] == 0


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
    assert refer.loadRefs([2, 9]) == [refer.Refs[2], refer.Refs[9]]
    assert refer.loadRefs(np.int64(2)) == [refer.Refs[2]]
    assert refer.loadImgs(98305)[0]["height"] == 48
    assert refer.getCatIds() == [1, 3, 44, 52]
    assert refer.loadCats([1, 44]) == ["person", "bottle"]  # Cats maps id -> name, as in the original
    assert sorted(refer.getImgIds()) == sorted(img["id"] for img in refer.data["images"])
    assert len(refer.Sents) == 17


def test_filters_combine(refer):
    assert refer.getRefIds(image_ids=[98305]) == [2, 3]
    assert refer.getRefIds(image_ids=[98305, 98304]) == [2, 3, 1, 0]
    assert refer.getRefIds(image_ids=98305, cat_ids=[44]) == [3]
    assert refer.getRefIds(cat_ids=3, split="testB") == [11]
    assert refer.getRefIds(ref_ids=[0, 5, 6], split="test") == [6, 5]
    assert refer.getAnnIds(image_ids=[98308]) == [1009, 1010, 1011]
    assert refer.getAnnIds(image_ids=[98308], cat_ids=[44]) == [1009, 1010]
    assert refer.getAnnIds(image_ids=[98308], ref_ids=[9]) == [1010]
    assert refer.getImgIds(ref_ids=[2, 3, 9]) == [98305, 98308]


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
    assert loaded.Sents[8]["raw"] == "café person"


def test_rle_annotations_decode(tmp_path):
    root = copy_fixture(tmp_path)
    compressed = mask_utils.encode(np.asfortranarray(EXPECTED["masks"][2].numpy()))
    compressed["counts"] = compressed["counts"].decode("ascii")  # as stored in JSON
    mask3 = EXPECTED["masks"][3].numpy()
    flat = mask3.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    uncompressed = {"size": list(mask3.shape), "counts": runs}

    def to_rle(instances):
        for ann in instances["annotations"]:
            if ann["id"] == 1003:
                ann["segmentation"] = compressed
            elif ann["id"] == 1004:
                ann["segmentation"] = uncompressed
                ann["iscrowd"] = 1

    edit_instances(root, "refcoco", to_rle)
    rle_refer = REFER(str(root), "refcoco", "unc")
    for ref_id in (2, 3):
        result = rle_refer.getMask(rle_refer.Refs[ref_id])
        np.testing.assert_array_equal(result["mask"], EXPECTED["masks"][ref_id].numpy())
        assert result["area"] == EXPECTED["areas"][ref_id]


def test_empty_segmentation_gives_empty_mask(tmp_path):
    root = copy_fixture(tmp_path)
    edit_instances(root, "refcoco", lambda inst: inst["annotations"][0].update(segmentation=[]))
    empty = REFER(str(root), "refcoco", "unc")
    result = empty.getMask(empty.Refs[0])
    assert result["mask"].shape == (64, 96) and result["mask"].sum() == 0 and result["area"] == 0.0


def test_ref_pointing_to_missing_annotation(tmp_path):
    root = copy_fixture(tmp_path)
    edit_instances(root, "refcoco", lambda inst: inst["annotations"].pop(0))
    with pytest.raises(ValueError, match=r"Ref 0 .*annotation 1001"):
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
    ref = refer.Refs[1]
    ann = refer.refToAnn[1]
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
