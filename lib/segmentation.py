"""LAVT models and their builders.

- `LAVT`: backbone + decoder; the BERT runs outside (released `lavt`, BERT saved as `bert_model`).
- `LAVTOne`: the same with the BERT inside as `text_encoder` (released `lavt_one`).
- `forward_outputs(...)`: the same inputs -> {"logits", and "no_target_logits" (B,) when the model
  has the optional no-target head (lib/no_target.py, `build_lavt(..., no_target_head=True)`)};
  `forward` returns the logits only, as released (and as exported to ONNX).
- `build_lavt(...)`: explicit-argument builder; `lavt(pretrained, args)` / `lavt_one(pretrained, args)`
  read the command-line options of the original code (`swin_type`, `window12`, `mha`, `fusion_drop`,
  `ck_bert`).

`SWIN_CONFIGS` and `MODEL_DEFAULTS` live in lib/model_config.py (re-exported here for the callers
that import them from this module).
"""

import torch.nn.functional as F
from torch import nn

from errors import UserInputError

from .backbone import MultiModalSwinTransformer
from .decoder import SimpleDecoding
from .fusion import fusion_with_options, language_gate
from .model_config import MODEL_DEFAULTS, RELEASED_DROP_PATH_RATE, SWIN_CONFIGS  # noqa: F401 (re-exported)
from .no_target import NoTargetHead
from .swin_weights import format_load_report, load_pretrained_swin


class LAVT(nn.Module):
    """`model(image, l_feats, l_mask)`: image (B, 3, H, W), l_feats (B, C_t, N_l), l_mask (B, N_l, 1)
    -> logits (B, 2, H, W). `no_target_head`: optional, its weights saved as `no_target_head.*`."""

    def __init__(self, backbone, classifier, no_target_head=None):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.no_target_head = no_target_head  # None adds no state-dict keys: released checkpoints load strictly

    def forward(self, image, l_feats, l_mask):
        return self.forward_outputs(image, l_feats, l_mask)["logits"]

    def forward_outputs(self, image, l_feats, l_mask):
        x_c1, x_c2, x_c3, x_c4 = self.backbone(image, l_feats, l_mask)
        logits, mask_features = self.classifier.forward_with_features(x_c4, x_c3, x_c2, x_c1)
        outputs = {"logits": F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)}
        if self.no_target_head is not None:
            outputs["no_target_logits"] = self.no_target_head(x_c4, mask_features, logits)
        return outputs


class LAVTOne(LAVT):
    """`model(image, input_ids, l_mask=attention_mask)` with ids and mask (B, N_l) -> logits (B, 2, H, W)."""

    def __init__(self, backbone, classifier, text_encoder, no_target_head=None):
        super().__init__(backbone, classifier, no_target_head)
        self.text_encoder = text_encoder

    def forward(self, image, input_ids, l_mask):
        return self.forward_outputs(image, input_ids, l_mask)["logits"]

    def forward_outputs(self, image, input_ids, l_mask):
        if input_ids.dim() != 2 or l_mask.shape != input_ids.shape:
            raise ValueError(f"LAVTOne: input_ids and l_mask (the attention mask) must both be (B, N_l), got "
                             f"{tuple(input_ids.shape)} and {tuple(l_mask.shape)}")
        l_feats = self.text_encoder(input_ids, attention_mask=l_mask)[0].transpose(1, 2)
        return super().forward_outputs(image, l_feats, l_mask.unsqueeze(-1))


def build_lavt(embed_dim, depths, num_heads, window_size=7, fusion_heads=(1, 1, 1, 1),
               fusion_drop=MODEL_DEFAULTS["fusion_drop"], drop_path_rate=RELEASED_DROP_PATH_RATE, text_dim=768,
               text_encoder=None, fusion_layer=MODEL_DEFAULTS["fusion"], gate_layer=language_gate,
               checkpoint_activations=False, no_target_head=False,
               no_target_grad_scale=MODEL_DEFAULTS["no_target_grad_scale"]):
    """`LAVT` for features of width `text_dim`, or `LAVTOne` around a `transformers` BERT `text_encoder`
    (then the text width is its `config.hidden_size`).

    `fusion_layer`: a name registered in the lib/fusion package (`pwam`, the released module, by default) or a
    callable following the fusion contract there; `gate_layer(dim)` builds each stage's `res_gate`.
    `no_target_head`: add the no-target classifier (lib/no_target.py; not released);
    `no_target_grad_scale`: how much of its loss's gradient reaches the shared model (0: none).
    `checkpoint_activations`: recompute the Swin blocks and fusion in the backward pass (same
    gradients, lower peak memory); switch later with `model.backbone.set_grad_checkpointing(...)`.
    """
    if text_encoder is not None:
        text_dim = text_encoder.config.hidden_size
    backbone = MultiModalSwinTransformer(embed_dim, depths, num_heads, window_size=window_size, text_dim=text_dim,
                                         fusion_heads=fusion_heads, fusion_drop=fusion_drop,
                                         drop_path_rate=drop_path_rate, fusion_layer=fusion_layer,
                                         gate_layer=gate_layer)
    backbone.set_grad_checkpointing(checkpoint_activations)
    classifier = SimpleDecoding(8 * embed_dim, hidden_channels=4 * embed_dim)
    head = NoTargetHead(8 * embed_dim, 4 * embed_dim, input_grad_scale=no_target_grad_scale) if no_target_head else None
    if text_encoder is None:
        return LAVT(backbone, classifier, head)
    return LAVTOne(backbone, classifier, text_encoder, head)


def parse_fusion_heads(mha, num_stages=4):
    """'4-4-4-4' -> [4, 4, 4, 4]; '' or None -> one head per stage."""
    if not mha:
        return [1] * num_stages
    try:
        heads = [int(h) for h in str(mha).split("-")]
    except ValueError:
        heads = []
    if len(heads) != num_stages or min(heads) < 1:
        raise UserInputError(f"--mha '{mha}' must give {num_stages} positive head counts joined by '-', e.g. '4-4-4-4'")
    return heads


def _option(args, name):
    """`args.<name>`, or the released default for args that predate the option (e.g. a released checkpoint's)."""
    return getattr(args, name, MODEL_DEFAULTS[name])


def _backbone_options(pretrained, args):
    swin_type = _option(args, "swin_type")
    if swin_type not in SWIN_CONFIGS:
        raise UserInputError(f"--swin_type '{swin_type}' is unknown; choose one of {sorted(SWIN_CONFIGS)}")
    embed_dim, depths, num_heads = SWIN_CONFIGS[swin_type]
    # As in the original: "window12" anywhere in the weights path (a folder name counts too).
    window_size = 12 if _option(args, "window12") or "window12" in (pretrained or "") else 7
    if _option(args, "window_size"):
        window_size = int(args.window_size)
    return dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                fusion_heads=parse_fusion_heads(_option(args, "mha")),
                fusion_drop=_option(args, "fusion_drop"),
                drop_path_rate=_option(args, "drop_path_rate"),
                fusion_layer=fusion_with_options(_option(args, "fusion"), _option(args, "fusion_kwargs")),
                checkpoint_activations=_option(args, "checkpoint_activations"),
                no_target_head=_option(args, "no_target_head"),
                no_target_grad_scale=_option(args, "no_target_grad_scale"))


def _load_swin(model, pretrained):
    if pretrained:
        print(format_load_report(load_pretrained_swin(model.backbone, pretrained)))
    return model


def lavt(pretrained, args):
    """Released `lavt`: text features come from a separate BERT (`args.ck_bert` sizes the fusion)."""
    from bert import load_text_config

    options = _backbone_options(pretrained, args)
    text_dim = load_text_config(getattr(args, "ck_bert", None)).hidden_size
    return _load_swin(build_lavt(**options, text_dim=text_dim), pretrained)


def lavt_one(pretrained, args):
    """Released `lavt_one`: the BERT `args.ck_bert` (with its weights) lives inside the model."""
    from bert import load_text_encoder

    options = _backbone_options(pretrained, args)
    text_encoder = load_text_encoder(getattr(args, "ck_bert", None))
    return _load_swin(build_lavt(**options, text_encoder=text_encoder), pretrained)
