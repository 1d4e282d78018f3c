"""tools/export_weights.py and lib/weights.py: model-only files that every loader accepts.

A random nano LAVT (MiniLM text encoder, frozen) with its optimizer state is saved as a training
checkpoint; its model-only exports must drop the training state, name the unchanged MiniLM instead
of copying it, fit the size targets and give the checkpoint's masks back (exactly in fp32, on at
least 99.5% of pixels in fp16).
"""
import argparse
import importlib.util
import os

import numpy as np
import pytest
import torch

from lib.architecture import load_inferred_model, load_model
from lib.checkpoint_io import CONTENT_HASH_KEY, content_hash, load_checkpoint_file, save_checkpoint
from lib.predictor import Predictor
from lib.referring_model import build_model
from lib.state_dict import CheckpointError
from lib.weights import model_only_weights
from tests.nano_models import EXPRESSIONS, half_foreground_nano, write_blocks_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow  # every test saves and reloads checkpoints with a text encoder (seconds each)
NANO_LIMIT_BYTES = 10 * 10**6


def export_tool():
    spec = importlib.util.spec_from_file_location("export_weights", os.path.join(REPO, "tools", "export_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(source, out, *flags):
    tool = export_tool()
    tool.main(tool.get_parser().parse_args(["--resume", str(source), "--out", str(out), *flags]))
    return str(out)


def training_checkpoint(path, model, options):
    """As train.py saves it: model, separate BERT, AdamW state after a step, scheduler, epoch."""
    trainable = list(model.model.parameters())  # the MiniLM stays frozen, as in the quickstart
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    for parameter in trainable:
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # fills exp_avg / exp_avg_sq, two more copies of the model; lr 0 grads keep weights
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(path, model=model.model, bert_model=model.bert_model, optimizer=optimizer,
                    lr_scheduler=scheduler, epoch=3, args=options)
    return str(path)


@pytest.fixture(scope="module")
def nano(module_tmp):
    root = module_tmp("weights")
    image = write_blocks_image(str(root / "blocks.png"))
    model, options = half_foreground_nano(image)
    with torch.no_grad():  # AdamW's decoupled weight decay would move them; keep the test's model fixed
        reference = {k: v.clone() for k, v in model.model.state_dict().items()}
    checkpoint = training_checkpoint(root / "checkpoint.pth", model, options)
    model.model.load_state_dict(reference)
    return {"root": root, "image": image, "checkpoint": checkpoint, "options": options}


def masks(path, image):
    return np.stack([p.mask for p in Predictor.from_checkpoint(path, device="cpu").predict(image, EXPRESSIONS)])


def test_fp32_export_drops_training_state_and_references_minilm(nano):
    path = export(nano["checkpoint"], nano["root"] / "fp32.pth")
    stored = torch.load(path, weights_only=False)
    assert {"optimizer", "lr_scheduler", "epoch", "bert_model"}.isdisjoint(stored)
    assert stored["text_encoder_name"] == "minilm" and stored["text_encoder_in"] == "bert_model"
    assert os.path.getsize(path) < os.path.getsize(nano["checkpoint"]) / 7  # 18 MB of 144 MB
    # Loaded back, it is the checkpoint: the same tensors, MiniLM included, in fp32.
    original, loaded = load_checkpoint_file(nano["checkpoint"]), load_checkpoint_file(path)
    for entry in ("model", "bert_model"):
        assert original[entry].keys() == loaded[entry].keys()
        for key, value in original[entry].items():
            assert loaded[entry][key].dtype == value.dtype and torch.equal(loaded[entry][key], value), key
    expected = masks(nano["checkpoint"], nano["image"])
    assert 0.2 < expected.mean() < 0.8
    np.testing.assert_array_equal(masks(path, nano["image"]), expected)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_masks_agree_with_the_checkpoint(nano, dtype):
    fp32 = export(nano["checkpoint"], nano["root"] / "fp32_for_half.pth")
    half = export(nano["checkpoint"], nano["root"] / f"{dtype}.pth", "--dtype", dtype)
    stored = torch.load(half, weights_only=False)["model"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {getattr(torch, {"fp16": "float16",
                                                                                          "bf16": "bfloat16"}[dtype])}
    assert os.path.getsize(half) < 0.56 * os.path.getsize(fp32) and os.path.getsize(half) <= NANO_LIMIT_BYTES
    expected = masks(nano["checkpoint"], nano["image"])
    agreement = float((masks(half, nano["image"]) == expected).mean())
    print(f"{dtype} mask agreement {100 * agreement:.3f}%")
    assert agreement >= (0.995 if dtype == "fp16" else 0.98)  # bf16 keeps 8 bits of mantissa, fp16 11


def test_every_loader_accepts_the_file(nano):
    path = export(nano["checkpoint"], nano["root"] / "loaders.pth", "--dtype", "fp16")
    # export_onnx and the demo: the architecture read off the file
    model, used = load_inferred_model(path)
    assert (used.model, used.swin_type, used.window_size, used.ck_bert, used.img_size) == ("lavt", "nano", 4,
                                                                                            "minilm", 64)
    assert next(model.parameters()).dtype == torch.float32
    # test.py: its flags as overrides of what the file says
    args = argparse.Namespace(**vars(nano["options"]), resume=path)
    assert next(load_model(args, "cpu").parameters()).dtype == torch.float32


def test_trained_text_encoder_is_copied(nano, capsys):
    checkpoint = load_checkpoint_file(nano["checkpoint"])
    key = "encoder.layer.0.attention.self.query.weight"
    checkpoint["bert_model"][key] = checkpoint["bert_model"][key] + 0.5
    checkpoint[CONTENT_HASH_KEY] = content_hash(checkpoint)  # a trained file, not a damaged one
    trained = str(nano["root"] / "trained_bert.pth")
    torch.save(checkpoint, trained)
    path = export(trained, nano["root"] / "trained_export.pth")
    assert "text encoder copied" in capsys.readouterr().out
    stored = torch.load(path, weights_only=False)
    assert "text_encoder_name" not in stored
    assert torch.equal(load_checkpoint_file(path)["bert_model"][key], checkpoint["bert_model"][key])


def test_lavt_one_text_encoder_is_referenced_inside_the_model(tmp_path):
    options = argparse.Namespace(model="lavt_one", swin_type="nano", ck_bert="minilm", bert_tokenizer="minilm",
                                 pretrained_swin_weights="", window_size=4, img_size=64)
    model = build_model(options)
    save_checkpoint(tmp_path / "one.pth", model=model.model, args=options)
    weights, note = model_only_weights(load_checkpoint_file(tmp_path / "one.pth"))
    assert "referenced" in note and weights["text_encoder_in"] == "model"
    assert not any(k.startswith("text_encoder.") for k in weights["model"])
    torch.save(weights, tmp_path / "one_weights.pth")
    restored, _ = load_inferred_model(tmp_path / "one_weights.pth")
    for key, value in model.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value), key


def test_fp16_overflow_is_refused():
    checkpoint = {"model": {"w": torch.tensor([1.0, 7e4])}, "args": argparse.Namespace()}
    with pytest.raises(CheckpointError, match="fp16's range.*bf16"):
        model_only_weights(checkpoint, "fp16", reference_text_encoder=False)
    bf16, _ = model_only_weights(checkpoint, "bf16", reference_text_encoder=False)
    assert bf16["model"]["w"].dtype == torch.bfloat16


@pytest.mark.slow
def test_swin_b_bert_base_fp16_is_half_of_fp32(tmp_path):
    """The released architecture's size (random weights, BERT-base built from its configuration:
    no download); BERT-base sits in a local folder, so it is copied, as a fine-tuned one would be."""
    from transformers import BertConfig

    from bert import load_tokenizer

    encoder = str(tmp_path / "bert_base")
    BertConfig().save_pretrained(encoder)  # bert-base-uncased's configuration: 768 wide, 12 layers
    load_tokenizer("minilm").save_pretrained(encoder)
    options = argparse.Namespace(model="lavt", swin_type="base", window12=True, ck_bert=encoder,
                                 bert_tokenizer=encoder, pretrained_swin_weights="", img_size=480)
    model = build_model(options, pretrained=False)
    save_checkpoint(tmp_path / "base.pth", model=model.model, bert_model=model.bert_model, args=options)
    del model
    fp32_size = os.path.getsize(export(tmp_path / "base.pth", tmp_path / "base_fp32.pth"))
    os.remove(tmp_path / "base_fp32.pth")  # 0.9 GB: a CI disk may not hold all three files
    fp16_size = os.path.getsize(export(tmp_path / "base.pth", tmp_path / "base_fp16.pth", "--dtype", "fp16"))
    print(f"Swin-B + BERT-base: fp32 {fp32_size / 1e6:.1f} MB, fp16 {fp16_size / 1e6:.1f} MB")
    assert 0.49 < fp16_size / fp32_size < 0.52
