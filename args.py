"""Command-line flags of train.py, test.py and demo_inference.py, grouped by concern.

Every flag of the original LAVT scripts keeps its name and default, so the commands of the
original README work unchanged. Each script shows only the flags it uses:
`get_train_parser()`, `get_test_parser()`; `get_parser()` is the training parser (the original
`args.get_parser`). Model defaults come from lib/segmentation.py (`MODEL_DEFAULTS`), the one
place they are written.
"""
import argparse

from lib.criterion import LOSSES
from lib.fusion import FUSION_LAYERS
from lib.segmentation import MODEL_DEFAULTS, SWIN_CONFIGS


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when there is one worth printing (not None, False or '')."""

    def _get_help_string(self, action):
        if action.default in (None, False, "") or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _new_parser(description):
    return argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)


def add_data_args(parser):
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="refcoco",
                       help="refcoco, refcoco+, refcocog, grefcoco, or a generated set (e.g. synref) under --refer_data_root")
    group.add_argument("--splitBy", default="unc", help="unc, google or umd (see README, Data setup)")
    group.add_argument("--refer_data_root", default="./refer/data/", help="REFER data root (see README, Data setup)")
    group.add_argument("--coco2017-dir", default=None, dest="coco2017_dir",
                       help="COCO 2017 train2017 folder, used when an image is missing from the train2014 folder "
                            "(found automatically under --refer_data_root when not given)")
    group.add_argument("--img_size", default=480, type=positive_int, help="images are resized to img_size x img_size")
    group.add_argument("--bert_tokenizer", default="bert-base-uncased",
                       help="tokenizer: Hugging Face name, local directory, or 'minilm' (packaged offline)")
    group.add_argument("--mask-union", action="store_true", dest="mask_union",
                       help="object = union of the annotation's polygons; the released rule (default) makes pixels "
                            "where two polygons of one object overlap background")
    group.add_argument("-j", "--workers", default=8, type=int, help="data loading workers per process")
    group.add_argument("--pin_mem", action="store_true", help="pin memory in the data loaders")
    return group


def add_model_args(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="lavt", choices=["lavt", "lavt_one"],
                       help="lavt: BERT outside the model (saved as bert_model); lavt_one: BERT inside")
    group.add_argument("--swin_type", default="base", choices=list(SWIN_CONFIGS),
                       help="Swin size; nano is this project's CPU-sized model (embed 32, depths 2-2-2-2)")
    group.add_argument("--window12", action="store_true",
                       help="Swin window 12 (implied by 'window12' in the --pretrained_swin_weights path)")
    group.add_argument("--window-size", default=None, type=positive_int, dest="window_size",
                       help="override the Swin window size (7, or 12 with --window12, when not given)")
    group.add_argument("--ck_bert", default="bert-base-uncased",
                       help="text encoder: Hugging Face name, local directory, or 'minilm' (packaged offline)")
    group.add_argument("--mha", default=MODEL_DEFAULTS["mha"], help="fusion heads per stage, e.g. 4-4-4-4 (empty: one each)")
    group.add_argument("--fusion_drop", default=MODEL_DEFAULTS["fusion_drop"], type=float,
                       help="dropout rate inside the fusion modules")
    group.add_argument("--fusion", default=MODEL_DEFAULTS["fusion"], choices=sorted(FUSION_LAYERS),
                       help="pixel-word fusion module (pwam: the released one; add one in lib/fusion.py)")
    group.add_argument("--no-target-head", action="store_true", dest="no_target_head",
                       help="add a classifier that says 'no object matches' (generalized RIS, gRefCOCO); "
                            "without it, an empty predicted mask means no target")
    group.add_argument("--pretrained_swin_weights", default="",
                       help="Swin classification checkpoint (official or timm format)")
    group.add_argument("--ddp_trained_weights", action="store_true",
                       help="accepted for compatibility: 'module.' prefixes of DDP checkpoints are stripped automatically")
    return group


def add_runtime_args(parser):
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="cuda:0", help="cuda, cuda:N or cpu (falls back to cpu without CUDA)")
    group.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"],
                       help="mixed precision; fp16 needs CUDA (use bf16 on CPU)")
    group.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                       help="set by torch.distributed.launch; torchrun uses the LOCAL_RANK variable instead")
    group.add_argument("--dist-timeout", default=600, type=positive_int, dest="dist_timeout",
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
    group.add_argument("--lr", default=0.00005, type=float, help="base learning rate")
    group.add_argument("--wd", "--weight-decay", default=1e-2, type=float, dest="weight_decay", help="weight decay")
    group.add_argument("--amsgrad", action="store_true", help="use the AMSGrad variant of AdamW")
    group.add_argument("--loss", default="ce", choices=LOSSES,
                       help="ce: weighted cross-entropy of the original; dice / ce+dice: add a soft Dice loss")
    group.add_argument("--bert-trainable-layers", default=10, type=int, dest="bert_trainable_layers",
                       help="optimise BERT encoder layers 0..N-1 (original: 10); 0 freezes the text encoder")
    group.add_argument("--drop-path", default=MODEL_DEFAULTS["drop_path_rate"], type=float, dest="drop_path_rate",
                       help="stochastic-depth rate of the last Swin block")
    group.add_argument("--checkpoint-activations", action="store_true", dest="checkpoint_activations",
                       help="recompute Swin blocks and fusion in the backward pass: same gradients, less memory")
    group.add_argument("--negative-prob", default=0.0, type=probability, dest="negative_prob",
                       help="probability of replacing a training expression by one that refers to nothing in the "
                            "image, with an empty target (data/expression_augment.py; released: 0)")
    group.add_argument("--word-mask-prob", default=0.0, type=probability, dest="word_mask_prob",
                       help="probability of replacing each word of a training expression by [MASK] (released: 0)")
    group.add_argument("--no-target-loss-weight", default=1.0, type=float, dest="no_target_loss_weight",
                       help="weight of the no-target head's binary cross-entropy beside the mask loss")
    group.add_argument("--seed", default=0, type=int, help="random seed (data order, sentence draws, dropout)")
    group.add_argument("--model_id", default="lavt", help="name of the run: models/<model_id>/, model_best_<model_id>.pth")
    group.add_argument("--output-dir", default="./checkpoints/", help="where model_best_<model_id>.pth is written")
    group.add_argument("--run-dir", default=None, dest="run_dir",
                       help="log, metrics.jsonl and checkpoint_last.pth (models/<model_id> when not given)")
    group.add_argument("--resume", default="",
                       help="checkpoint to resume, or 'auto' for the run directory's checkpoint_last.pth if it exists")
    group.add_argument("--eval-batch-size", default=16, type=positive_int, dest="eval_batch_size",
                       help="sentences per forward pass in the per-epoch validation")
    add_no_target_decision_args(group)
    return group


def add_evaluation_args(parser):
    group = parser.add_argument_group("evaluation")
    group.add_argument("--resume", default="", help="the checkpoint (.pth) to evaluate")
    group.add_argument("--split", default="test", help="evaluation split, e.g. val, testA, testB, test")
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
    for add in (add_data_args, add_model_args, add_evaluation_args, add_runtime_args):
        add(parser)
    return parser


get_parser = get_train_parser


if __name__ == "__main__":
    print(get_parser().parse_args())
