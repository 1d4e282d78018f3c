"""Bad input at the command line: train.py / test.py end with exit code 1 and one `error:` line naming the culprit.

Issue 6, section 3, on the recorded REFER fixture with the nano model at 64 px. Most cases run the
scripts in this process (`cli.run_cli` with the script's own parser and argv: the same parsing and
error handling as `python train.py ...`, without 7 s of imports per case); a few run the real
subprocess.
The REFER / dataset / checkpoint layers have their own error tests (test_refer.py, test_dataset.py,
test_checkpoint.py); here the point is that those errors reach the user through the scripts.
"""
import json
import os
import runpy
import shutil
import subprocess
import sys

import pytest
import torch

import cli
from args import get_test_parser, get_train_parser
from errors import UserInputError
from lib.architecture import load_model
from lib.referring_model import ReferringModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_ROOT = os.path.join(REPO, "tests", "fixtures", "refer_fixture")
IMAGE_DIR = os.path.join("images", "mscoco", "images", "train2014")
TRAIN_IMAGE = "COCO_train2014_000000777777.jpg"  # of a train object only: read in epoch 0, before validation

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


PARSERS = {"train.py": get_train_parser, "test.py": get_test_parser}


def flags(root=FIXTURE_ROOT, img_size=64):
    """Flags both scripts take (data, model, runtime)."""
    return ["--device", "cpu", "--swin_type", "nano", "--ck_bert", "minilm", "--bert_tokenizer", "minilm",
            "--refer_data_root", str(root), "--dataset", "refcoco", "--img_size", str(img_size),
            "--workers", "0", "--print-freq", "50"]


def train_flags(tmp_path, root=FIXTURE_ROOT, epochs=1, img_size=64):
    return [*flags(root, img_size), "-b", "2", "--bert-trainable-layers", "1", "--epochs", str(epochs),
            "--model_id", "e", "--run-dir", str(tmp_path / "run"), "--output-dir", str(tmp_path / "out")]


def run_script(script, argv, monkeypatch, capsys):
    """(exit code, stdout, stderr) of `python <script> <argv>`, run in this process."""
    main = runpy.run_path(os.path.join(REPO, script), run_name="cli_under_test")["main"]
    monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
    code = 0
    try:
        cli.run_cli(main, PARSERS[script]())
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def expect_error(script, argv, monkeypatch, capsys, *fragments):
    """Run; require exit code 1 and an `error:` message (no traceback) containing every fragment."""
    code, out, err = run_script(script, argv, monkeypatch, capsys)
    assert code == 1, f"exit code {code}\nSTDOUT\n{out[-2000:]}\nSTDERR\n{err[-2000:]}"
    assert "error: " in err and "Traceback" not in err, err[-2000:]
    message = err[err.index("error: "):]  # after any progress bar tqdm left on stderr
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    return message


@pytest.fixture
def data_copy(tmp_path):
    root = tmp_path / "refer_data"
    shutil.copytree(FIXTURE_ROOT, root)
    return root


@pytest.fixture(scope="module")
def checkpoint_72(module_tmp):
    """One epoch at --img_size 72 (not a multiple of 32): its best checkpoint serves the evaluation tests."""
    base = module_tmp("img72")
    args = get_train_parser().parse_args(train_flags(base, img_size=72))
    runpy.run_path(os.path.join(REPO, "train.py"), run_name="cli_under_test")["main"](args)
    return base / "out" / "model_best_e.pth"


# --------------------------------------------------------------------------- data


@pytest.mark.slow
def test_missing_data_root_exits_1_naming_the_path(tmp_path):
    """The real subprocess: exit code 1, one error line (no traceback) naming the path and the setup docs."""
    missing = tmp_path / "no_refer_data"
    result = subprocess.run([sys.executable, "train.py", *train_flags(tmp_path, root=missing)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.startswith("error: "), result.stderr[-2000:]
    assert str(missing) in result.stderr and "Data setup" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoint_last.pth").exists()


@pytest.mark.parametrize("name", ["refs(unc).p", "instances.json"])
def test_missing_annotation_file_is_named(data_copy, tmp_path, monkeypatch, capsys, name):
    os.remove(data_copy / "refcoco" / name)
    expect_error("train.py", train_flags(tmp_path, root=data_copy), monkeypatch, capsys,
                 str(data_copy / "refcoco" / name), "Data setup")


@pytest.mark.slow
def test_missing_image_file_is_named(data_copy, tmp_path, monkeypatch, capsys):
    os.remove(data_copy / IMAGE_DIR / TRAIN_IMAGE)
    expect_error("train.py", train_flags(tmp_path, root=data_copy), monkeypatch, capsys,
                 str(data_copy / IMAGE_DIR / TRAIN_IMAGE), "Image file not found")


@pytest.mark.slow
def test_undecodable_image_is_named(data_copy, tmp_path, monkeypatch, capsys):
    (data_copy / IMAGE_DIR / TRAIN_IMAGE).write_bytes(b"\xff\xd8 not really a jpeg")
    expect_error("train.py", train_flags(tmp_path, root=data_copy), monkeypatch, capsys,
                 str(data_copy / IMAGE_DIR / TRAIN_IMAGE), "cannot be decoded")


@pytest.mark.parametrize("option, value, fragment", [
    ("--dataset", "refcocoX", "Unknown dataset 'refcocoX'"),
    ("--splitBy", "umd", "splitBy 'umd'"),
    ("--split", "nosuch", "Unknown split 'nosuch'"),
])
@pytest.mark.slow
def test_unknown_dataset_splitby_or_split_is_named(checkpoint_72, tmp_path, monkeypatch, capsys, option, value,
                                                   fragment):
    argv = [*flags(img_size=72), "--resume", checkpoint_72, "--split", "val",
            "--results-json", tmp_path / "r.json", option, value]
    expect_error("test.py", argv, monkeypatch, capsys, fragment)
    assert not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------------- sizes and checkpoints


@pytest.mark.slow
def test_img_size_not_a_multiple_of_32_trains_and_evaluates(checkpoint_72, tmp_path, monkeypatch, capsys):
    assert checkpoint_72.is_file()  # the fixture trained at 72 px
    results = tmp_path / "r.json"
    code, out, err = run_script("test.py", [*flags(img_size=72), "--resume", checkpoint_72, "--split", "val",
                                            "--results-json", results], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    record = json.loads(results.read_text())
    assert record["img_size"] == 72 and record["num_samples"] > 0
    assert 0.0 <= record["overall_iou"] <= 100.0

    args = get_test_parser().parse_args([*flags(img_size=72), "--resume", str(checkpoint_72)])
    model = load_model(args, torch.device("cpu"))
    images = torch.randn(2, 3, 72, 72)
    input_ids = torch.tensor([[101, 2158, 102] + [0] * 17] * 2)
    attention_mask = (input_ids > 0).long()
    with torch.no_grad():
        logits = model(images, input_ids, attention_mask)["logits"]
    assert logits.shape == (2, 2, 72, 72)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("extra, fragments", [
    (["--swin_type", "tiny"], ["swin_type='tiny'", "Swin-nano", "drop the option"]),
    (["--model", "lavt_one"], ["model='lavt_one'", "a lavt model (a separate bert_model)"]),
    (["--window12"], ["window12=True", "window-7 attention tables"]),
    (["--fusion", "pwam", "--mha", "2-2-2-2"], ["mha='2-2-2-2'", "mha=''"]),
    (["--no-target-head"], ["no_target_head=True", "no no-target head"]),
])
@pytest.mark.slow
def test_checkpoint_of_another_architecture_names_the_mismatch(checkpoint_72, tmp_path, monkeypatch, capsys,
                                                               extra, fragments):
    argv = [*flags(img_size=72), "--resume", checkpoint_72, "--split", "val", "--results-json",
            tmp_path / "r.json", *extra]
    expect_error("test.py", argv, monkeypatch, capsys, f"checkpoint '{checkpoint_72}' (--resume)", *fragments)


def test_resume_of_missing_file_names_flag_and_path(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere" / "model.pth"
    wording = f"The --resume file '{missing}' does not exist; check the path."  # one wording in every script
    train = expect_error("train.py", [*train_flags(tmp_path), "--resume", missing], monkeypatch, capsys, wording,
                         "--resume auto")
    test = expect_error("test.py", [*flags(), "--resume", missing, "--split", "val"], monkeypatch, capsys, wording)
    assert train.startswith(test.rstrip())  # the same sentence; training adds where to continue from
    # test.py writes its results next to the checkpoint: no directory may appear for a wrong path.
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_unwritable_output_directories_are_named(checkpoint_72, tmp_path, monkeypatch, capsys):
    # A path below a regular file fails for every user, root included (chmod does not stop root).
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = blocker / "sub"
    base = train_flags(tmp_path)
    expect_error("train.py", [*base, "--output-dir", bad], monkeypatch, capsys, f"--output-dir '{bad}'",
                 "not a writable directory")
    expect_error("train.py", [*base, "--run-dir", bad], monkeypatch, capsys, f"--run-dir '{bad}'")
    evaluate = [*flags(img_size=72), "--resume", checkpoint_72, "--split", "val"]
    expect_error("test.py", [*evaluate, "--results-json", bad / "r.json"], monkeypatch, capsys,
                 f"--results-json '{bad}'")
    expect_error("test.py", [*evaluate, "--results-json", tmp_path / "r.json", "--save-predictions", bad],
                 monkeypatch, capsys, f"--save-predictions '{bad}'")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permission bits do not bind root")
def test_read_only_output_directory_is_named(tmp_path, monkeypatch, capsys):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        expect_error("train.py", [*train_flags(tmp_path), "--output-dir", read_only], monkeypatch, capsys,
                     f"--output-dir '{read_only}'", "Permission denied")
    finally:
        read_only.chmod(0o755)


# --------------------------------------------------------------------------- resources and numerics


OOM_ERRORS = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.10 GiB)"),
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                                "you tried to allocate 21474836480 bytes."),
}


def fail_forward(monkeypatch, error, when):
    """Make the model's forward raise `error` in training (when='train') or only in evaluation ('eval')."""
    forward = ReferringModel.forward

    def forward_or_fail(*args, **kwargs):
        if (when == "train") == torch.is_grad_enabled():
            raise error()
        return forward(*args, **kwargs)

    monkeypatch.setattr(ReferringModel, "forward", forward_or_fail)


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
@pytest.mark.slow
def test_out_of_memory_in_training_suggests_smaller_settings(tmp_path, monkeypatch, capsys, kind):
    fail_forward(monkeypatch, OOM_ERRORS[kind], "train")
    expect_error("train.py", [*train_flags(tmp_path), "--img_size", "96"], monkeypatch, capsys, "Out of memory",
                 "--batch-size (now 2)", "--amp bf16", "--img_size (now 96)")


@pytest.mark.slow
def test_out_of_memory_in_validation_and_test_script(checkpoint_72, tmp_path, monkeypatch, capsys):
    fail_forward(monkeypatch, OOM_ERRORS["cpu"], "eval")
    expect_error("train.py", train_flags(tmp_path), monkeypatch, capsys, "can't allocate memory",
                 "--eval-batch-size (now 16)", "--amp", "--img_size (now 64)")
    fail_forward(monkeypatch, OOM_ERRORS["cuda"], "eval")
    expect_error("test.py", [*flags(img_size=72), "--resume", checkpoint_72, "--split", "val", "--results-json",
                             tmp_path / "r.json", "--eval-batch-size", "4"], monkeypatch, capsys,
                 "CUDA out of memory", "--eval-batch-size (now 4)", "--amp", "--img_size (now 72)")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_fp16_on_cpu_is_refused_pointing_to_bf16(checkpoint_72, tmp_path, monkeypatch, capsys):
    expect_error("train.py", [*train_flags(tmp_path), "--amp", "fp16"], monkeypatch, capsys, "--amp fp16", "bf16")
    expect_error("test.py", [*flags(), "--resume", checkpoint_72, "--split", "val", "--amp", "fp16"],
                 monkeypatch, capsys, "--amp fp16", "bf16")


@pytest.mark.slow
def test_non_finite_loss_stops_training_naming_epoch_and_iteration(tmp_path, monkeypatch, capsys):
    """A NaN loss at epoch 1, iteration 1 stops the run; epoch 0's checkpoint stays loadable and unchanged."""
    train_objects = 4  # of the fixture; with -b 1 one iteration each
    import lib.criterion

    build_criterion = lib.criterion.build_criterion
    calls = []

    def build_nan_on_second_step(kind, **options):
        criterion = build_criterion(kind, **options)
        terms = criterion.terms

        def nan_on_second_step_of_epoch_1(outputs, target):
            calls.append(1)
            found = terms(outputs, target)
            return {k: v * float("nan") for k, v in found.items()} if len(calls) == train_objects + 2 else found

        criterion.terms = nan_on_second_step_of_epoch_1
        return criterion

    # train.py imports build_criterion from lib.criterion each time run_script executes it.
    monkeypatch.setattr(lib.criterion, "build_criterion", build_nan_on_second_step)
    argv = [*train_flags(tmp_path, epochs=3), "-b", "1"]
    expect_error("train.py", argv, monkeypatch, capsys, "Non-finite training loss (nan) at epoch 1, iteration 1",
                 "--lr", "--resume auto")
    last = tmp_path / "run" / "checkpoint_last.pth"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0]


def run_cli_exit_code(main, argv=()):
    try:
        cli.run_cli(main, get_test_parser(), list(argv))
    except SystemExit as exit_:
        return exit_.code
    return 0


def raising(error):
    def main(args):
        raise error
    return main


def test_user_errors_are_one_line_and_lavt_debug_shows_the_traceback(monkeypatch, capsys):
    monkeypatch.delenv("LAVT_DEBUG", raising=False)
    assert run_cli_exit_code(raising(UserInputError("--foo: broken on purpose"))) == 1
    assert capsys.readouterr().err == "error: --foo: broken on purpose\n"
    monkeypatch.setenv("LAVT_DEBUG", "1")
    with pytest.raises(UserInputError, match="broken on purpose"):
        run_cli_exit_code(raising(UserInputError("--foo: broken on purpose")))


def test_bugs_keep_their_traceback_with_or_without_lavt_debug(monkeypatch):
    """A ValueError / RuntimeError from inside the code is not the user's mistake: no one-line summary."""
    monkeypatch.delenv("LAVT_DEBUG", raising=False)
    with pytest.raises(ValueError, match="shape bug"):
        run_cli_exit_code(raising(ValueError("shape bug")))
    # Peer-failure words do not make a single-process RuntimeError a distributed failure.
    with pytest.raises(RuntimeError, match="connection reset"):
        run_cli_exit_code(raising(RuntimeError("connection reset in my module")))


def test_distributed_peer_failure_is_one_line_unless_lavt_debug(monkeypatch, capsys):
    peer_died = torch.distributed.DistError("Connection closed by peer [127.0.0.1]:29500")
    monkeypatch.delenv("LAVT_DEBUG", raising=False)
    assert run_cli_exit_code(raising(peer_died)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: rank 0: another process of this distributed job failed") and "--resume auto" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("LAVT_DEBUG", "1")
    with pytest.raises(torch.distributed.DistError):
        run_cli_exit_code(raising(peer_died))


# --------------------------------------------------------------------------- text encoder


def offline_without_bert_env(tmp_path):
    """An environment where bert-base-uncased cannot be found: offline hub, empty Hugging Face cache."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "LAVT_DEBUG")}
    (tmp_path / "empty_hf_home").mkdir()
    return {**env, "HF_HOME": str(tmp_path / "empty_hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


@pytest.mark.slow
def test_missing_default_text_encoder_is_one_error_line_and_writes_nothing(checkpoint_72, tmp_path):
    """Issue 9: the default --ck_bert (bert-base-uncased) missing is an error naming --ck_bert and minilm.
    test.py reads the text encoder off the checkpoint (issue 20), so there it needs no flag at all."""
    default_ck_bert = flags(img_size=72)
    del default_ck_bert[default_ck_bert.index("--ck_bert"):default_ck_bert.index("--ck_bert") + 2]
    del default_ck_bert[default_ck_bert.index("--bert_tokenizer"):default_ck_bert.index("--bert_tokenizer") + 2]
    workdir, checkpoint_dir = tmp_path / "cwd", tmp_path / "checkpoint"
    workdir.mkdir()
    checkpoint_dir.mkdir()
    checkpoint = checkpoint_dir / "model.pth"
    shutil.copy(checkpoint_72, checkpoint)
    env = offline_without_bert_env(tmp_path)
    # train.py with its default run and output directories, relative to the working directory
    train = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *default_ck_bert, "-b", "2",
                            "--epochs", "1", "--model_id", "m"], cwd=workdir, env=env, capture_output=True,
                           text=True, timeout=300)
    assert train.returncode == 1, train.stderr[-2000:]
    lines = train.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), train.stderr[-2000:]
    assert "bert-base-uncased" in lines[0] and "--ck_bert" in lines[0] and "minilm" in lines[0]
    assert os.listdir(workdir) == []  # no models/m/, no checkpoints/
    # test.py, offline, finds minilm named in the checkpoint and evaluates with it.
    test = subprocess.run([sys.executable, os.path.join(REPO, "test.py"), *default_ck_bert, "--resume",
                           str(checkpoint), "--split", "val"], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert test.returncode == 0, test.stderr[-2000:]
    assert sorted(os.listdir(checkpoint_dir)) == ["model.pth", "model_refcoco_unc_val_resized_72px.json"]
