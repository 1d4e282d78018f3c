"""ReferDataset + transforms against what the original pipeline returns for the recorded fixture."""
import argparse
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data.dataset_refer_bert import ReferDataset, load_rgb_image
from refer import load_refs_pickle
from transforms import get_transform

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FIXTURE_ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture")
EXPECTED = torch.load(os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture_expected.pt"),
                      weights_only=True)
IMAGE_DIR = os.path.join("images", "mscoco", "images", "train2014")
CLS, SEP = 101, 102


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
    return os.path.join(str(root), IMAGE_DIR, f"COCO_train2014_{image_id:012d}.jpg")


@pytest.mark.parametrize("split", [s for s in ("train", "val", "testA", "testB", "test") if s in EXPECTED])
def test_eval_items_match_original_pipeline(split):
    dataset = ReferDataset(make_args(), image_transforms=get_transform(EXPECTED["img_size"]), split=split,
                           eval_mode=True)
    expected_items = EXPECTED[split]
    assert dataset.ref_ids == [item["ref_id"] for item in expected_items] == EXPECTED["ref_ids"][split]
    for index, expected in enumerate(expected_items):
        image, target, input_ids, attention_mask = dataset[index]
        assert image.dtype == torch.float32 and image.shape == expected["image"].shape
        torch.testing.assert_close(image, expected["image"], rtol=0, atol=1e-5)
        assert target.dtype == torch.int64 and torch.equal(target, expected["target"])
        assert input_ids.dtype == attention_mask.dtype == torch.int64
        assert torch.equal(input_ids, expected["input_ids"]), f"ref {expected['ref_id']}"
        assert torch.equal(attention_mask, expected["attention_mask"])


def test_token_ids_of_every_sentence_match_recording():
    dataset = ReferDataset(make_args(), split="test", eval_mode=True)
    for ids_per_ref, mask_per_ref, ref_id in zip(dataset.input_ids, dataset.attention_masks, dataset.ref_ids):
        ref = dataset.refer.Refs[ref_id]
        for ids, mask, sent in zip(ids_per_ref, mask_per_ref, ref["sentences"]):
            expected = EXPECTED["token_ids"][sent["sent_id"]][:20]
            assert ids.shape == mask.shape == (1, 20)
            assert ids[0, : len(expected)].tolist() == expected
            assert ids[0, len(expected):].eq(0).all()
            assert mask[0].tolist() == [1] * len(expected) + [0] * (20 - len(expected))


def test_long_expression_is_truncated_without_sep():
    dataset = ReferDataset(make_args(), split="testA", eval_mode=True)
    index = dataset.ref_ids.index(4)  # 19 words -> 22 ids with [CLS]/[SEP]
    ids, mask = dataset.input_ids[index][0], dataset.attention_masks[index][0]
    assert ids[0, 0] == CLS and SEP not in ids[0].tolist() and (ids[0] != 0).all()
    assert mask.sum() == 20
    assert dataset.sentences[index][0].startswith("the two purple car parts")


def test_analysis_accessors():
    dataset = ReferDataset(make_args(), split="val", eval_mode=True)
    assert dataset.sentences[0] == ["Yellow banana, on the LEFT!", "banana"]
    info = dataset.image_info(0)
    assert info["file_name"] == "COCO_train2014_000000098305.jpg" and (info["height"], info["width"]) == (48, 64)
    target = dataset.original_target(0)
    assert target.dtype == np.uint8 and np.array_equal(target, EXPECTED["masks"][2].numpy())
    image, full_target, _, _ = dataset[0]  # no transform: PIL image and PIL mask at full resolution
    assert image.mode == "RGB" and image.size == (64, 48)
    assert np.array_equal(np.asarray(full_target), target)


def test_training_mode_draws_one_of_the_refs_sentences():
    dataset = ReferDataset(make_args(), image_transforms=get_transform(32), split="train")
    index = dataset.ref_ids.index(0)  # two sentences
    candidates = [ids for ids in dataset.input_ids[index]]
    np.random.seed(0)
    seen = set()
    for _ in range(20):
        image, target, ids, mask = dataset[index]
        assert image.shape == (3, 32, 32) and target.shape == (32, 32)
        assert ids.shape == mask.shape == (1, 20)
        matches = [k for k, candidate in enumerate(candidates) if torch.equal(ids, candidate)]
        assert len(matches) == 1
        assert torch.equal(mask, dataset.attention_masks[index][matches[0]])
        seen.add(matches[0])
    assert seen == {0, 1}
    np.random.seed(3)
    first = [dataset[index][2] for _ in range(5)]
    np.random.seed(3)
    assert all(torch.equal(a, dataset[index][2]) for a in first)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA"])
def test_any_image_mode_becomes_rgb(fixture_copy, mode):
    path = image_path(fixture_copy, 98305)
    rgb = Image.open(path).convert("RGB")
    if mode == "I;16":
        # a 16-bit grey image: values up to 65535 must not be clipped to white
        grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(path.replace(".jpg", ".png"))
        expected = np.repeat(np.asarray(rgb.convert("L"))[..., None], 3, axis=2)
    else:
        converted = rgb.convert(mode)
        converted.save(path.replace(".jpg", ".png") if mode != "CMYK" else path.replace(".jpg", ".tif"))
        expected = np.asarray(converted.convert("RGB"))
    suffix = ".tif" if mode == "CMYK" else ".png"
    os.replace(path.replace(".jpg", suffix), path)  # keep the name instances.json expects
    assert Image.open(path).mode == mode
    dataset = ReferDataset(make_args(fixture_copy), split="val", eval_mode=True)
    image, _, _, _ = dataset[0]
    assert image.mode == "RGB" and image.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(image), expected)
    transformed, _ = get_transform(16)(image, None)
    assert transformed.shape == (3, 16, 16)


def test_high_bit_depth_scaling(tmp_path):
    path = str(tmp_path / "deep.png")
    Image.fromarray(np.array([[0, 257, 65535]], dtype=np.uint16)).save(path)
    assert np.asarray(load_rgb_image(path))[0, :, 0].tolist() == [0, 1, 255]


def test_missing_image_names_path_and_ref(fixture_copy):
    os.remove(image_path(fixture_copy, 98305))
    dataset = ReferDataset(make_args(fixture_copy), split="val", eval_mode=True)
    with pytest.raises(FileNotFoundError, match=r"COCO_train2014_000000098305\.jpg.*ref 2.*Data setup"):
        dataset[0]


def test_undecodable_image_names_file(fixture_copy):
    path = image_path(fixture_copy, 98305)
    with open(path, "wb") as handle:
        handle.write(b"this is not a jpeg")
    dataset = ReferDataset(make_args(fixture_copy), split="val", eval_mode=True)
    with pytest.raises(OSError, match=r"000000098305\.jpg.*cannot be decoded: corrupt or not an image"):
        dataset[0]
    truncated = image_path(fixture_copy, 98308)
    with open(truncated, "rb") as handle:
        data = handle.read()
    with open(truncated, "wb") as handle:
        handle.write(data[: len(data) // 3])
    with pytest.raises(OSError, match=r"000000098308\.jpg.*cannot be decoded"):
        dataset[dataset.ref_ids.index(9)]


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_expression_is_cls_sep_with_warning(fixture_copy, text):
    edit_refs(fixture_copy, lambda refs: refs[2]["sentences"][1].update(raw=text, sent=text.strip(), tokens=[]))
    with pytest.warns(UserWarning, match=r"ref 2 sentence 4"):
        dataset = ReferDataset(make_args(fixture_copy), split="val", eval_mode=True)
    _, _, ids, mask = dataset[0]
    assert ids[0, :, 1].tolist() == [CLS, SEP] + [0] * 18
    assert mask[0, :, 1].tolist() == [1, 1] + [0] * 18
    assert ids[0, :, 0].tolist() == EXPECTED["val"][0]["input_ids"][0, :, 0].tolist()


def test_empty_mask_is_kept_with_warning(fixture_copy):
    import json

    path = fixture_copy / "refcoco" / "instances.json"
    instances = json.loads(path.read_text())
    next(ann for ann in instances["annotations"] if ann["id"] == 1003)["segmentation"] = []
    path.write_text(json.dumps(instances))
    dataset = ReferDataset(make_args(fixture_copy), image_transforms=get_transform(16), split="val", eval_mode=True)
    with pytest.warns(UserWarning, match=r"Ref 2 has an empty mask"):
        _, target, _, _ = dataset[0]
    assert target.shape == (16, 16) and target.sum() == 0


def test_empty_split_and_bad_args():
    with pytest.raises(ValueError, match=r"Split 'testC' of dataset 'refcoco' \(splitBy 'unc'\) has no refs"):
        ReferDataset(make_args(), split="testC")
    args = make_args()
    del args.bert_tokenizer
    with pytest.raises(AttributeError, match="bert_tokenizer"):
        ReferDataset(args, split="val")
