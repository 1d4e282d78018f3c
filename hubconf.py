"""torch.hub entries: a ready Predictor from a checkpoint, or the bare model of the released options.

    import torch
    predictor = torch.hub.load("path/to/this/repo", "lavt_predictor", checkpoint="refcoco.pth", source="local")
    masks = predictor.predict("photo.jpg", ["the man on the left"])
    model = torch.hub.load("path/to/this/repo", "lavt", source="local", ck_bert="minilm", swin_type="tiny")

No weights are downloaded: the checkpoint (ours, a released one, or a model-only file of
tools/export_weights.py) is a local file, and the released models' weights are not hosted here.
"""
import argparse

dependencies = ["torch", "torchvision", "timm", "transformers", "PIL"]

# The released LAVT models (README of the original): Swin-B with window 12 at 480 px, bert-base-uncased.
RELEASED_OPTIONS = {"model": "lavt", "swin_type": "base", "window12": True, "ck_bert": "bert-base-uncased",
                    "img_size": 480}


def lavt_predictor(checkpoint, device="cpu", amp=None, **overrides):
    """`lib.predictor.Predictor` for the local file `checkpoint`; the architecture is read off the file,
    `overrides` (swin_type, ck_bert, img_size, ...) replace what it says."""
    from lib.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device, amp=amp, **overrides)


def lavt(checkpoint=None, **options):
    """The bare `ReferringModel` (LAVT and its text encoder), in eval mode on the CPU.

    Built from the released options (`RELEASED_OPTIONS`; `options` replace them, e.g. ck_bert="minilm"
    where bert-base-uncased is not in the Hugging Face cache) with random LAVT weights and the text
    encoder's own; `checkpoint`, a local file, then replaces them all.
    """
    from lib.checkpoint import load_lavt_checkpoint
    from lib.referring_model import build_model

    args = argparse.Namespace(**{**RELEASED_OPTIONS, "pretrained_swin_weights": "", **options})
    model = build_model(args, pretrained=checkpoint is None)
    if checkpoint is not None:
        load_lavt_checkpoint(model.model, checkpoint, bert_model=model.bert_model)
    model.args = args
    return model.eval()
