"""The command line as researchers and newcomers meet it (issue 10).

- A fusion module registered through the public route only (`lib.fusion.register_fusion` plus
  `--fusion`) trains with train.py and evaluates with test.py.
- A bug inside a model module reaches the user as a traceback naming its file and line; a bad
  `--dataset` stays one `error:` line and leaves no run directory behind.
- Each script's --help shows its own flags, grouped, each default printed once.
- One checkpoint evaluated at two --img_size values keeps both result files.

On the recorded REFER fixture with the nano model at 64 px; scripts run in this process through
`cli.run_cli` (the same parsing and error handling as `python train.py ...`) except where the
point is what a real process prints.
"""
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import cli
from args import get_test_parser, get_train_parser
from lib.checkpoint_io import load_checkpoint_file
from lib.fusion import register_fusion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_ROOT = os.path.join(REPO, "tests", "fixtures", "refer_fixture")
PARSERS = {"train.py": get_train_parser, "test.py": get_test_parser}

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


@register_fusion("test_word_scale")
class WordScaleFusion(nn.Module):
    """A toy fusion: every pixel scaled per channel by a projection of the mean of the real words."""

    def __init__(self, dim, text_dim, num_heads=1, dropout=0.0):
        super().__init__()
        self.word_to_scale = nn.Linear(text_dim, dim)

    def forward(self, x, l_feats, l_mask):
        mask = l_mask.to(x.dtype)
        mean = (l_feats.transpose(1, 2) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return x * torch.tanh(self.word_to_scale(mean))[:, None]


def flags(img_size=64, dataset="refcoco"):
    return ["--device", "cpu", "--swin_type", "nano", "--ck_bert", "minilm", "--bert_tokenizer", "minilm",
            "--refer_data_root", FIXTURE_ROOT, "--dataset", dataset, "--img_size", str(img_size),
            "--workers", "0", "--print-freq", "50"]


def train_only_flags(epochs=1):
    return ["-b", "2", "--bert-trainable-layers", "1", "--epochs", str(epochs), "--model_id", "c"]


def run_script(script, argv, capsys):
    """(exit code, stdout, stderr) of `python <script> <argv>`, run in this process."""
    main = runpy.run_path(os.path.join(REPO, script), run_name="cli_under_test")["main"]
    code = 0
    try:
        cli.run_cli(main, PARSERS[script](), [str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def toy_run(module_tmp):
    """train.py with the toy fusion, chosen by --fusion only: its run directory and best checkpoint."""
    import lib.referring_model

    base = module_tmp("toy_fusion")
    build_model = lib.referring_model.build_model
    initial = {}

    def build_and_record(args, pretrained=True):
        model = build_model(args, pretrained)
        initial.update({k: v.clone() for k, v in model.model.state_dict().items() if ".fusion." in k})
        return model

    argv = [*flags(), *train_only_flags(), "--fusion", "test_word_scale", "--lr", "1e-3",
            "--run-dir", str(base / "run"), "--output-dir", str(base / "out")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lib.referring_model, "build_model", build_and_record)  # train.py imports it from there
        main = runpy.run_path(os.path.join(REPO, "train.py"), run_name="cli_under_test")["main"]
        cli.run_cli(main, get_train_parser(), argv)
    return base, initial


@pytest.mark.slow
def test_registered_fusion_trains_through_train_py(toy_run):
    base, initial = toy_run
    rows = [json.loads(line) for line in (base / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0] and rows[0]["train_loss"] > 0
    assert rows[0]["train_loss_ce"] == rows[0]["train_loss"]  # the released loss: weighted CE alone, weight 1
    checkpoint = load_checkpoint_file(base / "run" / "checkpoint_last.pth")
    state = checkpoint["model"]
    assert checkpoint["args"].fusion == "test_word_scale"
    assert not any("image_lang_att" in key for key in state)
    assert sorted(initial) == sorted(key for key in state if ".fusion." in key)
    assert len(initial) == 8  # word_to_scale weight and bias in each of the 4 stages
    # The optimizer reached the toy module (parameters without a gradient would not move).
    assert not torch.equal(state["backbone.layers.0.fusion.word_to_scale.weight"],
                           initial["backbone.layers.0.fusion.word_to_scale.weight"])


@pytest.mark.slow
def test_registered_fusion_evaluates_through_test_py(toy_run, tmp_path, capsys):
    checkpoint = toy_run[0] / "out" / "model_best_c.pth"
    results = tmp_path / "r.json"
    evaluate = [*flags(), "--resume", checkpoint, "--split", "val", "--results-json", results]
    code, out, err = run_script("test.py", [*evaluate, "--fusion", "test_word_scale"], capsys)
    assert code == 0, err[-2000:]
    record = json.loads(results.read_text())
    assert record["num_samples"] > 0 and 0.0 <= record["mean_iou"] <= 100.0
    assert "Mean IoU is" in out
    # Without --fusion the fusion is read from the checkpoint's args (same numbers); another one is refused.
    code, out_read, err = run_script("test.py", evaluate, capsys)
    assert code == 0, err[-2000:]
    assert json.loads(results.read_text())["mean_iou"] == record["mean_iou"]
    code, _, err = run_script("test.py", [*evaluate, "--fusion", "pwam"], capsys)
    assert code == 1 and "error: fusion='pwam' contradicts" in err and "fusion='test_word_scale'" in err


@pytest.mark.slow
def test_one_checkpoint_at_two_image_sizes_keeps_both_results(toy_run, tmp_path, capsys):
    checkpoint = tmp_path / "toy.pth"
    shutil.copy(toy_run[0] / "out" / "model_best_c.pth", checkpoint)
    for size in (64, 96):
        code, _, err = run_script("test.py", [*flags(img_size=size), "--resume", checkpoint, "--split", "val",
                                              "--fusion", "test_word_scale"], capsys)
        assert code == 0, err[-2000:]
    written = sorted(name for name in os.listdir(tmp_path) if name.endswith(".json"))
    assert written == ["toy_refcoco_unc_val_resized_64px.json", "toy_refcoco_unc_val_resized_96px.json"]
    assert [json.loads((tmp_path / name).read_text())["img_size"] for name in written] == [64, 96]


BROKEN_FUSION = textwrap.dedent('''
    """A fusion module with a bug: its forward raises."""
    from torch import nn

    from lib.fusion import register_fusion


    @register_fusion("test_broken")
    class BrokenFusion(nn.Module):
        def __init__(self, dim, text_dim, num_heads=1, dropout=0.0):
            super().__init__()
            self.project = nn.Linear(text_dim, dim)

        def forward(self, x, l_feats, l_mask):
            raise ValueError(f"BrokenFusion cannot combine {tuple(x.shape)} with {tuple(l_feats.shape)}")
''')


@pytest.mark.slow
def test_bug_in_a_model_module_shows_a_traceback_naming_file_and_line(tmp_path):
    module = tmp_path / "broken_fusion.py"
    module.write_text(BROKEN_FUSION)
    line = next(i for i, text in enumerate(BROKEN_FUSION.splitlines(), 1) if "raise ValueError" in text)
    argv = [*flags(), *train_only_flags(), "--fusion", "test_broken", "--run-dir", str(tmp_path / "run"),
            "--output-dir", str(tmp_path / "out")]
    program = (f"import runpy, sys; sys.path[:0] = [{str(tmp_path)!r}, {REPO!r}]; import broken_fusion; "
               f"sys.argv = ['train.py', *{argv!r}]; runpy.run_path('train.py', run_name='__main__')")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LAVT_DEBUG", None)
    result = subprocess.run([sys.executable, "-c", program], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback (most recent call last)" in result.stderr, result.stderr[-3000:]
    assert f'File "{module}", line {line}, in forward' in result.stderr, result.stderr[-3000:]
    assert result.stderr.rstrip().splitlines()[-1].startswith("ValueError: BrokenFusion cannot combine")
    assert not re.search(r"^error: ", result.stderr, flags=re.MULTILINE)


def test_bad_dataset_is_one_error_line_and_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default --run-dir models/<model_id> and --output-dir ./checkpoints/
    code, _, err = run_script("train.py", [*flags(dataset="refcocoX"), *train_only_flags()], capsys)
    assert code == 1
    assert err.startswith("error: Unknown dataset 'refcocoX'") and "Traceback" not in err, err[-2000:]
    assert os.listdir(tmp_path) == []


def help_text(script, capsys):
    code, out, _ = run_script(script, ["--help"], capsys)
    assert code == 0
    return out


def shows(text, flag):
    return re.search(re.escape(flag) + r"(?![\w-])", text) is not None  # --split is not --splitBy


def option_entries(text):
    """Help entries, one per option: the option line plus its indented continuation lines."""
    entries = []
    for line in text.splitlines():
        if re.match(r"^  -", line):
            entries.append(line)
        elif entries and line.startswith("    "):
            entries[-1] += " " + line.strip()
    return entries


def test_each_script_shows_its_own_flags_grouped_with_defaults_printed_once(capsys):
    train, test = help_text("train.py", capsys), help_text("test.py", capsys)
    assert train != test
    for text in (train, test):
        assert all(f"\n{group}:" in text for group in ("data", "model", "runtime"))
    for flag in ("--epochs", "--amsgrad", "--accum-steps", "--checkpoint-activations", "--lr", "--model_id"):
        assert shows(train, flag) and not shows(test, flag), flag
    for flag in ("--save-predictions", "--eval-protocol", "--split", "--results-json"):
        assert shows(test, flag) and not shows(train, flag), flag
    assert "\ntraining:" in train and "\nevaluation:" not in train
    assert "\nevaluation:" in test and "\ntraining:" not in test
    for text in (train, test):
        entries = option_entries(text)
        assert len(entries) > 20
        twice = [entry for entry in entries if entry.count("(default:") > 1]
        assert not twice, twice
