"""ReferDataset + transforms against what the original pipeline returns for the recorded fixture.

Ids, sizes and sentences come from the fixture files and the recording, not from constants.
"""
import argparse
import json
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bert import load_tokenizer
from data.dataset_refer_bert import ReferDataset, load_rgb_image
from errors import UserInputError
from refer import load_refs_pickle
from transforms import IMAGENET_STD, get_transform

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FIXTURE_ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture")
EXPECTED = torch.load(os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture_expected.pt"),
                      weights_only=True)
with open(os.path.join(FIXTURE_ROOT, "refcoco", "instances.json"), encoding="utf-8") as _handle:
    INSTANCES = json.load(_handle)
IMAGE_FILES = {image["id"]: image["file_name"] for image in INSTANCES["images"]}
REFS = {ref["ref_id"]: ref for ref in load_refs_pickle(os.path.join(FIXTURE_ROOT, "refcoco", "refs(unc).p"))}
IMAGE_DIR = os.path.join("images", "mscoco", "images", "train2014")
CLS, SEP = 101, 102
MAX_TOKENS = EXPECTED["max_tokens"]
EVAL_SPLITS = [split for split in ("train", "val", "testA", "testB", "test") if split in EXPECTED]
# Recorded eval items whose object has overlapping polygons (summed mask reaches 2).
OVERLAP_ITEMS = [(split, index) for split in EVAL_SPLITS for index, item in enumerate(EXPECTED[split])
                 if EXPECTED["masks_max_value"].get(item["ref_id"], 1) > 1]
FIRST_VAL = EXPECTED["val"][0]
# Pillow 12 (which gradio pins) and Pillow 13 decode the fixture's JPEGs, and resize, up to one grey
# level apart; the recording was made with 13. Targets, masks and token ids stay exact.
GREY_LEVELS = 1


def assert_pixels_close(actual, expected, what):
    """8-bit images equal up to `GREY_LEVELS`, and identical in size."""
    actual, expected = np.asarray(actual).astype(np.int16), np.asarray(expected).astype(np.int16)
    assert actual.shape == expected.shape, what
    assert np.abs(actual - expected).max() <= GREY_LEVELS, what


def assert_normalized_close(actual, expected, what):
    """Normalised (3, H, W) images equal up to `GREY_LEVELS` before normalisation."""
    assert actual.shape == expected.shape, what
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(actual * std * 255, expected * std * 255, rtol=0, atol=GREY_LEVELS + 1e-3,
                               msg=what)


def make_args(root=FIXTURE_ROOT):
    return argparse.Namespace(refer_data_root=str(root), dataset="refcoco", splitBy="unc", bert_tokenizer="minilm")


@pytest.fixture
def fixture_copy(tmp_path):
    root = tmp_path / "refer_fixture"
    shutil.copytree(FIXTURE_ROOT, root)
    return root


def edit_refs(root, edit):
    path = root / "refcoco" / "refs(unc).p"
    refs = load_refs_pickle(path)
    edit({ref["ref_id"]: ref for ref in refs})
    path.write_bytes(pickle.dumps(refs, protocol=2))


def image_path(root, image_id):
    return os.path.join(str(root), IMAGE_DIR, IMAGE_FILES[image_id])


def image_size(image_id):
    return tuple(EXPECTED["raw_images_rgb"][image_id].shape[:2])


@pytest.mark.parametrize("split", EVAL_SPLITS)
def test_eval_items_match_original_pipeline(split):
    dataset = ReferDataset(make_args(), image_transforms=get_transform(EXPECTED["img_size"]), split=split,
                           eval_mode=True)
    expected_items = EXPECTED[split]
    assert dataset.ref_ids == [item["ref_id"] for item in expected_items] == EXPECTED["ref_ids"][split]
    for index, expected in enumerate(expected_items):
        assert dataset.image_info(index)["id"] == expected["image_id"]
        assert dataset.refer.Refs[expected["ref_id"]]["sent_ids"] == expected["sent_ids"]
        image, target, input_ids, attention_mask = dataset[index]
        assert image.dtype == torch.float32 and image.shape == expected["image"].shape
        assert_normalized_close(image, expected["image"], f"ref {expected['ref_id']}")
        assert target.dtype == torch.int64 and torch.equal(target, expected["target"]), f"ref {expected['ref_id']}"
        assert input_ids.dtype == attention_mask.dtype == torch.int64
        assert torch.equal(input_ids, expected["input_ids"]), f"ref {expected['ref_id']}"
        assert torch.equal(attention_mask, expected["attention_mask"])


def test_token_ids_of_every_sentence_match_recording():
    """Every sentence of every split: ids and word pieces as the original BERT tokenizer made them."""
    tokenizer = load_tokenizer("minilm")
    checked = set()
    for split in sorted({ref["split"] for ref in REFS.values()}):
        dataset = ReferDataset(make_args(), split=split, eval_mode=True)
        for ids_per_ref, mask_per_ref, ref_id in zip(dataset.input_ids, dataset.attention_masks, dataset.ref_ids):
            for ids, mask, sent in zip(ids_per_ref, mask_per_ref, REFS[ref_id]["sentences"], strict=True):
                expected = EXPECTED["token_ids"][sent["sent_id"]][:MAX_TOKENS]
                assert ids.shape == mask.shape == (1, MAX_TOKENS)
                assert ids[0, : len(expected)].tolist() == expected, f"sentence {sent['sent_id']}"
                assert ids[0, len(expected):].eq(0).all()
                assert mask[0].tolist() == [1] * len(expected) + [0] * (MAX_TOKENS - len(expected))
                assert tokenizer.convert_ids_to_tokens(expected) == EXPECTED["tokens"][sent["sent_id"]][:MAX_TOKENS]
                checked.add(sent["sent_id"])
    assert checked == set(EXPECTED["token_ids"]) == set(EXPECTED["sentences_raw"])


def test_long_expression_is_truncated_without_sep():
    long_sentences = [sent_id for sent_id, ids in EXPECTED["token_ids"].items() if len(ids) > MAX_TOKENS]
    assert long_sentences, "the fixture should hold an expression longer than the token budget"
    for sent_id in long_sentences:
        ref = next(ref for ref in REFS.values() if sent_id in ref["sent_ids"])
        dataset = ReferDataset(make_args(), split=ref["split"], eval_mode=True)
        index, column = dataset.ref_ids.index(ref["ref_id"]), ref["sent_ids"].index(sent_id)
        ids, mask = dataset.input_ids[index][column][0], dataset.attention_masks[index][column][0]
        assert ids.tolist() == EXPECTED["token_ids"][sent_id][:MAX_TOKENS]
        assert ids[0] == CLS and SEP not in ids.tolist() and (ids != 0).all()
        assert mask.sum() == MAX_TOKENS
        assert dataset.sentences[index][column] == EXPECTED["sentences_raw"][sent_id]


@pytest.mark.parametrize("image_id", sorted(EXPECTED["raw_images_rgb"]))
def test_images_decode_as_recorded(image_id):
    path = image_path(FIXTURE_ROOT, image_id)
    with Image.open(path) as image:
        assert image.mode == EXPECTED["image_modes"][image_id]
    assert_pixels_close(load_rgb_image(path), EXPECTED["raw_images_rgb"][image_id].numpy(), f"image {image_id}")


def test_analysis_accessors():
    dataset = ReferDataset(make_args(), split="val", eval_mode=True)
    for index, expected in enumerate(EXPECTED["val"]):
        assert dataset.sentences[index] == [EXPECTED["sentences_raw"][s] for s in expected["sent_ids"]]
        info = dataset.image_info(index)
        assert info["file_name"] == IMAGE_FILES[expected["image_id"]]
        assert (info["height"], info["width"]) == image_size(expected["image_id"])
        target = dataset.original_target(index)
        assert target.dtype == np.uint8
        np.testing.assert_array_equal(target, EXPECTED["masks"][expected["ref_id"]].numpy() == 1)
        image, full_target, _, _ = dataset[index]  # no transform: PIL image and PIL mask at full resolution
        assert image.mode == "RGB"
        assert_pixels_close(image, EXPECTED["raw_images_rgb"][expected["image_id"]].numpy(), f"ref {expected['ref_id']}")
        np.testing.assert_array_equal(np.asarray(full_target), target)


@pytest.mark.parametrize("split, index", OVERLAP_ITEMS)
def test_polygon_overlap_is_a_hole_unless_mask_union(split, index):
    """Both eval protocols: full-resolution `original_target` and the resized item target."""
    expected = EXPECTED[split][index]
    summed = EXPECTED["masks"][expected["ref_id"]].numpy()
    overlap = summed > 1
    transform = get_transform(EXPECTED["img_size"])
    released = ReferDataset(make_args(), image_transforms=transform, split=split, eval_mode=True)
    union = ReferDataset(make_args(), image_transforms=transform, split=split, eval_mode=True, mask_union=True)
    assert not released.original_target(index)[overlap].any()
    np.testing.assert_array_equal(union.original_target(index), summed > 0)

    _, released_target, _, _ = released[index]
    _, union_target, _, _ = union[index]
    assert torch.equal(released_target, expected["target"])
    canvas = Image.new("RGB", overlap.shape[::-1])
    _, resized_overlap = transform(canvas, Image.fromarray(overlap.astype(np.uint8)))
    _, resized_union = transform(canvas, Image.fromarray((summed > 0).astype(np.uint8)))
    assert resized_overlap.any(), "the overlap should survive resizing"
    assert not released_target[resized_overlap.bool()].any()
    assert torch.equal(union_target, resized_union)
    for other, item in enumerate(EXPECTED[split]):  # objects without overlap: the flag changes nothing
        if EXPECTED["masks_max_value"][item["ref_id"]] == 1:
            assert torch.equal(union[other][1], item["target"])


def test_training_mode_draws_one_of_the_refs_sentences():
    dataset = ReferDataset(make_args(), image_transforms=get_transform(32), split="train")
    index = next(i for i, sentences in enumerate(dataset.sentences) if len(sentences) >= 2)
    candidates = list(dataset.input_ids[index])
    np.random.seed(0)
    seen = set()
    for _ in range(20):
        image, target, ids, mask = dataset[index]
        assert image.shape == (3, 32, 32) and target.shape == (32, 32)
        assert ids.shape == mask.shape == (1, MAX_TOKENS)
        matches = [k for k, candidate in enumerate(candidates) if torch.equal(ids, candidate)]
        assert len(matches) == 1
        assert torch.equal(mask, dataset.attention_masks[index][matches[0]])
        seen.add(matches[0])
    assert seen == set(range(len(candidates)))
    np.random.seed(3)
    first = [dataset[index][2] for _ in range(5)]
    np.random.seed(3)
    assert all(torch.equal(a, dataset[index][2]) for a in first)


def test_every_training_item_loads():
    dataset = ReferDataset(make_args(), image_transforms=get_transform(32), split="train")
    for index in range(len(dataset)):
        image, target, _, _ = dataset[index]
        assert image.shape == (3, 32, 32) and target.shape == (32, 32)
        assert set(target.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("ref_id", sorted(EXPECTED["getMask_errors"]))
def test_refs_the_original_could_not_load_have_binary_targets(ref_id):
    """The released getMask raised on these (a crowd RLE dict); here they are ordinary items."""
    ref = REFS[ref_id]
    dataset = ReferDataset(make_args(), image_transforms=get_transform(EXPECTED["img_size"]), split=ref["split"])
    index = dataset.ref_ids.index(ref_id)
    full = dataset.original_target(index)
    assert full.shape == image_size(ref["image_id"]) and full.any()
    np.testing.assert_array_equal(full, dataset.refer.getMask(ref)["mask"])  # 0/1 already: nothing overlaps
    _, target, _, _ = dataset[index]
    assert target.shape == (EXPECTED["img_size"],) * 2 and target.any()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_any_image_mode_becomes_rgb(fixture_copy, mode):
    path = image_path(fixture_copy, FIRST_VAL["image_id"])
    rgb = Image.open(path).convert("RGB")
    if mode == "I;16":
        # a 16-bit grey image: values up to 65535 must not be clipped to white
        grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path + ".png")
        expected = np.repeat(np.asarray(rgb.convert("L"))[..., None], 3, axis=2)
    else:
        converted = rgb.convert(mode)
        converted.save(path + (".tif" if mode == "CMYK" else ".png"))
        expected = np.asarray(converted.convert("RGB"))
    os.replace(path + (".tif" if mode == "CMYK" else ".png"), path)  # keep the name instances.json expects
    assert Image.open(path).mode == mode
    dataset = ReferDataset(make_args(fixture_copy), split="val", eval_mode=True)
    image, _, _, _ = dataset[0]
    height, width = image_size(FIRST_VAL["image_id"])
    assert image.mode == "RGB" and image.size == (width, height)
    np.testing.assert_array_equal(np.asarray(image), expected)
    transformed, _ = get_transform(16)(image, None)
    assert transformed.shape == (3, 16, 16)


def test_high_bit_depth_scaling(tmp_path):
    path = str(tmp_path / "deep.png")
    Image.fromarray(np.array([[0, 257, 65535]], dtype=np.uint16)).save(path)
    assert np.asarray(load_rgb_image(path))[0, :, 0].tolist() == [0, 1, 255]


def test_missing_image_names_path_and_ref(fixture_copy):
    os.remove(image_path(fixture_copy, FIRST_VAL["image_id"]))
    dataset = ReferDataset(make_args(fixture_copy), split="val", eval_mode=True)
    name = re.escape(IMAGE_FILES[FIRST_VAL["image_id"]])
    with pytest.raises(FileNotFoundError, match=rf"{name}.*ref {FIRST_VAL['ref_id']}\b.*Data setup"):
        dataset[0]


def test_undecodable_image_names_file(fixture_copy):
    with open(image_path(fixture_copy, FIRST_VAL["image_id"]), "wb") as handle:
        handle.write(b"this is not a jpeg")
    dataset = ReferDataset(make_args(fixture_copy), split="val", eval_mode=True)
    name = re.escape(IMAGE_FILES[FIRST_VAL["image_id"]])
    with pytest.raises(UserInputError, match=rf"{name}.*cannot be decoded: corrupt or not an image"):
        dataset[0]
    index, other = next((i, item) for i, item in enumerate(EXPECTED["val"])
                        if item["image_id"] != FIRST_VAL["image_id"])
    truncated = image_path(fixture_copy, other["image_id"])
    with open(truncated, "rb") as handle:
        data = handle.read()
    with open(truncated, "wb") as handle:
        handle.write(data[: len(data) // 3])
    with pytest.raises(UserInputError, match=rf"{re.escape(IMAGE_FILES[other['image_id']])}.*cannot be decoded"):
        dataset[index]


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_expression_is_cls_sep_with_warning(fixture_copy, text):
    index, item = next((i, item) for i, item in enumerate(EXPECTED["val"]) if len(item["sent_ids"]) >= 2)
    ref_id, sent_id = item["ref_id"], item["sent_ids"][1]
    edit_refs(fixture_copy, lambda refs: refs[ref_id]["sentences"][1].update(raw=text, sent=text.strip(), tokens=[]))
    with pytest.warns(UserWarning, match=rf"ref {ref_id} sentence {sent_id}\b"):
        dataset = ReferDataset(make_args(fixture_copy), split="val", eval_mode=True)
    _, _, ids, mask = dataset[index]
    assert ids[0, :, 1].tolist() == [CLS, SEP] + [0] * (MAX_TOKENS - 2)
    assert mask[0, :, 1].tolist() == [1, 1] + [0] * (MAX_TOKENS - 2)
    assert torch.equal(ids[..., 0], item["input_ids"][..., 0])


def test_empty_mask_is_kept_with_warning(fixture_copy):
    path = fixture_copy / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    ann_id = REFS[FIRST_VAL["ref_id"]]["ann_id"]
    next(ann for ann in instances["annotations"] if ann["id"] == ann_id)["segmentation"] = []
    path.write_text(json.dumps(instances))
    dataset = ReferDataset(make_args(fixture_copy), image_transforms=get_transform(16), split="val", eval_mode=True)
    with pytest.warns(UserWarning, match=rf"Ref {FIRST_VAL['ref_id']} has an empty mask"):
        _, target, _, _ = dataset[0]
    assert target.shape == (16, 16) and target.sum() == 0


def test_empty_split_and_bad_args():
    with pytest.raises(ValueError, match=r"Split 'testC' of dataset 'refcoco' \(splitBy 'unc'\) has no refs"):
        ReferDataset(make_args(), split="testC")
    args = make_args()
    del args.bert_tokenizer
    with pytest.raises(AttributeError, match="bert_tokenizer"):
        ReferDataset(args, split="val")
