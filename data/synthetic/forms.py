"""Choosing referring forms: every form that could describe an object, and a varied few of those
that `referent` confirms denote exactly it."""
from __future__ import annotations

import itertools

import numpy as np

from .semantics import ATTRIBUTES, RELATIONS, SIDES, WHERES, referent


def descriptions(obj: dict) -> list:
    """Every subset of the object's {size, colour, shape} as a desc, the empty one first."""
    return [{key: obj[key] for key in keys} for n in range(4) for keys in itertools.combinations(ATTRIBUTES, n)]


def description_counts(objects: list) -> dict:
    """How many objects each (sorted-items) desc matches."""
    count = {}
    for obj in objects:
        for desc in descriptions(obj):
            key = tuple(sorted(desc.items()))
            count[key] = count.get(key, 0) + 1
    return count


def candidate_forms(kind: str, target: int, objects: list) -> list:
    """Every form of one type that could describe objects[target] (not yet checked for uniqueness)."""
    count = description_counts(objects)

    def matching(desc):
        return count.get(tuple(sorted(desc.items())), 0)

    descs = descriptions(objects[target])
    if kind == "attribute":
        return [{"type": "attribute", "target": d} for d in descs if d and matching(d) == 1]
    shared = [d for d in descs if matching(d) >= 2]  # location words must be needed
    if kind == "location":
        return [{"type": "location", "target": d, "where": w} for d in shared for w in WHERES]
    if kind == "ordinal":
        return [{"type": "ordinal", "target": d, "rank": k, "from": side}
                for d in shared for k in (2, 3) for side in SIDES]
    landmarks = [lm for j, other in enumerate(objects) if j != target
                 for lm in descriptions(other) if lm and matching(lm) == 1]
    return [{"type": "relation", "target": d, "relation": r, "landmark": lm}
            for lm in landmarks for d in shared for r in RELATIONS]


def choose_forms(rng, target, objects, img_size, types, mix, count) -> list:
    """Up to `count` distinct forms that denote exactly objects[target], types drawn from `mix`.

    A type already used is down-weighted (x0.25) so an object's expressions vary; a type with no
    valid form left drops out.
    """
    pools, chosen, used = {}, [], []
    available = list(types)
    while len(chosen) < count and available:
        weights = np.array([mix[t] * (0.25 if t in used else 1.0) for t in available])
        kind = available[int(rng.choice(len(available), p=weights / weights.sum()))]
        if kind not in pools:
            pool = candidate_forms(kind, target, objects)
            pools[kind] = [pool[i] for i in rng.permutation(len(pool))]
        pool = pools[kind]
        while pool:
            form = pool.pop()
            if referent(form, objects, img_size) == target:
                chosen.append(form)
                used.append(kind)
                break
        else:
            available.remove(kind)
    return chosen
