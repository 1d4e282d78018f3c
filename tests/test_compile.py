"""--compile and the opt-in GPU levers of train.py (issue 22), on the CPU with a nano model.

The compiled test is slow (Inductor builds C++ kernels with gcc; minutes on one shared core): the
compiled and the eager model give the same logits and the same training steps, with activation
checkpointing and gradient accumulation. train.py --compile compiles the model once, logs the compile
time once, and its checkpoint resumes without --compile; a checkpoint of a compiled model loads into
an eager model and back (same state-dict keys).
"""
import argparse
import copy

import pytest
import torch

import engine
import train
from args import get_train_parser
from lib.checkpoint import load_lavt_checkpoint
from lib.checkpoint_io import load_checkpoint_file, save_checkpoint
from lib.criterion import build_criterion
from tests.training_batches import RecordingSGD, training_batches

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def nano_args(*extra):
    return get_train_parser().parse_args(["--model", "lavt", "--swin_type", "nano", "--window-size", "4",
                                          "--ck_bert", "minilm", "--bert_tokenizer", "minilm", "--drop-path", "0.0",
                                          "--device", "cpu", *extra])


def frozen_text_args(*extra):
    """A frozen text encoder: its features come from the cache, left out of the graph, so that compiling
    (minutes on one shared CPU core) covers the LAVT model only."""
    return nano_args("--bert-trainable-layers", "0", *extra)


def training_model(*extra, parse=nano_args):
    torch.manual_seed(0)
    return train.build_training_model(parse(*extra), CPU, world_size=1)[0]


def test_speed_flags_are_off_by_default_and_parse():
    defaults = nano_args()
    assert not (defaults.compile or defaults.tf32 or defaults.fused_adamw)
    assert not defaults.pin_mem
    chosen = nano_args("--compile", "--tf32", "--fused-adamw")
    assert chosen.compile and chosen.tf32 and chosen.fused_adamw


def test_fused_adamw_only_on_cuda(monkeypatch):
    chosen = []

    class Recorder(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            chosen.append(kwargs.get("fused"))
            super().__init__(params, lr=kwargs["lr"])

    monkeypatch.setattr(torch.optim, "AdamW", Recorder)
    model = training_model()
    train.build_optimizer(model, nano_args("--fused-adamw"), CPU)
    train.build_optimizer(model, nano_args(), torch.device("cuda"))
    assert chosen == [None, None]  # the default implementation on the CPU, and on CUDA without the flag
    # On CUDA with the flag: fused (constructed with the parameters on the CPU, so stop before step()).
    monkeypatch.setattr(Recorder, "__init__", lambda self, params, **kwargs: chosen.append(kwargs.get("fused")))
    train.build_optimizer(model, nano_args("--fused-adamw"), torch.device("cuda"))
    assert chosen[-1] is True


def test_tf32_switches_only_with_the_flag_on_cuda(monkeypatch):
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        train.allow_tf32(False, torch.device("cuda"))
        train.allow_tf32(True, CPU)
        assert not torch.backends.cuda.matmul.allow_tf32
        train.allow_tf32(True, torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_compiled_model_checkpoints_have_the_eager_keys_and_load_both_ways(tmp_path):
    compiled = training_model("--compile")  # compiled in place; nothing is traced until it runs
    eager = training_model()
    assert compiled._compiled_call_impl is not None and eager._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    with torch.no_grad():
        for param in compiled.parameters():
            param.add_(0.25)  # weights of "a compiled run", unlike the eager model's
    save_checkpoint(tmp_path / "compiled.pth", model=compiled.model, bert_model=compiled.bert_model,
                    args=nano_args("--compile"))
    checkpoint = load_checkpoint_file(str(tmp_path / "compiled.pth"))
    assert not any("_orig_mod" in key for key in [*checkpoint["model"], *checkpoint["bert_model"]])
    load_lavt_checkpoint(eager.model, checkpoint, bert_model=eager.bert_model)
    for (name, got), expected in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.equal(got, expected), name
    # The reverse, and a torch.compile wrapper (whose keys carry `_orig_mod.`) saved the same way.
    fresh = training_model("--compile")
    load_lavt_checkpoint(fresh.model, checkpoint, bert_model=fresh.bert_model)
    assert torch.equal(fresh.model.classifier.conv1_1.weight, compiled.model.classifier.conv1_1.weight)
    save_checkpoint(tmp_path / "wrapped.pth", model=torch.compile(eager.model), bert_model=eager.bert_model)
    assert list(load_checkpoint_file(str(tmp_path / "wrapped.pth"))["model"]) == list(checkpoint["model"])


def _one_step(model, batches, accum_steps):
    # A small step, so that the second step's gradients are compared at nearly the same weights.
    optimizer = RecordingSGD([(n, p) for n, p in model.named_parameters() if p.requires_grad], lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stats = engine.train_one_epoch(model, build_criterion("ce"), batches, optimizer, schedule, CPU, 0,
                                   accum_steps=accum_steps, print_freq=10**6)
    return optimizer.applied, stats


def assert_close_gradients(got, expected, tolerance=1e-2):
    """Per parameter, |got - expected| <= tolerance x max(|expected|, 1% of the largest |expected|), in
    Euclidean norms. Inductor fuses and reorders float32 reductions; the floor covers gradients that are
    zero in theory (biases followed by an InstanceNorm), where only rounding is left to compare.
    Why 1e-2: the gradients of the pixel-word attention's query and key projections pass through the
    softmax's cancelling difference (p * (g - sum p g)); measured error 7.5e-3 on an Intel Xeon, under
    1e-3 on an AMD EPYC, both deterministic. A wrong gradient (a missing path, a stale recompute) is off
    by order 1."""
    assert got.keys() == expected.keys()
    norms = {name: value.norm().item() for name, value in expected.items()}
    floor = 0.01 * max(norms.values())
    errors = {name: (got[name] - value).norm().item() / max(norms[name], floor) for name, value in expected.items()}
    worst = sorted(errors, key=errors.get)[-3:]
    assert errors[worst[-1]] <= tolerance, ", ".join(
        f"{name}: error {errors[name]:.2e} (|gradient| {norms[name]:.2e}, floor {floor:.2e})" for name in worst)
    # Not vacuous: most parameters have a gradient, and many a large one (80 of 199 in the nano model).
    assert sum(norm > 0 for norm in norms.values()) > len(norms) // 2
    assert sum(norm > floor for norm in norms.values()) > len(norms) // 4


@pytest.mark.slow
def test_compiled_model_matches_eager_outputs_and_training_step():
    eager = training_model(parse=frozen_text_args)
    compiled = training_model("--compile", "--checkpoint-activations", parse=frozen_text_args)
    compiled.load_state_dict(eager.state_dict())
    images, _, input_ids, attention_mask = training_batches(1, batch_size=2)[0]
    ids, mask = input_ids[:, 0], attention_mask[:, 0]

    eager.eval()
    compiled.eval()
    with torch.no_grad():
        expected = eager(images, ids, mask)["logits"]
        got = compiled(images, ids, mask)["logits"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    batches = training_batches(4, batch_size=2, seed=1)
    eager_steps, _ = _one_step(copy.deepcopy(eager), batches, accum_steps=2)
    compiled_steps, stats = _one_step(compiled, batches, accum_steps=2)  # two steps of two micro-batches
    assert len(compiled_steps) == 2
    for got_step, expected_step in zip(compiled_steps, eager_steps, strict=True):
        assert_close_gradients(got_step, expected_step)
    # The first micro-batch paid for compiling (forward and backward graphs); the others reused them.
    assert stats["first_step_s"] > 5 * stats["step_s"]


@pytest.mark.slow
def test_train_py_compiles_once_logs_the_time_and_resumes_without_compile(tmp_path, monkeypatch):
    """train.py's wiring, with compiling itself stubbed out (the test above compiles for real)."""
    from data.synthetic import generate

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(type(self).__name__))
    root = str(tmp_path / "data")
    generate(root, dataset="synref", num_images=24, img_size=64, seed=3)
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"

    def run(epochs, *extra):
        flags = ["--dataset", "synref", "--splitBy", "unc", "--refer_data_root", root, "--img_size", "64",
                 "--workers", "0", "--batch-size", "4", "--epochs", str(epochs), "--model_id", "c",
                 "--run-dir", str(run_dir), "--output-dir", str(out_dir), "--print-freq", "50", "--resume", "auto",
                 *extra]
        train.main(frozen_text_args(*flags))

    run(1, "--compile", "--amp", "bf16", "--accum-steps", "2")
    assert compiled == ["ReferringModel"]  # the whole model, before any DDP wrapper
    log = (run_dir / "log.txt").read_text()
    assert log.count("torch.compile: first training step") == 1
    first_checkpoint = load_checkpoint_file(str(run_dir / "checkpoint_last.pth"))
    assert first_checkpoint["args"].compile
    run(2)  # resumes the --compile run's checkpoint in an eager model
    assert compiled == ["ReferringModel"]
    resumed = load_checkpoint_file(str(run_dir / "checkpoint_last.pth"))
    assert resumed["epoch"] == 1 and list(resumed["model"]) == list(first_checkpoint["model"])
    assert isinstance(resumed["args"], argparse.Namespace) and not resumed["args"].compile
    assert (run_dir / "log.txt").read_text().count("torch.compile:") == 1
    run(3, "--compile")  # and the eager run's checkpoint resumes with it
    assert compiled == ["ReferringModel"] * 2
    assert load_checkpoint_file(str(run_dir / "checkpoint_last.pth"))["epoch"] == 2
    assert (run_dir / "log.txt").read_text().count("torch.compile:") == 2  # once per run
