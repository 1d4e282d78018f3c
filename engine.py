"""The training and evaluation loops (as in DETR's engine.py); nothing else lives here.

`train_one_epoch` runs one pass over a training loader, stepping the optimizer and the poly
schedule once per `accum_steps` micro-batches. `evaluate` runs a sentence-batch loader from
`data.evaluation.build_eval_loader` and returns one record per sample (gathered over ranks, in
dataset order); `metrics` turns records into numbers.
"""
import contextlib
import itertools
import statistics
import time

import torch
import torch.nn.functional as F

import utils
from metrics import sample_record


def train_one_epoch(model, criterion, data_loader, optimizer, lr_scheduler, device, epoch, *, accum_steps=1,
                    print_freq=10, amp_dtype=None, scaler=None, log_file=None):
    """One pass over `data_loader`; returns the average loss, the average of each of the criterion's
    terms (`loss_<name>`, unweighted), the last learning rate, and the seconds of the first
    micro-batch's forward, backward and step (`first_step_s`; with --compile it includes compiling)
    and the median of the others (`step_s`).

    With `accum_steps` N, the gradients of N micro-batches (each loss divided by N) are summed
    before one optimizer step, so `-b 8 --accum-steps 4` steps like a batch of 32; a trailing
    group of fewer than N micro-batches is skipped.
    """
    model.train()
    logger = utils.MetricLogger(log_file=log_file)
    logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.2e}"))
    num_micro_batches = len(data_loader) // accum_steps * accum_steps
    batches = itertools.islice(data_loader, num_micro_batches)
    step_seconds = []
    for iteration, (images, targets, input_ids, attention_mask) in enumerate(
            logger.log_every(batches, print_freq, f"Epoch: [{epoch}]", total=num_micro_batches)):
        started = time.perf_counter()
        last_of_group = (iteration + 1) % accum_steps == 0
        if iteration % accum_steps == 0:
            optimizer.zero_grad(set_to_none=True)
        # Between optimizer steps, DDP need not all-reduce the gradients of every micro-batch.
        sync = contextlib.nullcontext() if last_of_group or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            terms = _train_step_terms(model, criterion, images, targets, input_ids, attention_mask, device, amp_dtype)
            loss = criterion.total(terms)
            _check_finite(loss, epoch, iteration)
            (scaler.scale(loss / accum_steps) if scaler is not None else loss / accum_steps).backward()
        if last_of_group:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr_scheduler.step()
        # Each term unweighted under its own name (loss_ce, loss_no_target, ...) beside the weighted total;
        # .item() waits for the device.
        logger.update(loss=loss.item(), **{f"loss_{name}": value.item() for name, value in terms.items()},
                      lr=optimizer.param_groups[0]["lr"])
        step_seconds.append(time.perf_counter() - started)
    logger.synchronize_between_processes()
    stats = {name: meter.global_avg for name, meter in logger.meters.items()}
    stats["first_step_s"] = step_seconds[0] if step_seconds else 0.0
    stats["step_s"] = statistics.median(step_seconds[1:]) if len(step_seconds) > 1 else stats["first_step_s"]
    return stats


def _train_step_terms(model, criterion, images, targets, input_ids, attention_mask, device, amp_dtype):
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    input_ids = input_ids.squeeze(1).to(device, non_blocking=True)
    attention_mask = attention_mask.squeeze(1).to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = model(images, input_ids, attention_mask)
    return criterion.terms(outputs, targets)


def _check_finite(loss, epoch, iteration):
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"Non-finite training loss ({loss.item()}) at epoch {epoch}, iteration {iteration}. "
            "Training stopped; lower --lr, use --amp bf16 or off, or check the data of this batch. "
            "Resume from the last checkpoint with --resume auto.")


@torch.no_grad()
def evaluate(model, data_loader, device, *, amp_dtype=None, prediction_writer=None, print_freq=100,
             log_file=None, no_target_pixels=1):
    """Records `{"index", "sentence_index", "I", "U", "pred_pixels", "no_target_gt", "no_target_pred"}`
    for every sample of every rank, in dataset order (see `metrics.sample_record`).

    Predictions are compared with each sample's target at the target's size: the logits are
    resized bilinearly when the target is not at the input size (`--eval-protocol original`).
    "No target" is predicted by the model's no-target head when it has one, else by a mask of
    fewer than `no_target_pixels` pixels.
    """
    model.eval()
    records = []
    logger = utils.MetricLogger(log_file=log_file)
    for batch in logger.log_every(data_loader, print_freq, "Test:"):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(batch["images"].to(device, non_blocking=True),
                            batch["input_ids"].to(device, non_blocking=True),
                            batch["attention_mask"].to(device, non_blocking=True))
        head_logits = outputs.get("no_target_logits")
        no_target = batch.get("no_target", [False] * len(batch["samples"]))
        for k, ((index, j), logits, target) in enumerate(zip(batch["samples"], outputs["logits"].float(),
                                                              batch["targets"])):
            if logits.shape[-2:] != target.shape[-2:]:
                logits = F.interpolate(logits[None], size=target.shape[-2:], mode="bilinear", align_corners=True)[0]
            mask = logits.argmax(0)
            head_logit = None if head_logits is None else head_logits[k]
            record = sample_record(mask, target.to(device), no_target[k], head_logit, no_target_pixels)
            records.append({"index": index, "sentence_index": j, **record})
            if prediction_writer is not None:
                prediction_writer.write_mask(index, j, mask)
    records = [r for shard in utils.all_gather_object(records) for r in shard]
    records.sort(key=lambda r: (r["index"], r["sentence_index"]))
    if prediction_writer is not None and utils.is_main_process():
        prediction_writer.write_records(records)
    return records
