"""Hostile REFER annotations (issue 19, Build 1): each ends in a `UserInputError` naming the file and
the entry, before pycocotools or the file system sees the bad value. Every hostile file is a
small edit of a copy of the recorded fixture, made here."""
import argparse
import json
import os
import pickle
import shutil

import pytest

from data.dataset_refer_bert import ReferDataset
from errors import UserInputError
from refer import REFER, load_refs_pickle
from refer.refer import MAX_IMAGE_SIDE, POLYGON_MARGIN

FIXTURE_ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def root(tmp_path):
    """A writable copy of the fixture (annotations and images)."""
    copy = tmp_path / "root"
    shutil.copytree(FIXTURE_ROOT, copy)
    return copy


def instances_path(root):
    return root / "refcoco" / "instances.json"


def refs_path(root):
    return root / "refcoco" / "refs(unc).p"


def edit_instances(root, edit):
    instances = json.loads(instances_path(root).read_text())
    edit(instances)
    instances_path(root).write_text(json.dumps(instances))


def edit_refs(root, edit):
    refs = load_refs_pickle(str(refs_path(root)))
    edit(refs)
    with open(refs_path(root), "wb") as handle:
        pickle.dump(refs, handle)


def refused(root, *fragments):
    with pytest.raises(UserInputError) as err:
        REFER(str(root), "refcoco", "unc")
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)
    return str(err.value)


def test_duplicate_ref_id_is_refused(root):
    def duplicate(refs):
        refs[1]["ref_id"] = refs[0]["ref_id"]

    edit_refs(root, duplicate)
    first = load_refs_pickle(str(refs_path(root)))[0]["ref_id"]
    refused(root, str(refs_path(root)), f"ref_id {first} appears twice")


def test_ref_image_missing_from_instances_is_refused(root):
    edit_refs(root, lambda refs: refs[0].update(image_id=987654321))
    refused(root, str(refs_path(root)), "image_id 987654321")


def test_annotation_of_another_image_is_refused(root):
    instances = json.loads(instances_path(root).read_text())
    refs = load_refs_pickle(str(refs_path(root)))
    ref = refs[0]
    foreign = next(ann for ann in instances["annotations"] if ann["image_id"] != ref["image_id"])

    def swap(refs):
        refs[0]["ann_id"] = foreign["id"]

    edit_refs(root, swap)
    refused(root, f"annotation {foreign['id']} belongs to image {foreign['image_id']}", str(refs_path(root)))


@pytest.mark.parametrize("sentence", [{"sent_id": 1}, {"sent_id": 1, "raw": 5}, {"sent_id": 1, "raw": None},
                                      {"sent_id": "x", "raw": "a dog"}, "a dog"])
def test_sentence_without_string_raw_is_refused(root, sentence):
    edit_refs(root, lambda refs: refs[0].update(sentences=[sentence]))
    refused(root, str(refs_path(root)), "sentences must be a list")


@pytest.mark.parametrize("key", ["height", "width"])
@pytest.mark.parametrize("value", [None, 0, -48, "48", 48.0, True, MAX_IMAGE_SIDE + 1, 200000])
def test_bad_image_size_is_refused(root, key, value):
    def edit(instances):
        if value is None:
            del instances["images"][0][key]
        else:
            instances["images"][0][key] = value

    edit_instances(root, edit)
    image_id = json.loads(instances_path(root).read_text())["images"][0]["id"]
    refused(root, f"Image {image_id}", str(instances_path(root)), f"{key} {value!r}", f"1 to {MAX_IMAGE_SIDE}")


@pytest.mark.parametrize("name", ["/etc/passwd", "../../secret.jpg", "a/../../b.jpg", "..", "", None,
                                  "C:/x.jpg", "\\\\server\\x.jpg"])
def test_file_name_outside_image_folder_is_refused(root, name):
    edit_instances(root, lambda instances: instances["images"][0].update(file_name=name))
    refused(root, str(instances_path(root)), "file_name")


def test_file_name_in_a_subfolder_is_accepted(root):
    edit_instances(root, lambda instances: instances["images"][0].update(file_name="sub/dir/x.jpg"))
    assert REFER(str(root), "refcoco", "unc").Imgs  # built without error


def polygon_ref(refer):
    """A ref whose annotation is a list of polygons, with its image size."""
    for ref in refer.data["refs"]:
        segmentation = refer.refToAnn[ref["ref_id"]]["segmentation"]
        if isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation):
            image = refer.Imgs[ref["image_id"]]
            return ref, image["height"], image["width"]
    raise AssertionError("the fixture has no polygon annotation")


@pytest.mark.parametrize("value", [1e9, 1e18, -1e9, 2**31, "far", "below"])
@pytest.mark.parametrize("axis", [0, 1])
def test_polygon_far_outside_the_image_is_refused(root, value, axis):
    refer = REFER(str(root), "refcoco", "unc")
    ref, height, width = polygon_ref(refer)
    side = width if axis == 0 else height
    value = {"far": side + POLYGON_MARGIN + 1, "below": -POLYGON_MARGIN - 0.5}.get(value, value)
    ann = refer.refToAnn[ref["ref_id"]]
    polygon = [1.0, 1.0, 5.0, 1.0, 5.0, 5.0]
    polygon[axis] = value
    ann["segmentation"] = [polygon]
    with pytest.raises(UserInputError) as err:
        refer.getMask(ref)
    assert f"annotation {ann['id']}" in str(err.value) and "outside its" in str(err.value), str(err.value)


def test_polygon_within_the_margin_is_drawn(root):
    refer = REFER(str(root), "refcoco", "unc")
    ref, height, width = polygon_ref(refer)
    refer.refToAnn[ref["ref_id"]]["segmentation"] = [
        [-POLYGON_MARGIN, -POLYGON_MARGIN, width + POLYGON_MARGIN, -POLYGON_MARGIN,
         width + POLYGON_MARGIN, height + POLYGON_MARGIN, -POLYGON_MARGIN, height + POLYGON_MARGIN]]
    mask = refer.getMask(ref)["mask"]
    assert mask.shape == (height, width) and mask.all()  # covers the whole image, clipped to it


def dataset(root):
    args = argparse.Namespace(refer_data_root=str(root), dataset="refcoco", splitBy="unc", bert_tokenizer="minilm")
    return ReferDataset(args, split="val", eval_mode=True)


@pytest.mark.parametrize("factor", [0.25, 2])
def test_image_file_of_another_size_than_annotated_is_refused(root, factor):
    val = dataset(root)
    info = val.image_info(0)
    size = (int(info["width"] * factor), int(info["height"] * factor))
    edit_instances(root, lambda instances: next(img for img in instances["images"] if img["id"] == info["id"])
                   .update(width=size[0], height=size[1]))
    val = dataset(root)
    with pytest.raises(UserInputError) as err:
        val[0]
    message = str(err.value)
    assert info["file_name"] in message and f"{info['width']}x{info['height']} pixels" in message, message
    assert f"says {size[0]}x{size[1]}" in message, message


def test_image_of_the_annotated_size_loads(root):
    image, target, _, _ = dataset(root)[0]
    assert image.size == target.size
