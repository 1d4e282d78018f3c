"""hubconf.py through torch.hub.load(..., source="local"), as a user calls it."""
import argparse
import os

import pytest
import torch

from lib.checkpoint_io import save_checkpoint
from lib.predictor import Predictor
from lib.referring_model import build_model
from tests.nano_models import EXPRESSIONS, half_foreground_nano, write_blocks_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # saves and loads a checkpoint with a text encoder (seconds)
def test_lavt_predictor_entry_returns_the_checkpoints_predictor(tmp_path):
    image = write_blocks_image(str(tmp_path / "blocks.png"))
    model, options = half_foreground_nano(image)
    path = str(tmp_path / "nano.pth")
    save_checkpoint(path, model=model.model, bert_model=model.bert_model, args=options)
    predictor = torch.hub.load(REPO, "lavt_predictor", checkpoint=path, source="local")
    assert isinstance(predictor, Predictor) and predictor.args.swin_type == "nano"
    direct = Predictor.from_checkpoint(path).predict(image, EXPRESSIONS)
    for got, expected in zip(predictor.predict(image, EXPRESSIONS), direct):
        assert 0 < expected.mask.mean() < 1 and (got.mask == expected.mask).all()


def test_lavt_entry_builds_the_released_options():
    hub = torch.hub.load(REPO, "lavt", source="local", swin_type="nano", window_size=4, ck_bert="minilm")
    assert not hub.training and hub.bert_model is not None
    assert hub.args.model == "lavt" and hub.args.window12 and hub.args.img_size == 480
    # The released defaults other than the ones replaced: Swin-B, window 12, bert-base-uncased.
    from hubconf import RELEASED_OPTIONS

    assert RELEASED_OPTIONS == {"model": "lavt", "swin_type": "base", "window12": True,
                                "ck_bert": "bert-base-uncased", "img_size": 480}
    # The same architecture as build_model with those options: every key and shape.
    options = argparse.Namespace(**{**RELEASED_OPTIONS, "swin_type": "nano", "window_size": 4, "ck_bert": "minilm",
                                    "pretrained_swin_weights": ""})
    reference = build_model(options, pretrained=False).state_dict()
    assert {k: v.shape for k, v in hub.state_dict().items()} == {k: v.shape for k, v in reference.items()}


@pytest.mark.slow  # saves and loads a checkpoint with a text encoder (seconds)
def test_lavt_entry_loads_a_checkpoint(tmp_path):
    options = argparse.Namespace(model="lavt", swin_type="nano", window_size=4, ck_bert="minilm",
                                 pretrained_swin_weights="")
    torch.manual_seed(1)
    model = build_model(options, pretrained=False)
    save_checkpoint(tmp_path / "nano.pth", model=model.model, bert_model=model.bert_model, args=options)
    hub = torch.hub.load(REPO, "lavt", source="local", checkpoint=str(tmp_path / "nano.pth"), swin_type="nano",
                         window_size=4, ck_bert="minilm")
    for key, value in model.state_dict().items():
        assert torch.equal(hub.state_dict()[key], value), key
