"""What a form over COCO instances denotes, from the annotations alone (boxes, areas, counts).

An object is a dict: `cat` (category id), `ann_id`, `cx`, `cy` (box centre in units of the image
width / height), `area` (pixels), `crowd` and `kept` (a possible target: not crowd, not tiny).
Forms:

    {'type': 'category', 'cat': c}                              "the dog"
    {'type': 'location', 'cat': c, 'where': w}                  w in left/right/top/bottom
    {'type': 'order', 'cat': c, 'rank': k, 'from': side}        k >= 2, side left/right
    {'type': 'size', 'cat': c, 'which': largest|smallest}
    {'type': 'relation', 'cat': c, 'rel': r, 'lm': d}           r in left/right/above/below of the one d
    {'type': 'multi', 'cat': c, 'count': n}                     "both cats", "all three dogs"

`denotation` returns the indices a form refers to, [] when it clearly refers to nothing, or None
when that is not clear. Every instance of the category counts (tiny ones too: "the dog on the
left" is false if a tiny dog is further left); a crowd annotation of the category makes every
form about it unclear (the crowd holds an unknown number of them), and so does an annotation
whose category the file does not list, for "nothing matches" (it could be anything).
"""
from __future__ import annotations

POSITION_MARGIN = 0.05  # centres closer than 5% of the image side are "unclear"
SIZE_RATIO = 1.5  # "the largest" needs 1.5x the area of the runner-up
SIDES = {"left": ("cx", 1), "right": ("cx", -1), "top": ("cy", 1), "bottom": ("cy", -1)}  # key, sign: first
RELATIONS = {"left": ("cx", -1), "right": ("cx", 1), "above": ("cy", -1), "below": ("cy", 1)}
MAX_RANK = 6


def instances(objects: list, cat: int) -> list:
    return [i for i, obj in enumerate(objects) if obj["cat"] == cat and not obj["crowd"]]


def has_crowd(objects: list, cat: int) -> bool:
    return any(obj["cat"] == cat and obj["crowd"] for obj in objects)


def _ranked(objects: list, found: list, key: str, sign: int) -> list | None:
    """`found` ordered along a side, or None when two neighbours are within the margin."""
    order = sorted(found, key=lambda i: sign * objects[i][key])
    for a, b in zip(order, order[1:]):
        if abs(objects[a][key] - objects[b][key]) <= POSITION_MARGIN:
            return None
    return order


def _position(order: list | None, rank: int) -> list | None:
    return None if order is None else [order[rank - 1]]


def _relation(objects: list, found: list, rel: str, landmark: int) -> list | None:
    key, sign = RELATIONS[rel]
    yes = []
    for i in found:
        offset = sign * (objects[i][key] - objects[landmark][key])
        if abs(offset) <= POSITION_MARGIN:
            return None
        if offset > 0:
            yes.append(i)
    return yes if len(yes) <= 1 else None


def _size(objects: list, found: list, which: str) -> list | None:
    order = sorted(found, key=lambda i: objects[i]["area"], reverse=which == "largest")
    first, second = objects[order[0]]["area"], objects[order[1]]["area"]
    clear = first >= SIZE_RATIO * second if which == "largest" else SIZE_RATIO * first <= second
    return [order[0]] if clear else None


def denotation(form: dict, objects: list, unknown: bool = False) -> list | None:
    """Indices of the objects `form` refers to, [] for clearly none, None when unclear.

    `unknown`: the image has annotations of categories the file does not list.
    """
    cat, kind = form["cat"], form["type"]
    if has_crowd(objects, cat):
        return None
    found = instances(objects, cat)
    if kind == "relation":
        landmarks = instances(objects, form["lm"])
        if form["lm"] == cat or len(landmarks) != 1 or has_crowd(objects, form["lm"]):
            return None
        result = _relation(objects, found, form["rel"], landmarks[0])
    elif not found:
        result = []
    elif kind == "category":
        result = found if len(found) == 1 else None
    elif kind == "multi":
        result = found if len(found) == form["count"] else [] if len(found) < form["count"] else None
    elif kind == "order" and form["rank"] > len(found):
        result = []  # "the third cat from the left" where there are two
    elif len(found) < 2:
        result = None  # "the dog on the left" of a lone dog: odd, neither true nor clearly false
    elif kind == "location":
        key, sign = SIDES[form["where"]]
        result = _position(_ranked(objects, found, key, sign), 1)
    elif kind == "order":
        key, sign = SIDES[form["from"]]
        result = _position(_ranked(objects, found, key, sign), form["rank"])
    elif kind == "size":
        result = _size(objects, found, form["which"])
    else:
        raise ValueError(f"Unknown form {form!r}")
    if result == [] and unknown:
        return None
    return result


def single_forms(objects: list, target: int) -> list:
    """Every singular form that might pick out objects[target] (not yet checked)."""
    cat = objects[target]["cat"]
    forms = [{"type": "category", "cat": cat}]
    count = len(instances(objects, cat))
    if count >= 2:
        forms += [{"type": "location", "cat": cat, "where": w} for w in SIDES]
        forms += [{"type": "order", "cat": cat, "rank": k, "from": side}
                  for k in range(2, min(count, MAX_RANK) + 1) for side in ("left", "right")]
        forms += [{"type": "size", "cat": cat, "which": w} for w in ("largest", "smallest")]
        # Landmarks a reader can see: the one, non-tiny instance of another category.
        landmarks = {obj["cat"] for obj in objects if obj["cat"] != cat and obj["kept"]}
        landmarks = [lm for lm in sorted(landmarks) if len(instances(objects, lm)) == 1]
        forms += [{"type": "relation", "cat": cat, "rel": r, "lm": lm} for lm in landmarks for r in RELATIONS]
    return forms


def true_forms(objects: list, target: int) -> list:
    """The singular forms that refer to exactly objects[target], with clear margins."""
    return [form for form in single_forms(objects, target) if denotation(form, objects) == [target]]


def nothing_variants(form: dict, objects: list, absent: list, unknown: bool) -> list:
    """Forms that differ from `form` in ONE word (location, order, count or category) and that
    clearly refer to nothing here; `absent` lists category ids with no annotation in the image."""
    kind, variants = form["type"], []
    if kind == "relation":
        variants += [{**form, "rel": r} for r in RELATIONS if r != form["rel"]]
    if kind == "order":
        variants += [{**form, "rank": k} for k in range(2, MAX_RANK + 1) if k != form["rank"]]
    if kind == "multi":
        variants += [{**form, "count": n} for n in range(2, MAX_RANK + 1) if n != form["count"]]
    variants += [{**form, "cat": c} for c in absent]
    return [v for v in variants if denotation(v, objects, unknown) == []]
