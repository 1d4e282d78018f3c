"""Valid ranges of the numbers that pick sizes and rates, shared by the command-line flags (args.py,
tools/) and the options saved in checkpoints (lib/architecture.py), so both are checked alike.

Each `check_*` returns the value or raises ValueError saying what is accepted; `flag_type` turns
one into an argparse type, so that a bad flag is a usage error at parse time.
"""
import argparse
import math
from numbers import Integral, Real

import torch

# The backbone's total stride is 32 (4 x 4 patches, then three 2x merges) and the fusion's instance
# norm needs more than one position at that stride, so 32 px and less crash inside the model.
MIN_IMG_SIZE = 33
# Far above any published setting (480); bounds the memory a typo can ask for.
MAX_IMG_SIZE = 4096
# The relative position index of a window w holds w**4 entries per block: 32 -> 8 MB, 1000 -> 8 TB.
MAX_WINDOW_SIZE = 32
# NumPy seeds must be below 2**32; training adds 1000 * epoch + rank to the seed.
MAX_SEED = 2**31 - 1
MAX_DIST_TIMEOUT_S = 7 * 24 * 3600
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _integer(value, what):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def check_int(value, what, low, high=None):
    value = _integer(value, what)
    if value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise ValueError(f"{what} must be an integer {span}, got {value}")
    return value


def check_float(value, what, low, high=None, low_open=False):
    """A finite real in [low, high] ((low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or (low_open and value == low) or (high is not None and value > high):
        left = "greater than" if low_open else "at least"
        span = f"{left} {low:g}" + (f" and at most {high:g}" if high is not None else "")
        raise ValueError(f"{what} must be {span}, got {value:g}")
    return value


def check_img_size(value, what="img_size"):
    return check_int(value, what, MIN_IMG_SIZE, MAX_IMG_SIZE)


def check_window_size(value, what="window size"):
    return check_int(value, what, 1, MAX_WINDOW_SIZE)


def check_device(text, what="device"):
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"{what} {text!r} is not a device; use cpu, cuda or cuda:N")
    return text


_PARSED_AS = {int: "an integer", float: "a number", str: "text"}


def flag_type(parse, check, *bounds):
    """An argparse type: `parse` the text, then `check(value, "the value", *bounds)`."""
    def convert(text):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_PARSED_AS.get(parse, parse.__name__)}, got {text!r}") from None
        try:
            return check(value, "the value", *bounds)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = check.__name__.replace("check_", "")  # argparse names the type in its messages
    return convert
