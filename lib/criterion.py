"""Training losses, kept beside the model (as DETR keeps its criterion).

`build_criterion(kind)` returns a `Criterion`: `criterion.terms(outputs, targets)` gives the named,
unweighted loss terms, `criterion.weight_dict` their weights (as DETR's criterion and weight_dict),
and `criterion(outputs, targets)` their weighted sum. `outputs` is the dict of `ReferringModel`
(`"logits"` (B, 2, H, W)) and `targets` the int64 masks (B, H, W). The training loop logs every term.

A new term is one function `term(outputs, targets) -> scalar` in `TERMS` and one entry in the
weight_dict that `build_criterion` makes (or a new `LOSSES` choice naming it).

With a no-target head (`"no_target_logits"` (B,) in `outputs`), a binary cross-entropy on it is
added, weighted by `no_target_weight`, and the mask terms see only the samples that have a target
(the head, not the mask, says "nothing here"). Its label is derived from the target mask -- an all-zero
target is a no-target expression -- so the training data need not change: in gRefCOCO-layout
sets a no-target ref has an empty mask and a ref with a target has object pixels (a target ref
whose only annotations are crowd regions, or whose object vanishes when the mask is resized,
is also read as "no target": rare, and then "nothing to segment" is what the mask loss says too).
"""
import torch
import torch.nn.functional as F

# --loss choice -> the mask terms it trains with (each with weight 1).
LOSSES = {"ce": ("ce",), "dice": ("dice",), "ce+dice": ("ce", "dice")}
CLASS_WEIGHTS = (0.9, 1.1)  # background, object: the released recipe's cross-entropy weights


def weighted_cross_entropy(logits, target):
    """The released loss: 2-class cross-entropy with class weights (0.9, 1.1)."""
    weight = torch.tensor(CLASS_WEIGHTS, device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, target, weight=weight)


def soft_dice_loss(logits, target, smooth=1.0):
    """1 - Dice between the foreground probability and the target, averaged over the images that have a target.

    Images whose target is empty (no-target expressions, negatives) are left to the other terms: their
    Dice, 1 - 1 / (1 + sum of probabilities), stays near 1 for any mask short of zero probability on
    every pixel, so it would push the whole prediction towards "nothing" rather than teach anything.
    A batch without any target gives 0 (still connected to the graph, for DDP and accumulation).
    """
    prob = logits.softmax(dim=1)[:, 1].flatten(1)
    truth = (target == 1).float().flatten(1)
    has_target = truth.sum(1) > 0
    if not has_target.any():
        return prob.sum() * 0.0
    prob, truth = prob[has_target], truth[has_target]
    overlap = (prob * truth).sum(1)
    dice = (2 * overlap + smooth) / (prob.sum(1) + truth.sum(1) + smooth)
    return (1 - dice).mean()


def no_target_loss(no_target_logits, target):
    """Binary cross-entropy of the no-target logits (B,) against "the target mask (B, H, W) is empty"."""
    is_empty = ~(target == 1).flatten(1).any(dim=1)
    return F.binary_cross_entropy_with_logits(no_target_logits.float().reshape(-1), is_empty.float())


# Term name -> term(outputs, targets), `outputs["logits"]` already in float32 (see Criterion.terms).
TERMS = {
    "ce": lambda outputs, targets: weighted_cross_entropy(outputs["logits"], targets),
    "dice": lambda outputs, targets: soft_dice_loss(outputs["logits"], targets),
    "no_target": lambda outputs, targets: no_target_loss(outputs["no_target_logits"], targets),
}
# A term that reads an optional output runs only when the model returns that output (the head is optional).
REQUIRED_OUTPUT = {"no_target": "no_target_logits"}


class Criterion:
    """Named loss terms and their weights; calling it gives the weighted sum (the training loss)."""

    def __init__(self, weight_dict):
        unknown = sorted(set(weight_dict) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown loss term(s) {unknown}: known are {sorted(TERMS)}")
        self.weight_dict = dict(weight_dict)

    def terms(self, outputs, targets):
        """{name: unweighted scalar} of every weighted term whose inputs `outputs` holds, in weight_dict order."""
        # One float32 copy shared by the mask terms: under bf16 autocast their gradients then meet in
        # float32 before the one cast back, as when the loss was a single expression.
        outputs = {**outputs, "logits": outputs["logits"].float()}
        mask_outputs, mask_targets = outputs, targets
        if "no_target_logits" in outputs:
            # With a head, "nothing here" is the head's call (the evaluation asks it, not the mask): the
            # mask learns from the samples that have a target only, so that negatives and no-target
            # expressions do not teach it to hedge towards empty masks wherever it is unsure.
            has_target = (targets == 1).flatten(1).any(dim=1)
            mask_outputs, mask_targets = {"logits": outputs["logits"][has_target]}, targets[has_target]
        found = {}
        for name in self.weight_dict:
            if name in REQUIRED_OUTPUT:
                if REQUIRED_OUTPUT[name] in outputs:
                    found[name] = TERMS[name](outputs, targets)
            elif len(mask_targets):
                found[name] = TERMS[name](mask_outputs, mask_targets)
            else:  # only no-target samples: zero, still connected to the graph (DDP, accumulation)
                found[name] = outputs["logits"].sum() * 0.0
        return found

    def total(self, terms):
        """The weighted sum of `terms`, added in their order (so the released 'ce' alone is that value exactly)."""
        loss = 0
        for name, value in terms.items():
            loss = loss + self.weight_dict[name] * value
        return loss

    def __call__(self, outputs, targets):
        return self.total(self.terms(outputs, targets))


def build_criterion(kind, no_target_weight=1.0):
    """Loss on the model outputs: 'ce' (released), 'dice' or 'ce+dice'; plus `no_target_weight` times
    `no_target_loss` when the outputs hold no-target logits."""
    if kind not in LOSSES:
        raise ValueError(f"--loss {kind!r}: choose one of {', '.join(LOSSES)}")
    return Criterion({**{name: 1.0 for name in LOSSES[kind]}, "no_target": no_target_weight})
