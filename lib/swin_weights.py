"""Pretrained Swin classification weights -> the LAVT backbone (official and timm layouts).

`load_pretrained_swin` reads Swin ImageNet weights in the official layout (`{'model': ...}`, patch
merging at the end of stages 0-2) or in timm's (>= 0.9: merging at the start of stages 1-3,
`head.fc`), converting the latter with `timm_to_official_swin`. Both concatenate the four 2x2
sub-patches in the same order -- timm reshapes to (B, H/2, 2, W/2, 2, C) and permutes the two
sub-patch axes to (column, row) before flattening, which gives (0,0), (1,0), (0,1), (1,1) as
(row, column) offsets, the official x0, x1, x2, x3 -- so merging weights need no permutation
(tests/test_checkpoint.py checks this numerically against timm's PatchMerging). Relative position
tables of another window size are resized bicubically.
"""
import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping

import torch.nn.functional as F

from .checkpoint import LIST_LIMIT
from .checkpoint_io import load_checkpoint_file, unwrap_model
from .state_dict import WRAPPER_PREFIXES, CheckpointError, strip_prefixes

__all__ = ["load_pretrained_swin", "format_load_report", "timm_to_official_swin", "is_timm_swin_state_dict",
           "resize_relative_position_bias_table"]


def is_timm_swin_state_dict(state_dict):
    """True for timm >= 0.9 Swin layouts: patch merging at the start of stages 1-3, classifier `head.fc`."""
    stages_with_merging = {int(m[1]) for m in (re.match(r"layers\.(\d+)\.downsample\.", k) for k in state_dict) if m}
    if "head.fc.weight" in state_dict or "head.fc.bias" in state_dict:
        return True
    return bool(stages_with_merging) and 0 not in stages_with_merging


def timm_to_official_swin(state_dict):
    """Convert a timm (>= 0.9) Swin state dict to the official Swin / LAVT backbone layout.

    timm's `layers.{i}.downsample` (start of stage i, i >= 1) is the official `layers.{i-1}.downsample`
    (end of stage i-1); the sub-patch order of merging is the same (see the module docstring), so
    weights are copied unchanged. The classifier `head.*` and the non-persistent buffers
    `relative_position_index` / `attn_mask` are dropped.
    """
    converted = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith("head.") or key.endswith(("relative_position_index", "attn_mask")):
            continue
        match = re.match(r"layers\.(\d+)\.downsample\.(.+)$", key)
        if match:
            if int(match[1]) == 0:
                raise CheckpointError(f"timm_to_official_swin: '{key}' has patch merging in stage 0, which timm's "
                                      "layout never has; is this an official-layout checkpoint?")
            key = f"layers.{int(match[1]) - 1}.downsample.{match[2]}"
        converted[key] = value
    return converted


def resize_relative_position_bias_table(table, size):
    """Resize a ((2w-1)^2, heads) table to (size^2, heads) bicubically as a (heads, 2w-1, 2w-1) image."""
    length, heads = table.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"resize_relative_position_bias_table: length {length} is not a square")
    image = table.t().reshape(1, heads, side, side).float()
    image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=False)
    return image.reshape(heads, size * size).t().contiguous().to(table.dtype)


def _read_swin_weights(path_or_state_dict):
    if not isinstance(path_or_state_dict, (str, os.PathLike)):
        return path_or_state_dict, "state dict (in memory)"
    path = os.fspath(path_or_state_dict)
    if path.endswith(".safetensors"):  # timm / Hugging Face hub files; safetensors cannot hold code
        if not os.path.isfile(path):
            raise FileNotFoundError(f"The pretrained Swin weights file '{path}' does not exist; check the path.")
        from safetensors.torch import load_file

        return load_file(path, device="cpu"), f"'{path}'"
    return load_checkpoint_file(path, what="pretrained Swin weights"), f"'{path}'"


def load_pretrained_swin(backbone, path_or_state_dict):
    """Load Swin classification weights non-strictly into the LAVT backbone; returns a report dict.

    Accepts a path (.pth/.pt via `load_checkpoint_file`, or .safetensors) or a dict: official
    ({'model': ...}), 'state_dict'-wrapped, bare, or timm-layout (converted by `timm_to_official_swin`);
    `module.` / `backbone.` prefixes are stripped. The classifier `head.*` and final `norm.*` are not
    used, `attn_mask` / `relative_position_index` buffers are dropped (ours are computed for our
    window), and relative position tables of another window are resized bicubically.
    Report keys: 'source', 'format', 'loaded', 'resized' {key: (old, new shape)}, 'skipped_unexpected',
    'skipped_shape' {key: (file shape, model shape)}, 'dropped_buffers', 'missing' (backbone tensors
    that keep their initialisation, e.g. fusion, gates, norm0-3). Use `format_load_report` to print it.
    """
    state_dict, source = _read_swin_weights(path_or_state_dict)
    for entry in ("model", "state_dict", "module"):
        if isinstance(state_dict.get(entry), Mapping):
            state_dict = state_dict[entry]
            break
    state_dict = strip_prefixes(state_dict, WRAPPER_PREFIXES + ("backbone.",))
    file_format = "timm" if is_timm_swin_state_dict(state_dict) else "official"
    timm_dropped = []
    if file_format == "timm":
        converted = timm_to_official_swin(state_dict)
        timm_dropped = [k for k in state_dict if k.startswith("head.")]
        state_dict = converted

    backbone = unwrap_model(backbone)
    expected = backbone.state_dict()
    report = {"source": source, "format": file_format, "loaded": [], "resized": {}, "skipped_unexpected": [],
              "skipped_shape": {}, "dropped_buffers": [], "missing": []}
    report["skipped_unexpected"] += timm_dropped
    to_load = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            report["dropped_buffers"].append(key)
        elif key.startswith(("head.", "norm.")) or key not in expected:
            report["skipped_unexpected"].append(key)
        elif value.shape == expected[key].shape:
            to_load[key] = value
        elif key.endswith("relative_position_bias_table") and value.shape[1] == expected[key].shape[1] \
                and math.isqrt(value.shape[0]) ** 2 == value.shape[0]:
            to_load[key] = resize_relative_position_bias_table(value, math.isqrt(expected[key].shape[0]))
            report["resized"][key] = (tuple(value.shape), tuple(expected[key].shape))
        else:
            report["skipped_shape"][key] = (tuple(value.shape), tuple(expected[key].shape))
    if not to_load:
        raise CheckpointError(f"No tensor of the Swin weights {source} matches the backbone (first keys: "
                              f"{list(state_dict)[:5]}); is it a Swin classification checkpoint?")
    result = backbone.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # filtered above
    report["loaded"] = list(to_load)
    report["missing"] = [k for k in expected if k not in to_load and not k.endswith("relative_position_index")]
    return report


def _group_keys(keys, depth=None):
    """'layers.0.fusion.a', 'layers.1.fusion.b' -> ['layers.*.fusion.* (2)'] (depth 3): a short summary."""
    groups = OrderedDict()
    for key in keys:
        pattern = re.sub(r"^norm\d+", "norm*", re.sub(r"(?<=layers\.)\d+|(?<=blocks\.)\d+", "*", key))
        if depth is not None and pattern.count(".") >= depth:
            pattern = ".".join(pattern.split(".")[:depth]) + ".*"
        groups[pattern] = groups.get(pattern, 0) + 1
    return [f"{p} ({n})" if n > 1 else p for p, n in groups.items()]


def format_load_report(report):
    """Human-readable summary of a `load_pretrained_swin` report (a few lines)."""
    lines = [f"Pretrained Swin weights from {report['source']} ({report['format']} layout): "
             f"loaded {len(report['loaded'])} tensors"]
    if report["resized"]:
        (old, new), count = next(iter(report["resized"].values())), len(report["resized"])
        lines.append(f"  resized {count} relative position table(s) bicubically, e.g. {old} -> {new}")
    for name, keys in (("skipped, not in the backbone", report["skipped_unexpected"]),
                       ("skipped, shape differs (file vs model)",
                        [f"{k} {file} vs {ours}" for k, (file, ours) in report["skipped_shape"].items()]),
                       ("dropped buffers (recomputed)", report["dropped_buffers"]),
                       ("kept their initialisation (not in the file)", report["missing"])):
        if keys:
            groups = keys if "shape" in name else _group_keys(keys, depth=3 if "initialisation" in name else None)
            more = f", ... {len(groups) - LIST_LIMIT} more" if len(groups) > LIST_LIMIT else ""
            shown = ", ".join(groups[:LIST_LIMIT]) + more
            lines.append(f"  {name}: {len(keys)}: {shown}")
    return "\n".join(lines)
