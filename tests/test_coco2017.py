"""RefCOCO-style data whose images exist only in COCO 2017's train2017 folder (refer/images.py)."""
import argparse
import os
import shutil

import pytest
import torch

import engine
import metrics
from data.dataset_refer_bert import ReferDataset
from data.evaluation import build_eval_loader
from refer.images import coco2017_name
from transforms import get_transform

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture")
TRAIN2014 = ("images", "mscoco", "images", "train2014")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:__array__ implementation:DeprecationWarning")


def move_to_2017(root, destination):
    """Move every train2014 image to `destination` under its COCO 2017 name; remove the 2014 folder."""
    source = root.joinpath(*TRAIN2014)
    destination.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(source):
        shutil.move(source / name, destination / coco2017_name(name))
    source.rmdir()


def dataset(root, split="val", **extra):
    args = argparse.Namespace(refer_data_root=str(root), dataset="refcoco", splitBy="unc", bert_tokenizer="minilm",
                              **extra)
    return ReferDataset(args, image_transforms=get_transform(64), split=split, eval_mode=True)


def test_coco2017_name_mapping():
    assert coco2017_name("COCO_train2014_000000581857.jpg") == "000000581857.jpg"
    assert coco2017_name("COCO_val2014_000000581857.jpg") is None  # val2014 images are not all in train2017
    assert coco2017_name("my_image.jpg") is None


@pytest.mark.parametrize("layout", [("images", "mscoco", "images", "train2017"), ("images", "train2017"), ("train2017",)])
def test_images_found_in_a_train2017_folder_of_the_data_root(tmp_path, layout):
    reference = dataset(FIXTURE)
    root = tmp_path / "data"
    shutil.copytree(FIXTURE, root)
    move_to_2017(root, root.joinpath(*layout))
    moved = dataset(root)
    for i in range(len(reference)):
        for expected, got in zip(reference[i], moved[i]):
            assert torch.equal(expected, got)


def test_explicit_coco2017_dir_and_error_naming_both_places(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(FIXTURE, root)
    elsewhere = tmp_path / "coco" / "train2017"
    move_to_2017(root, elsewhere)
    with pytest.raises(FileNotFoundError, match="train2014"):
        dataset(root)[0]  # not found automatically: not under the data root
    found = dataset(root, coco2017_dir=str(elsewhere))
    assert found[0][0].shape == (3, 64, 64)
    name = found.image_info(0)["file_name"]
    os.remove(elsewhere / coco2017_name(name))
    with pytest.raises(FileNotFoundError) as err:
        found[0]
    assert os.path.join("train2014", name) in str(err.value) and str(elsewhere / coco2017_name(name)) in str(err.value)
    with pytest.raises(FileNotFoundError, match="--coco2017-dir"):
        dataset(root, coco2017_dir=str(tmp_path / "missing"))


def test_a_train2017_only_dataset_evaluates_like_the_2014_layout(tmp_path):
    from lib.referring_model import build_model

    root = tmp_path / "data"
    shutil.copytree(FIXTURE, root)
    move_to_2017(root, root / "images" / "mscoco" / "images" / "train2017")
    torch.manual_seed(0)
    model = build_model(argparse.Namespace(model="lavt", swin_type="nano", ck_bert="minilm",
                                           pretrained_swin_weights="")).eval()
    results = [metrics.summarize(engine.evaluate(model, build_eval_loader(dataset(r)), torch.device("cpu")))
               for r in (FIXTURE, root)]
    assert results[0] == results[1] and results[0]["num_samples"] > 0
