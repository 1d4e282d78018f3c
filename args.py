"""Command-line flags shared by train.py, test.py and demo_inference.py.

Every flag of the original LAVT scripts is kept with its name and default, so the commands of
the original README work unchanged; the flags after them are this project's additions.
"""
import argparse


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def get_parser():
    parser = argparse.ArgumentParser(
        description="LAVT referring image segmentation: training and evaluation",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # ---- flags of the original LAVT scripts (names and defaults unchanged) ----
    parser.add_argument("--amsgrad", action="store_true", help="use the AMSGrad variant of AdamW")
    parser.add_argument("-b", "--batch-size", default=8, type=_positive_int, help="batch size per process")
    parser.add_argument("--bert_tokenizer", default="bert-base-uncased",
                        help="tokenizer: Hugging Face name, local directory, or 'minilm' (packaged offline)")
    parser.add_argument("--ck_bert", default="bert-base-uncased",
                        help="text encoder: Hugging Face name, local directory, or 'minilm' (packaged offline)")
    parser.add_argument("--dataset", default="refcoco", help="refcoco, refcoco+, refcocog, or a generated set such as synref")
    parser.add_argument("--ddp_trained_weights", action="store_true",
                        help="accepted for compatibility: 'module.' prefixes of DDP checkpoints are stripped automatically")
    parser.add_argument("--device", default="cuda:0", help="cuda, cuda:N or cpu (falls back to cpu when CUDA is absent)")
    parser.add_argument("--epochs", default=40, type=_positive_int, help="number of training epochs")
    parser.add_argument("--fusion_drop", default=0.0, type=float, help="dropout rate inside the PWAM fusion modules")
    parser.add_argument("--img_size", default=480, type=_positive_int, help="images are resized to img_size x img_size")
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                        help="set by torch.distributed.launch; torchrun uses the LOCAL_RANK variable instead")
    parser.add_argument("--lr", default=0.00005, type=float, help="base learning rate")
    parser.add_argument("--mha", default="", help="PWAM heads per stage, e.g. 4-4-4-4 (empty: one head each)")
    parser.add_argument("--model", default="lavt", choices=["lavt", "lavt_one"],
                        help="lavt: BERT outside the model (saved as bert_model); lavt_one: BERT inside")
    parser.add_argument("--model_id", default="lavt", help="name of the run: models/<model_id>/, model_best_<model_id>.pth")
    parser.add_argument("--output-dir", default="./checkpoints/", help="where model_best_<model_id>.pth is written")
    parser.add_argument("--pin_mem", action="store_true", help="pin memory in the data loaders")
    parser.add_argument("--pretrained_swin_weights", default="", help="Swin classification checkpoint (official or timm format)")
    parser.add_argument("--print-freq", default=10, type=_positive_int, help="log every N iterations")
    parser.add_argument("--refer_data_root", default="./refer/data/", help="REFER data root (see README, Data setup)")
    parser.add_argument("--resume", default="",
                        help="train.py: checkpoint to resume, or 'auto' for models/<model_id>/checkpoint_last.pth if it "
                             "exists; test.py / demo: the checkpoint to evaluate")
    parser.add_argument("--split", default="test", help="evaluation split, e.g. val, testA, testB, test")
    parser.add_argument("--splitBy", default="unc", help="unc, google or umd (see README)")
    parser.add_argument("--swin_type", default="base", choices=["nano", "tiny", "small", "base", "large"],
                        help="Swin size; nano is this project's CPU-sized model (embed 32, depths 2-2-2-2)")
    parser.add_argument("--wd", "--weight-decay", default=1e-2, type=float, dest="weight_decay", help="weight decay")
    parser.add_argument("--window12", action="store_true", help="Swin window 12 (implied by 'window12' in the weights' name)")
    parser.add_argument("-j", "--workers", default=8, type=int, help="data loading workers per process")

    # ---- additions of this project ----
    parser.add_argument("--seed", default=0, type=int, help="random seed (data order, sentence draws, dropout)")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"],
                        help="mixed precision; fp16 needs CUDA (use bf16 on CPU)")
    parser.add_argument("--loss", default="ce", choices=["ce", "dice", "ce+dice"],
                        help="ce: weighted cross-entropy of the original; dice / ce+dice: add a soft Dice loss")
    parser.add_argument("--bert-trainable-layers", default=10, type=int, dest="bert_trainable_layers",
                        help="optimise BERT encoder layers 0..N-1 (original: 10); 0 freezes the text encoder")
    parser.add_argument("--drop-path", default=0.3, type=float, dest="drop_path_rate",
                        help="stochastic-depth rate of the last Swin block (released: 0.3)")
    parser.add_argument("--window-size", default=None, type=int, dest="window_size",
                        help="override the Swin window size (default: 7, or 12 with --window12)")
    parser.add_argument("--run-dir", default=None, dest="run_dir",
                        help="log, metrics.jsonl and checkpoint_last.pth go here (default: models/<model_id>)")
    parser.add_argument("--eval-protocol", default="resized", choices=["resized", "original"], dest="eval_protocol",
                        help="resized: compare at img_size (original test.py); original: at each image's own size")
    parser.add_argument("--eval-batch-size", default=16, type=_positive_int, dest="eval_batch_size",
                        help="sentences evaluated per forward pass (batched across objects)")
    parser.add_argument("--save-predictions", default="", dest="save_predictions",
                        help="test.py: write per-sentence PNG masks and predictions.jsonl into this directory")
    parser.add_argument("--results-json", default="", dest="results_json",
                        help="test.py: where to write the metrics JSON (default: next to the checkpoint)")
    parser.add_argument("--dist-timeout", default=600, type=_positive_int, dest="dist_timeout",
                        help="seconds a rank waits for the others before failing (a dead rank cannot hang the job)")
    return parser


if __name__ == "__main__":
    print(get_parser().parse_args())
