"""The model's constants, in one leaf module: it imports nothing from lib/, so every module of lib/
(the builders, checkpoint loading and its diagnosis, architecture inference) can read them without
an import circle.

`SWIN_CONFIGS` maps a Swin type to (embed_dim, depths, num_heads): the four published sizes plus
`nano` (32, 2-2-2-2, 1-2-4-8), a small model of our own for CPU runs and tests; it has no
pretrained Swin weights.
"""
import math

SWIN_CONFIGS = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
    "nano": (32, [2, 2, 2, 2], [1, 2, 4, 8]),
}

# Stochastic-depth rate of the last block in the released recipe (rates grow linearly from 0).
RELEASED_DROP_PATH_RATE = 0.3

# Options of the released models; args.py and the factories in lib/segmentation.py read their defaults here.
MODEL_DEFAULTS = {"swin_type": "base", "window12": False, "window_size": None, "mha": "", "fusion_drop": 0.0,
                  "fusion": "pwam", "drop_path_rate": RELEASED_DROP_PATH_RATE, "checkpoint_activations": False,
                  "no_target_head": False, "no_target_grad_scale": 1.0, "fusion_kwargs": None}

# Text encoders by feature width, for checkpoints whose args do not name theirs (and for messages).
TEXT_ENCODERS_BY_WIDTH = {768: "bert-base-uncased", 384: "minilm"}


def window_of_table(rows):
    """The attention window w of a relative-position bias table with `rows` = (2w-1)^2 rows."""
    return (math.isqrt(rows) + 1) // 2
