"""LAVT checkpoints against LAVT models: loading them and saying why one does not fit.

Reading and writing the files themselves is lib/checkpoint_io.py's; this module knows the model:
the released layout's entries, the Swin sizes and windows, the text encoder's width and BERT's
layers, and turns a mismatch into the command-line option that would fix it.
`load_lavt_checkpoint` refuses NaN/inf weights unless `allow_nonfinite`.

Pretrained Swin classification weights are loaded by lib/swin_weights.py.
"""
import os
import re
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from .checkpoint_io import first_nonfinite, load_checkpoint_file, unwrap_model
from .model_config import SWIN_CONFIGS, TEXT_ENCODERS_BY_WIDTH, window_of_table
from .state_dict import OPTIONAL_BERT_BUFFERS, CheckpointError, strip_prefixes

__all__ = ["load_lavt_checkpoint"]

# Swin sizes by (embed_dim, depths), for messages.
SWIN_SIZES = {(dim, tuple(depths)): name for name, (dim, depths, _) in SWIN_CONFIGS.items()}
LIST_LIMIT = 8


def _check_finite(label, state_dicts):
    for name, state_dict in state_dicts.items():
        found = first_nonfinite(state_dict) if state_dict is not None else None
        if found:
            key, count = found
            where = "" if name == "model" else f" of '{name}'"
            raise CheckpointError(
                f"The {label} has non-finite weights: tensor '{key}'{where} holds {count} NaN/inf value(s) (the "
                "first such tensor). A model with them predicts garbage; use an earlier checkpoint, or pass "
                "--allow-nonfinite (allow_nonfinite=True) to load it anyway.")


def _is_state_dict(obj):
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _split_lavt_checkpoint(checkpoint, label):
    """(model state dict, bert state dict or None) of a released-format checkpoint or a bare state dict."""
    for entry in ("model", "state_dict"):
        if isinstance(checkpoint.get(entry), Mapping):
            bert = checkpoint.get("bert_model")
            return checkpoint[entry], bert if isinstance(bert, Mapping) else None
    if _is_state_dict(checkpoint):
        return checkpoint, None
    raise CheckpointError(f"The {label} has no 'model' state dict (entries: {sorted(map(str, checkpoint))[:10]}) "
                          "and is not a bare state dict; is it a LAVT checkpoint?")


def _list_keys(keys):
    keys = list(keys)
    shown = [f"    {k}" for k in keys[:LIST_LIMIT]]
    if len(keys) > LIST_LIMIT:
        shown.append(f"    ... and {len(keys) - LIST_LIMIT} more")
    return shown


def _compare(provided, expected, ignore_missing=()):
    """(missing, unexpected, {key: (provided shape, expected shape)}) between two state dicts."""
    missing = [k for k in expected if k not in provided and k not in ignore_missing]
    unexpected = [k for k in provided if k not in expected]
    mis_shaped = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in provided.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k].shape)}
    return missing, unexpected, mis_shaped


def swin_config(state_dict, prefix):
    """(embed_dim, depths, heads) read off a backbone state dict, or None."""
    proj = state_dict.get(prefix + "patch_embed.proj.weight")
    if proj is None:
        return None
    blocks, heads = {}, {}
    for key, value in state_dict.items():
        match = re.fullmatch(re.escape(prefix) + r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table", key)
        if match:
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
            heads[stage] = value.shape[-1]
    stages = sorted(blocks)
    return int(proj.shape[0]), tuple(blocks[s] for s in stages), tuple(heads[s] for s in stages)


def describe_swin(config):
    embed_dim, depths, heads = config
    name = SWIN_SIZES.get((embed_dim, depths))
    text = f"embed_dim {embed_dim}, depths {'-'.join(map(str, depths))}, heads {'-'.join(map(str, heads))}"
    return (f"Swin-{name} ({text})" if name else f"Swin ({text})"), name


def _mismatch_hints(provided, expected, prefix="backbone."):
    hints = []
    ck_swin, model_swin = swin_config(provided, prefix), swin_config(expected, prefix)
    if ck_swin and model_swin and ck_swin != model_swin:
        (ck_text, ck_name), (model_text, _) = describe_swin(ck_swin), describe_swin(model_swin)
        advice = f"pass --swin_type {ck_name}" if ck_name else "build the model with the checkpoint's Swin size"
        hints.append(f"the checkpoint is {ck_text} but the model is {model_text}: {advice}")
    for key, value in provided.items():
        if key.endswith("relative_position_bias_table") and key in expected \
                and value.shape[0] != expected[key].shape[0]:
            ck_window, model_window = window_of_table(value.shape[0]), window_of_table(expected[key].shape[0])
            advice = ("pass --window12" if ck_window == 12 else
                      "drop --window12 (default window 7)" if ck_window == 7 and model_window == 12 else
                      f"build the model with window_size={ck_window}")
            hints.append(f"checkpoint trained with window {ck_window} (model: window {model_window}): {advice}")
            break
    key = prefix + "layers.0.fusion.image_lang_att.f_key.0.weight"
    if key in provided and key in expected and provided[key].shape[1] != expected[key].shape[1]:
        hints.append(_text_width_hint(provided[key].shape[1], expected[key].shape[1]))
    head_in_checkpoint = any(k.startswith("no_target_head.") for k in provided)
    if head_in_checkpoint != any(k.startswith("no_target_head.") for k in expected):
        hints.append("the checkpoint has a no-target head: pass --no-target-head" if head_in_checkpoint else
                     "the checkpoint has no no-target head: drop --no-target-head")
    return hints


def _text_width_hint(ck_width, model_width):
    name = f" (--ck_bert {TEXT_ENCODERS_BY_WIDTH[ck_width]})" if ck_width in TEXT_ENCODERS_BY_WIDTH else ""
    return (f"the checkpoint was trained with {ck_width}-wide text features{name}, the model takes {model_width}: "
            "build it with the text encoder the checkpoint was trained with (--ck_bert)")


def _bert_hints(provided, expected):
    def describe(state_dict):
        emb = state_dict.get("embeddings.word_embeddings.weight")
        layers = {int(m[1]) for k in state_dict for m in [re.match(r"encoder\.layer\.(\d+)\.", k)] if m}
        return (None if emb is None else int(emb.shape[1])), len(layers)

    (ck_width, ck_layers), (model_width, model_layers) = describe(provided), describe(expected)
    if ck_width is not None and model_width is not None and (ck_width, ck_layers) != (model_width, model_layers):
        return [f"the checkpoint's BERT has {ck_layers} layers of width {ck_width}, the model's {model_layers} of "
                f"width {model_width}: " + _text_width_hint(ck_width, model_width).split(": ", 1)[1]]
    return []


def _mismatch_message(label, variant, parts, hints):
    lines = [f"The {label} does not match the {variant} model:"]
    for name, (missing, unexpected, mis_shaped) in parts.items():
        where = f" in {name}" if name != "model" else ""
        if missing:
            lines += [f"  {len(missing)} missing key(s){where} (in the model, not in the checkpoint):"]
            lines += _list_keys(missing)
        if unexpected:
            lines += [f"  {len(unexpected)} unexpected key(s){where} (in the checkpoint, not in the model):"]
            lines += _list_keys(unexpected)
        if mis_shaped:
            lines += [f"  {len(mis_shaped)} mis-shaped key(s){where} (checkpoint shape vs model shape):"]
            lines += _list_keys(f"{k}: {ck} in the checkpoint, {mod} in the model"
                                for k, (ck, mod) in mis_shaped.items())
    lines += [f"Hint: {hint}" for hint in hints]
    return "\n".join(lines)


def load_lavt_checkpoint(model, checkpoint_or_path, bert_model=None, strict=True, source=None,
                         allow_nonfinite=False):
    """Load a released-format LAVT checkpoint (or a bare state dict) into `model` (+ `bert_model` for lavt).

    `checkpoint_or_path`: a path (loaded with `load_checkpoint_file`) or an already loaded dict.
    Accepts `lavt` ({'model', 'bert_model'}) and `lavt_one` ({'model'} with `text_encoder.*`) checkpoints,
    keys prefixed by `module.` (DDP), and ignores BERT pooler weights. With `strict`, any missing,
    unexpected or mis-shaped key raises `CheckpointError` listing them with a hint (other Swin size,
    window, text width or variant) and nothing is loaded; without, matching tensors are loaded.
    Returns a summary dict (variant, tensor counts, epoch, and the keys not loaded).
    `source` names an already loaded checkpoint in error messages (e.g. "--resume ckpt.pth").
    NaN/inf weights are a `CheckpointError` naming the first such tensor unless `allow_nonfinite`.
    """
    if isinstance(checkpoint_or_path, (str, os.PathLike)):
        label = f"checkpoint '{os.fspath(checkpoint_or_path)}'"
        checkpoint = load_checkpoint_file(checkpoint_or_path)
    elif isinstance(checkpoint_or_path, Mapping):
        label = source or "checkpoint (in memory)"
        checkpoint = checkpoint_or_path
    else:
        raise TypeError("load_lavt_checkpoint: expected a path or a checkpoint dict, got "
                        f"{type(checkpoint_or_path).__name__}")
    model = unwrap_model(model)
    model_sd, bert_sd = _split_lavt_checkpoint(checkpoint, label)
    if not allow_nonfinite:
        _check_finite(label, {"model": model_sd, "bert_model": bert_sd if bert_model is not None else None})
    expected = model.state_dict()
    model_sd = _clean_state_dict(model_sd, expected, "text_encoder.")
    has_text_encoder = isinstance(getattr(model, "text_encoder", None), nn.Module)
    variant = "lavt_one" if has_text_encoder else "lavt"

    hints = []
    ck_has_text_encoder = any(k.startswith("text_encoder.") for k in model_sd)
    if ck_has_text_encoder and not has_text_encoder:
        hints.append("this is a lavt_one checkpoint (BERT inside as text_encoder): --model lavt_one")
    elif has_text_encoder and not ck_has_text_encoder:
        hints.append("this is a lavt checkpoint (BERT saved separately as bert_model): --model lavt")
    hints += _mismatch_hints(model_sd, expected)
    optional = tuple("text_encoder." + b for b in OPTIONAL_BERT_BUFFERS)
    parts = {"model": _compare(model_sd, expected, ignore_missing=optional)}

    if bert_model is not None:
        bert_model = unwrap_model(bert_model)
        bert_expected = bert_model.state_dict()
        if bert_sd is None:
            parts["bert_model"] = ([f"(the whole 'bert_model' entry, {len(bert_expected)} tensors)"], [], {})
        else:
            bert_sd = _clean_state_dict(bert_sd, bert_expected, "")
            parts["bert_model"] = _compare(bert_sd, bert_expected, ignore_missing=OPTIONAL_BERT_BUFFERS)
            hints += _bert_hints(bert_sd, bert_expected)
    elif bert_sd is not None and strict:
        parts["bert_model"] = ([], [f"(the whole 'bert_model' entry, {len(bert_sd)} tensors: pass bert_model= "
                                    "to load the text encoder)"], {})

    if strict and any(any(p) for p in parts.values()):
        raise CheckpointError(_mismatch_message(label, variant, parts, hints))
    loaded = _load_matching(model, model_sd, parts["model"], strict)
    if bert_model is not None and bert_sd is not None:
        loaded += _load_matching(bert_model, bert_sd, parts["bert_model"], strict)
    return {"variant": variant, "loaded": loaded, "epoch": checkpoint.get("epoch"),
            "not_loaded": {name: dict(zip(("missing", "unexpected", "mis_shaped"), p))
                           for name, p in parts.items() if any(p)}}


def _clean_state_dict(state_dict, expected, bert_prefix):
    """Strip wrapper prefixes; drop BERT pooler weights and optional BERT buffers the model lacks."""
    optional = {bert_prefix + b for b in OPTIONAL_BERT_BUFFERS}
    return OrderedDict((k, v) for k, v in strip_prefixes(state_dict).items()
                       if not k.startswith(bert_prefix + "pooler.") and not (k in optional and k not in expected))


def _load_matching(module, state_dict, comparison, strict):
    _, unexpected, mis_shaped = comparison
    module.load_state_dict({k: v for k, v in state_dict.items() if k not in mis_shaped}, strict=strict)
    return len(state_dict) - len(unexpected) - len(mis_shaped)

