"""The files a training run leaves, and the rules that keep one run from destroying another.

A run of `--model_id ID` writes `<run-dir>/checkpoint_last.pth`, `<run-dir>/metrics.jsonl` and
`<output-dir>/model_best_ID.pth`. `prepare_run` decides, before anything is trained, what a new
command may do with them: continue (`--resume auto` / a path), replace them (`--overwrite`), or
stop because they belong to an earlier run. `load_resume_checkpoint` names the newest usable file
when the one to resume from is damaged, `trim_metrics` keeps metrics.jsonl to the epochs of the
run that is continued, and `interrupt_hint` says where a stopped run resumes from.
"""
import json
import os

from errors import UserInputError

from .checkpoint_io import check_resume_state, load_checkpoint_file, require_checkpoint_file
from .state_dict import CheckpointError

__all__ = ["RunFiles", "prepare_run", "load_resume_checkpoint", "start_metrics", "trim_metrics", "interrupt_hint",
           "finished_message"]


class RunFiles:
    """Paths of one run's files."""

    def __init__(self, run_dir, output_dir, model_id):
        self.run_dir = run_dir
        self.last = os.path.join(run_dir, "checkpoint_last.pth")
        self.metrics = os.path.join(run_dir, "metrics.jsonl")
        self.log = os.path.join(run_dir, "log.txt")
        self.best = os.path.join(output_dir, f"model_best_{model_id}.pth")

    def existing(self):
        """The files an earlier run left (an empty metrics.jsonl does not count)."""
        found = [path for path in (self.last, self.best) if os.path.isfile(path)]
        if os.path.isfile(self.metrics) and os.path.getsize(self.metrics) > 0:
            found.append(self.metrics)
        return found


def prepare_run(resume, overwrite, files):
    """The checkpoint to resume ('' for a fresh run), after checking the command against earlier files.

    - `--resume PATH`: that file, which must exist;
    - `--resume auto`: checkpoint_last.pth; when it is missing although the run left other files
      (its last save failed), an error naming the file to resume from instead of starting over;
    - no `--resume`: fresh; an error when an earlier run's files would be overwritten, unless
      `overwrite` (`start_metrics` then deletes them, once the new run is set up).
    """
    if resume and resume != "auto":
        try:
            require_checkpoint_file(resume, what="--resume")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} To continue the run from its last checkpoint when there is one, "
                                    "pass --resume auto.") from None
        return resume
    earlier = files.existing()
    if resume == "auto":
        if os.path.isfile(files.last):
            return files.last
        if earlier and not overwrite:
            usable = newest_usable([files.best])
            where = (f"resume from '{usable}' with --resume {usable}" if usable
                     else "no other usable checkpoint is left")
            raise UserInputError(
                f"--resume auto: '{files.last}' does not exist, but an earlier run left {_listed(earlier)} (its last "
                f"save failed?). Rather than start over quietly: {where}, or pass --overwrite to start afresh.")
        return ""
    if earlier and not overwrite:
        raise UserInputError(
            f"An earlier run left {_listed(earlier)}, which this run would overwrite. Continue it with --resume auto, "
            "start a separate run with another --model_id (or --run-dir / --output-dir), or pass --overwrite to "
            "replace it.")
    return ""


def _listed(paths):
    return ", ".join(f"'{path}'" for path in paths)


def newest_usable(paths):
    """The most recently written of `paths` that loads and can be resumed, or None."""
    for path in sorted((p for p in paths if os.path.isfile(p)), key=os.path.getmtime, reverse=True):
        try:
            check_resume_state(load_checkpoint_file(path), f"checkpoint '{path}'")
        except CheckpointError:
            continue
        return path
    return None


def load_resume_checkpoint(resume, files):
    """(checkpoint dict, epoch, best score) of `resume`; a damaged file's error names the newest usable one."""
    try:
        checkpoint = load_checkpoint_file(resume, what="--resume")
        epoch, best = check_resume_state(checkpoint, f"checkpoint '{resume}' (--resume)")
    except CheckpointError as err:
        others = [p for p in (files.last, files.best) if os.path.abspath(p) != os.path.abspath(resume)]
        usable = newest_usable(others)
        advice = (f"The newest usable checkpoint of this run is '{usable}': continue with --resume {usable}."
                  if usable else "This run has no other usable checkpoint; start afresh with --overwrite.")
        raise CheckpointError(f"{err} {advice}") from None
    return checkpoint, epoch, best


def start_metrics(files, first_epoch, fresh):
    """Before the first epoch: a fresh run (--overwrite) deletes the earlier run's files, so that neither
    its metrics nor its checkpoints are taken for this run's; a resumed one drops the records it will
    write again."""
    if fresh:  # the log too, which train.py appends to
        for path in files.existing() + ([files.log] if os.path.isfile(files.log) else []):
            os.remove(path)
    else:
        trim_metrics(files.metrics, first_epoch)


def trim_metrics(path, first_epoch):
    """Drop the records of epochs >= `first_epoch` (a resumed run writes them again)."""
    if not os.path.isfile(path):
        return
    with open(path) as handle:
        lines = handle.read().splitlines()
    kept = []
    for line in lines:
        try:
            epoch = json.loads(line).get("epoch")
        except (ValueError, AttributeError):
            continue  # a line cut by a crash mid-write
        if isinstance(epoch, int) and epoch < first_epoch:
            kept.append(line)
    if len(kept) != len(lines):
        with open(path, "w") as handle:
            handle.write("".join(line + "\n" for line in kept))


def finished_message(resume, epoch, epochs):
    return (f"The run of '{resume}' is finished: it holds epoch {epoch}, the last of --epochs {epochs}. Nothing to "
            "train; evaluate it with test.py, or start a new run (another --model_id, or --overwrite).")


def interrupt_hint(files):
    """The one line printed when training is stopped with Ctrl-C."""
    if os.path.isfile(files.last):
        return (f"Interrupted. Continue with the same command plus --resume auto (it resumes from '{files.last}', "
                "the last completed epoch).")
    return "Interrupted before the first epoch was saved; nothing to resume: run the command again."
