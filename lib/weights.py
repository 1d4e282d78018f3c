"""Model-only weights files for deployment: what inference needs, nothing a resumed training needs.

`model_only_weights(checkpoint)` keeps the `model` (and `bert_model`) state dicts and the
training options `args` (the architecture is read from them and from the shapes, as for any
checkpoint), and drops the optimizer, scheduler, scaler and RNG states. Floating-point tensors can
be stored in fp16 or bf16, which halves the file; they are widened back to fp32 on loading, so
the model computes in fp32 as usual. A text encoder that training left unchanged (frozen, equal
tensor for tensor to the weights its name loads, e.g. the packaged MiniLM) is not copied: the
file names it (`text_encoder_name`) and loading takes it from its package or the Hugging Face
cache again. A local directory is never referenced, since the file would then only work on this
machine.

`load_checkpoint_file` (lib/checkpoint_io.py) expands such a file back into the released layout
with `expand_model_only_weights`, so test.py, the Predictor, the web demo and export_onnx load it
like any checkpoint.
"""
import argparse
import os
from collections import OrderedDict

import torch

from .state_dict import OPTIONAL_BERT_BUFFERS, CheckpointError, strip_prefixes

__all__ = ["WEIGHTS_FORMAT", "STORAGE_DTYPES", "model_only_weights", "expand_model_only_weights",
           "is_model_only_weights"]

WEIGHTS_FORMAT = "lavt-model-only-v1"
STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TEXT_ENCODER_PREFIX = "text_encoder."  # where lavt_one keeps its BERT, inside the model state dict
FP16_MAX = torch.finfo(torch.float16).max


def is_model_only_weights(checkpoint):
    return checkpoint.get("format") == WEIGHTS_FORMAT


def _text_encoder_state(checkpoint):
    """(state dict of the text encoder, where it lives: 'bert_model' or 'model'), or (None, None)."""
    model = strip_prefixes(checkpoint["model"])
    inside = OrderedDict((k[len(TEXT_ENCODER_PREFIX):], v) for k, v in model.items()
                         if k.startswith(TEXT_ENCODER_PREFIX))
    if inside:
        return inside, "model"
    if isinstance(checkpoint.get("bert_model"), dict):
        return strip_prefixes(checkpoint["bert_model"]), "bert_model"
    return None, None


def _unchanged_from_package(state, name):
    """Why `state` cannot be referenced by `name`, or None when it equals the weights `name` loads.

    The pooler and the optional position/type-id buffers are ignored, as loading ignores them.
    """
    if not name:
        return "the checkpoint does not name its text encoder (pass --ck_bert)"
    if os.path.isdir(os.path.expanduser(name)):
        return f"its text encoder '{name}' is a local directory, which another machine would not have"
    from bert import load_text_encoder

    try:
        package = load_text_encoder(name, pretrained=True).state_dict()
    except (OSError, ValueError) as err:  # not installed / not cached: copying is the safe choice
        return f"the weights of '{name}' cannot be loaded here ({err})"
    kept = {k: v for k, v in state.items() if not k.startswith("pooler.") and k not in OPTIONAL_BERT_BUFFERS}
    missing = sorted(set(package) - set(kept) - set(OPTIONAL_BERT_BUFFERS))
    if missing or set(kept) - set(package):
        return f"its tensors are not the ones of '{name}' (other keys)"
    changed = [k for k, v in kept.items() if v.shape != package[k].shape or not torch.equal(v, package[k])]
    if changed:
        return f"{len(changed)} of its tensors differ from '{name}' (trained; e.g. {changed[0]})"
    return None


def _stored(state, dtype, where):
    """`state` with its floating-point tensors cast to `dtype` (fp16: refused where values overflow)."""
    out = OrderedDict()
    for key, value in state.items():
        if value.is_floating_point() and value.dtype != dtype:
            if dtype == torch.float16 and value.numel() and value.abs().max() > FP16_MAX:
                raise CheckpointError(f"{where} '{key}' holds values beyond fp16's range ({FP16_MAX:g}); "
                                      "store it in bf16 or fp32.")
            value = value.to(dtype)
        out[key] = value.contiguous().clone()  # a view would save the whole storage it belongs to
    return out


def model_only_weights(checkpoint, dtype="fp32", reference_text_encoder=True, ck_bert=None):
    """(weights dict to save, note on the text encoder) from a loaded checkpoint dict.

    `dtype`: 'fp32', 'fp16' or 'bf16' storage for floating-point tensors. `reference_text_encoder`:
    name an unchanged text encoder instead of copying it. `ck_bert`: its name, when the checkpoint's
    `args` do not say it.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {', '.join(STORAGE_DTYPES)}")
    if is_model_only_weights(checkpoint):
        checkpoint = expand_model_only_weights(checkpoint)
    if not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"expected a checkpoint with a 'model' state dict, got entries {sorted(checkpoint)[:10]}")
    args = checkpoint.get("args")
    args = argparse.Namespace(**vars(args)) if isinstance(args, argparse.Namespace) else argparse.Namespace()
    name = ck_bert or getattr(args, "ck_bert", None)
    model = strip_prefixes(checkpoint["model"])
    bert = strip_prefixes(checkpoint["bert_model"]) if isinstance(checkpoint.get("bert_model"), dict) else None
    weights = {"format": WEIGHTS_FORMAT, "dtype": dtype, "args": args}
    state, where = _text_encoder_state(checkpoint)
    reason = "not asked to reference it" if not reference_text_encoder else \
        "there is none" if state is None else _unchanged_from_package(state, name)
    if reason is None:
        weights["text_encoder_name"], weights["text_encoder_in"] = name, where
        args.ck_bert = name
        if where == "model":
            model = OrderedDict((k, v) for k, v in model.items() if not k.startswith(TEXT_ENCODER_PREFIX))
        else:
            bert = None
        note = f"text encoder referenced by name: '{name}' (unchanged from its package weights)"
    else:
        note = f"text encoder copied: {reason}"
    weights["model"] = _stored(model, STORAGE_DTYPES[dtype], "model")
    if bert is not None:
        weights["bert_model"] = _stored(bert, STORAGE_DTYPES[dtype], "bert_model")
    return weights, note


def expand_model_only_weights(weights, source="weights file"):
    """The released checkpoint layout ({'model', 'bert_model', 'args'}, fp32) of a model-only file."""
    from bert import load_text_encoder

    def widened(state):
        return OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items())

    model = widened(weights["model"])
    bert = widened(weights["bert_model"]) if isinstance(weights.get("bert_model"), dict) else None
    name = weights.get("text_encoder_name")
    if name:
        try:
            package = load_text_encoder(name, pretrained=True).state_dict()
        except (OSError, ValueError) as err:
            raise CheckpointError(f"The {source} references the text encoder '{name}' by name, and its weights "
                                  f"cannot be loaded here: {err}") from None
        if weights.get("text_encoder_in") == "model":
            model.update((TEXT_ENCODER_PREFIX + k, v) for k, v in package.items())
        else:
            bert = package
    expanded = {"model": model, "args": weights.get("args", argparse.Namespace())}
    if bert is not None:
        expanded["bert_model"] = bert
    return expanded
