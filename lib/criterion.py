"""Training losses, kept beside the model (as DETR keeps its criterion).

`build_criterion(kind)` returns `criterion(outputs, targets)` where `outputs` is the dict of
`ReferringModel` (`"logits"` (B, 2, H, W)) and `targets` the int64 masks (B, H, W).
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


def build_criterion(kind):
    """Loss on the model outputs: 'ce' (released), 'dice' or 'ce+dice'."""
    if kind not in LOSSES:
        raise ValueError(f"--loss {kind!r}: choose one of {', '.join(LOSSES)}")
    terms = {"ce": [weighted_cross_entropy], "dice": [soft_dice_loss],
             "ce+dice": [weighted_cross_entropy, soft_dice_loss]}[kind]

    def criterion(outputs, targets):
        logits = outputs["logits"].float()
        return sum(term(logits, targets) for term in terms)

    return criterion
