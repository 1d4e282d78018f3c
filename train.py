"""Train LAVT on a REFER-format dataset (RefCOCO, RefCOCO+, RefCOCOg or a generated set).

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

import engine
import utils
from args import get_parser
from bert import CachedFrozenTextEncoder, load_text_encoder
from data.dataset_refer_bert import ReferDataset
from lib import segmentation
from lib.backbone import NO_WEIGHT_DECAY_KEYWORDS
from lib.checkpoint import load_checkpoint_file, load_lavt_checkpoint, save_checkpoint
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


def build_param_groups(model, text_encoder):
    """AdamW groups of the released recipe: backbone (no decay / decay), decoder, BERT layers."""
    no_decay, decay = [], []
    for name, param in model.backbone.named_parameters():
        if param.requires_grad:
            (no_decay if any(key in name for key in NO_WEIGHT_DECAY_KEYWORDS) else decay).append(param)
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay},
        {"params": [p for p in model.classifier.parameters() if p.requires_grad]},
    ]
    text_params = [p for p in text_encoder.parameters() if p.requires_grad]
    if text_params:
        groups.append({"params": text_params})
    return groups


def poly_schedule(total_iters):
    return lambda it: max(1 - it / total_iters, 0.0) ** 0.9


def resolve_resume(resume, run_dir):
    """'' -> start fresh; 'auto' -> run_dir/checkpoint_last.pth when it exists; else a path that must exist."""
    if resume == "auto":
        last = os.path.join(run_dir, "checkpoint_last.pth")
        return last if os.path.isfile(last) else ""
    if resume and not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file. Pass an existing .pth file, "
                                "or --resume auto to continue from the run's checkpoint_last.pth when there is one.")
    return resume


def build_train_loader(dataset, rank, world_size, args):
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                  shuffle=True, seed=args.seed)
    generator = torch.Generator()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        pin_memory=args.pin_mem, drop_last=True, worker_init_fn=utils.seed_worker, generator=generator,
    )
    if len(loader) == 0:
        raise ValueError(f"--batch-size {args.batch_size} x {world_size} process(es) is larger than the "
                         f"{len(dataset)} training objects; use a smaller batch size.")
    return loader, sampler, generator


def main(args):
    device = utils.resolve_device(args.device)
    rank, world_size, device = utils.init_distributed_mode(device, args.dist_timeout)
    amp_dtype = engine.amp_dtype_for(args.amp, device)
    run_dir = args.run_dir or os.path.join("models", args.model_id)
    if utils.is_main_process():
        utils.check_writable_dir(run_dir, "--run-dir")
        utils.check_writable_dir(args.output_dir, "--output-dir")
    resume = resolve_resume(args.resume, run_dir)
    log_file = os.path.join(run_dir, "log.txt")
    utils.seed_everything(args.seed + rank)

    transform = get_transform(args.img_size)
    train_set = ReferDataset(args, image_transforms=transform, split="train")
    val_set = ReferDataset(args, image_transforms=transform, split="val", eval_mode=True)
    train_loader, train_sampler, loader_generator = build_train_loader(train_set, rank, world_size, args)
    print(f"train: {len(train_set)} objects, val: {len(val_set)} objects, {len(train_loader)} iterations/epoch")

    model = getattr(segmentation, args.model)(pretrained=args.pretrained_swin_weights, args=args)
    text_encoder = load_text_encoder(args.ck_bert) if args.model == "lavt" else None
    freeze_text_encoder_layers(text_encoder if text_encoder is not None else model.text_encoder,
                               args.bert_trainable_layers)
    model.to(device)
    if text_encoder is not None:
        text_encoder.to(device)
    # The unwrapped modules are what gets saved, evaluated and optimised.
    model_single, text_single = model, text_encoder
    if world_size > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            model_single = model
        # The last stage's language gate feeds nothing (as in the original), so its weights get no gradient.
        ddp_kwargs = {"find_unused_parameters": True}
        if device.type == "cuda":
            ddp_kwargs["device_ids"] = [device.index]
        model = DistributedDataParallel(model, **ddp_kwargs)
        if text_encoder is not None and any(p.requires_grad for p in text_encoder.parameters()):
            text_encoder = DistributedDataParallel(text_encoder, **{**ddp_kwargs, "find_unused_parameters": False})
    if text_encoder is not None and not any(p.requires_grad for p in text_encoder.parameters()):
        text_encoder = CachedFrozenTextEncoder(text_encoder)
    # Evaluation runs unwrapped (ranks see different numbers of objects, so no DDP collectives).
    text_for_eval = text_encoder if isinstance(text_encoder, CachedFrozenTextEncoder) else text_single

    optimizer = torch.optim.AdamW(
        build_param_groups(model_single, text_single if text_single is not None else model_single.text_encoder),
        lr=args.lr, weight_decay=args.weight_decay, amsgrad=args.amsgrad)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(len(train_loader) * args.epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = engine.build_criterion(args.loss)

    start_epoch, best_oiou = 0, -1.0
    if resume:
        checkpoint = load_checkpoint_file(resume, what="--resume")
        load_lavt_checkpoint(model_single, checkpoint, bert_model=text_single, source=f"checkpoint '{resume}' (--resume)")
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = int(checkpoint["epoch"]) + 1
        best_oiou = float(checkpoint.get("best_overall_iou", -1.0))
        print(f"Resumed from {resume}: continuing at epoch {start_epoch} of {args.epochs}")

    best_path = os.path.join(args.output_dir, f"model_best_{args.model_id}.pth")
    last_path = os.path.join(run_dir, "checkpoint_last.pth")
    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        # Everything random in an epoch derives from (seed, epoch, rank), so a resumed run
        # replays exactly the epochs an uninterrupted one would have run.
        utils.seed_everything(args.seed + 1000 * epoch + rank)
        train_sampler.set_epoch(epoch)
        loader_generator.manual_seed(args.seed + 1000 * epoch + rank)
        with utils.out_of_memory_hint(args, "--batch-size"):
            train_stats = engine.train_one_epoch(
                model, text_encoder, criterion, optimizer, lr_scheduler, train_loader, device, epoch,
                print_freq=args.print_freq, amp_dtype=amp_dtype, scaler=scaler, log_file=log_file)
        with utils.out_of_memory_hint(args, "--eval-batch-size"):
            val = engine.evaluate(model_single, text_for_eval, val_set, device, eval_batch_size=args.eval_batch_size,
                                  amp_dtype=amp_dtype, one_sentence_seed=args.seed + epoch, workers=0,
                                  print_freq=max(len(val_set) // 4, 1), log_file=log_file)
        is_best = val["overall_iou"] > best_oiou
        best_oiou = max(best_oiou, val["overall_iou"])
        if utils.is_main_process():
            state = dict(model=model_single, optimizer=optimizer, epoch=epoch, args=args, lr_scheduler=lr_scheduler,
                         bert_model=text_single, scaler=scaler.state_dict(), best_overall_iou=best_oiou)
            if is_best:
                save_checkpoint(best_path, **state)
            save_checkpoint(last_path, **state)
            record = {"epoch": epoch, "train_loss": train_stats["loss"], "lr": train_stats["lr"],
                      "val_mean_iou": val["mean_iou"], "val_overall_iou": val["overall_iou"],
                      **{f"val_{k}": v for k, v in val.items() if k.startswith("precision")},
                      "best_overall_iou": best_oiou, "epoch_time_s": round(time.time() - started, 2)}
            with open(os.path.join(run_dir, "metrics.jsonl"), "a") as handle:
                handle.write(json.dumps(record) + "\n")
            message = (f"Epoch {epoch}: train loss {train_stats['loss']:.4f}, val mean IoU {val['mean_iou'] * 100:.2f}, "
                       f"overall IoU {val['overall_iou'] * 100:.2f} (best {best_oiou * 100:.2f}), "
                       f"{time.time() - started:.0f} s")
            print(message)
            with open(log_file, "a") as handle:
                handle.write(message + "\n")
        utils.barrier()
    utils.check_parameters_in_sync(model_single)
    utils.cleanup_distributed()


if __name__ == "__main__":
    utils.run_cli(main, get_parser())
