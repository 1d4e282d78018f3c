"""Training-mode behaviour of the model and the training loop, on a nano model with the packaged MiniLM.

- Issue 9: `ReferringModel.train()` keeps the separate BERT of `lavt` in eval mode (the released
  code fine-tunes it without dropout), while the BERT inside `lavt_one` trains with dropout.
- Issue 13: `engine.train_one_epoch(..., accum_steps=N)` over N micro-batches makes the update one
  batch of N x b makes, and steps the optimizer and the schedule once per N micro-batches.
- Issue 18: `--lr-warmup-epochs` ramps the rate up linearly, multiplied into the released poly decay.
"""
import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import engine
from args import get_train_parser
from lib.criterion import build_criterion
from lib.referring_model import build_model
from tests.training_batches import RecordingSGD, token_batch, training_batches

pytestmark = pytest.mark.usefixtures("one_thread")


def nano_args(model="lavt", drop_path="0.0", extra=()):
    return get_train_parser().parse_args(["--model", model, "--swin_type", "nano", "--ck_bert", "minilm",
                                          "--bert_tokenizer", "minilm", "--drop-path", drop_path, *extra])


def dropout_modules(module):
    found = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    assert found, "the text encoder has no dropout modules to check"
    return found


@pytest.fixture(scope="module")
def lavt_model():
    torch.manual_seed(0)
    return build_model(nano_args("lavt"))


def test_lavt_separate_bert_trains_without_dropout(lavt_model):
    model = lavt_model.train()
    assert model.model.training  # the LAVT model itself is in training mode ...
    assert not any(m.training for m in dropout_modules(model.bert_model))  # ... its separate BERT is not
    input_ids, attention_mask = token_batch(3, seed=1)
    first = model.encode_text(input_ids, attention_mask)
    second = model.encode_text(input_ids, attention_mask)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert first.requires_grad  # still fine-tuned: eval mode, not no_grad
    model.eval()
    assert not model.model.training and not model.bert_model.training


def test_lavt_one_inner_bert_trains_with_dropout():
    torch.manual_seed(0)
    model = build_model(nano_args("lavt_one")).train()
    encoder = model.text_encoder
    assert encoder is model.model.text_encoder and model.bert_model is None
    assert all(m.training for m in dropout_modules(encoder))
    input_ids, attention_mask = token_batch(3, seed=1)
    first = encoder(input_ids, attention_mask=attention_mask)[0]
    second = encoder(input_ids, attention_mask=attention_mask)[0]
    assert not torch.equal(first, second)  # what the lavt check above would see if dropout were on
    model.eval()
    assert not any(m.training for m in dropout_modules(encoder))


def test_checkpoint_activations_flag_reaches_every_stage_of_the_built_model(lavt_model):
    assert not any(stage.grad_checkpointing for stage in lavt_model.model.backbone.layers)
    for variant in ("lavt", "lavt_one"):
        model = build_model(nano_args(variant, extra=["--checkpoint-activations"]), pretrained=False)
        assert all(stage.grad_checkpointing for stage in model.model.backbone.layers), variant


# --------------------------------------------------------------------------- gradient accumulation


def freeze_batch_norm(module):
    """Replace every BatchNorm2d by a FrozenBatchNorm2d with its statistics (as DETR freezes its backbone):
    then a micro-batch and the whole batch are normalised alike."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module


def concatenated(batches):
    return [tuple(torch.cat(parts) for parts in zip(*batches))]


class CountingSchedule:
    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1


def train_with(model, batches, accum_steps, loss="dice", lr=0.5):
    """One `train_one_epoch`: (the gradient of every optimizer step, parameters after, schedule steps)."""
    model = copy.deepcopy(model)
    optimizer = RecordingSGD([(n, p) for n, p in model.named_parameters() if p.requires_grad], lr=lr)
    schedule = CountingSchedule()
    engine.train_one_epoch(model, build_criterion(loss), batches, optimizer, schedule, torch.device("cpu"), 0,
                           accum_steps=accum_steps, print_freq=10**6)
    after = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return optimizer.applied, after, schedule.steps


@pytest.fixture(scope="module")
def frozen_bn_model(lavt_model):
    model = freeze_batch_norm(copy.deepcopy(lavt_model))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for param in model.bert_model.parameters():  # the text encoder's update is not the point here
        param.requires_grad_(False)
    return model


def assert_same_gradients(got, expected):
    assert got.keys() == expected.keys()
    # Float32 sums in another order: relative error ~1e-6, plus noise on gradients that are ~0 in theory
    # (e.g. biases followed by an InstanceNorm), hence an absolute floor at the scale of all gradients.
    floor = 1e-5 * max(value.abs().max().item() for value in expected.values())
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-3, atol=floor, msg=lambda message, name=name: f"{name}: {message}")
    assert sum(bool(value.abs().max() > 0) for value in expected.values()) > len(expected) // 2


@pytest.mark.slow
def test_accumulated_micro_batches_update_like_one_large_batch(frozen_bn_model):
    micro = training_batches(num_batches=3, batch_size=2)
    accumulated, _, accumulated_steps = train_with(frozen_bn_model, micro, accum_steps=3)
    large, _, large_steps = train_with(frozen_bn_model, concatenated(micro), accum_steps=1)
    assert accumulated_steps == large_steps == 1 and len(accumulated) == len(large) == 1
    assert_same_gradients(accumulated[0], large[0])
    # Not vacuous: one micro-batch alone gives another gradient.
    single, _, _ = train_with(frozen_bn_model, micro[:1], accum_steps=1)
    name = "model.classifier.conv1_4.weight"
    assert not torch.allclose(single[0][name], large[0][name], rtol=1e-2)


@pytest.mark.slow
def test_accumulation_steps_once_per_group_and_skips_a_trailing_partial_group(frozen_bn_model):
    micro = training_batches(num_batches=5, batch_size=1)
    applied, after, steps = train_with(frozen_bn_model, micro, accum_steps=2)
    assert steps == len(applied) == 2
    _, without_fifth, _ = train_with(frozen_bn_model, micro[:4], accum_steps=2)
    for name, value in without_fifth.items():
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    second_group, _, _ = train_with(frozen_bn_model, micro[2:4], accum_steps=2)
    name = "model.classifier.conv1_1.weight"
    assert not torch.allclose(applied[1][name], second_group[0][name], rtol=1e-2)  # it started from moved weights


@pytest.mark.slow
def test_released_weighted_loss_accumulates_like_data_parallel_ranks(frozen_bn_model):
    """The released class-weighted cross-entropy is a weighted mean per micro-batch, so N micro-batches
    average N such means, exactly as N DDP ranks of the released recipe average their gradients."""
    micro = training_batches(num_batches=2, batch_size=2)
    accumulated, _, _ = train_with(frozen_bn_model, micro, accum_steps=2, loss="ce")
    per_rank = [train_with(frozen_bn_model, [batch], accum_steps=1, loss="ce")[0][0] for batch in micro]
    assert_same_gradients(accumulated[0], {name: (per_rank[0][name] + per_rank[1][name]) / 2 for name in per_rank[0]})


def test_lr_warmup_ramps_linearly_over_epochs_given_in_optimizer_steps_then_follows_the_released_decay():
    from train import build_lr_scheduler

    def rates(flags, steps_per_epoch=8):
        weight = nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([weight], lr=0.1)
        scheduler = build_lr_scheduler(optimizer, steps_per_epoch, get_train_parser().parse_args(flags))
        seen = []
        for _ in range(steps_per_epoch * 3 + 2):  # past the last step, where a resume with fewer epochs lands
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    released = rates(["--epochs", "3"])
    ramped = rates(["--epochs", "3", "--lr-warmup-epochs", "0.5"])  # 4 of the 8 steps per epoch
    assert released[:24] == pytest.approx([0.1 * (1 - step / 24) ** 0.9 for step in range(24)])  # over all epochs
    assert released[24:] == [0.0, 0.0]  # clamped at zero, not a complex power of a negative number
    assert ramped[:4] == pytest.approx([released[s] * (s + 1) / 4 for s in range(4)])
    assert ramped[4:] == pytest.approx(released[4:])
    assert rates(["--epochs", "3", "--lr-warmup-epochs", "0.01"])[0] == pytest.approx(0.1)  # under a step: one step
    assert get_train_parser().parse_args([]).lr_warmup_epochs == 0  # released: no ramp
    with pytest.raises(SystemExit):
        get_train_parser().parse_args(["--lr-warmup-epochs", "-1"])
