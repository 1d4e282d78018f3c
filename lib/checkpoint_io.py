"""Checkpoint files in general: safe loading, content hashes, atomic saving and resume checks.

Kept apart from lib/checkpoint.py, which matches a checkpoint against a LAVT model and explains a
mismatch: code that only reads, writes or checks files then needs no model configuration.

Loading never unpickles arbitrary objects. What a checkpoint may hold is defined once, by
`PLAIN_VALUE_TYPES` and `CONTAINER_TYPES` (tensors aside): `load_checkpoint_file` lets exactly these
through `torch.load(weights_only=True)` (the released LAVT checkpoints keep the training options in
`args` as an `argparse.Namespace`), and `atomic_torch_save` refuses anything else before writing.
Saving goes through `save_checkpoint` / `atomic_torch_save`: a temporary file beside the target is
written, fsync'ed and renamed over it, so an interrupted save leaves the previous file intact.

Released layout, both variants: {'model': backbone + classifier state dict (+ `text_encoder.*` for
lavt_one), 'bert_model': BERT state dict (lavt only), 'optimizer', 'epoch', 'args', 'lr_scheduler'}.
Model-only weights files (lib/weights.py) are expanded back into it on loading, so that every
loader sees one layout.

Checkpoints written by `save_checkpoint` also hold `content_sha256`, a hash of every tensor and value
in them, which `load_checkpoint_file` checks (files without it, e.g. the released ones, load as
before): a few flipped bytes inside a tensor would otherwise load silently. `check_resume_state`
checks the entries a resumed run needs.
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

from .state_dict import CheckpointError, strip_prefixes
from .weights import expand_model_only_weights, is_model_only_weights

__all__ = [
    "load_checkpoint_file", "save_checkpoint", "atomic_torch_save", "model_state_dict", "unwrap_model",
    "check_loadable", "PLAIN_VALUE_TYPES", "CONTAINER_TYPES", "CONTENT_HASH_KEY", "content_hash",
    "check_resume_state",
]

# What a checkpoint may hold besides tensors (the one definition; see the module docstring). Exact
# types: subclasses such as numpy.float64 (a float) pickle as other globals, which loading refuses.
PLAIN_VALUE_TYPES = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype, torch.device,
                     torch.Size)
CONTAINER_TYPES = (dict, OrderedDict, list, tuple, set, argparse.Namespace)
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


def unwrap_model(model):
    """The module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


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
