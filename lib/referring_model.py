"""The one place that builds a LAVT model with its text encoder, runs it and restores it.

`ReferringModel(model, bert_model)` turns (images, token ids, attention masks) into a dict of
outputs (`"logits"`: (B, 2, H, W); `"no_target_logits"`: (B,) when the model has the optional
no-target head). `model` is the released LAVT module (`checkpoint['model']`);
`bert_model` is the separate BERT of the `lavt` variant (`checkpoint['bert_model']`), or None for
`lavt_one`, whose BERT is `model.text_encoder`.

`build_model(args)` reads the command-line options of the original code (`model`, `swin_type`,
`window12`, `ck_bert`, `pretrained_swin_weights`, ...); a model is loaded from a checkpoint by
lib/architecture.py (`model_from_checkpoint`, `load_model`), which reads these options off it.
"""
import torch
from torch import nn

from bert import load_text_encoder

from . import segmentation

MODEL_FACTORIES = {"lavt": segmentation.lavt, "lavt_one": segmentation.lavt_one}


class ReferringModel(nn.Module):
    """LAVT plus its text encoder: `forward(images, input_ids, attention_mask)` -> {"logits": ...}.

    Train/eval modes follow the released code: `train()` switches the LAVT model (and so the
    BERT inside `lavt_one`, with its dropout) to training, but the separate BERT of `lavt` stays
    in the eval mode `from_pretrained` leaves it in, so it is fine-tuned without dropout.
    """

    def __init__(self, model, bert_model=None):
        super().__init__()
        self.model = model
        self.bert_model = bert_model
        self._text_cache = None

    @property
    def text_encoder(self):
        """The BERT, wherever it lives (separate for `lavt`, inside the model for `lavt_one`)."""
        return self.bert_model if self.bert_model is not None else self.model.text_encoder

    def train(self, mode=True):
        super().train(mode)
        if self.bert_model is not None:
            self.bert_model.eval()
        return self

    def cache_text_features(self):
        """Compute each sentence's features once (only valid while the separate BERT is frozen)."""
        if self.bert_model is None or any(p.requires_grad for p in self.bert_model.parameters()):
            raise ValueError("cache_text_features: only a frozen, separate text encoder (lavt) can be cached")
        self._text_cache = {}

    def encode_text(self, input_ids, attention_mask):
        """Word features (B, N_l, C_t) of the separate BERT, from the cache when it is on."""
        if self._text_cache is None:
            return self.bert_model(input_ids, attention_mask=attention_mask)[0]
        return self._cached_text_features(input_ids, attention_mask)

    # Left to Python under torch.compile: a dict lookup per sentence, which tracing would turn into
    # a new graph for every batch.
    @torch.compiler.disable
    @torch.no_grad()
    def _cached_text_features(self, input_ids, attention_mask):
        keys = [tuple(row) for row in torch.cat([input_ids, attention_mask], dim=1).tolist()]
        missing = list({key: i for i, key in enumerate(keys) if key not in self._text_cache}.values())
        if missing:
            hidden = self.bert_model(input_ids[missing], attention_mask=attention_mask[missing])[0]
            for row, i in enumerate(missing):
                self._text_cache[keys[i]] = hidden[row].float().cpu()
        return torch.stack([self._text_cache[key] for key in keys]).to(input_ids.device)

    def forward(self, images, input_ids, attention_mask):
        """images (B, 3, H, W); input_ids, attention_mask (B, N_l) -> {"logits": (B, 2, H, W)}, plus
        "no_target_logits" (B,) when the model has a no-target head (positive: nothing is referred)."""
        return self.forward_with(self.encode_text, images, input_ids, attention_mask)

    def forward_with(self, encode_text, images, input_ids, attention_mask):
        """`forward`, the separate BERT's word features coming from `encode_text(input_ids, attention_mask)`
        (the ONNX export passes the BERT itself: a graph has no feature cache)."""
        if self.bert_model is None:
            return self.model.forward_outputs(images, input_ids, l_mask=attention_mask)
        hidden = encode_text(input_ids, attention_mask)
        return self.model.forward_outputs(images, hidden.transpose(1, 2), attention_mask.unsqueeze(-1))


def build_model(args, pretrained=True):
    """`ReferringModel` for the options in `args`.

    With `pretrained`, the Swin weights `args.pretrained_swin_weights` (if any) and the BERT weights
    of `args.ck_bert` are loaded; without, the separate BERT is built from its config only (for
    models whose weights all come from a checkpoint).
    """
    if args.model not in MODEL_FACTORIES:
        raise ValueError(f"--model {args.model!r}: choose one of {', '.join(MODEL_FACTORIES)}")
    swin_weights = args.pretrained_swin_weights if pretrained else ""
    model = MODEL_FACTORIES[args.model](pretrained=swin_weights, args=args)
    bert_model = load_text_encoder(args.ck_bert, pretrained=pretrained) if args.model == "lavt" else None
    return ReferringModel(model, bert_model)
