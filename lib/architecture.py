"""Which model a checkpoint holds, read off the checkpoint itself.

`infer_model_args(checkpoint, overrides)` returns the options `lib.referring_model.build_model`
needs (`model`, `swin_type`, `window_size`, `ck_bert`, `img_size`, ...). The tensor shapes decide
what they can: the Swin size (embed dim from `patch_embed.proj.weight`, depths from the
`layers.N.blocks.M` keys, heads and window from the `relative_position_bias_table` shapes, a
((2w-1)^2, heads) table for window w), the variant (`text_encoder.*` keys: lavt_one; a
`bert_model` entry: lavt), the text width (the fusion's key projection, else the BERT's
embeddings) and the optional no-target head (`no_target_head.*` keys). The checkpoint's `args` (ours and the released ones carry the training options)
fill in what shapes cannot tell (fusion heads `mha`, `fusion`, the text encoder's name, the
tokenizer, `img_size`); released defaults fill in the rest. An override replaces any of these;
one that contradicts the shapes, or the fusion options the checkpoint's args record, is a
`UserInputError` naming both. `model_from_checkpoint(checkpoint, overrides)` builds that model and
loads the checkpoint into it: the one way from a checkpoint to a model, used by test.py, the probes,
the Predictor (`load_inferred_model(path)`), the demo and the ONNX export.
`add_model_arguments` defines the model flags of every script, once.
"""
import argparse
import ast
import os
import warnings
from collections.abc import Mapping

from errors import UserInputError

from . import ranges
from .checkpoint import _split_lavt_checkpoint, describe_swin, load_lavt_checkpoint, swin_config
from .checkpoint_io import load_checkpoint_file
from .fusion import FUSION_LAYERS
from .model_config import MODEL_DEFAULTS, SWIN_CONFIGS, TEXT_ENCODERS_BY_WIDTH, window_of_table
from .referring_model import build_model
from .state_dict import CheckpointError, strip_prefixes

__all__ = ["infer_model_args", "model_from_checkpoint", "load_inferred_model", "load_model", "overrides_from",
           "add_model_arguments", "add_override_arguments", "OVERRIDABLE"]

# Options an override may set; the ones read off the shapes are checked against them.
OVERRIDABLE = ("model", "swin_type", "window12", "window_size", "mha", "fusion", "fusion_kwargs", "ck_bert",
               "bert_tokenizer", "img_size", "no_target_head")
# Options the checkpoint's args record and the shapes cannot check: a flag must agree with them.
SAVED_ONLY = ("mha", "fusion", "fusion_kwargs")
KNOWN_TEXT_ENCODERS = tuple(TEXT_ENCODERS_BY_WIDTH.values())
RELEASED_IMG_SIZE = 480
FUSION_KEY = "backbone.layers.0.fusion.image_lang_att.f_key.0.weight"
BERT_EMBEDDINGS = "embeddings.word_embeddings.weight"


def _read_shapes(checkpoint, source):
    """What the tensors say: variant, Swin size name, window size and text width."""
    state = strip_prefixes(_split_lavt_checkpoint(checkpoint, source)[0])
    config = swin_config(state, "backbone.")
    if config is None or not config[1]:
        raise CheckpointError(f"The {source} has no LAVT backbone weights (no backbone.patch_embed.proj.weight or "
                              "relative position tables); is it a LAVT checkpoint?")
    names = [name for name, (dim, depths, heads) in SWIN_CONFIGS.items()
             if (dim, tuple(depths), tuple(heads)) == config]
    if not names:
        raise CheckpointError(f"The {source} holds {describe_swin(config)[0]}, which is none of the Swin sizes "
                              f"{', '.join(SWIN_CONFIGS)}.")
    table = state[next(k for k in state if k.endswith("relative_position_bias_table"))]
    window = window_of_table(table.shape[0])
    if any(k.startswith("text_encoder.") for k in state):
        model, bert = "lavt_one", {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    elif isinstance(checkpoint.get("bert_model"), Mapping):
        model, bert = "lavt", strip_prefixes(checkpoint["bert_model"])
    else:
        raise CheckpointError(f"The {source} holds no text encoder weights (no 'bert_model' entry and no "
                              "text_encoder.* keys), so its text features cannot be reproduced.")
    width = state[FUSION_KEY].shape[1] if FUSION_KEY in state else bert[BERT_EMBEDDINGS].shape[1]
    return {"model": model, "swin_type": names[0], "window_size": window, "text_width": int(width),
            "swin_text": describe_swin(config)[0],
            "no_target_head": any(k.startswith("no_target_head.") for k in state)}


def _check_override(overrides, shapes, saved, source):
    def clash(given, found):
        raise UserInputError(f"{given} contradicts the {source}, which holds {found}; drop the option or pass "
                             "another checkpoint.")

    for name in SAVED_ONLY:  # a different fusion would not load; other heads or options would silently change it
        if name in overrides and hasattr(saved, name) and overrides[name] != getattr(saved, name):
            clash(f"{name}={overrides[name]!r}", f"a model trained with {name}={getattr(saved, name)!r} (its args)")
    if overrides.get("no_target_head") not in (None, shapes["no_target_head"]):
        held = "a no-target head" if shapes["no_target_head"] else "no no-target head (no no_target_head.* keys)"
        clash(f"no_target_head={overrides['no_target_head']!r}", held)

    if overrides.get("model") not in (None, shapes["model"]):
        where = "text_encoder.* weights inside the model" if shapes["model"] == "lavt_one" else "a separate bert_model"
        clash(f"model={overrides['model']!r}", f"a {shapes['model']} model ({where})")
    if overrides.get("swin_type") not in (None, shapes["swin_type"]):
        clash(f"swin_type={overrides['swin_type']!r}", shapes["swin_text"])
    if overrides.get("window_size") not in (None, shapes["window_size"]):
        clash(f"window_size={overrides['window_size']!r}", f"window-{shapes['window_size']} attention tables")
    if overrides.get("window12") and shapes["window_size"] != 12:
        clash("window12=True", f"window-{shapes['window_size']} attention tables")


def _text_encoder_name(overrides, saved, width, source):
    """The text encoder to build: given, named by the checkpoint's args, or the usual one of this width."""
    from bert import load_text_config

    name = overrides.get("ck_bert") or _trusted_saved_name(saved, "ck_bert", source) or TEXT_ENCODERS_BY_WIDTH.get(width)
    if name is None:
        raise UserInputError(f"The {source} was trained with {width}-wide text features and does not name its text "
                             "encoder; pass it (ck_bert=..., --ck_bert).")
    hidden = load_text_config(name).hidden_size
    if hidden != width:
        given = f"ck_bert={name!r}" if overrides.get("ck_bert") else f"its text encoder {name!r} ({hidden}-wide)"
        raise UserInputError(f"{given} does not fit the {source}, whose fusion takes {width}-wide text features "
                             f"({TEXT_ENCODERS_BY_WIDTH.get(width, 'another encoder')}); pass the text encoder it "
                             "was trained with.")
    return name


def _tokenizer_name(overrides, saved, ck_bert):
    """Given; else the given text encoder's own (its directory holds its vocabulary); else the saved one."""
    return overrides.get("bert_tokenizer") or overrides.get("ck_bert") \
        or _trusted_saved_name(saved, "bert_tokenizer", "checkpoint", warn=False) or ck_bert


def _trusted_saved_name(saved, name, source, warn=True):
    """A text encoder / tokenizer named by a checkpoint's args, only if it is a known one: a saved
    path or hub name would make loading someone's checkpoint read files the user never chose."""
    value = getattr(saved, name, None)
    if value is None or value in KNOWN_TEXT_ENCODERS:
        return value
    if warn:
        warnings.warn(f"The {source} names the text encoder {value!r}, which is not one of "
                      f"{', '.join(KNOWN_TEXT_ENCODERS)}; it is used only when you pass it (--{name} / {name}=...). "
                      "Using the usual encoder of the checkpoint's text width instead.", stacklevel=3)
    return None


def _saved_img_size(overrides, saved, source):
    """img_size as given, else as saved, checked like the --img_size flag."""
    given = "img_size" in overrides
    value = overrides["img_size"] if given else getattr(saved, "img_size", RELEASED_IMG_SIZE)
    what = "img_size" if given else f"The img_size saved in the {source}"
    try:
        return ranges.check_img_size(value, what)
    except ValueError as err:
        raise UserInputError(f"{err}; pass --img_size (img_size=...) with the size the model was trained at.") from None


def infer_model_args(checkpoint, overrides=None, source="checkpoint"):
    """`argparse.Namespace` of build options for `checkpoint` (a loaded dict); see the module docstring.

    `overrides` maps names of `OVERRIDABLE` to values (None means not given); `source` names the
    checkpoint in messages.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise UserInputError(f"Unknown option(s) {', '.join(unknown)}; the model options are {', '.join(OVERRIDABLE)}.")
    saved = checkpoint.get("args")
    saved = saved if isinstance(saved, argparse.Namespace) else argparse.Namespace()
    shapes = _read_shapes(checkpoint, source)
    _check_override(overrides, shapes, saved, source)

    def option(name, default):
        return overrides.get(name, getattr(saved, name, default))

    ck_bert = _text_encoder_name(overrides, saved, shapes["text_width"], source)
    fusion = option("fusion", MODEL_DEFAULTS["fusion"])
    if fusion not in FUSION_LAYERS:
        raise UserInputError(f"The {source} asks for fusion {fusion!r}, which is none of {', '.join(FUSION_LAYERS)}; "
                             "pass --fusion (fusion=...) with one of them.")
    return argparse.Namespace(
        model=shapes["model"], swin_type=shapes["swin_type"], window_size=shapes["window_size"],
        window12=shapes["window_size"] == 12, mha=option("mha", MODEL_DEFAULTS["mha"]),
        fusion=fusion, fusion_kwargs=option("fusion_kwargs", MODEL_DEFAULTS["fusion_kwargs"]), ck_bert=ck_bert,
        bert_tokenizer=_tokenizer_name(overrides, saved, ck_bert),
        img_size=_saved_img_size(overrides, saved, source), no_target_head=shapes["no_target_head"],
        pretrained_swin_weights="")


def model_from_checkpoint(checkpoint, overrides=None, source="checkpoint", allow_nonfinite=False):
    """(`ReferringModel` in eval mode on the CPU with the weights of `checkpoint` (a loaded dict), its
    build options); NaN/inf weights are refused unless `allow_nonfinite`."""
    args = infer_model_args(checkpoint, overrides, source=source)
    model = build_model(args, pretrained=False)
    load_lavt_checkpoint(model.model, checkpoint, bert_model=model.bert_model, source=source,
                         allow_nonfinite=allow_nonfinite)
    return model.eval(), args


def load_inferred_model(path, allow_nonfinite=False, **overrides):
    """`model_from_checkpoint` of the file `path`."""
    return model_from_checkpoint(load_checkpoint_file(path), overrides, source=f"checkpoint '{os.fspath(path)}'",
                                 allow_nonfinite=allow_nonfinite)


def overrides_from(args):
    """The model options given on a command line parsed with `add_model_arguments` (None: not given)."""
    return {name: getattr(args, name, None) for name in OVERRIDABLE}


def load_model(args, device, checkpoint=None, allow_nonfinite=False):
    """The model of the checkpoint `args.resume` (or the loaded `checkpoint`) on `device`, in eval mode,
    with the model flags of `args` as overrides. `args` is then updated to the options the model was
    built with, so what follows (the dataset's img_size and tokenizer, reports) describes that model."""
    if checkpoint is None:
        checkpoint = load_checkpoint_file(args.resume, what="--resume")
    model, used = model_from_checkpoint(checkpoint, overrides_from(args),
                                        source=f"checkpoint '{args.resume}' (--resume)",
                                        allow_nonfinite=allow_nonfinite)
    for name in OVERRIDABLE:
        setattr(args, name, getattr(used, name))
    return model.to(device)


def parse_fusion_kwargs(text):
    """'scale=0.5,mode=sum' -> {'scale': 0.5, 'mode': 'sum'}: Python literals (numbers, True, None, quoted
    strings) are read as such, anything else is a string; '' -> None (no options)."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip().isidentifier():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE pairs joined by commas, got {item!r}")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options or None


# The model flags of every script, defined here once: (name, flags, add_argument options, help).
_MODEL_FLAGS = (
    ("model", ("--model",), {"choices": ["lavt", "lavt_one"]},
     "lavt: BERT outside the model (saved as bert_model); lavt_one: BERT inside"),
    ("swin_type", ("--swin_type",), {"choices": list(SWIN_CONFIGS)},
     "Swin size; nano is this project's CPU-sized model (embed 32, depths 2-2-2-2)"),
    ("window12", ("--window12",), {"action": "store_true"},
     "Swin window 12 (implied by 'window12' in the --pretrained_swin_weights path)"),
    ("window_size", ("--window-size",), {"type": ranges.flag_type(int, ranges.check_window_size)},
     "override the Swin window size (7, or 12 with --window12, when not given)"),
    ("ck_bert", ("--ck_bert",), {},
     "text encoder: Hugging Face name, local directory, or 'minilm' (packaged offline)"),
    ("mha", ("--mha",), {}, "fusion heads per stage, e.g. 4-4-4-4 (empty: one each)"),
    ("fusion", ("--fusion",), {}, "pixel-word fusion module (pwam: the released one; add one in lib/fusion/)"),
    ("fusion_kwargs", ("--fusion-kwargs",), {"type": parse_fusion_kwargs, "metavar": "KEY=VALUE,..."},
     "the fusion module's own keyword arguments, e.g. scale=0.5 (saved in the checkpoint's args)"),
    ("no_target_head", ("--no-target-head",), {"action": "store_true"},
     "add a classifier that says 'no object matches' (generalized RIS, gRefCOCO); without it, an empty "
     "predicted mask means no target"),
    ("img_size", ("--img_size",), {"type": ranges.flag_type(int, ranges.check_img_size)},
     "images are resized to img_size x img_size"),
    ("bert_tokenizer", ("--bert_tokenizer",), {},
     "tokenizer: Hugging Face name, local directory, or 'minilm' (packaged offline)"),
)


def add_model_arguments(group, names, defaults=None):
    """Add the model flags `names` (of `OVERRIDABLE`) to `group`.

    With `defaults` (train.py: a new model) each flag gets its default there; without, every default
    is None, meaning "read from the checkpoint", and a flag given is an override checked against it.
    """
    for name, option_strings, options, text in _MODEL_FLAGS:
        if name not in names:
            continue
        options = dict(options, dest=name)
        if defaults is None:
            options["default"] = None
            text += " (default: read from the checkpoint)"
        else:
            options["default"] = defaults[name]
        if name == "fusion" and defaults is not None:  # read from a checkpoint, infer_model_args checks it
            options["choices"] = sorted(FUSION_LAYERS)
        group.add_argument(*option_strings, help=text, **options)
    return group


def add_override_arguments(parser):
    """All the model flags, read from the checkpoint unless given (demo, ONNX export), as a group."""
    group = parser.add_argument_group("model (read from the checkpoint; give one only to override it)")
    return add_model_arguments(group, OVERRIDABLE)
