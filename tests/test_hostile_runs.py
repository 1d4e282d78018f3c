"""Hostile checkpoints, flags, runs and Predictor inputs (issue 19, Build 2-5).

Each case ends in a one-line error (or a named warning, or a correct result). The checkpoints are
a nano model saved here; one real training run (1 epoch on the recorded fixture, 64 px) serves the
cases that need train.py / test.py end to end.
"""
import argparse
import errno
import json
import math
import os
import runpy
import sys

import numpy as np
import pytest
import torch

import cli
from args import get_test_parser, get_train_parser
from errors import UserInputError
from lib import runs
from lib.architecture import infer_model_args
from lib.checkpoint import load_lavt_checkpoint
from lib.checkpoint_io import atomic_torch_save, check_resume_state, load_checkpoint_file, save_checkpoint
from lib.predictor import Predictor, open_image
from lib.referring_model import build_model
from lib.state_dict import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_ROOT = os.path.join(REPO, "tests", "fixtures", "refer_fixture")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def nano_options(**changes):
    return argparse.Namespace(**{"model": "lavt", "swin_type": "nano", "window_size": 4, "ck_bert": "minilm",
                                 "bert_tokenizer": "minilm", "img_size": 64, **changes})


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return build_model(nano_options(), pretrained=False)


def save_nano(nano, path, **extra):
    save_checkpoint(path, model=nano.model, bert_model=nano.bert_model, args=nano_options(), **extra)
    return path


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("bad", [float("nan"), -float("inf")])
@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_nonfinite_weights_are_refused_naming_the_tensor(nano, tmp_path, bad):
    state = {k: v.clone() for k, v in nano.model.state_dict().items()}
    key = [k for k, v in state.items() if v.is_floating_point()][3]
    state[key].view(-1)[1] = bad
    path = tmp_path / "bad.pth"
    save_checkpoint(path, model=state, bert_model=nano.bert_model, args=nano_options())
    fresh = build_model(nano_options(), pretrained=False)
    with pytest.raises(CheckpointError, match=f"tensor '{key}' holds 1 NaN/inf") as err:
        load_lavt_checkpoint(fresh.model, str(path), bert_model=fresh.bert_model)
    assert "--allow-nonfinite" in str(err.value)
    load_lavt_checkpoint(fresh.model, str(path), bert_model=fresh.bert_model, allow_nonfinite=True)
    assert not math.isfinite(fresh.model.state_dict()[key].view(-1)[1])
    with pytest.raises(CheckpointError, match="non-finite"):
        Predictor.from_checkpoint(path)


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_nonfinite_text_encoder_weights_are_refused(nano, tmp_path):
    bert = {k: v.clone() for k, v in nano.bert_model.state_dict().items()}
    key = next(k for k, v in bert.items() if v.is_floating_point())
    bert[key].fill_(float("nan"))
    path = tmp_path / "bad_bert.pth"
    save_checkpoint(path, model=nano.model, bert_model=bert, args=nano_options())
    fresh = build_model(nano_options(), pretrained=False)
    with pytest.raises(CheckpointError, match=f"tensor '{key}' of 'bert_model'"):
        load_lavt_checkpoint(fresh.model, str(path), bert_model=fresh.bert_model)


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_corrupted_bytes_inside_a_tensor_are_detected(nano, tmp_path):
    marker = torch.arange(64, dtype=torch.float64) * 1.000123 + 7.25
    path = save_nano(nano, tmp_path / "c.pth", marker=marker)
    load_checkpoint_file(path)  # intact: loads
    data = bytearray(path.read_bytes())
    where = data.find(marker.numpy().tobytes())
    assert where > 0, "the marker tensor's bytes are stored as they are"
    data[where + 64:where + 128] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_checkpoint_file(path)
    assert str(path) in str(err.value)


def test_checkpoint_without_hash_loads_as_before(nano, tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"model": nano.model.state_dict(), "bert_model": nano.bert_model.state_dict(), "epoch": 3}, path)
    assert load_checkpoint_file(path)["epoch"] == 3


def resumable(**changes):
    checkpoint = {"model": {}, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"last_epoch": 4},
                  "epoch": 2, "best_overall_iou": 0.25}
    checkpoint.update(changes)
    return {k: v for k, v in checkpoint.items() if v is not None}


@pytest.mark.parametrize("entry, value", [("optimizer", None), ("lr_scheduler", None), ("epoch", None),
                                          ("optimizer", [1]), ("optimizer", {"state": {}}), ("epoch", "3"),
                                          ("epoch", 2.0), ("epoch", -1), ("epoch", True),
                                          ("best_overall_iou", float("nan")), ("best_overall_iou", float("inf")),
                                          ("best_overall_iou", "0.3"), ("best_overall_iou", 61.5)])
def test_resume_entries_are_validated_naming_the_entry(entry, value):
    checkpoint = resumable(**{entry: value})  # None: the entry is missing
    with pytest.raises(CheckpointError, match=f"'{entry}' entry"):
        check_resume_state(checkpoint, "checkpoint 'x.pth'")


def test_valid_resume_entries_are_read():
    assert check_resume_state(resumable(), "c") == (2, 0.25)
    assert check_resume_state(resumable(best_overall_iou=None), "c") == (2, -1.0)


def shapes_checkpoint(nano, **saved):
    return {"model": nano.model.state_dict(), "bert_model": nano.bert_model.state_dict(),
            "args": nano_options(**saved)}


@pytest.mark.parametrize("img_size", [0, 7, 32, -64, 10**6, "64", 64.5])
def test_saved_img_size_is_checked_like_the_flag(nano, img_size):
    with pytest.raises(UserInputError, match="img_size") as err:
        infer_model_args(shapes_checkpoint(nano, img_size=img_size), source="checkpoint 'c.pth'")
    assert "--img_size" in str(err.value)
    assert infer_model_args(shapes_checkpoint(nano, img_size=img_size), {"img_size": 96}).img_size == 96


@pytest.mark.parametrize("name", ["/tmp", ".", "some-user/some-model", "../bert"])
def test_saved_unknown_text_encoder_is_not_used(nano, name):
    with pytest.warns(UserWarning, match="used only when you pass it"):
        args = infer_model_args(shapes_checkpoint(nano, ck_bert=name, bert_tokenizer=name))
    assert (args.ck_bert, args.bert_tokenizer) == ("minilm", "minilm")  # the known encoder of its width


def test_saved_unknown_fusion_is_refused(nano):
    with pytest.raises(UserInputError, match="fusion 'evil'"):
        infer_model_args(shapes_checkpoint(nano, fusion="evil"))


# ---------------------------------------------------------------------------------------- runs, units
def files_in(tmp_path):
    return runs.RunFiles(str(tmp_path / "run"), str(tmp_path / "out"), "x")


def write_run(files, nano, last=True, best=True, metrics=True):
    os.makedirs(os.path.dirname(files.last), exist_ok=True)
    os.makedirs(os.path.dirname(files.best), exist_ok=True)
    optimizer = torch.optim.AdamW(nano.model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for path, wanted in ((files.best, best), (files.last, last)):
        if wanted:
            save_checkpoint(path, model=nano.model, bert_model=nano.bert_model, optimizer=optimizer, epoch=1,
                            lr_scheduler=scheduler, best_overall_iou=0.5)
    if metrics:
        with open(files.metrics, "w") as handle:
            handle.write("".join(json.dumps({"epoch": e}) + "\n" for e in range(3)))


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_fresh_run_over_an_earlier_one_stops(nano, tmp_path):
    files = files_in(tmp_path)
    write_run(files, nano)
    with pytest.raises(UserInputError) as err:
        runs.prepare_run("", False, files)
    for fragment in ("--resume auto", "--model_id", "--overwrite", files.last, files.best):
        assert fragment in str(err.value)
    assert runs.prepare_run("", True, files) == ""
    with open(files.log, "w") as handle:  # train.py appends to the log: the new run's must start empty
        handle.write("Epoch 2: the earlier run\n")
    runs.start_metrics(files, 0, fresh=True)
    assert files.existing() == [] and not os.path.exists(files.log)


@pytest.mark.parametrize("left", ["metrics", "best"])
def test_any_file_of_an_earlier_run_counts(nano, tmp_path, left):
    files = files_in(tmp_path)
    write_run(files, nano, last=False, best=left == "best", metrics=left == "metrics")
    with pytest.raises(UserInputError, match="earlier run"):
        runs.prepare_run("", False, files)


def test_resume_auto_without_checkpoint_last_names_model_best(nano, tmp_path):
    files = files_in(tmp_path)
    write_run(files, nano, last=False)
    with pytest.raises(UserInputError) as err:
        runs.prepare_run("auto", False, files)
    assert f"--resume {files.best}" in str(err.value) and "does not exist" in str(err.value)
    assert runs.prepare_run("auto", False, files_in(tmp_path / "new")) == ""  # nothing earlier: fresh


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_corrupted_checkpoint_last_names_the_newest_usable_file(nano, tmp_path):
    files = files_in(tmp_path)
    write_run(files, nano)
    with open(files.last, "r+b") as handle:
        handle.truncate(os.path.getsize(files.last) // 2)
    with pytest.raises(CheckpointError) as err:
        runs.load_resume_checkpoint(files.last, files)
    assert files.last in str(err.value) and f"--resume {files.best}" in str(err.value)
    os.remove(files.best)
    with pytest.raises(CheckpointError, match="no other usable checkpoint"):
        runs.load_resume_checkpoint(files.last, files)


def test_resumed_metrics_keep_only_earlier_epochs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"epoch": e, "v": e}) + "\n" for e in (0, 1, 2)) + '{"epoch": 3, "v"')
    runs.trim_metrics(str(path), 2)
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [0, 1]


def test_stale_temporary_files_are_removed_at_the_next_save(tmp_path):
    stale = tmp_path / ".c.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".d.pth.abc123.tmp"  # another file's: not ours to remove
    other.write_bytes(b"x")
    atomic_torch_save({"a": torch.zeros(2)}, tmp_path / "c.pth")
    assert not stale.exists() and other.exists() and (tmp_path / "c.pth").exists()


def test_disk_full_during_save_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    target = tmp_path / "checkpoint_last.pth"
    code, err = run_main(lambda args: atomic_torch_save({"a": 1}, target), capsys)
    assert code == 1 and err.count("\n") == 1 and "No space left" in err and str(target) in err, err
    assert list(tmp_path.iterdir()) == []  # no temporary left


def run_main(main, capsys):
    code = 0
    try:
        cli.run_cli(main, argparse.ArgumentParser(), argv=[])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("number", [errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_environment_oserrors_are_one_line_naming_the_path(capsys, number):
    def main(args):
        raise OSError(number, os.strerror(number), "/somewhere/metrics.jsonl")

    code, err = run_main(main, capsys)
    assert code == 1 and err.startswith("error: ") and "/somewhere/metrics.jsonl" in err and "Traceback" not in err


def test_other_oserrors_keep_their_traceback():
    def main(args):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        cli.run_cli(main, argparse.ArgumentParser(), argv=[])


@pytest.mark.slow  # seconds: builds, saves and reloads models with a text encoder
def test_ctrl_c_prints_one_line_saying_where_to_resume(nano, tmp_path, capsys, monkeypatch):
    files = files_in(tmp_path)
    write_run(files, nano)
    monkeypatch.setattr(cli, "_interrupt_hint", None)
    cli.set_interrupt_hint(lambda: runs.interrupt_hint(files))

    def main(args):
        raise KeyboardInterrupt

    code, err = run_main(main, capsys)
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "--resume auto" in err and files.last in err
    os.remove(files.last)
    assert "nothing to resume" in run_main(main, capsys)[1]


# ------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flag, value", [
    ("--img_size", "7"), ("--img_size", "32"), ("--img_size", "100000"), ("--lr", "nan"), ("--lr", "-1"),
    ("--lr", "0"), ("--lr", "inf"), ("--wd", "nan"), ("--wd", "-0.1"), ("-j", "-1"), ("--device", "nonsense"),
    ("--device", "cuda:x"), ("--seed", "1e23"), ("--seed", str(10**23)), ("--seed", "-1"), ("--fusion_drop", "2"),
    ("--fusion_drop", "nan"), ("--drop-path", "5"), ("--window-size", "1000"), ("--window-size", "0"),
    ("--no-target-loss-weight", "nan"), ("--no-target-grad-scale", "2"), ("--bert-trainable-layers", "-3"), ("--dist-timeout", str(10**12)),
    ("--local_rank", "-2"),
])
def test_numeric_flags_out_of_range_are_refused_at_parse_time(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        get_train_parser().parse_args([flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and flag in err and "Traceback" not in err


def test_grad_scale_without_a_head_is_refused_before_anything_is_written(tmp_path):
    args = get_train_parser().parse_args(["--no-target-grad-scale", "0", "--run-dir", str(tmp_path / "run"),
                                          "--output-dir", str(tmp_path / "out")])
    main = runpy.run_path(os.path.join(REPO, "train.py"), run_name="cli_under_test")["main"]
    with pytest.raises(UserInputError, match="--no-target-grad-scale.*--no-target-head"):
        main(args)
    assert not os.listdir(tmp_path)


def test_valid_flags_still_parse():
    args = get_train_parser().parse_args(["--img_size", "33", "--lr", "1e-4", "--wd", "0", "-j", "0", "--device",
                                          "cuda:1", "--seed", "7", "--fusion_drop", "0.1", "--drop-path", "1",
                                          "--window-size", "12"])
    assert (args.img_size, args.lr, args.workers, args.device, args.window_size) == (33, 1e-4, 0, "cuda:1", 12)
    defaults = get_train_parser().parse_args([])
    assert (defaults.img_size, defaults.lr, defaults.weight_decay, defaults.seed) == (480, 5e-05, 1e-2, 0)


@pytest.mark.parametrize("split", ["", "   "])
def test_empty_split_is_refused(split, capsys):
    with pytest.raises(SystemExit):
        get_test_parser().parse_args(["--split", split])
    assert "--split" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--opset", "1"], ["--opset", "17"], ["--atol", "nan"], ["--img_size", "7"],
                                  ["--window-size", "1000"]])
def test_export_flags_out_of_range_are_refused(argv, capsys):
    parser = runpy.run_path(os.path.join(REPO, "tools", "export_onnx.py"), run_name="x")["get_parser"]()
    with pytest.raises(SystemExit):
        parser.parse_args(["--resume", "c.pth", "--out", "m.onnx", *argv])
    assert argv[0] in capsys.readouterr().err


def test_output_file_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(UserInputError, match=f"--results-json '{tmp_path}' is a directory"):
        cli.check_output_file(str(tmp_path), "--results-json")
    cli.check_output_file(str(tmp_path / "new" / "r.json"), "--results-json")  # its folder is created
    assert (tmp_path / "new").is_dir()


# -------------------------------------------------------------------------------------------- predictor
@pytest.mark.parametrize("array", [
    np.full((8, 8, 3), np.nan, dtype=np.float32), np.array([[0.5, np.inf], [0, 1]]),
    np.zeros((8, 8), dtype=np.complex64), np.empty((4, 4), dtype=object), np.full((4, 4), "a"),
])
def test_predictor_refuses_arrays_that_are_not_pixels(array):
    with pytest.raises(UserInputError, match="image: "):
        open_image(array)


def test_predictor_warns_on_empty_and_truncated_expressions(nano):
    from bert import load_tokenizer

    predictor = Predictor(nano, load_tokenizer("minilm"), 64)
    long = " ".join(["the small red disk next to the square"] * 4)
    with pytest.warns(UserWarning) as caught:
        results = predictor.predict(np.zeros((20, 30, 3), dtype=np.uint8), ["", long, "the disk"])
    messages = [str(w.message) for w in caught]
    assert any("Expression 1" in m and "empty" in m for m in messages), messages
    assert any("Expression 2" in m and "cut to the first 20" in m for m in messages), messages
    assert not any("Expression 3" in m for m in messages) and len(results) == 3


def test_dataset_warns_on_truncated_expressions(tmp_path):
    import pickle
    import shutil

    from data.dataset_refer_bert import ReferDataset
    from refer import load_refs_pickle

    root = tmp_path / "root"
    shutil.copytree(FIXTURE_ROOT, root)
    path = root / "refcoco" / "refs(unc).p"
    refs = load_refs_pickle(str(path))
    val = next(ref for ref in refs if ref["split"] == "val")
    val["sentences"][0]["raw"] = " ".join(["a very long expression about the object"] * 5)
    path.write_bytes(pickle.dumps(refs))
    args = argparse.Namespace(refer_data_root=str(root), dataset="refcoco", splitBy="unc", bert_tokenizer="minilm")
    sent_id = val["sentences"][0]["sent_id"]
    with pytest.warns(UserWarning, match=rf"expression\(s\) in split 'val' are longer than 20 tokens.*"
                                         rf"ref {val['ref_id']} sentence {sent_id}\b"):
        ReferDataset(args, split="val", eval_mode=True)


# ------------------------------------------------------------------------------ train.py / test.py end to end
def flags(tmp_path):
    return ["--device", "cpu", "--swin_type", "nano", "--window-size", "4", "--ck_bert", "minilm",
            "--bert_tokenizer", "minilm", "--refer_data_root", FIXTURE_ROOT, "--dataset", "refcoco",
            "--img_size", "64", "--workers", "0", "--print-freq", "50"]


def train_argv(tmp_path, *extra):
    return [*flags(tmp_path), "-b", "2", "--bert-trainable-layers", "0", "--epochs", "1", "--model_id", "h",
            "--run-dir", str(tmp_path / "run"), "--output-dir", str(tmp_path / "out"), *extra]


def run_script(script, argv, parser, monkeypatch, capsys):
    main = runpy.run_path(os.path.join(REPO, script), run_name="cli_under_test")["main"]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    code = 0
    try:
        cli.run_cli(main, parser)
    except SystemExit as exit_:
        code = exit_.code
    return code, *capsys.readouterr()


@pytest.fixture(scope="module")
def trained(module_tmp):
    base = module_tmp("trained")
    main = runpy.run_path(os.path.join(REPO, "train.py"), run_name="cli_under_test")["main"]
    with pytest.warns(UserWarning):  # the fixture's empty masks
        main(get_train_parser().parse_args(train_argv(base)))
    return base


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_rerun_without_resume_stops_and_keeps_the_earlier_run(trained, monkeypatch, capsys):
    before = {p: p.read_bytes() for p in (trained / "run" / "checkpoint_last.pth", trained / "run" / "metrics.jsonl")}
    code, out, err = run_script("train.py", train_argv(trained), get_train_parser(), monkeypatch, capsys)
    assert code == 1 and "--resume auto" in err and "--overwrite" in err and "Traceback" not in err, err
    assert all(path.read_bytes() == data for path, data in before.items())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_resume_auto_on_a_finished_run_says_so(trained, monkeypatch, capsys):
    code, out, err = run_script("train.py", train_argv(trained, "--resume", "auto"), get_train_parser(),
                                monkeypatch, capsys)
    assert code == 0 and "is finished" in out and "continuing" not in out, out + err
    lines = (trained / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0]  # nothing appended


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_results_json_directory_is_refused_before_evaluating(trained, monkeypatch, capsys):
    argv = [*flags(trained), "--resume", str(trained / "out" / "model_best_h.pth"), "--split", "val",
            "--results-json", str(trained)]
    code, out, err = run_script("test.py", argv, get_test_parser(), monkeypatch, capsys)
    assert code == 1 and "is a directory" in err and "Traceback" not in err, err
    assert "Mean IoU" not in out and "mean IoU" not in out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_nan_checkpoint_in_test_py_is_one_line(trained, tmp_path, monkeypatch, capsys):
    checkpoint = load_checkpoint_file(trained / "out" / "model_best_h.pth")
    key = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
    checkpoint["model"][key] = torch.full_like(checkpoint["model"][key], float("nan"))
    del checkpoint["content_sha256"]
    path = tmp_path / "nan.pth"
    torch.save(checkpoint, path)
    argv = [*flags(tmp_path), "--resume", str(path), "--split", "val", "--results-json", str(tmp_path / "r.json")]
    code, out, err = run_script("test.py", argv, get_test_parser(), monkeypatch, capsys)
    assert code == 1 and f"tensor '{key}'" in err and "Traceback" not in err, err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.slow
def test_failed_checkpoint_last_save_stops_the_run_before_model_best(tmp_path, monkeypatch, capsys):
    import lib.checkpoint_io

    real = lib.checkpoint_io.save_checkpoint

    def full_disk(path, **state):
        if os.path.basename(path) == "checkpoint_last.pth":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, **state)

    monkeypatch.setattr(lib.checkpoint_io, "save_checkpoint", full_disk)
    code, out, err = run_script("train.py", train_argv(tmp_path), get_train_parser(), monkeypatch, capsys)
    assert code == 1 and "No space left" in err and "checkpoint_last.pth" in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "model_best_h.pth").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
