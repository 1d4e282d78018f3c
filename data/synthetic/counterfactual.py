"""Counterfactual expressions: the referred object's noun kept, ONE attribute, location or
relation changed, so that nothing in the scene matches ("the blue star" for the red star when no
blue star exists). They test whether a model reads more than the category word."""
from __future__ import annotations

from .scene import COLOURS, SIZES
from .semantics import RELATIONS, WHERES, denotation, matches, referent

_VALUES = {"size": SIZES, "colour": tuple(COLOURS)}
_RANKS = (2, 3, 4)


def _with_shape(form: dict, obj: dict, objects: list, img_size: int, target: int):
    """The form naming the object's shape, if it still denotes the same object; else None."""
    if "shape" in form["target"]:
        return form
    named = {**form, "target": {**form["target"], "shape": obj["shape"]}}
    return named if referent(named, objects, img_size) == target else None


def _one_change(form: dict, obj: dict) -> tuple[list, list]:
    """Forms that differ from `form` in one slot: (substitutions of a word, added attributes)."""
    desc, kind = form["target"], form["type"]
    swapped, added = [], []
    for key, values in _VALUES.items():
        for value in values:
            if value != obj[key]:
                (swapped if key in desc else added).append({**form, "target": {**desc, key: value}})
    if kind == "location":
        swapped += [{**form, "where": where} for where in WHERES if where != form["where"]]
    elif kind == "ordinal":
        swapped += [{**form, "rank": rank} for rank in _RANKS if rank != form["rank"]]
    elif kind == "relation":
        swapped += [{**form, "relation": rel} for rel in RELATIONS if rel != form["relation"]]
    return swapped, added


def _fits_own_landmark(form: dict, objects: list) -> bool:
    """A relation whose target desc also fits its landmark ("the big star left of the big star")."""
    return form["type"] == "relation" and any(
        matches(obj, form["landmark"]) and matches(obj, form["target"]) for obj in objects)


def names_pair(form: dict, pairs) -> bool:
    """Whether a form's target desc names one of the (colour, shape) pairs."""
    desc = form["target"]
    return "colour" in desc and "shape" in desc and (desc["colour"], desc["shape"]) in pairs


def counterfactual_form(form: dict, objects: list, img_size: int, rng=None, exclude_pairs=()) -> dict | None:
    """A no-target counterfactual of a singular form that denotes exactly one object, or None.

    The result names the referred object's shape (a form that names none first gets it, when the
    form still denotes the same object) and differs from that form in ONE slot: a size or colour
    (changed, or added with a value the object does not have), the location word, the ordinal rank
    (2-4) or the relation. It is returned only if `denotation` finds that NO object of the scene
    matches it, clearly. Changed words are preferred over added ones; `rng` (a numpy Generator)
    shuffles the choice within each group, otherwise the order is fixed. Forms that would name a
    colour-shape pair in `exclude_pairs`, and relations whose target desc fits their own landmark
    ("the big star left of the big star"), are skipped. Returns None when the form does not refer
    to exactly one object, or when no single change leaves the scene without a match.
    """
    target = referent(form, objects, img_size)
    if target is None:
        return None
    base = _with_shape(form, objects[target], objects, img_size, target)
    if base is None:
        return None
    for group in _one_change(base, objects[target]):
        order = rng.permutation(len(group)) if rng is not None else range(len(group))
        for index in order:
            candidate = group[int(index)]
            if (not names_pair(candidate, exclude_pairs) and not _fits_own_landmark(candidate, objects)
                    and denotation(candidate, objects, img_size) == []):
                return candidate
    return None
