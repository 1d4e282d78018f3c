"""A random nano LAVT whose masks are not trivially empty, for tests that compare masks."""
import argparse

import numpy as np
import torch
from PIL import Image

from bert import load_tokenizer
from lib.predictor import Predictor
from lib.referring_model import build_model

EXPRESSIONS = ["the red block on the left", "the big square"]


def write_blocks_image(path):
    """Two-colour blocks, 37 x 53: not square, not the model's input size."""
    rows, cols = np.mgrid[:37, :53]
    blocks = ((rows // 9 + cols // 7) % 2)[..., None] == 1
    Image.fromarray(np.where(blocks, [230, 40, 40], [30, 30, 200]).astype(np.uint8)).save(path)
    return path


def half_foreground_nano(image_path, expressions=EXPRESSIONS, seed=0, model="lavt"):
    """(ReferringModel, options): random weights, the class-1 bias shifted so that about half of the
    pixels of `image_path` are foreground: an all-empty mask would match a wrongly placed, transposed
    or degraded one."""
    torch.manual_seed(seed)
    options = argparse.Namespace(model=model, swin_type="nano", ck_bert="minilm", bert_tokenizer="minilm",
                                 pretrained_swin_weights="", window_size=4, img_size=64)
    referring_model = build_model(options)
    predictions = Predictor(referring_model, load_tokenizer("minilm"), 64).predict(image_path, expressions)
    probability = np.concatenate([p.probability.ravel() for p in predictions]).astype(np.float64)
    probability = probability.clip(1e-12, 1 - 1e-12)
    with torch.no_grad():
        referring_model.model.classifier.conv1_1.bias[1] -= float(np.median(np.log(probability / (1 - probability))))
    return referring_model, options
