"""Checkpoint I/O: safe loading, atomic saving and released LAVT checkpoints.

Loading never unpickles arbitrary objects. What a checkpoint may hold is defined once, by
`PLAIN_VALUE_TYPES` and `CONTAINER_TYPES` (tensors aside): `load_checkpoint_file` lets exactly these
through `torch.load(weights_only=True)` (the released LAVT checkpoints keep the training options in
`args` as an `argparse.Namespace`), and `atomic_torch_save` refuses anything else before writing.
Saving goes through `save_checkpoint` / `atomic_torch_save`: a temporary file beside the target is
written, fsync'ed and renamed over it, so an interrupted save leaves the previous file intact.

Released layout, both variants: {'model': backbone + classifier state dict (+ `text_encoder.*` for
lavt_one), 'bert_model': BERT state dict (lavt only), 'optimizer', 'epoch', 'args', 'lr_scheduler'}.

Checkpoints written by `save_checkpoint` also hold `content_sha256`, a hash of every tensor and value
in them, which `load_checkpoint_file` checks (files without it, e.g. the released ones, load as
before): a few flipped bytes inside a tensor would otherwise load silently. `load_lavt_checkpoint`
refuses NaN/inf weights unless `allow_nonfinite`, and `check_resume_state` the entries a resumed
run needs.

Pretrained Swin classification weights are loaded by lib/swin_weights.py.
"""
import argparse
import contextlib
import glob
import hashlib
import math
import os
import pickle
import re
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from numbers import Integral, Real

import torch
from torch import nn

from .model_config import SWIN_CONFIGS, TEXT_ENCODERS_BY_WIDTH, window_of_table
from .state_dict import OPTIONAL_BERT_BUFFERS, WRAPPER_PREFIXES, CheckpointError, strip_prefixes  # noqa: F401 (re-exported)
from .weights import expand_model_only_weights, is_model_only_weights

__all__ = [
    "CheckpointError", "load_checkpoint_file", "load_lavt_checkpoint", "save_checkpoint", "atomic_torch_save",
    "model_state_dict", "strip_prefixes", "unwrap_model", "check_loadable", "PLAIN_VALUE_TYPES", "CONTAINER_TYPES",
    "CONTENT_HASH_KEY", "content_hash", "check_resume_state",
]

# What a checkpoint may hold besides tensors (the one definition; see the module docstring). Exact
# types: subclasses such as numpy.float64 (a float) pickle as other globals, which loading refuses.
PLAIN_VALUE_TYPES = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype, torch.device,
                     torch.Size)
CONTAINER_TYPES = (dict, OrderedDict, list, tuple, set, argparse.Namespace)
# Swin sizes by (embed_dim, depths), for messages.
SWIN_SIZES = {(dim, tuple(depths)): name for name, (dim, depths, _) in SWIN_CONFIGS.items()}
LIST_LIMIT = 8
CONTENT_HASH_KEY = "content_sha256"


# --------------------------------------------------------------------------------------------- loading
def _allowed_globals():
    """`torch.load(weights_only=True)` accepting exactly the allowed types (most are in PyTorch's own list)."""
    allowed = list(PLAIN_VALUE_TYPES + CONTAINER_TYPES)
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(allowed)
    torch.serialization.add_safe_globals(allowed)  # torch 2.4 has no context manager
    return contextlib.nullcontext()


def _first_line(err, limit=200):
    text = str(err).strip().splitlines()
    text = text[0] if text else type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _unsafe_globals(path, err):
    """The pickled globals of `path` outside the allowlist, from a static scan (nothing is executed)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in PLAIN_VALUE_TYPES + CONTAINER_TYPES}
    try:
        with _allowed_globals():
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        return sorted(set(found) - allowed)
    except Exception:  # legacy (non-zip) format or torch < 2.5: fall back to torch's error message
        return sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))) - allowed)


def require_checkpoint_file(path, what=None):
    """Fail unless `path` is an existing file; `what` names the option it came from (e.g. '--resume')."""
    path = os.fspath(path)
    label = f"{what} file '{path}'" if what else f"checkpoint file '{path}'"
    if not os.path.exists(path):
        raise FileNotFoundError(f"The {label} does not exist; check the path.")
    if os.path.isdir(path):
        raise CheckpointError(f"The {label} is a directory; pass the checkpoint file (.pth) inside it.")
    return label


def load_checkpoint_file(path, map_location="cpu", what=None):
    """Load a checkpoint dict with `torch.load(weights_only=True)`, only `argparse.Namespace` allowed extra.

    `what` names the command-line option the path came from (e.g. '--resume') for error messages.
    A model-only weights file (lib/weights.py) comes back in the released layout, in fp32.
    Raises FileNotFoundError for a missing path and `CheckpointError` for files holding other pickled
    objects (refused: unpickling them could run code) or truncated / corrupt files.
    """
    label = require_checkpoint_file(path, what)
    path = os.fspath(path)
    try:
        with _allowed_globals():
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise CheckpointError(f"The {label} is not readable; check its permissions.") from None
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path, err)
        if unsafe:
            raise CheckpointError(
                f"Refusing to load the {label} for safety: it contains pickled {', '.join(unsafe)} object(s), "
                "and unpickling arbitrary objects can run code. Only tensors, plain containers, numbers, "
                "strings and argparse.Namespace are accepted. If you trust the file's origin, load it yourself "
                "in a separate session and re-save only its tensors and plain values."
            ) from None
        raise CheckpointError(f"The {label} could not be read ({_first_line(err)}): it is truncated or corrupt; "
                              "re-download or re-save it.") from None
    except Exception as err:  # zip, pickle and storage errors of a damaged file
        raise CheckpointError(f"The {label} could not be read ({type(err).__name__}: {_first_line(err)}): it is "
                              "truncated or corrupt; re-download or re-save it.") from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"The {label} holds a {type(checkpoint).__name__}, expected a dict (a checkpoint "
                              "or a state dict).")
    _verify_content_hash(checkpoint, label)
    if is_model_only_weights(checkpoint):  # every loader then sees the released layout
        checkpoint = expand_model_only_weights(checkpoint, source=label)
    return checkpoint


def _feed_hash(digest, obj):
    """Feed `obj` into `digest` in a form that is the same in every process (sets are sorted: their
    order follows string hashing, which is randomised per process)."""
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor {tensor.dtype} {tuple(obj.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(obj, (Mapping, argparse.Namespace)):
        items = vars(obj).items() if isinstance(obj, argparse.Namespace) else obj.items()
        digest.update(f"{type(obj).__name__} {len(items)}{{".encode())
        for key, value in items:
            _feed_hash(digest, key)
            _feed_hash(digest, value)
        digest.update(b"}")
    elif isinstance(obj, (list, tuple)):
        digest.update(f"{type(obj).__name__} {len(obj)}[".encode())
        for value in obj:
            _feed_hash(digest, value)
        digest.update(b"]")
    elif isinstance(obj, (set, frozenset)):
        digest.update(f"set {sorted(map(repr, obj))}".encode())
    else:
        digest.update(f"{type(obj).__name__} {obj!r};".encode())


def content_hash(checkpoint):
    """SHA-256 (hex) of every entry of a checkpoint dict but the hash itself."""
    digest = hashlib.sha256()
    _feed_hash(digest, {key: value for key, value in checkpoint.items() if key != CONTENT_HASH_KEY})
    return digest.hexdigest()


def _verify_content_hash(checkpoint, label):
    recorded = checkpoint.get(CONTENT_HASH_KEY)
    if recorded is None:
        return  # written before hashes were recorded, or by other code: nothing to compare
    if recorded != content_hash(checkpoint):
        raise CheckpointError(f"The {label} is corrupt: its contents do not match the hash recorded when it was "
                              "saved (damaged on disk or in transfer). Use another copy or an earlier checkpoint.")


def check_resume_state(checkpoint, label):
    """(epoch, best score) of a checkpoint a training run can continue from, or a `CheckpointError`
    naming the first missing or unusable entry."""
    def refuse(entry, problem):
        raise CheckpointError(f"The {label} cannot be resumed: its '{entry}' entry {problem}. Resume from a "
                              "checkpoint written by train.py (checkpoint_last.pth or model_best_*.pth), or start "
                              "afresh without --resume.")

    for entry in ("optimizer", "lr_scheduler"):
        if entry not in checkpoint:
            refuse(entry, "is missing (a weights-only file)")
        if not isinstance(checkpoint[entry], Mapping):
            refuse(entry, f"is a {type(checkpoint[entry]).__name__}, not a state dict")
    optimizer = checkpoint["optimizer"]
    if not isinstance(optimizer.get("state"), Mapping) or not isinstance(optimizer.get("param_groups"), list):
        refuse("optimizer", "has no 'state' and 'param_groups'")
    epoch = checkpoint.get("epoch")
    if "epoch" not in checkpoint:
        refuse("epoch", "is missing")
    if isinstance(epoch, bool) or not isinstance(epoch, Integral) or epoch < 0:
        refuse("epoch", f"is {epoch!r}, not a non-negative integer")
    best = -1.0
    for entry in sorted(k for k in checkpoint if isinstance(k, str) and k.startswith("best_")):
        value = checkpoint[entry]
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            refuse(entry, f"is {value!r}, not a finite number")
        if entry == "best_overall_iou":
            if not -1 <= value <= 1:  # a fraction; -1 before the first validation
                refuse(entry, f"is {value!r}, not a score from 0 to 1")
            best = float(value)
    return int(epoch), best


def first_nonfinite(state_dict):
    """(key, count) of the first floating tensor of `state_dict` holding NaN/inf, or None."""
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return key, bad
    return None


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


def unwrap_model(model):
    """The module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


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


# ---------------------------------------------------------------------------------------------- saving
def _file_mode(path):
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)  # reading the umask requires setting it
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory):
    """Persist the rename itself; best effort (not possible on every platform / file system)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(directory, prefix):
    """Temporary files of earlier saves of the same file that a killed process (SIGKILL, power loss)
    could not remove; one process saves a given path at a time, so none of them is in use."""
    for stale in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*.tmp")):
        with contextlib.suppress(OSError):
            os.unlink(stale)


def atomic_torch_save(obj, path):
    """`torch.save(obj, path)` that never leaves a partial file: temp file in the same directory, flush,
    fsync, `os.replace`. On any failure the temp file is removed and an existing `path` is untouched.
    Refuses (TypeError, before writing) objects that `load_checkpoint_file` would not load."""
    path = os.fspath(path)
    check_loadable(obj, "checkpoint")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Cannot save '{path}': the directory '{directory}' does not exist; create it "
                                "first or choose another output directory.")
    mode = _file_mode(path)
    prefix = f".{os.path.basename(path)}."
    _remove_stale_temporaries(directory, prefix)
    try:
        fd, tmp_path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    except OSError as err:
        # errno and filename kept: cli prints environment errors as one line naming the path.
        raise type(err)(err.errno, f"Cannot save '{path}': the directory '{directory}' is not writable "
                                   f"({err.strerror or err}); fix its permissions or choose another output "
                                   "directory", directory) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        if hasattr(err, "add_note"):
            err.add_note(f"(while saving '{path}'; any previous file there is unchanged)")
        raise
    _fsync_directory(directory)


def model_state_dict(model):
    """State dict of a model (DDP / DataParallel / torch.compile wrappers removed) or of a state dict,
    without `module.` / `_orig_mod.` prefixes."""
    if isinstance(model, Mapping):
        return strip_prefixes(model)
    return strip_prefixes(unwrap_model(model).state_dict())


def check_loadable(obj, where):
    """Raise TypeError naming the first part of `obj` that `load_checkpoint_file` would refuse
    (anything but tensors, `PLAIN_VALUE_TYPES` and `CONTAINER_TYPES` of them)."""
    if type(obj) in PLAIN_VALUE_TYPES or isinstance(obj, torch.Tensor):
        return
    if type(obj) not in CONTAINER_TYPES:
        hint = " (convert numpy values with torch.from_numpy / float() / .tolist())" \
            if type(obj).__module__.startswith("numpy") else ""
        raise TypeError(f"Not saving a checkpoint: {where} is a {type(obj).__module__}.{type(obj).__qualname__}, "
                        f"which weights-only loading refuses; store tensors, numbers, strings or plain "
                        f"containers{hint}.")
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            check_loadable(key, f"{where} key {key!r}")
            check_loadable(value, f"{where}[{key!r}]")
    else:
        for index, value in enumerate(obj):
            check_loadable(value, f"{where}[{index}]")


def _state(obj):
    return obj.state_dict() if hasattr(obj, "state_dict") and callable(obj.state_dict) else obj


def save_checkpoint(path, *, model, optimizer=None, epoch=None, args=None, lr_scheduler=None, bert_model=None,
                    **extra):
    """Write a released-format LAVT checkpoint atomically (see `atomic_torch_save`).

    `model` / `bert_model`: modules (possibly DDP-wrapped) or state dicts, saved without `module.`;
    `optimizer` / `lr_scheduler`: objects with `state_dict()` or their state dicts; `args`: an
    argparse.Namespace (a dict is converted); `extra` (e.g. scaler, rng states, best metric): saved as
    top-level entries and must be tensors, numbers, strings, Namespaces or containers of them.
    """
    checkpoint = {"model": model_state_dict(model)}
    if bert_model is not None:
        checkpoint["bert_model"] = model_state_dict(bert_model)
    if optimizer is not None:
        checkpoint["optimizer"] = _state(optimizer)
    if epoch is not None:
        checkpoint["epoch"] = epoch
    if args is not None:
        if isinstance(args, Mapping):
            args = argparse.Namespace(**args)
        if not isinstance(args, argparse.Namespace):
            raise TypeError("save_checkpoint: args must be an argparse.Namespace or a dict, got "
                            f"{type(args).__name__}")
        checkpoint["args"] = args
    if lr_scheduler is not None:
        checkpoint["lr_scheduler"] = _state(lr_scheduler)
    checkpoint.update(extra)
    checkpoint[CONTENT_HASH_KEY] = content_hash(checkpoint)
    atomic_torch_save(checkpoint, path)
