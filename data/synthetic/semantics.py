"""What a semantic form means in a scene: `evaluate` (three-valued) and `referent`.

A form is a dict. `desc` maps some of size / colour / shape to a value; an object matches it
when it has every listed value.

    {'type': 'attribute', 'target': desc}
    {'type': 'location', 'target': desc, 'where': w}     w in WHERES
    {'type': 'ordinal', 'target': desc, 'rank': k, 'from': side}
    {'type': 'relation', 'target': desc, 'relation': r, 'landmark': desc}   r in RELATIONS

These are singular (definite) forms: "the ...". An attribute or relation form with a `count` key
is plural: `count` is the exact number of objects it denotes ("both red shapes", "the three
circles left of the star") or "all" (every match, at least two: "all circles").

Positions are object centres in units of the image side. A comparison closer than its margin is
"unclear" (MAYBE), so expressions kept by the generator never hinge on a few pixels.
"""
from __future__ import annotations

import numpy as np

ATTRIBUTES = ("size", "colour", "shape")
EXPRESSION_TYPES = ("attribute", "location", "relation", "ordinal")

POSITION_MARGIN = 0.08
DISTANCE_MARGIN = 0.08
QUADRANT_MARGIN = 0.05
CENTER_RADIUS = 0.2

NO, MAYBE, YES = 0, 1, 2
SIDES = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}  # axis, sign of the key
CORNERS = {"top left": (-1, -1), "top right": (1, -1), "bottom left": (-1, 1), "bottom right": (1, 1)}
WHERES = (*SIDES, *CORNERS, "center")
RELATIONS = ("left", "right", "above", "below", "nearest")
_DIRECTIONS = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}  # axis, sign


def matches(obj: dict, description: dict) -> bool:
    """Whether an object has every attribute value the description lists."""
    for key, value in description.items():  # a plain loop: this is the generator's hottest line
        if obj[key] != value:
            return False
    return True


def _ranked(keys: dict, rank: int, margin: float) -> dict:
    """Status of "the rank-th smallest key" per candidate, three-valued (YES / MAYBE / NO)."""
    status = {}
    for i, key in keys.items():
        before = sum(other < key - margin for j, other in keys.items() if j != i)
        unclear = sum(abs(other - key) <= margin for j, other in keys.items() if j != i)
        if before == rank - 1 and unclear == 0:
            status[i] = YES
        elif before <= rank - 1 <= before + unclear:
            status[i] = MAYBE
        else:
            status[i] = NO
    return status


def _threshold(value: float, limit: float, margin: float) -> int:
    """Three-valued "value < limit"."""
    return YES if value < limit - margin else NO if value > limit + margin else MAYBE


def _location_status(where: str, candidates: list, pos: dict) -> dict:
    if where in SIDES:
        axis, sign = SIDES[where]
        return _ranked({i: -sign * pos[i][axis] for i in candidates}, 1, POSITION_MARGIN)
    if where in CORNERS:
        sx, sy = CORNERS[where]
        status = _ranked({i: -(sx * pos[i][0] + sy * pos[i][1]) for i in candidates}, 1, POSITION_MARGIN)
        for i in candidates:  # and inside that quadrant
            inside = min(_threshold(-sx * (pos[i][0] - 0.5), 0.0, QUADRANT_MARGIN),
                         _threshold(-sy * (pos[i][1] - 0.5), 0.0, QUADRANT_MARGIN))
            status[i] = min(status[i], inside)
        return status
    if where == "center":
        dist = {i: float(np.hypot(pos[i][0] - 0.5, pos[i][1] - 0.5)) for i in candidates}
        status = _ranked(dist, 1, DISTANCE_MARGIN)
        for i in candidates:
            status[i] = min(status[i], _threshold(dist[i], CENTER_RADIUS, 0.03))
        return status
    raise ValueError(f"Unknown location '{where}'; choose one of {', '.join(WHERES)}.")


def _relation_status(relation: str, candidates: list, landmark: int, pos: dict) -> dict:
    lm = pos[landmark]
    if relation == "nearest":
        return _ranked({i: float(np.hypot(pos[i][0] - lm[0], pos[i][1] - lm[1])) for i in candidates},
                       1, DISTANCE_MARGIN)
    axis, sign = _DIRECTIONS[relation]
    return {i: _threshold(-sign * (pos[i][axis] - lm[axis]), 0.0, POSITION_MARGIN) for i in candidates}


def evaluate(form: dict, objects: list, img_size: int) -> tuple[list, list]:
    """Objects that a semantic form certainly denotes (YES) and those it might (MAYBE).

    location: w in left/right/top/bottom (extreme), 'top left'... (corner: extreme along the
    diagonal and inside that quadrant), 'center' (nearest the centre, within CENTER_RADIUS);
    ordinal: k-th from that side; relation: left/right/above/below (CLEVR-style: centre further
    that way than the landmark's) or 'nearest'. The landmark must be the only object matching its
    desc, otherwise every candidate is MAYBE.
    """
    pos = {i: (obj["cx"] / img_size, obj["cy"] / img_size) for i, obj in enumerate(objects)}
    candidates = [i for i, obj in enumerate(objects) if matches(obj, form["target"])]
    kind = form["type"]
    if kind == "attribute":
        status = dict.fromkeys(candidates, YES)
    elif kind == "location":
        status = _location_status(form["where"], candidates, pos)
    elif kind == "ordinal":
        axis, sign = SIDES[form["from"]]
        status = _ranked({i: -sign * pos[i][axis] for i in candidates}, form["rank"], POSITION_MARGIN)
    elif kind == "relation":
        landmarks = [i for i, obj in enumerate(objects) if matches(obj, form["landmark"])]
        if len(landmarks) != 1:
            return [], candidates  # the landmark itself is ambiguous
        candidates = [i for i in candidates if i != landmarks[0]]
        status = _relation_status(form["relation"], candidates, landmarks[0], pos)
    else:
        raise ValueError(f"Unknown semantic form {form!r}.")
    return ([i for i in candidates if status[i] == YES], [i for i in candidates if status[i] == MAYBE])


def denotation(form: dict, objects: list, img_size: int) -> list | None:
    """Indices of exactly the objects a form refers to, or None when that is not well defined.

    Well defined means no object is unclear (MAYBE), a relation's landmark is one object, a
    singular form matches at most one object (none: a no-target expression) and a plural form
    matches as many as its `count` says ("all": at least two). Every listed object matches the
    form clearly and every other object clearly does not.
    """
    if "count" in form and (form["type"] not in ("attribute", "relation")
                            or not (form["count"] == "all" or isinstance(form["count"], int) and form["count"] >= 2)):
        raise ValueError(f"Plural forms are attribute or relation forms with a count >= 2 or 'all', not {form!r}.")
    yes, maybe = evaluate(form, objects, img_size)
    if maybe:
        return None
    if not yes and form["type"] == "relation" and sum(matches(o, form["landmark"]) for o in objects) != 1:
        return None  # no landmark (or several): the expression does not make sense here
    if "count" not in form:
        return yes if len(yes) <= 1 else None
    wanted = form["count"]
    return yes if (len(yes) >= 2 if wanted == "all" else len(yes) == wanted) else None


def referent(form: dict, objects: list, img_size: int):
    """Index of the one object the form denotes, or None if it denotes none or is ambiguous."""
    found = denotation(form, objects, img_size)
    return found[0] if found is not None and len(found) == 1 else None
