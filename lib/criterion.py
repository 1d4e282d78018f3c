"""Training losses, kept beside the model (as DETR keeps its criterion).

`build_criterion(kind)` returns `criterion(outputs, targets)` where `outputs` is the dict of
`ReferringModel` (`"logits"` (B, 2, H, W)) and `targets` the int64 masks (B, H, W).

With a no-target head (`"no_target_logits"` (B,) in `outputs`), a binary cross-entropy on it is
added, weighted by `no_target_weight`. Its label is derived from the target mask -- an all-zero
target is a no-target expression -- so the training data need not change: in gRefCOCO-layout
sets a no-target ref has an empty mask and a ref with a target has object pixels (a target ref
whose only annotations are crowd regions, or whose object vanishes when the mask is resized,
is also read as "no target": rare, and then "nothing to segment" is what the mask loss says too).
"""
import torch
import torch.nn.functional as F

LOSSES = ("ce", "dice", "ce+dice")
CLASS_WEIGHTS = (0.9, 1.1)  # background, object: the released recipe's cross-entropy weights


def weighted_cross_entropy(logits, target):
    """The released loss: 2-class cross-entropy with class weights (0.9, 1.1)."""
    weight = torch.tensor(CLASS_WEIGHTS, device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, target, weight=weight)


def soft_dice_loss(logits, target, smooth=1.0):
    """1 - Dice between the foreground probability and the target, averaged over images."""
    prob = logits.softmax(dim=1)[:, 1].flatten(1)
    truth = (target == 1).float().flatten(1)
    overlap = (prob * truth).sum(1)
    dice = (2 * overlap + smooth) / (prob.sum(1) + truth.sum(1) + smooth)
    return (1 - dice).mean()


def no_target_loss(no_target_logits, target):
    """Binary cross-entropy of the no-target logits (B,) against "the target mask (B, H, W) is empty"."""
    is_empty = ~(target == 1).flatten(1).any(dim=1)
    return F.binary_cross_entropy_with_logits(no_target_logits.float().reshape(-1), is_empty.float())


def build_criterion(kind, no_target_weight=1.0):
    """Loss on the model outputs: 'ce' (released), 'dice' or 'ce+dice'; plus `no_target_weight` times
    `no_target_loss` when the outputs hold no-target logits."""
    if kind not in LOSSES:
        raise ValueError(f"--loss {kind!r}: choose one of {', '.join(LOSSES)}")
    terms = {"ce": [weighted_cross_entropy], "dice": [soft_dice_loss],
             "ce+dice": [weighted_cross_entropy, soft_dice_loss]}[kind]

    def criterion(outputs, targets):
        logits = outputs["logits"].float()
        loss = sum(term(logits, targets) for term in terms)
        if "no_target_logits" in outputs:
            loss = loss + no_target_weight * no_target_loss(outputs["no_target_logits"], targets)
        return loss

    return criterion
