"""Training and evaluation loops, losses and the referring-segmentation metrics.

The metrics follow the released LAVT test.py: every sentence is one sample; I and U are pixel
counts of the argmax mask against the target; IoU = I / U (0 when U = 0); mean IoU averages the
per-sample IoUs, overall IoU is sum(I) / sum(U), precision@k is the share of samples with IoU >= k.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import utils

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
CLASS_WEIGHTS = (0.9, 1.1)  # background, object: the released recipe's cross-entropy weights


# --------------------------------------------------------------------------- model building and call

def amp_dtype_for(amp, device):
    """autocast dtype for --amp (None when off); fp16 is refused on the CPU."""
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 is unusable on the CPU (a 2048x2048 fp16 matmul takes ~43 s here); "
                         "use --amp bf16 instead.")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def load_trained_model(args, device):
    """(model, text_encoder) in eval mode with the weights of the checkpoint `args.resume`.

    `text_encoder` is the separate BERT of `lavt` (None for `lavt_one`); it is built from its
    config only, since the checkpoint's `bert_model` entry replaces every weight.
    """
    from bert import load_text_encoder
    from lib import segmentation
    from lib.checkpoint import load_checkpoint_file, load_lavt_checkpoint

    checkpoint = load_checkpoint_file(args.resume, what="--resume")
    model = getattr(segmentation, args.model)(pretrained="", args=args)
    text_encoder = load_text_encoder(args.ck_bert, pretrained=False) if args.model == "lavt" else None
    load_lavt_checkpoint(model, checkpoint, bert_model=text_encoder, source=f"checkpoint '{args.resume}' (--resume)")
    model.to(device).eval()
    if text_encoder is not None:
        text_encoder.to(device).eval()
    return model, text_encoder


def forward_lavt(model, text_encoder, images, input_ids, attention_mask):
    """Logits (B, 2, H, W) for token ids / attention masks of shape (B, N_l).

    `text_encoder` is the separate BERT of the `lavt` variant, or None for `lavt_one`
    (whose BERT lives inside the model).
    """
    if text_encoder is None:
        return model(images, input_ids, l_mask=attention_mask)
    trainable = any(p.requires_grad for p in text_encoder.parameters())
    with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
        hidden = text_encoder(input_ids, attention_mask=attention_mask)[0]
    return model(images, hidden.permute(0, 2, 1), attention_mask.unsqueeze(-1))


# --------------------------------------------------------------------------- losses

def build_criterion(kind):
    """Loss on logits (B, 2, H, W) and an int64 target (B, H, W): 'ce', 'dice' or 'ce+dice'."""
    if kind not in ("ce", "dice", "ce+dice"):
        raise ValueError(f"--loss {kind!r}: choose ce, dice or ce+dice")

    def criterion(logits, target):
        logits = logits.float()
        loss = logits.new_zeros(())
        if kind in ("ce", "ce+dice"):
            weight = torch.tensor(CLASS_WEIGHTS, device=logits.device)
            loss = loss + F.cross_entropy(logits, target, weight=weight)
        if kind in ("dice", "ce+dice"):
            loss = loss + soft_dice_loss(logits, target)
        return loss

    return criterion


def soft_dice_loss(logits, target, smooth=1.0):
    """1 - Dice between the foreground probability and the target, averaged over images."""
    prob = logits.softmax(dim=1)[:, 1].flatten(1)
    truth = (target == 1).float().flatten(1)
    overlap = (prob * truth).sum(1)
    dice = (2 * overlap + smooth) / (prob.sum(1) + truth.sum(1) + smooth)
    return (1 - dice).mean()


# --------------------------------------------------------------------------- metrics

def intersection_union(pred, target):
    """Pixel counts (I, U) of two binary masks of equal shape."""
    pred = pred.bool()
    target = target.bool()
    return int((pred & target).sum()), int((pred | target).sum())


def summarize(records, thresholds=PRECISION_THRESHOLDS):
    """Metrics (fractions, not percent) from (I, U) records in sample order."""
    ious = [i / u if u > 0 else 0.0 for i, u in records]
    total_i = sum(i for i, _ in records)
    total_u = sum(u for _, u in records)
    n = len(records)
    summary = {
        "num_samples": n,
        "mean_iou": sum(ious) / n if n else 0.0,
        "overall_iou": total_i / total_u if total_u else 0.0,
    }
    for k in thresholds:
        summary[f"precision@{k}"] = sum(iou >= k for iou in ious) / n if n else 0.0
    return summary


def format_report(summary):
    """The released test.py's printout (percent, two decimals)."""
    lines = ["Final results:", "Mean IoU is %.2f\n" % (summary["mean_iou"] * 100)]
    for k in PRECISION_THRESHOLDS:
        lines.append("    precision@%s = %.2f" % (k, summary[f"precision@{k}"] * 100))
    lines.append("    overall IoU = %.2f" % (summary["overall_iou"] * 100))
    return "\n".join(lines)


# --------------------------------------------------------------------------- training

def train_one_epoch(model, text_encoder, criterion, optimizer, lr_scheduler, data_loader, device, epoch, *,
                    print_freq=10, amp_dtype=None, scaler=None, log_file=None):
    """One pass over `data_loader`; the poly schedule steps every iteration. Returns average stats."""
    model.train()
    if text_encoder is not None:
        text_encoder.train()
    logger = utils.MetricLogger(log_file=log_file)
    logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.2e}"))
    header = f"Epoch: [{epoch}]"
    for iteration, (images, targets, input_ids, attention_mask) in enumerate(
            logger.log_every(data_loader, print_freq, header)):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        input_ids = input_ids.squeeze(1).to(device, non_blocking=True)
        attention_mask = attention_mask.squeeze(1).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward_lavt(model, text_encoder, images, input_ids, attention_mask)
        loss = criterion(logits, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Non-finite training loss ({loss.item()}) at epoch {epoch}, iteration {iteration}. "
                "Training stopped; lower --lr, use --amp bf16 or off, or check the data of this batch. "
                "Resume from the last checkpoint with --resume auto."
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr_scheduler.step()
        logger.update(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
    logger.synchronize_between_processes()
    return {name: meter.global_avg for name, meter in logger.meters.items()}


# --------------------------------------------------------------------------- evaluation

class IndexedDataset(torch.utils.data.Dataset):
    """Wrap a dataset so that each item also carries its index (for sharded evaluation)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return (index, *self.dataset[index])


def build_eval_loader(dataset, workers=0, pin_memory=False):
    """One object per step, each rank a disjoint shard of the objects (no padding)."""
    return torch.utils.data.DataLoader(
        IndexedDataset(dataset), batch_size=1, sampler=utils.ShardSampler(len(dataset)),
        num_workers=workers, pin_memory=pin_memory, collate_fn=_collate_one,
    )


def _collate_one(batch):
    (item,) = batch
    return item


class PredictionWriter:
    """Per-sentence PNG masks and a JSON-lines record (ref id, sentence, I, U, IoU) for error analysis."""

    def __init__(self, directory, dataset):
        self.directory = directory
        self.dataset = dataset
        os.makedirs(directory, exist_ok=True)

    def write_mask(self, index, sentence_index, mask):
        ref_id = self.dataset.ref_ids[index]
        image = Image.fromarray(mask.cpu().numpy().astype(np.uint8) * 255)
        image.save(os.path.join(self.directory, f"ref{ref_id}_sent{sentence_index}.png"))

    def write_records(self, rows):
        with open(os.path.join(self.directory, "predictions.jsonl"), "w") as handle:
            for index, j, inter, union in rows:
                ref_id = self.dataset.ref_ids[index]
                record = {
                    "ref_id": int(ref_id),
                    "sentence_index": j,
                    "sentence": self.dataset.sentences[index][j],
                    "I": inter,
                    "U": union,
                    "IoU": inter / union if union else 0.0,
                    "mask": f"ref{ref_id}_sent{j}.png",
                }
                handle.write(json.dumps(record) + "\n")


@torch.no_grad()
def evaluate(model, text_encoder, dataset, device, *, eval_batch_size=16, protocol="resized",
             amp_dtype=None, one_sentence_seed=None, prediction_dir="", workers=0, print_freq=100,
             log_file=None):
    """Evaluate on an eval-mode ReferDataset (items carry all sentences of one object).

    Each rank evaluates a shard of the objects; the (I, U) records are gathered and summarised in
    dataset order, so the numbers are identical for any number of ranks and any eval_batch_size.
    With `one_sentence_seed`, one sentence per object is drawn (seeded), as the released code's
    per-epoch validation does; otherwise every sentence is a sample (released test.py).
    """
    if protocol not in ("resized", "original"):
        raise ValueError(f"--eval-protocol {protocol!r}: choose resized or original")
    model.eval()
    if text_encoder is not None:
        text_encoder.eval()
    writer = PredictionWriter(prediction_dir, dataset) if prediction_dir else None
    rng = np.random.default_rng(one_sentence_seed) if one_sentence_seed is not None else None
    choices = [int(rng.integers(len(s))) for s in dataset.sentences] if rng is not None else None
    rows, pending = [], []

    def run_batch():
        """Forward the pending (index, sentence, image, ids, mask, target) samples as one batch."""
        images = torch.stack([sample[2] for sample in pending]).to(device)
        input_ids = torch.stack([sample[3] for sample in pending]).to(device)
        attention_mask = torch.stack([sample[4] for sample in pending]).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward_lavt(model, text_encoder, images, input_ids, attention_mask).float()
        for (index, j, _, _, _, target), sample_logits in zip(pending, logits):
            if protocol == "original":
                sample_logits = F.interpolate(sample_logits[None], size=target.shape[-2:], mode="bilinear",
                                              align_corners=True)[0]
            mask = sample_logits.argmax(0)
            rows.append((index, j, *intersection_union(mask, target)))
            if writer is not None:
                writer.write_mask(index, j, mask)
        pending.clear()

    logger = utils.MetricLogger(log_file=log_file)
    # Samples from consecutive objects share a batch: in eval mode every sample is computed
    # independently, so batching changes speed, not results.
    for index, image, target, input_ids, attention_mask in logger.log_every(
            build_eval_loader(dataset, workers), print_freq, "Test:"):
        input_ids = input_ids.reshape(input_ids.shape[-2], -1).t()  # (n_sentences, N_l)
        attention_mask = attention_mask.reshape(attention_mask.shape[-2], -1).t()
        sentence_indices = [choices[index]] if choices is not None else range(input_ids.shape[0])
        if protocol == "original":
            target = torch.from_numpy(dataset.original_target(index))
        target = target.to(device)
        for j in sentence_indices:
            pending.append((index, j, image, input_ids[j], attention_mask[j], target))
            if len(pending) == eval_batch_size:
                run_batch()
    if pending:
        run_batch()
    rows = sorted(row for shard in utils.all_gather_object(rows) for row in shard)
    if writer is not None and utils.is_main_process():
        writer.write_records(rows)
    return summarize([(inter, union) for _, _, inter, union in rows])
