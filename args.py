"""Command-line flags of train.py, test.py and demo_inference.py, grouped by concern.

Every flag of the original LAVT scripts keeps its name and default, so the commands of the
original README work unchanged. Each script shows only the flags it uses:
`get_train_parser()`, `get_test_parser()`; `get_parser()` is the training parser (the original
`args.get_parser`). Model defaults come from lib/model_config.py (`MODEL_DEFAULTS`), the one
place they are written; the model flags are defined once, in lib/architecture.py, and shared with
the scripts that read the model from a checkpoint (test.py, the probes, the demo, the ONNX export),
where they default to "read from the checkpoint".
"""
import argparse

from lib import ranges
from lib.architecture import OVERRIDABLE, add_model_arguments
from lib.criterion import LOSSES
from lib.model_config import MODEL_DEFAULTS

# Defaults of train.py's model flags (a new model); the flags themselves are defined in lib/architecture.py.
TRAINING_DEFAULTS = {**MODEL_DEFAULTS, "model": "lavt", "ck_bert": "bert-base-uncased",
                     "bert_tokenizer": "bert-base-uncased", "img_size": 480}
ARCHITECTURE_FLAGS = tuple(name for name in OVERRIDABLE if name not in ("img_size", "bert_tokenizer"))


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def probability(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text}")
    return value


def nonempty(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


device_flag = ranges.flag_type(str, ranges.check_device)
non_negative_int = ranges.flag_type(int, ranges.check_int, 0)
seed_flag = ranges.flag_type(int, ranges.check_int, 0, ranges.MAX_SEED)
timeout_flag = ranges.flag_type(int, ranges.check_int, 1, ranges.MAX_DIST_TIMEOUT_S)
positive_float = ranges.flag_type(float, ranges.check_float, 0.0, None, True)
non_negative_float = ranges.flag_type(float, ranges.check_float, 0.0)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when there is one worth printing (not None, False or '')."""

    def _get_help_string(self, action):
        if action.default in (None, False, "") or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _new_parser(description):
    return argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)


def add_data_args(parser, from_checkpoint=False):
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="refcoco",
                       help="refcoco, refcoco+, refcocog, grefcoco, or a generated set (e.g. synref) under --refer_data_root")
    group.add_argument("--splitBy", default="unc", help="unc, google or umd (see README, Data setup)")
    group.add_argument("--refer_data_root", default="./refer/data/", help="REFER data root (see README, Data setup)")
    group.add_argument("--coco2017-dir", default=None, dest="coco2017_dir",
                       help="COCO 2017 train2017 folder, used when an image is missing from the train2014 folder "
                            "(found automatically under --refer_data_root when not given)")
    add_model_arguments(group, ("img_size", "bert_tokenizer"), None if from_checkpoint else TRAINING_DEFAULTS)
    group.add_argument("--mask-union", action="store_true", dest="mask_union",
                       help="object = union of the annotation's polygons; the released rule (default) makes pixels "
                            "where two polygons of one object overlap background")
    group.add_argument("-j", "--workers", default=8, type=non_negative_int, help="data loading workers per process")
    group.add_argument("--pin_mem", action="store_true", help="pin memory in the data loaders")
    return group


def add_model_args(parser, from_checkpoint=False):
    """The model flags: defaults of a new model (train.py), or, `from_checkpoint`, None: read from
    the checkpoint, a flag given being checked against it (test.py, the probes)."""
    group = parser.add_argument_group("model")
    add_model_arguments(group, ARCHITECTURE_FLAGS, None if from_checkpoint else TRAINING_DEFAULTS)
    group.add_argument("--fusion_drop", default=MODEL_DEFAULTS["fusion_drop"], type=probability,
                       help="dropout rate inside the fusion modules")
    group.add_argument("--pretrained_swin_weights", default="",
                       help="Swin classification checkpoint (official or timm format)")
    group.add_argument("--ddp_trained_weights", action="store_true",
                       help="accepted for compatibility: 'module.' prefixes of DDP checkpoints are stripped automatically")
    group.add_argument("--allow-nonfinite", action="store_true", dest="allow_nonfinite",
                       help="load a checkpoint even when some of its weights are NaN or infinite (refused otherwise)")
    return group


def add_runtime_args(parser):
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="cuda:0", type=device_flag, help="cuda, cuda:N or cpu (falls back to cpu without CUDA)")
    group.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"],
                       help="mixed precision; fp16 needs CUDA (use bf16 on CPU)")
    group.add_argument("--local_rank", "--local-rank", dest="local_rank", type=non_negative_int, default=None,
                       help="set by torch.distributed.launch; torchrun uses the LOCAL_RANK variable instead")
    group.add_argument("--dist-timeout", default=600, type=timeout_flag, dest="dist_timeout",
                       help="seconds a rank waits for the others before failing (a dead rank cannot hang the job)")
    group.add_argument("--print-freq", default=10, type=positive_int, help="log every N iterations")
    return group


def add_speed_args(parser):
    """Opt-in speed levers of train.py; none is on by default, so the released arithmetic is kept."""
    group = parser.add_argument_group("speed (opt-in)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model (compiles during the first steps; checkpoints are the same)")
    group.add_argument("--tf32", action="store_true",
                       help="CUDA: TF32 matmuls and convolutions (10-bit mantissa products; faster on Ampere and "
                            "later, not bit-identical to fp32)")
    group.add_argument("--fused-adamw", action="store_true", dest="fused_adamw",
                       help="CUDA: the fused AdamW kernel (one launch for all parameters; rounding differs from "
                            "the default implementation in the last bits)")
    return group


def add_training_args(parser):
    group = parser.add_argument_group("training")
    group.add_argument("-b", "--batch-size", default=8, type=positive_int, help="batch size per process")
    group.add_argument("--accum-steps", default=1, type=positive_int, dest="accum_steps",
                       help="micro-batches whose gradients are summed before each optimizer step "
                            "(effective batch = batch size x processes x accum-steps)")
    group.add_argument("--epochs", default=40, type=positive_int, help="number of training epochs")
    group.add_argument("--lr", default=0.00005, type=positive_float, help="base learning rate")
    group.add_argument("--swin-lr-scale", default=1.0, type=probability, dest="swin_lr_scale",
                       help="learning rate of the pretrained Swin parameters as a fraction of --lr (released: 1; "
                            "fusion, gates and decoder keep --lr)")
    group.add_argument("--bert-lr-scale", default=1.0, type=probability, dest="bert_lr_scale",
                       help="learning rate of the trainable BERT layers as a fraction of --lr (released: 1)")
    group.add_argument("--lr-warmup-epochs", default=0.0, type=non_negative_float, dest="lr_warmup_epochs",
                       help="epochs (fractions allowed) of a linear ramp multiplied into the poly decay, so that the "
                            "rate rises to the decayed rate (released: 0, no ramp)")
    group.add_argument("--wd", "--weight-decay", default=1e-2, type=non_negative_float, dest="weight_decay", help="weight decay")
    group.add_argument("--amsgrad", action="store_true", help="use the AMSGrad variant of AdamW")
    group.add_argument("--loss", default="ce", choices=LOSSES,
                       help="ce: weighted cross-entropy of the original; dice / ce+dice: add a soft Dice loss")
    group.add_argument("--bert-trainable-layers", default=10, type=non_negative_int, dest="bert_trainable_layers",
                       help="optimise BERT encoder layers 0..N-1 (original: 10); 0 freezes the text encoder")
    group.add_argument("--drop-path", default=MODEL_DEFAULTS["drop_path_rate"], type=probability, dest="drop_path_rate",
                       help="stochastic-depth rate of the last Swin block")
    group.add_argument("--checkpoint-activations", action="store_true", dest="checkpoint_activations",
                       help="recompute Swin blocks and fusion in the backward pass: same gradients, less memory")
    group.add_argument("--negative-prob", default=0.0, type=probability, dest="negative_prob",
                       help="probability of replacing a training expression by one that refers to nothing in the "
                            "image, with an empty target (data/expression_augment.py; released: 0)")
    group.add_argument("--word-mask-prob", default=0.0, type=probability, dest="word_mask_prob",
                       help="probability of replacing each word of a training expression by [MASK] (released: 0)")
    group.add_argument("--hflip-prob", default=0.0, type=probability, dest="hflip_prob",
                       help="probability of flipping a training sample left to right, with 'left' and 'right' "
                            "swapped in its expression (released: 0)")
    group.add_argument("--no-target-loss-weight", default=1.0, type=non_negative_float, dest="no_target_loss_weight",
                       help="weight of the no-target head's binary cross-entropy beside the mask loss")
    group.add_argument("--no-target-grad-scale", default=MODEL_DEFAULTS["no_target_grad_scale"], type=probability,
                       dest="no_target_grad_scale",
                       help="share of the no-target head's gradient that trains the shared model: 1 (default) "
                            "trains the features for both tasks, 0 lets the head only read the mask's features")
    group.add_argument("--seed", default=0, type=seed_flag, help="random seed (data order, sentence draws, dropout)")
    group.add_argument("--model_id", default="lavt", help="name of the run: models/<model_id>/, model_best_<model_id>.pth")
    group.add_argument("--output-dir", default="./checkpoints/", help="where model_best_<model_id>.pth is written")
    group.add_argument("--run-dir", default=None, dest="run_dir",
                       help="log, metrics.jsonl and checkpoint_last.pth (models/<model_id> when not given)")
    group.add_argument("--resume", default="",
                       help="checkpoint to resume, or 'auto' for the run directory's checkpoint_last.pth if it exists")
    group.add_argument("--overwrite", action="store_true",
                       help="start afresh even where an earlier run of this --model_id left checkpoints (they are "
                            "replaced); without it such a run stops and asks for --resume auto or another --model_id")
    group.add_argument("--eval-batch-size", default=16, type=positive_int, dest="eval_batch_size",
                       help="sentences per forward pass in the per-epoch validation")
    add_no_target_decision_args(group)
    return group


def add_evaluation_args(parser):
    group = parser.add_argument_group("evaluation")
    group.add_argument("--resume", default="", help="the checkpoint (.pth) to evaluate")
    group.add_argument("--split", default="test", type=nonempty, help="evaluation split, e.g. val, testA, testB, test")
    group.add_argument("--eval-protocol", default="resized", choices=["resized", "original"], dest="eval_protocol",
                       help="resized: compare at img_size (released test.py); original: at each image's own size")
    group.add_argument("--eval-batch-size", default=16, type=positive_int, dest="eval_batch_size",
                       help="sentences per forward pass (batched across objects)")
    group.add_argument("--save-predictions", default="", dest="save_predictions",
                       help="directory for per-sentence PNG masks and predictions.jsonl")
    group.add_argument("--results-json", default="", dest="results_json",
                       help="metrics JSON (next to the checkpoint, named after dataset, split, protocol and size, "
                            "when not given)")
    add_no_target_decision_args(group)
    return group


def add_no_target_decision_args(group):
    group.add_argument("--no-target-pixels", default=1, type=positive_int, dest="no_target_pixels",
                       help="without a no-target head, a predicted mask of fewer pixels means 'no target'")


def get_train_parser():
    parser = _new_parser("Train LAVT on a REFER-format dataset")
    for add in (add_data_args, add_model_args, add_training_args, add_runtime_args, add_speed_args):
        add(parser)
    return parser


def get_test_parser():
    parser = _new_parser("Evaluate a LAVT checkpoint on one split")
    add_data_args(parser, from_checkpoint=True)
    add_model_args(parser, from_checkpoint=True)
    for add in (add_evaluation_args, add_runtime_args):
        add(parser)
    return parser


get_parser = get_train_parser


if __name__ == "__main__":
    print(get_parser().parse_args())
