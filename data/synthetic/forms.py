"""Choosing referring forms: every form that could describe an object, and a varied few of those
that `referent` confirms denote exactly it."""
from __future__ import annotations

import itertools

import numpy as np

from .semantics import ATTRIBUTES, RELATIONS, SIDES, WHERES, denotation, matches, referent


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


def plural_forms(objects: list, img_size: int, types=("attribute", "relation")) -> dict:
    """Multi-target forms, grouped by what they denote: {(i, j, ...): [forms]} (two objects or more).

    Attribute forms: a desc matching several objects ("all red shapes", "both circles").
    Relation forms: a desc + left/right/above/below of a one-object landmark, kept only when the
    relation is needed (the desc alone matches more objects) and nothing is unclear. Each form
    comes with `count` "all" and with its exact number.
    """
    count = description_counts(objects)
    groups: dict[tuple, list] = {}

    def add(form, found):
        if found is not None and len(found) >= 2:
            for wanted in ("all", len(found)):
                groups.setdefault(tuple(found), []).append({**form, "count": wanted})

    shared = {}  # every desc matching two or more objects, once
    for obj in objects:
        for desc in descriptions(obj):
            if count[tuple(sorted(desc.items()))] >= 2:
                shared.setdefault(tuple(sorted(desc.items())), desc)
    if "attribute" in types:
        for desc in shared.values():
            if desc:
                add({"type": "attribute", "target": desc}, denotation({"type": "attribute", "target": desc, "count": "all"},
                                                                      objects, img_size))
    if "relation" in types:
        for j, other in enumerate(objects):
            landmarks = [lm for lm in descriptions(other) if lm and count[tuple(sorted(lm.items()))] == 1]
            for desc in shared.values() if landmarks else ():
                others = sum(matches(o, desc) for i, o in enumerate(objects) if i != j)
                for relation in ("left", "right", "above", "below"):
                    form = {"type": "relation", "target": desc, "relation": relation, "landmark": landmarks[0]}
                    found = denotation({**form, "count": "all"}, objects, img_size)
                    if found is not None and len(found) < others:  # the relation narrows the desc down
                        for lm in landmarks:
                            add({**form, "landmark": lm}, found)
    return groups
