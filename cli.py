"""The command-line edge shared by train.py, test.py and the tools: devices, output
directories, mixed precision, and how errors reach the user.

`run_cli(main, parser)` prints ONE `error:` line (exit code 1) for the errors this project
raises on purpose about the user's input (`errors.UserInputError`, missing files, unreadable
checkpoints, out of memory with advice, a diverged loss) and for a distributed peer that died;
anything else is a bug and keeps its traceback. An OSError of the environment (disk full, read-only
or forbidden directory) is one line naming the path, and Ctrl-C one line saying where to resume
(`set_interrupt_hint`), exit code 130. `LAVT_DEBUG=1` shows the traceback in every case.
"""
import contextlib
import errno
import os
import pickle
import sys

import torch
import torch.distributed as dist

import utils
from errors import UserInputError
from lib.state_dict import CheckpointError


def resolve_device(requested):
    """torch.device for --device, falling back to the CPU (with a notice) when CUDA is absent."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {requested}: CUDA is not available on this machine; running on the CPU.")
        return torch.device("cpu")
    return torch.device(requested)


def amp_dtype_for(amp, device):
    """autocast dtype for --amp (None when off); fp16 is refused on the CPU."""
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise UserInputError("--amp fp16 is unusable on the CPU (a 2048x2048 fp16 matmul takes ~43 s here); "
                             "use --amp bf16 instead.")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def check_writable_dir(path, flag):
    """Create `path` if needed and make sure files can be written there, or fail naming the flag."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as err:
        raise UserInputError(f"{flag} '{path}' is not a writable directory ({err.strerror}). "
                             f"Choose another directory with {flag}.") from err


def check_output_file(path, flag):
    """Before any work: `path` can be written as a file (not a directory; its folder is created)."""
    if os.path.isdir(path):
        raise UserInputError(f"{flag} '{path}' is a directory; pass a file name (e.g. {os.path.join(path, 'out')}"
                             f"{os.path.splitext(path)[1] or ''}).")
    check_writable_dir(os.path.dirname(os.path.abspath(path)), flag)


def is_out_of_memory(err):
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text


class OutOfMemoryAdvice(UserInputError):
    """Out of memory, with the flags that reduce memory."""


@contextlib.contextmanager
def out_of_memory_hint(batch_flag, batch_size, img_size):
    """Re-raise an out-of-memory error inside the block naming the flags that reduce memory."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err):
            raise
        detail = str(err).strip().splitlines()
        raise OutOfMemoryAdvice(
            f"Out of memory ({detail[0] if detail else type(err).__name__}). Try a smaller {batch_flag} (now "
            f"{batch_size}), mixed precision (--amp bf16, or fp16 on CUDA), --checkpoint-activations, or a smaller "
            f"--img_size (now {img_size})."
        ) from err


# Errors raised on purpose with a message for the user: printed as one line.
USER_ERRORS = (UserInputError, FileNotFoundError, CheckpointError, pickle.UnpicklingError, FloatingPointError)
# OSErrors that say something about the machine, not the code: printed as one line naming the path.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_interrupt_hint = None


def set_interrupt_hint(hint):
    """`hint()` is the line printed when the script is stopped with Ctrl-C (e.g. where to resume)."""
    global _interrupt_hint
    _interrupt_hint = hint


def _environment_line(err):
    if not isinstance(err, OSError) or err.errno not in ENVIRONMENT_ERRNOS:
        return None
    path = f" '{err.filename}'" if err.filename else ""
    notes = "".join(f" {note}" for note in getattr(err, "__notes__", ()))
    return (f"{err.strerror or os.strerror(err.errno)}{path}{notes}. Free space or fix the permissions (or choose "
            "another output directory), then run again (training: with --resume auto).")

PEER_FAILURE_WORDS = ("pair closure", "connection closed", "connection reset", "broken pipe", "timed out",
                      "timeout", "gloo", "nccl")


def _peer_failure(err):
    """Whether `err` is a collective failing because another rank died or hung."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return utils.is_dist_avail_and_initialized() and any(word in text for word in PEER_FAILURE_WORDS)


def _one_line(err):
    """The user-facing line for `err`, or None when it must keep its traceback."""
    if isinstance(err, USER_ERRORS):
        return str(err) + "".join(f"\n{note}" for note in getattr(err, "__notes__", ()))
    if _environment_line(err):
        return _environment_line(err)
    if isinstance(err, RuntimeError) and _peer_failure(err):
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return (f"rank {utils.get_rank()}: another process of this distributed job failed or stopped responding "
                f"({first}). Restart the job with --resume auto to continue from the last checkpoint.")
    return None


def run_cli(main, parser, argv=None):
    """Parse arguments and run `main(args)`; see the module docstring for what reaches the user how."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except KeyboardInterrupt:
        if os.environ.get("LAVT_DEBUG"):
            raise
        sys.stderr.write(f"\nerror: {_interrupt_hint() if _interrupt_hint else 'Interrupted.'}\n")
        sys.exit(130)
    except Exception as err:
        line = _one_line(err)
        if line is None or os.environ.get("LAVT_DEBUG"):
            raise
        sys.stderr.write(f"error: {line}\n")  # every rank, unlike print()
        utils.cleanup_distributed()
        sys.exit(1)
