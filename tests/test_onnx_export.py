"""tools/export_onnx.py: one ONNX file (text encoder + LAVT) that onnxruntime runs like PyTorch.

One export of a nano LAVT with a small random BERT and the no-target head (about a minute on
2 CPU cores), checked at batch 1 and 3 with inputs other than the ones it was traced with.
Needs the optional packages onnx, onnxscript and onnxruntime (requirements-dev.txt).
"""
import argparse
import copy
import importlib.util
import os

import numpy as np
import pytest
import torch

import cli
from bert import load_tokenizer
from data.dataset_refer_bert import tokenize_expressions
from errors import UserInputError
from lib import onnx_export
from lib.checkpoint_io import save_checkpoint
from lib.referring_model import build_model

for package in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(package, reason=f"the optional package '{package}' is not installed (requirements-dev.txt)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # the module fixture exports to ONNX (over a minute on a loaded CPU)


def export_tool():
    spec = importlib.util.spec_from_file_location("export_onnx", os.path.join(REPO, "tools", "export_onnx.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(module_tmp):
    from transformers import BertConfig

    root = module_tmp("onnx")
    text_encoder = root / "small_bert"
    BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128).save_pretrained(
        text_encoder)
    load_tokenizer("minilm").save_pretrained(text_encoder)  # the bert-base-uncased vocabulary
    args = argparse.Namespace(model="lavt", swin_type="nano", window_size=4, ck_bert=str(text_encoder),
                              bert_tokenizer=str(text_encoder), img_size=64, no_target_head=True)
    torch.manual_seed(0)
    model = build_model(args, pretrained=False).eval()
    with torch.no_grad():  # logits far from ties, masks covering part of the image
        model.model.classifier.conv1_1.weight.mul_(30)
        model.model.classifier.conv1_1.bias.copy_(torch.tensor([0.0, 1.0]))
    save_checkpoint(root / "small.pth", model=model.model, bert_model=model.bert_model, args=args)
    tool = export_tool()
    # A text encoder in a local directory is used only when passed (a checkpoint's saved path is not trusted).
    cli.run_cli(tool.main, tool.get_parser(), ["--resume", str(root / "small.pth"), "--out", str(root / "m.onnx"),
                                               "--ck_bert", str(text_encoder)])
    return model, root


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_agrees_with_pytorch(exported, batch):
    model, root = exported
    session = onnx_export.onnx_session(root / "m.onnx")
    generator = torch.Generator().manual_seed(batch)
    image = torch.randn(batch, 3, 64, 64, generator=generator)
    phrases = ["the man on the left", "a red car parked behind the second tree from the right side of it", "bowl"]
    input_ids, attention_mask = tokenize_expressions(load_tokenizer("minilm"), phrases[:batch])
    logits, no_target = session.run(["logits", "no_target_logits"], {
        "image": image.numpy(), "input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    with torch.no_grad():
        expected = model(image, input_ids, attention_mask)
    assert logits.shape == (batch, 2, 64, 64) and no_target.shape == (batch,)
    assert np.abs(logits - expected["logits"].numpy()).max() < 1e-3
    assert np.array_equal(logits.argmax(1), expected["logits"].argmax(1).numpy())
    assert 0 < logits.argmax(1).mean() < 1  # masks that could disagree
    assert np.abs(no_target - expected["no_target_logits"].numpy()).max() < 1e-3


def test_one_file_with_named_inputs_and_a_dynamic_batch(exported):
    _, root = exported
    assert sorted(os.listdir(root)) == ["m.onnx", "small.pth", "small_bert"]  # no external weights file
    inputs = {i.name: i for i in onnx_export.onnx_session(root / "m.onnx").get_inputs()}
    assert list(inputs) == ["image", "input_ids", "attention_mask"]
    assert inputs["image"].type == "tensor(float)" and inputs["input_ids"].type == "tensor(int64)"
    assert inputs["image"].shape[1:] == [3, 64, 64] and inputs["input_ids"].shape[1:] == [20]
    assert all(isinstance(i.shape[0], str) for i in inputs.values())  # symbolic batch


def test_missing_optional_package_is_named(monkeypatch):
    real = importlib.import_module

    def without_onnxruntime(name, *args):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_onnxruntime)
    with pytest.raises(UserInputError, match="optional package 'onnxruntime'.*pip install"):
        onnx_export.require_onnx()


# The "without this repository" recipe of docs/deployment.md, section "Deployment: ONNX" (moved there
# from the README; keep the two in step): numpy, pillow, onnxruntime and a WordPiece tokenizer only.
def readme_recipe(session, tokenizer, path, sentences, size):
    from PIL import Image, ImageOps

    photo = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    pixels = np.asarray(photo.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    pixels = (pixels - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    ids = np.zeros((len(sentences), 20), np.int64)
    for row, sentence in enumerate(sentences):
        kept = tokenizer(sentence)["input_ids"][:20]  # [CLS] words [SEP], the first 20 ids
        ids[row, :len(kept)] = kept
    images = np.repeat(pixels.transpose(2, 0, 1)[None], len(sentences), axis=0)
    logits = session.run(["logits"], {"image": images, "input_ids": ids,
                                      "attention_mask": (ids != 0).astype(np.int64)})[0]
    # Back to the photo's size: bilinear with corners aligned, then the argmax.
    ys, xs = np.linspace(0, size - 1, photo.height), np.linspace(0, size - 1, photo.width)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, size - 1), np.minimum(x0 + 1, size - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = logits[:, :, y0][..., x0] * (1 - wx) + logits[:, :, y0][..., x1] * wx
    bottom = logits[:, :, y1][..., x0] * (1 - wx) + logits[:, :, y1][..., x1] * wx
    return (top * (1 - wy) + bottom * wy).argmax(1).astype(bool)  # (n, height, width)


def test_readme_recipe_gives_the_predictor_masks(exported):
    from transformers import BertTokenizerFast

    from bert import resolve_text_model
    from lib.predictor import Predictor

    model, root = exported
    session = onnx_export.onnx_session(root / "m.onnx")
    tokenizer = BertTokenizerFast.from_pretrained(resolve_text_model("minilm"))
    predictor = Predictor(copy.deepcopy(model), load_tokenizer("minilm"), 64)  # it caches text features
    images = os.path.join(REPO, "tests", "fixtures", "refer_fixture", "images", "mscoco", "images", "train2014")
    sentences = ["the man on the left", "a red car", "the bowl"]
    for name in sorted(os.listdir(images))[:3]:
        ours = readme_recipe(session, tokenizer, os.path.join(images, name), sentences, 64)
        expected = predictor.predict(os.path.join(images, name), sentences)
        assert ours.shape == (3, *expected[0].mask.shape)
        for mask, prediction in zip(ours, expected):
            # Pixels where the bilinear resize lands on a tie (p = 0.5 to float precision) may go either way.
            decided = np.abs(prediction.probability - 0.5) > 1e-4
            assert np.array_equal(mask[decided], prediction.mask[decided]), name
            assert decided.mean() > 0.99
