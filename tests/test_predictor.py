"""The predictor API (lib/predictor.py) and the demo built on it, on generated nano checkpoints.

Masks are compared with test.py's evaluation path (`engine.evaluate`, original-size protocol);
the architecture is read from lavt, lavt_one and released-layout checkpoints; photos with an
EXIF rotation, 1-pixel-wide, 16-bit and CMYK images are checked against their plain equivalents.
"""
import argparse
import doctest
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import demo_inference
import engine
from data.dataset_refer_bert import ReferDataset, tokenize_expressions
from data.evaluation import build_eval_loader
from errors import UserInputError
from lib import predictor as predictor_module
from lib.architecture import load_model
from lib.checkpoint_io import load_checkpoint_file, save_checkpoint
from lib.predictor import Prediction, Predictor
from lib.referring_model import build_model
from transforms import get_transform

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "refer_fixture")
IMAGES = os.path.join(FIXTURE, "images", "mscoco", "images", "train2014")


def options(**changes):
    return argparse.Namespace(**{"model": "lavt", "swin_type": "nano", "window_size": 4, "ck_bert": "minilm",
                                 "bert_tokenizer": "minilm", "img_size": 64, **changes})


def generated_model(args, seed=0):
    """A random model whose logits are far from ties (so masks do not flip on float noise) and whose
    masks cover part of an image: the final layer is scaled up and its class-1 bias raised a little."""
    torch.manual_seed(seed)
    model = build_model(args, pretrained=False)
    with torch.no_grad():
        model.model.classifier.conv1_1.weight.mul_(30)
        model.model.classifier.conv1_1.bias.copy_(torch.tensor([0.0, 1.0]))
    return model


@pytest.fixture(scope="module")
def lavt_checkpoint(module_tmp):
    model = generated_model(options())
    path = module_tmp("ckpt") / "nano_lavt.pth"
    save_checkpoint(path, model=model.model, bert_model=model.bert_model, args=options(), epoch=3)
    return path


@pytest.fixture(scope="module")
def predictor(lavt_checkpoint):
    return Predictor.from_checkpoint(lavt_checkpoint)


def image_files():
    return sorted(os.path.join(IMAGES, name) for name in os.listdir(IMAGES))


class MaskCollector:
    def __init__(self):
        self.masks = {}

    def write_mask(self, index, sentence_index, mask):
        self.masks[index, sentence_index] = mask.cpu().numpy().astype(bool)

    def write_records(self, records):
        pass


# -------------------------------------------------------------------------------- same as test.py
@pytest.mark.parametrize("split", ["val", "testA"])
@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_masks_equal_the_evaluation_path(lavt_checkpoint, predictor, split):
    args = options(refer_data_root=FIXTURE, dataset="refcoco", splitBy="unc", resume=str(lavt_checkpoint))
    dataset = ReferDataset(args, image_transforms=get_transform(64), split=split, eval_mode=True)
    collector = MaskCollector()
    model = load_model(args, torch.device("cpu"), load_checkpoint_file(lavt_checkpoint))
    loader = build_eval_loader(dataset, max_sentences=16, original_size=True)
    engine.evaluate(model, loader, torch.device("cpu"), prediction_writer=collector)
    assert len(collector.masks) == sum(len(s) for s in dataset.sentences)
    foreground = []
    for index, sentences in enumerate(dataset.sentences):
        path = os.path.join(dataset.refer.IMAGE_DIR, dataset.image_info(index)["file_name"])
        for j, prediction in enumerate(predictor.predict(path, sentences)):
            expected = collector.masks[index, j]
            assert prediction.expression == sentences[j] and prediction.mask.shape == expected.shape
            # Batches differ (objects vs one image's sentences), so logits may differ in the last bits:
            # only a pixel on a tie (p = 0.5 to float precision) may go either way.
            decided = np.abs(prediction.probability - 0.5) > 1e-4
            assert np.array_equal(prediction.mask[decided], expected[decided]), (index, j)
            assert decided.mean() > 0.99
            foreground.append(expected.mean())
    assert 0 < np.mean(foreground) < 1  # the comparison is not between empty (or full) masks


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_docstring_example_runs():
    assert doctest.testmod(predictor_module, raise_on_error=True).attempted > 0


def test_probability_mask_and_text_cache(predictor):
    rows = []
    handle = predictor.model.bert_model.register_forward_hook(lambda m, inputs, out: rows.append(len(inputs[0])))
    try:
        first = predictor.predict(image_files()[0], ["the man on the left", "a red car"])
        second = predictor.predict(image_files()[1], "a red car")
        third = predictor.predict(image_files()[1], ["a red car", "the dog", "the dog"])
    finally:
        handle.remove()
    assert rows == [2, 1]  # 'a red car' was encoded once; 'the dog' once for both of its uses
    assert len(first) == 2 and len(second) == 1 and len(third) == 3
    assert np.array_equal(second[0].mask, third[0].mask) and np.array_equal(third[1].mask, third[2].mask)
    fresh = Predictor(build_model(options(), pretrained=False), predictor.tokenizer, 64)  # no cache shared
    fresh.model.load_state_dict(predictor.model.state_dict())
    assert np.array_equal(fresh.predict(image_files()[1], ["the dog"])[0].mask, third[1].mask)
    for prediction in first:
        assert prediction.probability.dtype == np.float32 and prediction.mask.dtype == bool
        decided = np.abs(prediction.probability - 0.5) > 1e-6  # float32 rounding aside
        assert np.array_equal(prediction.mask[decided], prediction.probability[decided] > 0.5)
        assert prediction.no_target is None and prediction.no_target_score is None


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_no_target_head_is_found_and_reported(tmp_path):
    model = generated_model(options(no_target_head=True), seed=2)
    with torch.no_grad():
        model.model.no_target_head.mlp[2].bias.fill_(0.15)  # puts these expressions on both sides of 0
    save_checkpoint(tmp_path / "head.pth", model=model.model, bert_model=model.bert_model, args={"img_size": 64})
    loaded = Predictor.from_checkpoint(tmp_path / "head.pth")
    assert loaded.args.no_target_head
    expressions = ["the man on the left", "a purple star", "the bus", "nothing", "the sky"]
    results = loaded.predict(image_files()[0], expressions)
    image = get_transform(64)(Image.open(image_files()[0]).convert("RGB"))[0]
    ids, mask = tokenize_expressions(loaded.tokenizer, expressions)
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(image.expand(len(expressions), -1, -1, -1), ids, mask)["no_target_logits"])
    assert np.allclose([r.no_target_score for r in results], expected.numpy(), atol=1e-5)
    assert [r.no_target for r in results] == (expected > 0.5).tolist()
    assert {r.no_target for r in results} == {True, False}
    described = [demo_inference.describe(i, r, "m.png") for i, r in enumerate(results)]
    assert all("no-target score" in line for line in described)
    assert all(("finds nothing" in line) == (r.no_target or not r.mask.any()) for line, r in zip(described, results))


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_bf16_autocast_runs(lavt_checkpoint, predictor):
    bf16 = Predictor.from_checkpoint(lavt_checkpoint, amp="bf16")
    ours, theirs = (p.predict(image_files()[2], ["the man on the left"])[0] for p in (bf16, predictor))
    assert ours.mask.shape == theirs.mask.shape and ours.probability.dtype == np.float32
    assert (ours.mask == theirs.mask).mean() > 0.9
    with pytest.raises(UserInputError, match="fp16"):
        Predictor.from_checkpoint(lavt_checkpoint, amp="fp16")


# ---------------------------------------------------------------------------- architecture inference
def test_lavt_architecture_read_from_the_checkpoint(predictor):
    used = predictor.args
    assert (used.model, used.swin_type, used.window_size, used.ck_bert, used.img_size) == ("lavt", "nano", 4,
                                                                                            "minilm", 64)


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_lavt_one_is_recognised_without_flags(tmp_path):
    model = generated_model(options(model="lavt_one", window_size=6), seed=1)
    save_checkpoint(tmp_path / "one.pth", model=model.model, args={"img_size": 64, "lr": 1e-4})  # args w/o model
    loaded = Predictor.from_checkpoint(tmp_path / "one.pth")
    assert (loaded.args.model, loaded.args.window_size, loaded.args.ck_bert) == ("lavt_one", 6, "minilm")
    image = np.asarray(Image.open(image_files()[3]).convert("RGB"))
    with torch.no_grad():
        pixels = get_transform(64)(Image.fromarray(image))[0][None]
        ids, mask = tokenize_expressions(loaded.tokenizer, ["the cat"])
        logits = model.eval()(pixels, ids, mask)["logits"]
    expected = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=True)
    assert np.array_equal(loaded.predict(image, "the cat")[0].mask, expected.argmax(1)[0].numpy().astype(bool))


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_released_layout_without_args(lavt_checkpoint, predictor, tmp_path):
    """A released-style file: DDP 'module.' keys, no args; text encoder chosen by the text width."""
    checkpoint = load_checkpoint_file(lavt_checkpoint)
    released = {"model": {f"module.{k}": v for k, v in checkpoint["model"].items()},
                "bert_model": {f"module.{k}": v for k, v in checkpoint["bert_model"].items()}, "epoch": 39}
    torch.save(released, tmp_path / "refcoco.pth")
    loaded = Predictor.from_checkpoint(tmp_path / "refcoco.pth")
    assert (loaded.args.model, loaded.args.swin_type, loaded.args.window_size) == ("lavt", "nano", 4)
    assert loaded.args.ck_bert == "minilm" and loaded.img_size == 480  # the released input size
    resized = Predictor.from_checkpoint(tmp_path / "refcoco.pth", img_size=64)
    ours, theirs = (p.predict(image_files()[4], ["the bus"])[0] for p in (resized, predictor))
    assert np.array_equal(ours.mask, theirs.mask)


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_overrides_that_contradict_the_checkpoint_are_clear_errors(lavt_checkpoint, tmp_path):
    from transformers import BertConfig

    for override, words in [({"swin_type": "tiny"}, ["swin_type='tiny'", "Swin-nano"]),
                            ({"window_size": 7}, ["window_size=7", "window-4"]),
                            ({"window12": True}, ["window12=True", "window-4"]),
                            ({"model": "lavt_one"}, ["model='lavt_one'", "lavt model"]),
                            ({"colour": "red"}, ["colour", "swin_type"])]:
        with pytest.raises(UserInputError) as err:
            Predictor.from_checkpoint(lavt_checkpoint, **override)
        assert all(word in str(err.value) for word in words), str(err.value)
    BertConfig(hidden_size=32, num_attention_heads=2).save_pretrained(tmp_path / "narrow_bert")
    with pytest.raises(UserInputError, match="narrow_bert.*384-wide"):
        Predictor.from_checkpoint(lavt_checkpoint, ck_bert=str(tmp_path / "narrow_bert"))
    assert Predictor.from_checkpoint(lavt_checkpoint, swin_type="nano", window_size=4, img_size=96).img_size == 96


# ---------------------------------------------------------------------------------------- images
def test_exif_rotated_photo_gets_a_mask_aligned_with_the_displayed_image(predictor, tmp_path):
    stored = np.asarray(Image.open(image_files()[3]).convert("RGB"))  # landscape: wider than high
    assert stored.shape[1] > stored.shape[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    decoded = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))
    displayed = np.rot90(decoded, k=-1)  # what a viewer shows: portrait
    from_file = predictor.predict(tmp_path / "phone.jpg", ["the man on the left", "the bus"])
    from_pixels = predictor.predict(displayed, ["the man on the left", "the bus"])
    opened = predictor.predict(Image.open(tmp_path / "phone.jpg"), ["the man on the left", "the bus"])
    for a, b, c in zip(from_file, from_pixels, opened):
        assert a.mask.shape == displayed.shape[:2] == stored.shape[1::-1]
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.mask, c.mask)
    twice = predictor_module.open_image(predictor_module.open_image(tmp_path / "phone.jpg"))
    assert twice.size == stored.shape[:2]  # (width, height) displayed: the orientation is applied once


def test_one_pixel_wide_16_bit_and_cmyk_images(predictor, tmp_path):
    grey = np.asarray(Image.open(image_files()[4]).convert("L"))
    column = grey[:, :1]
    Image.fromarray(column).save(tmp_path / "column.png")
    [thin] = predictor.predict(tmp_path / "column.png", "the man")
    assert thin.mask.shape == (grey.shape[0], 1)
    assert np.array_equal(thin.mask, predictor.predict(column, "the man")[0].mask)

    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grey, I;16
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    deep, eight = (predictor.predict(x, "the man")[0] for x in (tmp_path / "deep.png", grey))
    assert np.array_equal(deep.mask, eight.mask)
    assert np.array_equal(predictor.predict(grey.astype(np.float32) / 255, "the man")[0].mask, eight.mask)

    Image.open(image_files()[2]).convert("CMYK").save(tmp_path / "print.jpg")
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    cmyk = predictor.predict(tmp_path / "print.jpg", "the man")[0]
    plain = predictor.predict(Image.open(tmp_path / "print.jpg").convert("RGB"), "the man")[0]
    assert cmyk.mask.shape == plain.mask.shape and np.array_equal(cmyk.mask, plain.mask)


def test_bad_images_and_expressions(predictor, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    for image, error, words in [(tmp_path, UserInputError, "is a directory"),
                                (tmp_path / "missing.jpg", FileNotFoundError, "does not exist"),
                                (tmp_path / "broken.jpg", UserInputError, "cannot be decoded"),
                                (np.zeros((4, 5, 2)), UserInputError, "shape (4, 5, 2)"),
                                (np.zeros((0, 5)), UserInputError, "H, W >= 1"),
                                ([[1, 2]], UserInputError, "NumPy array")]:
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            predictor.predict(image, ["x"])
    with pytest.raises(UserInputError, match="one or more strings"):
        predictor.predict(image_files()[0], [])


# ------------------------------------------------------------------------------------------ demo
def run_demo(argv, capsys):
    try:
        cli.run_cli(demo_inference.main, demo_inference.get_demo_parser(), argv)
    except SystemExit as exit:
        return exit.code, capsys.readouterr()
    return 0, capsys.readouterr()


def test_demo_directory_image_fails_before_the_output_directory_exists(lavt_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code, captured = run_demo(["--resume", str(lavt_checkpoint), "--image", str(tmp_path), "--sentence", "x",
                               "--out-dir", str(out), "--device", "cpu"], capsys)
    assert code == 1 and "is a directory" in captured.err and "COCO" not in captured.err
    assert not out.exists()


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_demo_writes_masks_overlays_and_explains_empty_masks(lavt_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code, captured = run_demo(["--resume", str(lavt_checkpoint), "--image", image_files()[3], "--sentence",
                               "the man", "a bus", "--out-dir", str(out), "--device", "cpu"], capsys)
    assert code == 0 and "Model: lavt, Swin-nano, window 4, text encoder minilm, 64 px" in captured.out
    stem = os.path.splitext(os.path.basename(image_files()[3]))[0]
    size = Image.open(image_files()[3]).size
    for i in range(2):
        assert Image.open(out / f"{stem}_{i}_mask.png").size == size == Image.open(out / f"{stem}_{i}_overlay.png").size
    empty = Prediction("the green disk", np.zeros((4, 4), bool), np.zeros((4, 4), np.float32))
    assert "0 pixels" in demo_inference.describe(0, empty, "m.png")
    assert "finds nothing" in demo_inference.describe(0, empty, "m.png")


def test_overlay_is_visible_on_a_red_object():
    image = np.full((60, 80, 3), (90, 160, 90), np.uint8)  # green background
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:50] = True
    image[mask] = (230, 20, 20)  # a red object
    shown = np.asarray(demo_inference.overlay(Image.fromarray(image), mask)).astype(int)
    assert np.array_equal(shown[mask], image[mask])  # the object keeps its own colours
    outside = ~mask & ~demo_inference.outline(mask)
    assert (shown[outside] < image[outside]).all()  # everything else is darkened
    band = shown[demo_inference.outline(mask)]
    assert len(band) > 0 and (np.abs(band - [230, 20, 20]).sum(axis=1) > 200).all()  # outline far from red
