"""Referring segmentation from Python: load a checkpoint once, then `predict(image, expressions)`.

`Predictor.from_checkpoint(path)` reads the architecture off the checkpoint (lib/architecture.py),
ours or a released one, so options are needed only to override it. `predict` takes a path, a PIL
image or a NumPy array (H x W grey or H x W x 3/4 RGB(A), any integer or float depth), applies the
EXIF orientation of photos, and runs all expressions of the image in one batched forward pass at
img_size x img_size (bilinear resize, ImageNet normalisation, as in training). Per expression it
returns the mask at the image's own size (the logits are resized bilinearly, then argmax, as in
test.py's `--eval-protocol original`), the foreground probability and, for a model with a
no-target head, its decision and score. With the separate BERT of `lavt`, the features of an
expression seen before are reused, not recomputed.

Example (a randomly initialised nano model, so its masks mean nothing):

>>> import argparse, os, tempfile
>>> import numpy as np
>>> from lib.checkpoint_io import save_checkpoint
>>> from lib.predictor import Predictor
>>> from lib.referring_model import build_model
>>> options = argparse.Namespace(model="lavt", swin_type="nano", window_size=4, ck_bert="minilm",
...                              bert_tokenizer="minilm", img_size=64)
>>> model = build_model(options, pretrained=False)
>>> folder = tempfile.TemporaryDirectory()
>>> path = os.path.join(folder.name, "nano.pth")
>>> save_checkpoint(path, model=model.model, bert_model=model.bert_model, args=options)
>>> predictor = Predictor.from_checkpoint(path, device="cpu")
>>> image = np.zeros((30, 41, 3), dtype=np.uint8)
>>> first, second = predictor.predict(image, ["the red disk", "the square on the left"])
>>> first.mask.shape, first.mask.dtype, first.probability.dtype, first.no_target
((30, 41), dtype('bool'), dtype('float32'), None)
>>> folder.cleanup()
"""
import os
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from bert import load_tokenizer
from bert.tokenize import expression_problems, tokenize_expressions
from errors import UserInputError
from transforms import get_transform

from .architecture import load_inferred_model
from .images import decode_rgb_image, eight_bit, rgb_image

__all__ = ["Predictor", "Prediction", "open_image"]

AMP_DTYPES = {None: None, "off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Distinct expressions whose text features are kept (20 x 768 floats, 61 KB each for bert-base).
TEXT_CACHE_SIZE = 4096


@dataclass
class Prediction:
    """One expression's result; arrays have the (EXIF-oriented) image's height and width."""

    expression: str
    mask: np.ndarray  # bool (H, W): argmax of the resized logits
    probability: np.ndarray  # float32 (H, W): softmax foreground probability of the resized logits
    no_target: Optional[bool] = None  # the no-target head's decision; None without a head
    no_target_score: Optional[float] = None  # its probability that nothing is referred


def open_image(image):
    """A path, PIL image or NumPy array as an 8-bit RGB PIL image, EXIF orientation applied."""
    if isinstance(image, (str, os.PathLike)):
        return _open_image_file(os.fspath(image))
    if isinstance(image, Image.Image):
        return rgb_image(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        return _array_image(image)
    raise UserInputError(f"image: expected a file path, a PIL image or a NumPy array, got {type(image).__name__}")


def _open_image_file(path):
    if os.path.isdir(path):
        raise UserInputError(f"The image '{path}' is a directory; pass an image file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The image file '{path}' does not exist; check the path.")
    return decode_rgb_image(path, f"The image '{path}'", exif_transpose=True)


def _array_image(array):
    """(H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA of any depth (see `eight_bit`)."""
    if array.dtype.kind not in "biuf":  # complex, object, strings, dates: no pixel values
        raise UserInputError(f"image: a NumPy array of {array.dtype} is not an image; pass booleans, integers or "
                             "real floats.")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserInputError(f"image: the array holds {int((~np.isfinite(array)).sum())} NaN/inf value(s); "
                             "replace them (e.g. np.nan_to_num) before predicting.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise UserInputError(f"image: a NumPy array must be (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA "
                             f"with H, W >= 1, got shape {array.shape}")
    return Image.fromarray(np.ascontiguousarray(eight_bit(array))).convert("RGB")


class Predictor:
    """A loaded referring segmentation model: `predict(image, expressions)` -> list of `Prediction`.

    `model`: a `lib.referring_model.ReferringModel`; `tokenizer`: its WordPiece tokenizer;
    `img_size`: the square input size; `amp`: None / "bf16" / "fp16" (CUDA only) autocast;
    `args`: the build options, kept as `predictor.args`. Prefer `Predictor.from_checkpoint`.
    """

    def __init__(self, model, tokenizer, img_size, device="cpu", amp=None, args=None):
        self.device = torch.device(device)
        if amp not in AMP_DTYPES:
            raise UserInputError(f"amp={amp!r}: choose one of None, 'bf16', 'fp16'")
        if amp == "fp16" and self.device.type != "cuda":
            raise UserInputError("amp='fp16' needs a CUDA device; use amp='bf16' on the CPU.")
        self.amp_dtype = AMP_DTYPES[amp]
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.img_size = int(img_size)
        self.transform = get_transform(self.img_size)
        self.args = args
        self._cached_expressions = set()
        if model.bert_model is not None:
            model.cache_text_features()  # frozen separate BERT: features once per expression

    @classmethod
    def from_checkpoint(cls, path, device="cpu", amp=None, allow_nonfinite=False, **overrides):
        """Load `path`; `overrides` (model, swin_type, window12, window_size, mha, fusion, ck_bert,
        bert_tokenizer, img_size) replace what the checkpoint says and must agree with its shapes.
        NaN/inf weights are refused unless `allow_nonfinite`."""
        model, args = load_inferred_model(path, allow_nonfinite=allow_nonfinite, **overrides)
        return cls(model, load_tokenizer(args.bert_tokenizer), args.img_size, device=device, amp=amp, args=args)

    @torch.no_grad()
    def predict(self, image, expressions):
        """Masks for `expressions` (a string or a list of strings) in `image`; see the module docstring."""
        expressions = [expressions] if isinstance(expressions, str) else list(expressions)
        if not expressions or not all(isinstance(e, str) for e in expressions):
            raise UserInputError("expressions: pass one or more strings")
        image = open_image(image)
        pixels, _ = self.transform(image)
        lengths = []
        input_ids, attention_mask = tokenize_expressions(self.tokenizer, expressions, lengths=lengths)
        for index, problem in expression_problems(expressions, lengths, input_ids.shape[1]):
            warnings.warn(f"Expression {index + 1} {expressions[index]!r} {problem}.", stacklevel=2)
        images = pixels.unsqueeze(0).expand(len(expressions), -1, -1, -1).to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.model(images, input_ids.to(self.device), attention_mask.to(self.device))
        self._bound_text_cache(expressions)
        decisions = _no_target(outputs.get("no_target_logits"), len(expressions))
        predictions = []
        for expression, logits, (no_target, score) in zip(expressions, outputs["logits"].float(), decisions):
            # One expression at a time: a 12-megapixel photo's logits take 96 MB each.
            logits = F.interpolate(logits[None], size=(image.height, image.width), mode="bilinear",
                                   align_corners=True)[0]
            predictions.append(Prediction(expression, logits.argmax(0).cpu().numpy().astype(bool),
                                          logits.softmax(0)[1].cpu().numpy(), no_target, score))
        return predictions

    def _bound_text_cache(self, expressions):
        if self.model.bert_model is None:
            return
        self._cached_expressions.update(expressions)
        if len(self._cached_expressions) > TEXT_CACHE_SIZE:  # start afresh rather than grow without bound
            self._cached_expressions.clear()
            self.model.cache_text_features()


def _no_target(logits, count):
    """Per sample (decision, score): the no-target head's logit (B,) through a sigmoid; positive = nothing."""
    if logits is None:
        return [(None, None)] * count
    return [(bool(score > 0.5), float(score)) for score in torch.sigmoid(logits.float()).cpu()]
