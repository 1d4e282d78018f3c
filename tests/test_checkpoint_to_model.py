"""Issue 20, item 3: one way from a checkpoint to a model.

test.py and the probes read the architecture off the checkpoint, as the Predictor does; their model
flags (the original commands' --swin_type, --window12, ...) are accepted as overrides, one that
contradicts the checkpoint is an error naming both values, and a checkpoint in the released layout
(`module.` prefixes, a separate bert_model, the original training args) is evaluated without any.
"""
import argparse
import json
import os
import re
import runpy

import pytest
import torch

from args import get_test_parser, get_train_parser
from errors import UserInputError
from lib.architecture import OVERRIDABLE, load_model
from lib.checkpoint_io import load_checkpoint_file
from tests.nano_models import half_foreground_nano, write_blocks_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_ROOT = os.path.join(REPO, "tests", "fixtures", "refer_fixture")
DATA_FLAGS = ["--device", "cpu", "--refer_data_root", FIXTURE_ROOT, "--dataset", "refcoco", "--workers", "0"]
# The original LAVT command's model flags, for the nano model the released-layout file holds.
ORIGINAL_MODEL_FLAGS = ["--model", "lavt", "--swin_type", "nano", "--ck_bert", "minilm", "--bert_tokenizer", "minilm",
                        "--img_size", "64", "--ddp_trained_weights"]


@pytest.fixture(scope="module")
def released(module_tmp):
    """(path of a nano LAVT saved as the released checkpoints are, the model it was saved from)."""
    root = module_tmp("released")
    model, _ = half_foreground_nano(write_blocks_image(root / "blocks.png"))
    # The original train.py saved the DDP-wrapped modules and its own argparse options, which have
    # none of this project's additions (fusion, window_size, no_target_head, a content hash).
    original_args = argparse.Namespace(model="lavt", swin_type="nano", window12=False, mha="", ck_bert="minilm",
                                       bert_tokenizer="minilm", img_size=64, dataset="refcoco", splitBy="unc",
                                       ddp_trained_weights=False, pretrained_swin_weights="", lr=5e-5, epochs=40)
    checkpoint = {"model": {f"module.{k}": v for k, v in model.model.state_dict().items()},
                  "bert_model": {f"module.{k}": v for k, v in model.bert_model.state_dict().items()},
                  "optimizer": {}, "epoch": 39, "args": original_args, "lr_scheduler": {}}
    path = root / "refcoco.pth"
    torch.save(checkpoint, path)
    return path, model.eval()


def logits(model):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 64)
    input_ids = torch.tensor([[101, 1996, 2417, 3796, 102] + [0] * 15] * 2)
    with torch.no_grad():
        return model(images, input_ids, (input_ids > 0).long())["logits"]


def test_test_parser_reads_the_model_from_the_checkpoint_and_training_keeps_its_defaults():
    test = get_test_parser().parse_args([])
    assert all(getattr(test, name) is None for name in OVERRIDABLE)
    train = get_train_parser().parse_args([])
    assert (train.model, train.swin_type, train.window12, train.ck_bert, train.bert_tokenizer, train.img_size,
            train.fusion, train.mha, train.no_target_head) == ("lavt", "base", False, "bert-base-uncased",
                                                               "bert-base-uncased", 480, "pwam", "", False)


def test_model_flags_are_defined_once():
    """Each model flag has one add_argument (in lib/architecture.py), shared by every script that builds
    a LAVT model: train.py and test.py (args.py), the probes, the demo and the ONNX export."""
    scripts = ["args.py", "train.py", "test.py", "demo_inference.py", "tools/probes.py", "tools/export_onnx.py",
               *(os.path.join("lib", name) for name in os.listdir(os.path.join(REPO, "lib")) if name.endswith(".py"))]
    sources = {}
    for path in scripts:
        with open(os.path.join(REPO, path), encoding="utf-8") as handle:
            sources[path] = handle.read()
    for flag in ("--model", "--swin_type", "--window12", "--window-size", "--ck_bert", "--mha", "--fusion",
                 "--img_size", "--bert_tokenizer", "--no-target-head"):
        pattern = re.compile(r"add_argument\(\s*" + re.escape(f'"{flag}"'))
        defined = [path for path, text in sources.items() if pattern.search(text)]
        assert defined == [], f"{flag} is defined with its own add_argument in {defined}"
    assert "add_model_arguments(" in sources["args.py"]


def test_released_layout_loads_without_flags_and_fills_in_the_options(released):
    path, source_model = released
    args = get_test_parser().parse_args([*DATA_FLAGS, "--resume", str(path)])
    model = load_model(args, torch.device("cpu"), load_checkpoint_file(path))
    assert torch.equal(logits(model), logits(source_model))
    # What the dataset and the results file read next now describes the model that was built.
    assert (args.model, args.swin_type, args.window_size, args.ck_bert, args.bert_tokenizer, args.img_size,
            args.fusion, args.no_target_head) == ("lavt", "nano", 4, "minilm", "minilm", 64, "pwam", False)


def test_the_original_command_flags_still_work(released):
    path, source_model = released
    args = get_test_parser().parse_args([*DATA_FLAGS, *ORIGINAL_MODEL_FLAGS, "--resume", str(path)])
    assert torch.equal(logits(load_model(args, torch.device("cpu"))), logits(source_model))


@pytest.mark.parametrize("extra, given, held", [
    (["--swin_type", "base"], "swin_type='base'", "Swin-nano"),
    (["--model", "lavt_one"], "model='lavt_one'", "a lavt model"),
    (["--window12"], "window12=True", "window-4 attention tables"),
    (["--window-size", "7"], "window_size=7", "window-4 attention tables"),
    (["--mha", "4-4-4-4"], "mha='4-4-4-4'", "mha=''"),
    (["--no-target-head"], "no_target_head=True", "no no-target head"),
])
def test_a_flag_that_contradicts_the_checkpoint_names_both_values(released, extra, given, held):
    path, _ = released
    args = get_test_parser().parse_args([*DATA_FLAGS, *extra, "--resume", str(path)])
    with pytest.raises(UserInputError) as err:
        load_model(args, torch.device("cpu"))
    message = str(err.value)
    assert given in message and held in message and f"checkpoint '{path}' (--resume)" in message, message


@pytest.mark.slow
def test_test_py_evaluates_a_released_layout_checkpoint_without_architecture_flags(released, tmp_path, capsys):
    path, _ = released
    main = runpy.run_path(os.path.join(REPO, "test.py"), run_name="cli_under_test")["main"]
    records = {}
    for name, model_flags in (("bare", []), ("original", ORIGINAL_MODEL_FLAGS)):
        results = tmp_path / f"{name}.json"
        main(get_test_parser().parse_args([*DATA_FLAGS, *model_flags, "--split", "val", "--resume", str(path),
                                           "--results-json", str(results)]))
        records[name] = json.loads(results.read_text())
    assert "Mean IoU is" in capsys.readouterr().out
    bare, original = records["bare"], records["original"]
    assert (bare["model"], bare["swin_type"], bare["img_size"]) == ("lavt", "nano", 64)
    assert bare["num_samples"] > 0
    timing = ("seconds",)
    assert {k: v for k, v in bare.items() if k not in timing} == {k: v for k, v in original.items() if k not in timing}
