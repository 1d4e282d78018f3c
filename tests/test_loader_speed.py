"""The data pipeline's speed-ups keep its outputs bit for bit (issue 22), and bench/bench_loader.py runs.

tests/test_dataset.py pins the whole pipeline on the recorded fixture; these cases add the inputs the
fixture does not hold: grey and other PIL modes, a caller's tensor given to Normalize, and an object
whose polygons overlap three deep.
"""
import json
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from refer import REFER
from transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize, ToTensor, get_transform


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "1", "F"])
def test_to_tensor_equals_torchvision_for_every_mode(mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode)
    got, _ = ToTensor()(image)
    expected = F.to_tensor(image)
    assert got.dtype == expected.dtype and got.shape == expected.shape and got.is_contiguous()
    assert torch.equal(got, expected)


def test_released_transform_equals_torchvision_composition():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    target = Image.fromarray((rng.random((48, 64)) < 0.3).astype(np.uint8))
    got_image, got_target = get_transform(32)(image, target)
    resized = F.resize(image, [32, 32])
    expected = F.normalize(F.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(got_image, expected)
    assert torch.equal(got_target, torch.as_tensor(np.array(F.resize(target, [32, 32], F.InterpolationMode.NEAREST)),
                                                   dtype=torch.int64))


def test_normalize_leaves_a_callers_tensor_alone_unless_in_place():
    tensor = torch.rand(3, 8, 8)
    kept = tensor.clone()
    copied, _ = Normalize(IMAGENET_MEAN, IMAGENET_STD)(tensor)
    assert torch.equal(tensor, kept)
    in_place, _ = Normalize(IMAGENET_MEAN, IMAGENET_STD, inplace=True)(tensor)
    assert in_place.data_ptr() == tensor.data_ptr() and torch.equal(in_place, copied)


def test_summed_mask_equals_the_released_int64_sum(tmp_path):
    square = [4.0, 4.0, 20.0, 4.0, 20.0, 18.0, 4.0, 18.0]
    parts = [square, square, [10.0, 2.0, 28.0, 2.0, 28.0, 26.0]]
    root = tmp_path / "refs"
    (root / "synthetic").mkdir(parents=True)
    instances = {"images": [{"id": 1, "file_name": "a.jpg", "height": 30, "width": 32}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": parts}],
                 "categories": [{"id": 1, "name": "thing"}]}
    (root / "synthetic" / "instances.json").write_text(json.dumps(instances))
    refs = [{"ref_id": 1, "ann_id": 1, "image_id": 1, "category_id": 1, "split": "train",
             "sentences": [{"sent_id": 1, "raw": "it", "sent": "it", "tokens": ["it"]}]}]
    with open(root / "synthetic" / "refs(unc).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    refer = REFER(str(root), "synthetic", "unc")
    got = refer.getMask(refs[0])["mask"]
    rles = mask_utils.frPyObjects(parts, 30, 32)
    expected = mask_utils.decode(rles).sum(axis=2, dtype=np.int64).astype(np.uint8)
    assert got.flags.c_contiguous and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got).tolist()) == {0, 1, 2, 3}


@pytest.mark.slow
def test_bench_loader_times_both_pipelines_per_worker_count(tmp_path, capsys):
    from bench import bench_loader

    rows = bench_loader.main(["--images", "6", "--img-size", "48", "--workers", "0", "1", "--passes", "1",
                       "--batch-size", "2", "--eval-batch-size", "3", "--data-dir", str(tmp_path / "data"),
                       "--json", str(tmp_path / "rows.json")])
    assert [row["workers"] for row in rows] == [0, 1]
    for row in rows:
        assert row["train_images"] == 12 // 2 * 2 and row["eval_images"] == 6  # 4 training images, 2 val
        assert row["train_images_per_s"] > 0 and row["eval_images_per_cpu_s"] > 0
    out = capsys.readouterr().out
    assert "1 thread(s); load average" in out and "| workers | training images/s |" in out
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    image = Image.open(next((tmp_path / "data" / "images" / "mscoco" / "images" / "train2014").iterdir()))
    assert image.size == (640, 480) and image.format == "JPEG"
