"""One ONNX graph holding the text encoder and LAVT, and its check against PyTorch.

The graph takes `image` (B, 3, S, S) float32 (ImageNet-normalised, S = the training img_size),
`input_ids` (B, 20) int64 and `attention_mask` (B, 20) int64 (WordPiece ids of
"[CLS] words [SEP]", the first 20 kept, padded with 0; the mask is 1 on kept ids) and returns
`logits` (B, 2, S, S) (argmax over the 2 classes: the mask), plus `no_target_logits` (B,) for a
model with the no-target head. B is dynamic. It is exported with PyTorch's `torch.export`-based
ONNX exporter (`dynamo=True`), which needs the optional packages onnx, onnxscript and
onnxruntime (for the check); `require_onnx()` names whichever is missing.
"""
import importlib
import logging
import warnings

import numpy as np
import torch
from torch import nn

from errors import UserInputError

__all__ = ["OnnxReferringModel", "require_onnx", "export_onnx", "onnx_session", "compare_with_pytorch",
           "INPUT_NAMES"]

INPUT_NAMES = ("image", "input_ids", "attention_mask")
OPTIONAL_PACKAGES = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}
OPSET = 18


def require_onnx():
    """Import the optional ONNX packages, or fail naming the missing one and how to install it."""
    for module, package in OPTIONAL_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserInputError(f"ONNX export needs the optional package '{package}', which is not installed: "
                                 f"pip install {' '.join(OPTIONAL_PACKAGES.values())} (or make setup, which "
                                 "installs requirements-dev.txt).") from None


class OnnxReferringModel(nn.Module):
    """A `ReferringModel` with tensor outputs: (image, input_ids, attention_mask) -> logits
    [, no_target_logits]. The text features are always computed (no cache)."""

    def __init__(self, referring_model):
        super().__init__()
        self.referring_model = referring_model
        self.output_names = ["logits"] + (["no_target_logits"]
                                          if getattr(referring_model.model, "no_target_head", None) is not None
                                          else [])

    def _encode_text(self, input_ids, attention_mask):
        return self.referring_model.bert_model(input_ids, attention_mask=attention_mask)[0]

    def forward(self, image, input_ids, attention_mask):
        model = self.referring_model
        outputs = model.forward_with(self._encode_text, image, input_ids, attention_mask)
        return tuple(outputs[name] for name in self.output_names)


def sample_inputs(batch, img_size, tokenizer=None, seed=0):
    """Random normalised images and token ids of a few phrases (random ids without a tokenizer)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, img_size, img_size, generator=generator)
    if tokenizer is not None:
        from bert.tokenize import tokenize_expressions

        phrases = ["the man on the left", "a red car", "the dog next to the bench in the back of the picture",
                   "bowl", "the second glass from the right"]
        input_ids, attention_mask = tokenize_expressions(tokenizer, [phrases[i % len(phrases)] for i in range(batch)])
    else:
        input_ids = torch.randint(1000, 5000, (batch, 20), generator=generator)
        lengths = torch.randint(3, 21, (batch,), generator=generator)
        attention_mask = (torch.arange(20)[None] < lengths[:, None]).long()
        input_ids = input_ids * attention_mask
    return image, input_ids, attention_mask


def export_onnx(referring_model, path, img_size, tokenizer=None, opset=OPSET):
    """Write `referring_model` (eval mode, CPU) to the single file `path` (weights inside, so at most
    2 GB) with a dynamic batch dimension; returns the output names."""
    require_onnx()
    wrapper = OnnxReferringModel(referring_model).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic = {name: {0: batch} for name in INPUT_NAMES}
    # A batch of 2 to trace with: a size-1 dimension would be specialised to 1.
    inputs = sample_inputs(2, img_size, tokenizer)
    # The optimizer's constant folding logs harmless "Evaluation failed" warnings about shapes it
    # leaves to runtime; keep them from looking like errors.
    folding_log = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = folding_log.level
    folding_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
            torch.onnx.export(wrapper, inputs, str(path), dynamo=True, external_data=False, opset_version=opset,
                              input_names=list(INPUT_NAMES), output_names=wrapper.output_names,
                              dynamic_shapes=dynamic, verbose=False)
    finally:
        folding_log.setLevel(level)
    return wrapper.output_names


def onnx_session(path, threads=None):
    """An onnxruntime CPU session for `path` (`threads`: intra-op threads, default all cores)."""
    require_onnx()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare_with_pytorch(session, referring_model, inputs):
    """(max |logit difference|, fraction of pixels whose argmax agrees) of ONNX vs PyTorch on `inputs`."""
    feed = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, inputs)}
    onnx_logits = session.run(["logits"], feed)[0]
    with torch.no_grad():
        torch_logits = OnnxReferringModel(referring_model).eval()(*inputs)[0].numpy()
    if onnx_logits.shape != torch_logits.shape:
        raise RuntimeError(f"ONNX logits {onnx_logits.shape} vs PyTorch {torch_logits.shape}")
    agreement = float(np.mean(onnx_logits.argmax(1) == torch_logits.argmax(1)))
    return float(np.abs(onnx_logits - torch_logits).max()), agreement
