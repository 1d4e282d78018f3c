"""Train LAVT on a REFER-format dataset (RefCOCO, RefCOCO+, RefCOCOg, gRefCOCO or a generated set).

Runs as one process (`python train.py --device cpu ...`), under `torchrun --nproc_per_node N`
(also multi-node, through torchrun's flags) and under the original
`python -m torch.distributed.launch --nproc_per_node N train.py ...`. The recipe is the released
one (LAVT_SPEC section 6): AdamW with four parameter groups, per-iteration poly schedule,
weighted cross-entropy, one random sentence per object, validation on `val` after every epoch and
the best overall-IoU checkpoint kept as `<output-dir>/model_best_<model_id>.pth`.
`models/<model_id>/` (or --run-dir) holds log.txt, metrics.jsonl and checkpoint_last.pth, from
which `--resume auto` continues.
"""
import json
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel

import cli
import engine
import utils
from args import get_train_parser
from bert import resolve_text_model
from data.dataset_refer_bert import ReferDataset
from data.evaluation import evaluate_dataset
from data.expression_augment import ExpressionAugmentation
from errors import UserInputError
from lib import runs
from lib.checkpoint import load_lavt_checkpoint
from lib.checkpoint_io import save_checkpoint
from lib.criterion import build_criterion
from lib.referring_model import build_model
from lib.state_dict import CheckpointError
from transforms import get_transform


def freeze_text_encoder_layers(text_encoder, trainable_layers):
    """Optimise only encoder layers 0..trainable_layers-1 (released recipe: 10 of BERT's 12).

    Embeddings and the top layers get requires_grad=False: the released code computed but never
    applied their gradients, so freezing them gives the same updates for less work.
    """
    for param in text_encoder.parameters():
        param.requires_grad_(False)
    for layer in text_encoder.encoder.layer[:max(trainable_layers, 0)]:
        for param in layer.parameters():
            param.requires_grad_(True)


def build_param_groups(referring_model, swin_lr=None, bert_lr=None):
    """AdamW groups of the released recipe: backbone (no decay / decay), decoder, BERT layers.

    `swin_lr` (not released) gives the backbone's pretrained Swin parameters a learning rate of their
    own, in two more groups; its fusion modules and gates, which start from scratch, keep the base rate.
    `bert_lr` (not released) likewise sets the rate of the trainable BERT layers.
    """
    model = referring_model.model
    no_decay_names = set(model.backbone.no_weight_decay_parameters())
    no_decay, decay, swin_no_decay, swin_decay = [], [], [], []
    for name, param in model.backbone.named_parameters():
        if param.requires_grad:
            swin = swin_lr is not None and not model.backbone.is_fusion_parameter(name)
            bucket = (swin_no_decay, swin_decay) if swin else (no_decay, decay)
            bucket[name not in no_decay_names].append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay},
              {"params": [p for p in model.classifier.parameters() if p.requires_grad]}]
    if swin_lr is not None:
        groups += [{"params": swin_no_decay, "weight_decay": 0.0, "lr": swin_lr}, {"params": swin_decay, "lr": swin_lr}]
    if model.no_target_head is not None:  # not in the released recipe: the optional no-target head
        groups.append({"params": list(model.no_target_head.parameters())})
    text_params = [p for p in referring_model.text_encoder.parameters() if p.requires_grad]
    if text_params:
        groups.append({"params": text_params, **({"lr": bert_lr} if bert_lr is not None else {})})
    return groups


def poly_schedule(total_steps, warmup_steps=0):
    """The released per-step poly decay; with `warmup_steps` (not released), multiplied by a linear
    ramp from 1/warmup_steps to 1 over the first steps."""
    def factor(step):
        ramp = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        return ramp * max(1 - step / total_steps, 0.0) ** 0.9
    return factor


def build_lr_scheduler(optimizer, steps_per_epoch, args):
    """Per optimizer step: the poly decay over `args.epochs`, times a linear ramp over `args.lr_warmup_epochs`."""
    warmup_steps = max(1, round(args.lr_warmup_epochs * steps_per_epoch)) if args.lr_warmup_epochs > 0 else 0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(steps_per_epoch * args.epochs, warmup_steps))


def build_train_loader(dataset, rank, world_size, args, pin_memory=False):
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                  shuffle=True, seed=args.seed)
    generator = torch.Generator()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        pin_memory=args.pin_mem or pin_memory, drop_last=True, worker_init_fn=utils.seed_worker, generator=generator)
    if len(loader) < args.accum_steps:
        raise UserInputError(
            f"--batch-size {args.batch_size} x {world_size} process(es) x --accum-steps {args.accum_steps} needs "
            f"more than the {len(dataset)} training objects; use a smaller batch size or fewer accumulation steps.")
    return loader, sampler, generator


def build_training_model(args, device, world_size):
    """(model for the training loop, possibly DDP-wrapped; the unwrapped `model_without_ddp`)."""
    model = build_model(args)
    freeze_text_encoder_layers(model.text_encoder, args.bert_trainable_layers)
    if model.bert_model is not None and args.bert_trainable_layers <= 0:
        model.cache_text_features()  # frozen and always in eval mode: features depend on the ids only
    model.to(device)
    if world_size > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.compile:
        # In place (nn.Module.compile), so that state-dict keys, and with them checkpoints, stay as without.
        model.compile()
    if world_size == 1:
        return model, model
    model_without_ddp = model
    # The last stage's language gate feeds nothing (as in the original), so its weights get no gradient.
    model = DistributedDataParallel(model, find_unused_parameters=True,
                                    device_ids=[device.index] if device.type == "cuda" else None)
    return model, model_without_ddp


def build_optimizer(model_without_ddp, args, device):
    """AdamW of the released recipe, in torch's default implementation unless --fused-adamw asks for the
    fused CUDA kernel (whose rounding differs in the last bits)."""
    fused = args.fused_adamw and device.type == "cuda"
    if args.fused_adamw and not fused:
        print(f"--fused-adamw: the fused kernel is used on CUDA only; {device.type} keeps the default AdamW.")
    swin_lr = args.lr * args.swin_lr_scale if args.swin_lr_scale != 1.0 else None
    bert_lr = args.lr * args.bert_lr_scale if args.bert_lr_scale != 1.0 else None
    return torch.optim.AdamW(build_param_groups(model_without_ddp, swin_lr, bert_lr), lr=args.lr,
                             weight_decay=args.weight_decay, amsgrad=args.amsgrad, **({"fused": True} if fused else {}))


def allow_tf32(enabled, device):
    """--tf32: TF32 tensor-core matmuls and convolutions on CUDA; without it torch's defaults stay."""
    if enabled and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def report_compile_time(train_stats, log_file):
    """One log line: torch.compile compiles inside the first training step, so its excess over a later step."""
    first, later = train_stats["first_step_s"], train_stats["step_s"]
    message = (f"torch.compile: first training step {first:.1f} s, later steps {later:.3f} s: compiling took about "
               f"{max(first - later, 0.0):.0f} s (validation compiles its own graph on its first batches)")
    print(message)
    if utils.is_main_process():
        with open(log_file, "a") as handle:
            handle.write(message + "\n")


def restore(resume, model_without_ddp, optimizer, lr_scheduler, scaler, args, files):
    """Load a training checkpoint; returns (first epoch to run, best overall IoU so far)."""
    checkpoint, epoch, best = runs.load_resume_checkpoint(resume, files)
    source = f"checkpoint '{resume}' (--resume)"
    load_lavt_checkpoint(model_without_ddp.model, checkpoint, bert_model=model_without_ddp.bert_model,
                         source=source, allow_nonfinite=args.allow_nonfinite)
    for entry, target in (("optimizer", optimizer), ("lr_scheduler", lr_scheduler)):
        try:
            target.load_state_dict(checkpoint[entry])
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"The {source} cannot be resumed: its '{entry}' does not fit this run's "
                                  f"({type(err).__name__}: {err}); resume with the flags it was trained with.") from None
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    if epoch + 1 >= args.epochs:
        print(runs.finished_message(resume, epoch, args.epochs))
    else:
        print(f"Resumed from {resume}: continuing at epoch {epoch + 1} of {args.epochs}")
    return epoch + 1, best


def validate(model, val_set, device, epoch, args, amp_dtype, log_file):
    """(summary, score) on `val` with one seeded sentence per object, as the released per-epoch validation.

    The score picks the best checkpoint: overall IoU as released; cIoU, which also counts the
    "no target" answers, on generalized sets.
    """
    with cli.out_of_memory_hint("--eval-batch-size", args.eval_batch_size, args.img_size):
        # Workers and pinning change speed only: the batches and their order are fixed by the sampler.
        val, _ = evaluate_dataset(model, val_set, device, max_sentences=args.eval_batch_size,
                                  one_sentence_seed=args.seed + epoch, workers=args.workers,
                                  pin_memory=args.pin_mem or device.type == "cuda", amp_dtype=amp_dtype, progress_lines=4,
                                  log_file=log_file, no_target_pixels=args.no_target_pixels)
    return val, (val["cIoU"] if val_set.generalized else val["overall_iou"]) or 0.0


def log_epoch(run_dir, log_file, epoch, train_stats, val, best_score, seconds):
    terms = {key[len("loss_"):]: value for key, value in train_stats.items() if key.startswith("loss_")}
    record = {"epoch": epoch, "train_loss": train_stats["loss"], **{f"train_loss_{k}": v for k, v in terms.items()},
              "lr": train_stats["lr"],
              "val_mean_iou": val["mean_iou"], "val_overall_iou": val["overall_iou"],
              **{f"val_{k}": v for k, v in val.items() if k.startswith(("precision", "gIoU", "cIoU", "N-acc", "T-acc"))},
              "best_overall_iou": best_score, "epoch_time_s": round(seconds, 2)}
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as handle:
        handle.write(json.dumps(record) + "\n")
    shown = {name: f"{100 * val[key]:.2f}" if val.get(key) is not None else "n/a"
             for name, key in (("mean IoU", "mean_iou"), ("overall IoU", "overall_iou"), ("cIoU", "cIoU"))}
    shown_terms = " (" + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) + ")" if terms else ""
    message = (f"Epoch {epoch}: train loss {train_stats['loss']:.4f}{shown_terms}, val mean IoU {shown['mean IoU']}, overall IoU "
               f"{shown['overall IoU']}{', cIoU ' + shown['cIoU'] if 'cIoU' in val else ''} "
               f"(best {best_score * 100:.2f}), {seconds:.0f} s")
    print(message)
    with open(log_file, "a") as handle:
        handle.write(message + "\n")


def main(args):
    if args.no_target_grad_scale != 1 and not args.no_target_head:
        raise UserInputError(f"--no-target-grad-scale {args.no_target_grad_scale} scales the no-target head's gradient: "
                             "add --no-target-head, or drop the flag")
    for name in (args.ck_bert, args.bert_tokenizer):
        resolve_text_model(name)  # a missing text encoder ends the run before anything is written
    rank, world_size, device = utils.init_distributed_mode(cli.resolve_device(args.device), args.dist_timeout)
    amp_dtype = cli.amp_dtype_for(args.amp, device)
    allow_tf32(args.tf32, device)
    run_dir = args.run_dir or os.path.join("models", args.model_id)
    files = runs.RunFiles(run_dir, args.output_dir, args.model_id)
    resume = runs.prepare_run(args.resume, args.overwrite, files)
    utils.seed_everything(args.seed + rank)

    transform = get_transform(args.img_size)
    train_set = ReferDataset(args, image_transforms=transform, split="train", mask_union=args.mask_union)
    if args.negative_prob > 0 or args.word_mask_prob > 0 or args.hflip_prob > 0:
        train_set = ExpressionAugmentation(train_set, args.negative_prob, args.word_mask_prob, args.hflip_prob)
    val_set = ReferDataset(args, image_transforms=transform, split="val", eval_mode=True, mask_union=args.mask_union)
    # Pinned pages let the host-to-device copies run asynchronously (non_blocking); values are unchanged.
    train_loader, train_sampler, loader_generator = build_train_loader(train_set, rank, world_size, args,
                                                                       pin_memory=device.type == "cuda")
    steps_per_epoch = len(train_loader) // args.accum_steps
    print(f"train: {len(train_set)} objects, val: {len(val_set)} objects, {steps_per_epoch} optimizer steps/epoch")

    model, model_without_ddp = build_training_model(args, device, world_size)
    optimizer = build_optimizer(model_without_ddp, args, device)
    lr_scheduler = build_lr_scheduler(optimizer, steps_per_epoch, args)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    criterion = build_criterion(args.loss, no_target_weight=args.no_target_loss_weight)
    start_epoch, best_oiou = restore(resume, model_without_ddp, optimizer, lr_scheduler, scaler, args, files) \
        if resume else (0, -1.0)
    if utils.is_main_process():  # only now: a run that fails while setting up leaves no empty directories
        cli.check_writable_dir(run_dir, "--run-dir")
        cli.check_writable_dir(args.output_dir, "--output-dir")
        runs.start_metrics(files, start_epoch, fresh=not resume)
    cli.set_interrupt_hint(lambda: runs.interrupt_hint(files))
    log_file = files.log

    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        # Everything random in an epoch derives from (seed, epoch, rank), so a resumed run
        # replays exactly the epochs an uninterrupted one would have run.
        utils.seed_everything(args.seed + 1000 * epoch + rank)
        train_sampler.set_epoch(epoch)
        loader_generator.manual_seed(args.seed + 1000 * epoch + rank)
        with cli.out_of_memory_hint("--batch-size", args.batch_size, args.img_size):
            train_stats = engine.train_one_epoch(
                model, criterion, train_loader, optimizer, lr_scheduler, device, epoch, accum_steps=args.accum_steps,
                print_freq=args.print_freq, amp_dtype=amp_dtype, scaler=scaler, log_file=log_file)
        if args.compile and epoch == start_epoch:
            report_compile_time(train_stats, log_file)
        val, score = validate(model_without_ddp, val_set, device, epoch, args, amp_dtype, log_file)
        is_best = score > best_oiou
        best_oiou = max(best_oiou, score)
        if utils.is_main_process():
            state = dict(model=model_without_ddp.model, bert_model=model_without_ddp.bert_model, optimizer=optimizer,
                         epoch=epoch, args=args, lr_scheduler=lr_scheduler, best_overall_iou=best_oiou,
                         scaler=scaler.state_dict() if scaler is not None else {})
            # checkpoint_last first: if it cannot be written the run stops here, before anything else changes.
            save_checkpoint(files.last, **state)
            if is_best:
                save_checkpoint(files.best, **state)
            log_epoch(run_dir, log_file, epoch, train_stats, val, best_oiou, time.time() - started)
        utils.barrier()
    utils.check_parameters_in_sync(model_without_ddp)
    utils.cleanup_distributed()


if __name__ == "__main__":
    cli.run_cli(main, get_train_parser())
